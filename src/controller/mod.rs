//! The cluster-wide controller: presets, OfflineVirtualMachines, ReplicaSets, placement.

pub mod placement;
pub mod presets;
