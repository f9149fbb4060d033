//! Making the files a VM's volumes need, before its domain is defined.

use crate::api::VirtualMachineSpec;
use crate::api::quantity::parse_bytes;
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
                return Err(DiskError::Unsupported(format!(
                    "spec.volumes[{index}].registryDisk: this agent cannot pull registry disks yet"
                )));
            }
            VolumeKind::PersistentVolumeClaim => {}
        }
    }
    Ok(())
}
