//! Where nodevirt's files live on the node: every path of the state folder, and the one file
//! it reads from a claim's volume, is built here. Pure.
//!
//! - `<state-dir>/vms/<uid>/` holds everything generated for one VM: `volume-<index>.<ext>`
//!   per volume and `console.log`.
//! - `<state-dir>/images/sha256-<hex>/disk.img` is a pulled registry image, one folder per
//!   manifest digest, shared by every VM of that image.
//! - `<volume>/disk.img` is a persistentVolumeClaim's image on its hostPath or local volume.
//!
//! Paths are built from UIDs (checked to be UUIDs), volume indexes and digests (checked to be
//! sha256) only, never from names a user chose, so no manifest can point the agent outside
//! its state dir. (`nodevirt render`'s stand-in for an unknown claim is the one exception: it
//! only names a path in its output.)

use std::path::{Path, PathBuf};

use crate::api::VirtualMachineSpec;
use crate::api::volume::{VolumeKind, VolumeSource};
use crate::domain::{ImageFormat, ResolvedVolume, ResolvedVolumes};

/// The state folder of the agent and of `nodevirt render` when no `--state-dir` is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nodevirt";

/// The file name of a disk image that nodevirt reads but did not generate: a claim's, a
/// pulled image's.
const DISK_IMAGE: &str = "disk.img";

/// The folder that holds one folder per VM.
pub fn vms_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("vms")
}

/// The cache of pulled registry images.
pub fn images_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// The cache entry under `images_dir` of the image whose manifest has `digest`
/// (`sha256:<64 hex>` -> `sha256-<64 hex>`); `None` for any other digest, so a registry
/// cannot choose a path.
pub fn image_entry(images_dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| images_dir.join(format!("sha256-{hex}")))
}

/// The disk of an image cache entry, or of the folder staged to become one.
pub fn image_disk(entry: &Path) -> PathBuf {
    entry.join(DISK_IMAGE)
}

/// The image of a persistentVolumeClaim on its volume's folder (hostPath or local).
pub fn claim_image(volume_dir: &Path) -> PathBuf {
    volume_dir.join(DISK_IMAGE)
}

/// What `nodevirt render` names the image of a claim it was not told about.
pub fn offline_claim_image(state_dir: &Path, claim: &str) -> PathBuf {
    claim_image(&state_dir.join("claims").join(claim))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    dir: PathBuf,
}

impl VmLayout {
    /// `uid` must already be checked with `domain::names::check_uid`.
    pub fn new(state_dir: &Path, uid: &str) -> Self {
        Self {
            dir: vms_dir(state_dir).join(uid),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The file the agent generates for volume number `index` of the spec.
    pub fn volume_file(&self, index: usize, kind: VolumeKind) -> PathBuf {
        let extension = match kind {
            VolumeKind::CloudInitNoCloud => "iso",
            _ => "qcow2",
        };
        self.dir.join(format!("volume-{index}.{extension}"))
    }
}

/// Resolves every volume of `spec` to its source: files in the VM's folder for the kinds the
/// agent generates, and `claim_source(claimName)` for a persistentVolumeClaim. A claim that
/// `claim_source` cannot resolve is left out (the renderer then names it).
pub fn resolve_volumes(
    spec: &VirtualMachineSpec,
    layout: &VmLayout,
    claim_source: impl Fn(&str) -> Option<ResolvedVolume>,
) -> ResolvedVolumes {
    let mut resolved = ResolvedVolumes::new();
    for (index, volume) in spec.volumes.iter().enumerate() {
        let Some(source) = volume.source() else {
            continue;
        };
        let generated = |format| ResolvedVolume::File {
            path: layout
                .volume_file(index, source.kind())
                .display()
                .to_string(),
            format,
        };
        let backing = match source {
            VolumeSource::CloudInitNoCloud(_) => Some(generated(ImageFormat::Raw)),
            VolumeSource::EmptyDisk(_)
            | VolumeSource::Ephemeral(_)
            | VolumeSource::RegistryDisk(_) => Some(generated(ImageFormat::Qcow2)),
            VolumeSource::PersistentVolumeClaim(claim) => claim_source(&claim.claim_name),
        };
        if let Some(backing) = backing {
            resolved.insert(volume.name.clone(), backing);
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::volume::{EmptyDiskSource, PersistentVolumeClaimSource, Volume};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn image_entries_are_named_by_sha256_digest_only() {
        let images = images_dir(Path::new(DEFAULT_STATE_DIR));
        let hex = "ab".repeat(32);
        assert_eq!(
            image_entry(&images, &format!("sha256:{hex}")),
            Some(PathBuf::from(format!(
                "/var/lib/nodevirt/images/sha256-{hex}"
            )))
        );
        for digest in [
            "sha512:00",
            "sha256:../../etc",
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{hex}/x"),
        ] {
            assert_eq!(image_entry(&images, digest), None, "{digest}");
        }
    }

    #[test]
    fn generated_files_are_named_by_uid_and_index_only() {
        let layout = VmLayout::new(
            Path::new(DEFAULT_STATE_DIR),
            "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        );
        let spec = VirtualMachineSpec {
            volumes: vec![
                Volume {
                    name: "../../etc".into(),
                    empty_disk: Some(EmptyDiskSource {
                        capacity: Quantity("1Gi".into()),
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "root".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimSource {
                        claim_name: "../../etc".into(),
                        read_only: None,
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let resolved = resolve_volumes(&spec, &layout, |_| None);
        assert_eq!(
            resolved.get("../../etc"),
            Some(&ResolvedVolume::File {
                path: "/var/lib/nodevirt/vms/0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b/volume-0.qcow2"
                    .into(),
                format: ImageFormat::Qcow2,
            })
        );
        assert!(
            !resolved.contains_key("root"),
            "an unresolved claim is left to the renderer"
        );
    }
}
