//! Where a VM's files live on the node. Pure.
//!
//! `<state-dir>/vms/<uid>/` holds everything generated for one VM: `volume-<index>.<ext>` per
//! volume and `console.log`. Paths are built from the UID (checked to be a UUID) and volume
//! indexes only, never from names a user chose, so no manifest can point the agent outside
//! its state dir.

use std::path::{Path, PathBuf};

use crate::api::VirtualMachineSpec;
use crate::api::volume::VolumeKind;
use crate::domain::{ImageFormat, ResolvedVolume, ResolvedVolumes};

/// The folder that holds one folder per VM.
pub fn vms_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("vms")
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
        let Some(&kind) = volume.kinds().first() else {
            continue;
        };
        let generated = |format| ResolvedVolume::File {
            path: layout.volume_file(index, kind).display().to_string(),
            format,
        };
        let source = match kind {
            VolumeKind::CloudInitNoCloud => Some(generated(ImageFormat::Raw)),
            VolumeKind::EmptyDisk | VolumeKind::Ephemeral | VolumeKind::RegistryDisk => {
                Some(generated(ImageFormat::Qcow2))
            }
            VolumeKind::PersistentVolumeClaim => volume
                .persistent_volume_claim
                .as_ref()
                .and_then(|claim| claim_source(&claim.claim_name)),
        };
        if let Some(source) = source {
            resolved.insert(volume.name.clone(), source);
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
    fn generated_files_are_named_by_uid_and_index_only() {
        let layout = VmLayout::new(
            Path::new("/var/lib/nodevirt"),
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
