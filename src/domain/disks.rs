//! spec.domain.devices.disks and spec.volumes -> libvirt `<disk>` elements.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::VirtualMachineSpec;
use crate::api::domain_spec::Disk as DiskSpec;
use crate::api::quantity::parse_bytes;
use crate::api::volume::{Volume, VolumeKind};

use super::model::{Alias, Boot, Disk, DiskSource, Driver, Flag, Target};
use super::names::{check_dns_label, check_dns_subdomain, check_one_of};
use super::{FieldError, ImageFormat, ResolvedVolume, ResolvedVolumes};

/// More would exhaust a bus's slots long before it is useful.
pub const MAX_DISKS: usize = 32;
pub const MAX_VOLUMES: usize = 32;
/// Larger cloud-init user-data is refused: it has to fit in etcd beside the rest of the VM.
pub const MAX_USER_DATA_BYTES: usize = 256 * 1024;

const DISK_BUSES: &[&str] = &["virtio", "sata", "scsi", "ide"];
const LUN_BUSES: &[&str] = &["virtio", "scsi"];
const CDROM_BUSES: &[&str] = &["sata", "scsi", "ide"];
const TRAY_STATES: &[&str] = &["open", "closed"];

/// Which of the four disk kinds a disk is, with its checked settings.
struct Device {
    device: &'static str,
    bus: &'static str,
    readonly: bool,
    tray: Option<&'static str>,
}

pub fn check_volumes(spec: &VirtualMachineSpec) -> Result<(), FieldError> {
    if spec.volumes.len() > MAX_VOLUMES {
        return Err(FieldError::new(
            "spec.volumes",
            format!(
                "{} volumes; at most {MAX_VOLUMES} are allowed",
                spec.volumes.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, volume) in spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        check_dns_label(&volume.name, &format!("{field}.name"))?;
        if !seen.insert(volume.name.as_str()) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("volume name {:?} is used twice", volume.name),
            ));
        }
        check_volume_source(volume, &field)?;
    }
    Ok(())
}

fn check_volume_source(volume: &Volume, field: &str) -> Result<(), FieldError> {
    let kinds = volume.kinds();
    if kinds.len() != 1 {
        return Err(FieldError::new(
            field,
            format!(
                "a volume needs exactly one source, found {}; expected one of {}",
                kinds.len(),
                VolumeKind::ALL_NAMES
            ),
        ));
    }
    if let Some(cloud_init) = &volume.cloud_init_no_cloud {
        let field = format!("{field}.cloudInitNoCloud");
        let set = [
            cloud_init.secret_ref.is_some(),
            cloud_init.user_data.is_some(),
            cloud_init.user_data_base64.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(FieldError::new(
                field,
                "expected exactly one of secretRef, userData or userDataBase64",
            ));
        }
        let size = cloud_init.user_data.as_ref().map(String::len).unwrap_or(0)
            + cloud_init
                .user_data_base64
                .as_ref()
                .map(String::len)
                .unwrap_or(0);
        if size > MAX_USER_DATA_BYTES {
            return Err(FieldError::new(
                field,
                format!("user-data is {size} bytes; at most {MAX_USER_DATA_BYTES} are allowed"),
            ));
        }
        if let Some(secret) = &cloud_init.secret_ref {
            check_dns_subdomain(&secret.name, &format!("{field}.secretRef.name"))?;
        }
    }
    if let Some(empty) = &volume.empty_disk {
        let capacity_field = format!("{field}.emptyDisk.capacity");
        if parse_bytes(&empty.capacity.0, &capacity_field)? == 0 {
            return Err(FieldError::new(capacity_field, "must be larger than 0"));
        }
    }
    if let Some(ephemeral) = &volume.ephemeral {
        let Some(claim) = &ephemeral.persistent_volume_claim else {
            return Err(FieldError::new(
                format!("{field}.ephemeral"),
                "expected persistentVolumeClaim",
            ));
        };
        let claim_field = format!("{field}.ephemeral.persistentVolumeClaim.claimName");
        check_dns_subdomain(&claim.claim_name, &claim_field)?;
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let claim_field = format!("{field}.persistentVolumeClaim.claimName");
        check_dns_subdomain(&claim.claim_name, &claim_field)?;
    }
    if let Some(registry) = &volume.registry_disk {
        let image = registry.image.trim();
        if image.is_empty()
            || image.len() > 512
            || image
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(FieldError::new(
                format!("{field}.registryDisk.image"),
                format!(
                    "{:?} is not an image reference; expected e.g. registry.example/disks/fedora:38",
                    registry.image
                ),
            ));
        }
        if let Some(secret) = &registry.image_pull_secret {
            check_dns_subdomain(secret, &format!("{field}.registryDisk.imagePullSecret"))?;
        }
    }
    Ok(())
}

fn device(disk: &DiskSpec, field: &str, q35: bool) -> Result<Device, FieldError> {
    let set = [
        disk.disk.is_some(),
        disk.cdrom.is_some(),
        disk.floppy.is_some(),
        disk.lun.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(FieldError::new(
            field,
            "set only one of disk, cdrom, floppy or lun",
        ));
    }
    let bus = |bus: &Option<String>, allowed: &[&'static str], kind: &str| {
        let default = allowed[0];
        let chosen = match bus.as_deref() {
            None => default,
            Some(b) => check_one_of(b, allowed, &format!("{field}.{kind}.bus"))?,
        };
        if chosen == "ide" && q35 {
            return Err(FieldError::new(
                format!("{field}.{kind}.bus"),
                "the q35 machine type has no IDE controller; use sata, or machine type pc",
            ));
        }
        Ok(chosen)
    };
    let tray = |tray: &Option<String>, kind: &str| {
        tray.as_deref()
            .map(|t| check_one_of(t, TRAY_STATES, &format!("{field}.{kind}.tray")))
            .transpose()
    };
    if let Some(cdrom) = &disk.cdrom {
        if cdrom.readonly == Some(false) {
            return Err(FieldError::new(
                format!("{field}.cdrom.readonly"),
                "a cdrom is always read-only; remove readonly or set it to true",
            ));
        }
        return Ok(Device {
            device: "cdrom",
            bus: bus(&cdrom.bus, CDROM_BUSES, "cdrom")?,
            readonly: true,
            tray: tray(&cdrom.tray, "cdrom")?,
        });
    }
    if let Some(floppy) = &disk.floppy {
        return Ok(Device {
            device: "floppy",
            bus: "fdc",
            readonly: floppy.readonly.unwrap_or(false),
            tray: tray(&floppy.tray, "floppy")?,
        });
    }
    if let Some(lun) = &disk.lun {
        return Ok(Device {
            device: "lun",
            bus: bus(&lun.bus, LUN_BUSES, "lun")?,
            readonly: lun.readonly.unwrap_or(false),
            tray: None,
        });
    }
    let target = disk.disk.clone().unwrap_or_default();
    Ok(Device {
        device: "disk",
        bus: bus(&target.bus, DISK_BUSES, "disk")?,
        readonly: target.readonly.unwrap_or(false),
        tray: None,
    })
}

/// Target device names as the guest's firmware and libvirt expect them: vda, sda, hda, fda,
/// ..., with sata and scsi sharing the `sd` sequence.
#[derive(Default)]
struct TargetNames {
    next: BTreeMap<&'static str, usize>,
}

impl TargetNames {
    fn next(&mut self, bus: &str) -> String {
        let prefix = match bus {
            "virtio" => "vd",
            "ide" => "hd",
            "fdc" => "fd",
            _ => "sd",
        };
        let index = self.next.entry(prefix).or_default();
        let name = format!("{prefix}{}", disk_letters(*index));
        *index += 1;
        name
    }
}

/// 0 -> a, 25 -> z, 26 -> aa, as libvirt numbers disks.
fn disk_letters(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

pub fn disks(
    spec: &VirtualMachineSpec,
    resolved: &ResolvedVolumes,
    q35: bool,
) -> Result<Vec<Disk>, FieldError> {
    let disk_specs = spec
        .domain
        .devices
        .as_ref()
        .map(|d| d.disks.as_slice())
        .unwrap_or_default();
    if disk_specs.len() > MAX_DISKS {
        return Err(FieldError::new(
            "spec.domain.devices.disks",
            format!(
                "{} disks; at most {MAX_DISKS} are allowed",
                disk_specs.len()
            ),
        ));
    }
    let mut names = TargetNames::default();
    let mut disk_names = BTreeSet::new();
    let mut used_volumes = BTreeMap::new();
    let mut out = Vec::with_capacity(disk_specs.len());
    for (i, disk) in disk_specs.iter().enumerate() {
        let field = format!("spec.domain.devices.disks[{i}]");
        check_dns_label(&disk.name, &format!("{field}.name"))?;
        if !disk_names.insert(disk.name.as_str()) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("disk name {:?} is used twice", disk.name),
            ));
        }
        let volume_field = format!("{field}.volumeName");
        let Some(volume) = spec.volumes.iter().find(|v| v.name == disk.volume_name) else {
            let known: Vec<&str> = spec.volumes.iter().map(|v| v.name.as_str()).collect();
            return Err(FieldError::new(
                volume_field,
                format!(
                    "no volume named {:?}; expected one of: {}",
                    disk.volume_name,
                    if known.is_empty() {
                        "(no volumes)".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if let Some(other) = used_volumes.insert(disk.volume_name.as_str(), disk.name.as_str()) {
            return Err(FieldError::new(
                volume_field,
                format!(
                    "volume {:?} is already used by disk {other:?}; each volume backs one disk",
                    disk.volume_name
                ),
            ));
        }
        let device = device(disk, &field, q35)?;
        let source = resolved.get(&volume.name).ok_or_else(|| {
            FieldError::new(&volume_field, "the volume's source was not prepared")
        })?;
        let claim_read_only = volume
            .persistent_volume_claim
            .as_ref()
            .and_then(|c| c.read_only)
            .unwrap_or(false);
        // cloud-init and pulled images are files the agent made; a lun passes a device through.
        let (disk_type, source, format) = match source {
            ResolvedVolume::File { .. } if device.device == "lun" => {
                return Err(FieldError::new(
                    format!("{field}.lun"),
                    format!(
                        "volume {:?} is a file; a lun needs a block device (a claim with volumeMode: Block)",
                        volume.name
                    ),
                ));
            }
            ResolvedVolume::File { path, format } => (
                "file",
                DiskSource {
                    file: Some(path.clone()),
                    dev: None,
                },
                *format,
            ),
            ResolvedVolume::Block { path } => (
                "block",
                DiskSource {
                    file: None,
                    dev: Some(path.clone()),
                },
                ImageFormat::Raw,
            ),
        };
        // An open tray holds no medium.
        let source = (device.tray != Some("open")).then_some(source);
        out.push(Disk {
            disk_type,
            device: device.device,
            driver: Driver {
                name: "qemu",
                format: format.as_str(),
            },
            source,
            target: Target {
                dev: names.next(device.bus),
                bus: device.bus,
                tray: device.tray,
            },
            boot: (i == 0).then_some(Boot { order: 1 }),
            readonly: (device.readonly || claim_read_only).then_some(Flag {}),
            alias: Alias {
                name: format!("ua-{}", disk.name),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::disk_letters;

    #[test]
    fn disk_letters_follow_libvirt() {
        assert_eq!(disk_letters(0), "a");
        assert_eq!(disk_letters(25), "z");
        assert_eq!(disk_letters(26), "aa");
        assert_eq!(disk_letters(27), "ab");
        assert_eq!(disk_letters(701), "zz");
        assert_eq!(disk_letters(702), "aaa");
    }
}
