//! spec.domain.devices.disks and spec.volumes -> libvirt `<disk>` elements.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::domain_spec::Disk as DiskSpec;
use crate::api::quantity::parse_bytes;
use crate::api::volume::{
    CloudInitNoCloudSource, RegistryDiskSource, Volume, VolumeKind, VolumeSource,
};
use crate::api::{VirtualMachineSpec, quoted};

use super::limits::{
    MAX_DISKS, MAX_FLOPPY_DISKS, MAX_IDE_DISKS, MAX_IMAGE_REFERENCE_LEN, MAX_USER_DATA_BYTES,
    MAX_VOLUMES,
};
use super::model::{Alias, Boot, Disk, DiskSource, Driver, Flag, Target};
use super::names::{check_dns_label, check_dns_subdomain, check_length, check_one_of};
use super::values::{CDROM_BUSES, DISK_BUSES, IDE_BUS, LUN_BUSES, TRAY_STATES};
use super::{FieldError, ImageFormat, ResolvedVolume, ResolvedVolumes};

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
    let sources = volume.sources();
    let [source] = sources.as_slice() else {
        return Err(FieldError::new(
            field,
            format!(
                "a volume needs exactly one source, found {}; expected one of {}",
                sources.len(),
                VolumeKind::ALL_NAMES
            ),
        ));
    };
    match *source {
        VolumeSource::CloudInitNoCloud(cloud_init) => {
            check_cloud_init(cloud_init, &format!("{field}.cloudInitNoCloud"))?
        }
        VolumeSource::EmptyDisk(empty) => {
            let capacity_field = format!("{field}.emptyDisk.capacity");
            if parse_bytes(&empty.capacity.0, &capacity_field)? == 0 {
                return Err(FieldError::new(capacity_field, "must be larger than 0"));
            }
        }
        VolumeSource::Ephemeral(ephemeral) => {
            let Some(claim) = &ephemeral.persistent_volume_claim else {
                return Err(FieldError::new(
                    format!("{field}.ephemeral"),
                    "expected persistentVolumeClaim",
                ));
            };
            let claim_field = format!("{field}.ephemeral.persistentVolumeClaim.claimName");
            check_dns_subdomain(&claim.claim_name, &claim_field)?;
        }
        VolumeSource::PersistentVolumeClaim(claim) => {
            let claim_field = format!("{field}.persistentVolumeClaim.claimName");
            check_dns_subdomain(&claim.claim_name, &claim_field)?;
        }
        VolumeSource::RegistryDisk(registry) => check_registry_disk(registry, field)?,
    }
    Ok(())
}

fn check_cloud_init(cloud_init: &CloudInitNoCloudSource, field: &str) -> Result<(), FieldError> {
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
    if let Some(text) = &cloud_init.user_data {
        check_user_data_size(text.len(), "", &format!("{field}.userData"))?;
    }
    if let Some(decoded) = cloud_init.decoded_user_data_base64() {
        let base64_field = format!("{field}.userDataBase64");
        let decoded =
            decoded.map_err(|e| FieldError::new(&base64_field, format!("not base64: {e}")))?;
        check_user_data_size(decoded.len(), "decodes to ", &base64_field)?;
    }
    if let Some(secret) = &cloud_init.secret_ref {
        check_dns_subdomain(&secret.name, &format!("{field}.secretRef.name"))?;
    }
    Ok(())
}

fn check_registry_disk(registry: &RegistryDiskSource, field: &str) -> Result<(), FieldError> {
    let image = registry.image.trim();
    let image_field = format!("{field}.registryDisk.image");
    check_length(
        image,
        MAX_IMAGE_REFERENCE_LEN,
        "an image reference",
        &image_field,
    )?;
    if image.is_empty()
        || image
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(FieldError::new(
            image_field,
            format!(
                "{:?} is not an image reference; expected e.g. registry.example/disks/fedora:38",
                registry.image
            ),
        ));
    }
    if let Some(secret) = &registry.image_pull_secret {
        check_dns_subdomain(secret, &format!("{field}.registryDisk.imagePullSecret"))?;
    }
    Ok(())
}

/// Inline user-data of `size` bytes; `prefix` says how the size was found.
fn check_user_data_size(size: usize, prefix: &str, field: &str) -> Result<(), FieldError> {
    if size > MAX_USER_DATA_BYTES {
        return Err(FieldError::new(
            field,
            format!(
                "{prefix}{size} bytes; at most {MAX_USER_DATA_BYTES} ({} KiB) are allowed inline; put larger user-data in a Secret and name it in secretRef",
                MAX_USER_DATA_BYTES / 1024
            ),
        ));
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
        if chosen == IDE_BUS && q35 {
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

/// The buses with a fixed number of units refuse one disk too many here, by name, rather than
/// in libvirt when the domain is defined.
fn check_bus_capacity(bus: &str, count: usize, field: &str) -> Result<(), FieldError> {
    let (max, what) = match bus {
        "ide" => (MAX_IDE_DISKS, "one IDE controller: 2 channels of 2 units"),
        "fdc" => (MAX_FLOPPY_DISKS, "one floppy controller: fda and fdb"),
        _ => return Ok(()),
    };
    if count > max {
        return Err(FieldError::new(
            field,
            format!("{count} disks on the {bus} bus; at most {max} are allowed ({what})"),
        ));
    }
    Ok(())
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

/// libvirt's disk type (file or block), `<source>` and image format for `volume`.
pub(super) fn disk_source(volume: &ResolvedVolume) -> (&'static str, DiskSource, ImageFormat) {
    let (disk_type, source) = match volume {
        ResolvedVolume::File { path, .. } => (
            "file",
            DiskSource {
                file: Some(path.clone()),
                dev: None,
            },
        ),
        ResolvedVolume::Block { path } => (
            "block",
            DiskSource {
                file: None,
                dev: Some(path.clone()),
            },
        ),
    };
    (disk_type, source, volume.format())
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
    let mut per_bus: BTreeMap<&str, usize> = BTreeMap::new();
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
                    "no volume named {}; expected one of: {}",
                    quoted(&disk.volume_name),
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
        let on_bus = per_bus.entry(device.bus).or_insert(0);
        *on_bus += 1;
        check_bus_capacity(device.bus, *on_bus, &field)?;
        let source = resolved.get(&volume.name).ok_or_else(|| {
            FieldError::new(&volume_field, "the volume's source was not prepared")
        })?;
        let claim_read_only = matches!(
            volume.source(),
            Some(VolumeSource::PersistentVolumeClaim(claim)) if claim.read_only == Some(true)
        );
        // cloud-init and pulled images are files the agent made; a lun passes a device through.
        if device.device == "lun" && matches!(source, ResolvedVolume::File { .. }) {
            return Err(FieldError::new(
                format!("{field}.lun"),
                format!(
                    "volume {:?} is a file; a lun needs a block device (a claim with volumeMode: Block)",
                    volume.name
                ),
            ));
        }
        let (disk_type, source, format) = disk_source(source);
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
    use base64::Engine as _;

    use super::super::fixtures::{DOMAIN, disks, render_vm, vm};
    use super::super::limits::{
        MAX_DISKS, MAX_FLOPPY_DISKS, MAX_IDE_DISKS, MAX_IMAGE_REFERENCE_LEN, MAX_USER_DATA_BYTES,
        MAX_VOLUMES,
    };
    use super::disk_letters;

    fn error(domain: &str, volumes: &str) -> String {
        render_vm(&vm(domain, volumes)).unwrap_err().to_string()
    }

    #[test]
    fn disks_up_to_the_limit() {
        let (domain, volumes) = disks(MAX_DISKS, "virtio", "q35");
        let rendered = render_vm(&vm(&domain, &volumes)).unwrap();
        assert_eq!(rendered.devices.disks.len(), MAX_DISKS);
        // One more disk than allowed (the 65th names a volume that is not there: the count
        // is checked first).
        let (domain, _) = disks(MAX_DISKS + 1, "virtio", "q35");
        let (_, volumes) = disks(MAX_VOLUMES, "virtio", "q35");
        assert_eq!(
            error(&domain, &volumes),
            "spec.domain.devices.disks: 65 disks; at most 64 are allowed"
        );
    }

    #[test]
    fn volumes_up_to_the_limit() {
        let volumes = |count: usize| {
            let list: Vec<String> = (0..count)
                .map(|i| format!("{{name: v{i}, emptyDisk: {{capacity: 1Gi}}}}"))
                .collect();
            format!("[{}]", list.join(", "))
        };
        assert!(render_vm(&vm(DOMAIN, &volumes(MAX_VOLUMES))).is_ok());
        assert_eq!(
            error(DOMAIN, &volumes(MAX_VOLUMES + 1)),
            "spec.volumes: 65 volumes; at most 64 are allowed"
        );
    }

    #[test]
    fn ide_and_floppy_hold_what_their_controller_holds() {
        let (domain, volumes) = disks(MAX_IDE_DISKS, "ide", "pc");
        assert!(render_vm(&vm(&domain, &volumes)).is_ok());
        let (domain, volumes) = disks(MAX_IDE_DISKS + 1, "ide", "pc");
        assert_eq!(
            error(&domain, &volumes),
            "spec.domain.devices.disks[4]: 5 disks on the ide bus; at most 4 are allowed (one IDE controller: 2 channels of 2 units)"
        );
        let (domain, volumes) = disks(MAX_FLOPPY_DISKS, "floppy", "pc");
        assert!(render_vm(&vm(&domain, &volumes)).is_ok());
        let (domain, volumes) = disks(MAX_FLOPPY_DISKS + 1, "floppy", "pc");
        assert_eq!(
            error(&domain, &volumes),
            "spec.domain.devices.disks[2]: 3 disks on the fdc bus; at most 2 are allowed (one floppy controller: fda and fdb)"
        );
        // The other buses have no such limit below MAX_DISKS.
        for bus in ["sata", "scsi"] {
            let (domain, volumes) = disks(MAX_DISKS, bus, "q35");
            assert!(render_vm(&vm(&domain, &volumes)).is_ok(), "{bus}");
        }
    }

    fn cloud_init(key: &str, value: &str) -> String {
        format!("[{{name: ci, cloudInitNoCloud: {{{key}: \"{value}\"}}}}]")
    }

    #[test]
    fn inline_user_data_up_to_the_limit() {
        let at_limit = "x".repeat(MAX_USER_DATA_BYTES);
        assert!(render_vm(&vm(DOMAIN, &cloud_init("userData", &at_limit))).is_ok());
        let over = "x".repeat(MAX_USER_DATA_BYTES + 1);
        assert_eq!(
            error(DOMAIN, &cloud_init("userData", &over)),
            "spec.volumes[0].cloudInitNoCloud.userData: 65537 bytes; at most 65536 (64 KiB) are allowed inline; put larger user-data in a Secret and name it in secretRef"
        );
    }

    #[test]
    fn base64_user_data_counts_decoded_bytes() {
        let encode = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        // The encoded text is a third longer than the limit; what counts is what is decoded.
        let at_limit = encode(MAX_USER_DATA_BYTES);
        assert!(at_limit.len() > MAX_USER_DATA_BYTES);
        assert!(render_vm(&vm(DOMAIN, &cloud_init("userDataBase64", &at_limit))).is_ok());
        assert_eq!(
            error(
                DOMAIN,
                &cloud_init("userDataBase64", &encode(MAX_USER_DATA_BYTES + 1))
            ),
            "spec.volumes[0].cloudInitNoCloud.userDataBase64: decodes to 65537 bytes; at most 65536 (64 KiB) are allowed inline; put larger user-data in a Secret and name it in secretRef"
        );
        let err = error(DOMAIN, &cloud_init("userDataBase64", "not base64!"));
        assert!(
            err.starts_with("spec.volumes[0].cloudInitNoCloud.userDataBase64: not base64: "),
            "{err}"
        );
        // Surrounding whitespace is ignored, as the agent ignores it.
        assert!(render_vm(&vm(DOMAIN, &cloud_init("userDataBase64", " eA==\\n"))).is_ok());
    }

    #[test]
    fn image_references_up_to_the_limit() {
        let image = |length: usize| {
            let prefix = "registry.example/";
            format!("{prefix}{}", "a".repeat(length - prefix.len()))
        };
        let volumes = |image: &str| format!("[{{name: r, registryDisk: {{image: \"{image}\"}}}}]");
        assert!(render_vm(&vm(DOMAIN, &volumes(&image(MAX_IMAGE_REFERENCE_LEN)))).is_ok());
        assert_eq!(
            error(DOMAIN, &volumes(&image(MAX_IMAGE_REFERENCE_LEN + 1))),
            "spec.volumes[0].registryDisk.image: 513 characters; an image reference has at most 512"
        );
    }

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
