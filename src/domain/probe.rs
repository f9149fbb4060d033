//! The probe domain: how the agent learns the size of an image that only the node can see.
//! Pure: no I/O.
//!
//! An overlay over a claim's image needs the image's virtual size, but the image is a node
//! path (a hostPath or local volume's `disk.img`, a block device) that the agent, in its Pod,
//! cannot open. The node's libvirtd can:
//!
//! 1. [`probe_name`] names a probe domain after the VM's UID and the volume's index. The name
//!    has no `_`, so it is never taken for a VM's domain (`<namespace>_<name>`), and the probe
//!    carries no nodevirt metadata, so the orphan cleanup and the metrics never see it.
//! 2. [`probe_domain`] builds the smallest domain libvirt defines: the image as its one disk
//!    ([`PROBE_TARGET`]), read-only, as the VM's own disk would open it (file or block, raw or
//!    qcow2).
//! 3. The libvirt adapter defines it (never starts it), asks virDomainGetBlockInfo for the
//!    disk's capacity and undefines it (`hypervisor::backing`).

use serde::Serialize;

use super::disks::disk_source;
use super::model::{Alias, Disk, Driver, Flag, Memory, Target, document};
use super::{GUEST_ARCH, ResolvedVolume};

/// The probe's one disk, whose size libvirt is asked for.
pub const PROBE_TARGET: &str = "vda";
/// Every probe domain's name starts with it.
pub const PROBE_PREFIX: &str = "nodevirt-probe-";

/// The probe domain of volume `volume_index` of the VM with UID `uid` (a checked UUID): one
/// per volume, so probes of different volumes and VMs never meet.
pub fn probe_name(uid: &str, volume_index: usize) -> String {
    format!("{PROBE_PREFIX}{uid}-{volume_index}")
}

/// A `qemu` domain: defining one needs neither KVM nor the agent's hypervisor decision, and
/// the test driver accepts it too.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename = "domain")]
pub struct ProbeDomain {
    #[serde(rename = "@type")]
    domain_type: &'static str,
    name: String,
    /// Says what the domain is to whoever lists the node's domains meanwhile.
    description: &'static str,
    memory: Memory,
    os: ProbeOs,
    devices: ProbeDevices,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ProbeOs {
    #[serde(rename = "type")]
    os_type: ProbeOsType,
}

/// An hvm guest of the architecture nodevirt's VMs have, so libvirt picks their emulator;
/// the machine type is left to libvirt.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct ProbeOsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ProbeDevices {
    disk: Disk,
}

/// The probe domain named `name` whose one disk is `volume`.
pub fn probe_domain(name: &str, volume: &ResolvedVolume) -> ProbeDomain {
    let (disk_type, source, format) = disk_source(volume);
    ProbeDomain {
        domain_type: "qemu",
        name: name.to_string(),
        description: "nodevirt: reads the size of a disk image; never started, removed at once",
        memory: Memory {
            unit: "MiB",
            value: 16,
        },
        os: ProbeOs {
            os_type: ProbeOsType {
                arch: GUEST_ARCH,
                value: "hvm",
            },
        },
        devices: ProbeDevices {
            disk: Disk {
                disk_type,
                device: "disk",
                driver: Driver {
                    name: "qemu",
                    format: format.as_str(),
                },
                source: Some(source),
                target: Target {
                    dev: PROBE_TARGET.to_string(),
                    bus: "virtio",
                    tray: None,
                },
                boot: None,
                readonly: Some(Flag {}),
                alias: Alias {
                    name: "ua-probe".to_string(),
                },
            },
        },
    }
}

impl ProbeDomain {
    /// The document libvirt's defineXML takes.
    pub fn to_xml(&self) -> Result<String, quick_xml::SeError> {
        document(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageFormat;

    const UID: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn xml(volume: ResolvedVolume) -> String {
        probe_domain(&probe_name(UID, 2), &volume).to_xml().unwrap()
    }

    #[test]
    fn probe_names_are_per_volume_and_never_a_vm_domain_name() {
        let name = probe_name(UID, 2);
        assert_eq!(name, format!("nodevirt-probe-{UID}-2"));
        assert!(!name.contains('_'), "VM domains are <namespace>_<name>");
        assert_ne!(name, probe_name(UID, 3));
    }

    #[test]
    fn a_file_image_is_the_one_read_only_disk_of_an_inactive_qemu_domain() {
        let file = ResolvedVolume::File {
            path: "/srv/pv-1/disk.img".into(),
            format: ImageFormat::Qcow2,
        };
        assert_eq!(
            xml(file),
            format!(
                "<domain type=\"qemu\">\n  <name>nodevirt-probe-{UID}-2</name>\n  \
                 <description>nodevirt: reads the size of a disk image; never started, removed \
                 at once</description>\n  <memory unit=\"MiB\">16</memory>\n  <os>\n    \
                 <type arch=\"x86_64\">hvm</type>\n  </os>\n  <devices>\n    \
                 <disk type=\"file\" device=\"disk\">\n      \
                 <driver name=\"qemu\" type=\"qcow2\"/>\n      \
                 <source file=\"/srv/pv-1/disk.img\"/>\n      \
                 <target dev=\"vda\" bus=\"virtio\"/>\n      <readonly/>\n      \
                 <alias name=\"ua-probe\"/>\n    </disk>\n  </devices>\n</domain>\n"
            )
        );
    }

    #[test]
    fn a_block_device_is_a_raw_block_disk() {
        let out = xml(ResolvedVolume::Block {
            path: "/dev/disk/by-id/wwn-0x5000".into(),
        });
        assert!(
            out.contains("<disk type=\"block\" device=\"disk\">"),
            "{out}"
        );
        assert!(
            out.contains("<driver name=\"qemu\" type=\"raw\"/>"),
            "{out}"
        );
        assert!(
            out.contains("<source dev=\"/dev/disk/by-id/wwn-0x5000\"/>"),
            "{out}"
        );
    }

    #[test]
    fn a_path_cannot_change_the_document() {
        let out = xml(ResolvedVolume::File {
            path: "/srv/a\"/><disk type='block'>&x".into(),
            format: ImageFormat::Raw,
        });
        assert!(
            out.contains("file=\"/srv/a&quot;/&gt;&lt;disk type='block'&gt;&amp;x\""),
            "{out}"
        );
        assert_eq!(out.matches("<disk ").count(), 1, "{out}");
    }
}
