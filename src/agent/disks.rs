//! Making the files a VM's volumes need, before its domain is defined.

use crate::api::VirtualMachineSpec;
use crate::api::quantity::{HumanBytes, parse_bytes};
use crate::api::volume::VolumeKind;
use crate::storage::files::{self, StorageError};
use crate::storage::layout::VmLayout;

use super::inputs::Inputs;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{field}: {capacity} is more than the {free} free in the state folder {dir}")]
    NoSpace {
        field: String,
        capacity: HumanBytes,
        free: HumanBytes,
        dir: String,
    },
}

/// Free bytes of the filesystem holding `dir`; `None` when it cannot be told.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
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
        let Some(empty) = &volume.empty_disk else {
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
/// kept (a crash in the middle is finished on the next run).
pub async fn prepare(
    spec: &VirtualMachineSpec,
    layout: &VmLayout,
    instance_id: &str,
    hostname: &str,
    inputs: &Inputs,
) -> Result<(), DiskError> {
    // The capacity check needs the VMs' folder; someone may have removed it since startup.
    files::ensure_traversable_dir(layout.dir().parent().unwrap_or(layout.dir())).await?;
    check_capacity(spec, layout)?;
    files::ensure_vm_dir(layout).await?;
    for (index, volume) in spec.volumes.iter().enumerate() {
        let Some(&kind) = volume.kinds().first() else {
            continue;
        };
        let path = layout.volume_file(index, kind);
        match kind {
            VolumeKind::CloudInitNoCloud => {
                let data = inputs
                    .user_data
                    .get(&index)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                files::ensure_cloud_init_iso(&path, instance_id, hostname, data).await?;
            }
            VolumeKind::EmptyDisk => {
                let field = format!("spec.volumes[{index}].emptyDisk.capacity");
                let capacity = volume
                    .empty_disk
                    .as_ref()
                    .map(|e| e.capacity.0.as_str())
                    .unwrap_or_default();
                // The renderer has already checked this quantity.
                let bytes = parse_bytes(capacity, &field)
                    .map_err(|e| DiskError::Unsupported(e.to_string()))?;
                files::ensure_empty_disk(&path, bytes).await?;
            }
            VolumeKind::Ephemeral => {
                let claim = volume
                    .ephemeral
                    .as_ref()
                    .and_then(|e| e.persistent_volume_claim.as_ref())
                    .and_then(|c| inputs.claims.get(&c.claim_name));
                if let Some(backing) = claim {
                    files::ensure_overlay(&path, backing).await?;
                }
            }
            VolumeKind::RegistryDisk => {
                if let Some(image) = inputs.images.get(&index) {
                    files::ensure_overlay(&path, image).await?;
                }
            }
            VolumeKind::PersistentVolumeClaim => {}
        }
    }
    Ok(())
}
