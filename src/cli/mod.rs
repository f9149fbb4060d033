//! The offline commands of the binary (render, crds) and shared CLI plumbing.

pub mod admin;
pub mod manifest;
pub mod power;
pub mod render;
pub mod unknown_fields;
