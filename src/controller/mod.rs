//! The cluster-wide controller: presets, OfflineVirtualMachines, ReplicaSets, placement.

pub mod presets;
