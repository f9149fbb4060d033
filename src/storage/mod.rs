//! Turning volumes into files on the node: where they go (`layout`, pure) and making them
//! (`files`), and the registry disks' image cache (`registry`).

pub mod files;
pub mod layout;
pub mod registry;
