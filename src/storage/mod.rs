//! Turning volumes into files on the node.

pub mod layout;
