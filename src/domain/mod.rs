//! VirtualMachine (after presets) -> libvirt domain XML. Pure: no I/O, no async.
//!
//! 1. The caller resolves every volume to a file or block device (`ResolvedVolume`): the
//!    agent from its state dir and the cluster, `nodevirt render` from its flags.
//! 2. [`render`] checks the VM and builds the typed [`model::Domain`]; the first invalid field
//!    ends it with a [`FieldError`] that names the field and what is expected.
//! 3. [`model::Domain::to_xml`] serializes it; quick-xml escapes every value.
//!
//! Beside it, [`probe`] builds the probe domain through which the node's libvirtd tells the
//! agent the size of an image only the node can see.

mod disks;
#[cfg(test)]
pub(crate) mod fixtures;
mod hardware;
pub mod limits;
pub mod model;
pub mod names;
pub mod probe;
mod render;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;

pub use render::render;

/// A field of the VM that is invalid, and why. `field` is a path such as
/// `spec.domain.devices.disks[1].disk.bus`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<crate::api::quantity::QuantityError> for FieldError {
    fn from(err: crate::api::quantity::QuantityError) -> Self {
        let message = err.to_string();
        let message = message
            .strip_prefix(&format!("{}: ", err.field))
            .unwrap_or(&message)
            .to_string();
        FieldError::new(err.field, message)
    }
}

/// The guest architecture of every domain nodevirt renders.
pub const GUEST_ARCH: &str = "x86_64";

/// How the hypervisor runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// Software emulation (TCG): slow, but works without /dev/kvm or nested virtualization.
    Qemu,
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        })
    }
}

/// The CPU a guest sees under KVM (TCG always emulates QEMU's default model): as KubeVirt
/// does, `host-model` unless the agent is told otherwise; `host-passthrough` gives the
/// host's exact CPU (no live migration between unlike hosts), a name one of libvirt's models.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CpuModel {
    #[default]
    HostModel,
    HostPassthrough,
    Named(String),
}

impl std::str::FromStr for CpuModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host-model" => Ok(CpuModel::HostModel),
            "host-passthrough" => Ok(CpuModel::HostPassthrough),
            name if !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Ok(CpuModel::Named(name.to_string()))
            }
            other => Err(format!(
                "{other:?}: expected host-model, host-passthrough or a libvirt CPU model name \
                 (letters, digits, '-', '_', '.'; at most 64)"
            )),
        }
    }
}

/// Node-side choices that the VM spec does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    pub domain_type: DomainType,
    /// Used under KVM only.
    pub cpu_model: CpuModel,
    /// The libvirt network of the guest's NIC; `None` gives the guest no NIC.
    pub network: Option<String>,
    /// Where virtlogd writes everything the guest prints on its serial console.
    pub console_log: String,
    /// The node that runs the domain, recorded in its metadata; `None` when rendering offline.
    pub node: Option<String>,
}

/// The disk image format libvirt must open a source with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The name libvirt and qemu-img use.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// What backs a volume on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedVolume {
    File { path: String, format: ImageFormat },
    Block { path: String },
}

impl ResolvedVolume {
    /// The file or device, as the node names it.
    pub fn path(&self) -> &str {
        match self {
            ResolvedVolume::File { path, .. } | ResolvedVolume::Block { path } => path,
        }
    }

    /// The format its image is opened with; a block device is raw.
    pub fn format(&self) -> ImageFormat {
        match self {
            ResolvedVolume::File { format, .. } => *format,
            ResolvedVolume::Block { .. } => ImageFormat::Raw,
        }
    }
}

/// Volume name -> its source on this node.
pub type ResolvedVolumes = BTreeMap<String, ResolvedVolume>;
