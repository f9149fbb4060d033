//! nodevirt: runs KubeVirt v1alpha1 VirtualMachines on libvirt, one agent per node.

pub mod admin;
pub mod agent;
pub mod api;
pub mod cli;
pub mod controller;
pub mod domain;
pub mod event_log;
pub mod events;
pub mod fuzzing;
pub mod hash;
pub mod hypervisor;
pub mod k8s;
pub mod metrics;
pub mod metrics_port;
pub mod self_signed;
pub mod server;
pub mod storage;
pub mod tls_signatures;
pub mod tunnel;
pub mod watch;
