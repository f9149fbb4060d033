//! Making the files a VM's volumes need, before its domain is defined.
//!
//! An overlay needs its backing's virtual size: a claim's image is a node path the agent cannot
//! open, so the node's libvirtd reads it through a probe domain (`hypervisor::backing`); a
//! registry disk's image is in the agent's own state folder and is read here.

use std::path::Path;
use std::sync::Arc;

use crate::api::VirtualMachineSpec;
use crate::api::quantity::{HumanBytes, parse_bytes};
use crate::api::volume::VolumeSource;
use crate::domain::probe::probe_name;
use crate::hypervisor::HypervisorError;
use crate::hypervisor::seam::{self, Hypervisor};
use crate::storage::files::{self, StorageError};
use crate::storage::layout::VmLayout;

use super::inputs::Inputs;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{field}: the claim's image")]
    Backing {
        field: String,
        #[source]
        source: HypervisorError,
    },
    #[error("{field}: {capacity} is more than the {free} free in the state folder {dir}")]
    NoSpace {
        field: String,
        capacity: HumanBytes,
        free: HumanBytes,
        dir: String,
    },
}

/// Free bytes of the filesystem holding `dir`; `None` when it cannot be told.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Refuses emptyDisks larger than the free space of the state folder, before anything is
/// written: a sparse disk that could never be filled would fail the guest later, mid-write.
fn check_capacity(spec: &VirtualMachineSpec, layout: &VmLayout) -> Result<(), DiskError> {
    let Some(dir) = layout.dir().parent() else {
        return Ok(());
    };
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    for (index, volume) in spec.volumes.iter().enumerate() {
        let Some(VolumeSource::EmptyDisk(empty)) = volume.source() else {
            continue;
        };
        let field = format!("spec.volumes[{index}].emptyDisk.capacity");
        let bytes = parse_bytes(&empty.capacity.0, &field)
            .map_err(|e| DiskError::Unsupported(e.to_string()))?;
        if bytes > free {
            return Err(DiskError::NoSpace {
                field,
                capacity: HumanBytes(bytes),
                free: HumanBytes(free),
                dir: dir.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Creates every generated disk of `spec` in the VM's folder. Idempotent: files that exist are
/// kept, and nothing is asked of libvirt for them (a crash in the middle is finished on the
/// next run). `uid` is the VM's: cloud-init's instance-id, and the name of its probe domains.
pub async fn prepare<H: Hypervisor + ?Sized>(
    spec: &VirtualMachineSpec,
    layout: &VmLayout,
    uid: &str,
    hostname: &str,
    inputs: &Inputs,
    hypervisor: &Arc<H>,
) -> Result<(), DiskError> {
    // The capacity check needs the VMs' folder; someone may have removed it since startup.
    files::ensure_traversable_dir(layout.dir().parent().unwrap_or(layout.dir())).await?;
    check_capacity(spec, layout)?;
    files::ensure_vm_dir(layout).await?;
    for (index, volume) in spec.volumes.iter().enumerate() {
        let Some(source) = volume.source() else {
            continue;
        };
        let path = layout.volume_file(index, source.kind());
        if files::exists(&path).await {
            continue;
        }
        match source {
            VolumeSource::CloudInitNoCloud(_) => {
                let data = inputs
                    .user_data
                    .get(&index)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                files::ensure_cloud_init_iso(&path, uid, hostname, data).await?;
            }
            VolumeSource::EmptyDisk(empty) => {
                let field = format!("spec.volumes[{index}].emptyDisk.capacity");
                // The renderer has already checked this quantity.
                let bytes = parse_bytes(&empty.capacity.0, &field)
                    .map_err(|e| DiskError::Unsupported(e.to_string()))?;
                files::ensure_empty_disk(&path, bytes).await?;
            }
            VolumeSource::Ephemeral(_) => {
                let claim = source
                    .claim()
                    .and_then(|c| inputs.claims.get(&c.claim_name));
                if let Some(backing) = claim {
                    let (probe, image) = (probe_name(uid, index), backing.clone());
                    let size = seam::call(hypervisor, move |h| h.backing_capacity(&probe, &image))
                        .await
                        .map_err(|source| DiskError::Backing {
                            field: format!("spec.volumes[{index}].ephemeral"),
                            source,
                        })?;
                    files::ensure_overlay(&path, backing, size).await?;
                }
            }
            VolumeSource::RegistryDisk(_) => {
                if let Some(image) = inputs.images.get(&index) {
                    let size = files::local_image_size(image).await?;
                    files::ensure_overlay(&path, image, size).await?;
                }
            }
            VolumeSource::PersistentVolumeClaim(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::volume::VolumeKind;
    use crate::domain::{ImageFormat, ResolvedVolume};
    use crate::hypervisor::backing::TEST_DRIVER_CAPACITY;
    use crate::storage::files::image_info;

    const UID: &str = "3e1f5a7c-9b2d-4c6e-8f0a-1b3c5d7e9f2a";

    #[tokio::test]
    async fn libvirt_sizes_a_claims_overlay_and_the_agent_a_registry_disks() {
        let spec: VirtualMachineSpec = serde_yaml::from_str(
            "domain: {resources: {requests: {memory: 64Mi}}}\n\
             volumes:\n\
             - {name: claim, ephemeral: {persistentVolumeClaim: {claimName: pv-claim}}}\n\
             - {name: image, registryDisk: {image: registry.example/disk:1}}\n",
        )
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let layout = VmLayout::new(state.path(), UID);
        let cached = state.path().join("image.qcow2");
        files::ensure_empty_disk(&cached, 2 << 30).await.unwrap();
        // A node path the agent cannot see.
        let node_path = "/srv/nodevirt-absent/pv-claim/disk.img";
        let mut inputs = Inputs::default();
        inputs.claims.insert(
            "pv-claim".into(),
            ResolvedVolume::File {
                path: node_path.into(),
                format: ImageFormat::Raw,
            },
        );
        inputs.images.insert(
            1,
            ResolvedVolume::File {
                path: cached.display().to_string(),
                format: ImageFormat::Qcow2,
            },
        );
        let libvirt = Arc::new(crate::hypervisor::Libvirt::open("test:///default").unwrap());
        prepare(&spec, &layout, UID, "vm", &inputs, &libvirt)
            .await
            .unwrap();
        let claim = layout.volume_file(0, VolumeKind::Ephemeral);
        // The test driver's made-up size: libvirt was asked, the file was not read.
        assert_eq!(
            image_info(&claim),
            (
                TEST_DRIVER_CAPACITY,
                Some(node_path.into()),
                Some("raw".into())
            )
        );
        assert_eq!(libvirt.status(&probe_name(UID, 0)).unwrap(), None);
        let image = layout.volume_file(1, VolumeKind::RegistryDisk);
        assert_eq!(image_info(&image).0, 2 << 30);

        // Files that exist are kept without asking libvirt anything...
        libvirt.disconnect();
        prepare(&spec, &layout, UID, "vm", &inputs, &libvirt)
            .await
            .unwrap();
        // ...and a lost connection while sizing is told apart, for a retry.
        std::fs::remove_file(&claim).unwrap();
        let err = prepare(&spec, &layout, UID, "vm", &inputs, &libvirt)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DiskError::Backing { field, source }
                if field == "spec.volumes[0].ephemeral" && source.is_connection_lost()),
            "{err:?}"
        );
    }
}
