//! Shared helpers of the integration tests. Each test binary uses a subset of them.
#![allow(dead_code)] // each tests/*.rs binary compiles this module and uses only part of it

pub mod agent;
pub mod cluster;
pub mod console;
pub mod deployed;
pub mod direct;
pub mod https;
pub mod idle_proxy;
pub mod libvirt;
pub mod node;
pub mod registry;
pub mod rfb;
pub mod schema;
pub mod vm;
pub mod vm_builder;
