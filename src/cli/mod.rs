//! The offline commands of the binary (render, crds) and shared CLI plumbing.

pub mod admin;
pub mod console;
pub mod manifest;
pub mod power;
pub mod render;
pub mod terminal;
pub mod unknown_fields;

use crate::domain::DomainType;

/// The domain type as a flag (`--hypervisor kvm|qemu`); the domain layer knows no clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DomainTypeArg {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// Software emulation (TCG): slow, but works without /dev/kvm or nested virtualization.
    Qemu,
}

impl From<DomainTypeArg> for DomainType {
    fn from(arg: DomainTypeArg) -> Self {
        match arg {
            DomainTypeArg::Kvm => DomainType::Kvm,
            DomainTypeArg::Qemu => DomainType::Qemu,
        }
    }
}
