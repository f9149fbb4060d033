//! `spec.volumes`: where a disk's bytes come from. Exactly one source per volume.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    /// A NoCloud `cidata` disk built from user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloudSource>,
    /// A blank sparse qcow2 disk, removed with the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    /// A copy-on-write overlay over a claim's image; the claim's image is never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<EphemeralVolumeSource>,
    /// The image `disk.img` on a claim's volume; outlives the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
    /// A disk image pulled from an OCI registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_disk: Option<RegistryDiskSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitNoCloudSource {
    /// A Secret in the VM's namespace whose key `userdata` (or `userData`) holds the user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
}

impl CloudInitNoCloudSource {
    /// `userDataBase64` decoded as the agent decodes it for the ISO: the standard alphabet
    /// with padding, surrounding whitespace ignored. `None` when it is not set.
    pub fn decoded_user_data_base64(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        use base64::Engine as _;
        self.user_data_base64
            .as_ref()
            .map(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded.trim()))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// Size of the disk, e.g. "2Gi".
    pub capacity: Quantity,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimSource {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryDiskSource {
    /// An image reference, e.g. registry.example/disks/debian:12.
    pub image: String,
    /// A Secret of type kubernetes.io/dockerconfigjson in the VM's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
}

/// The kind of a volume's source, for messages and for choosing what to prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    CloudInitNoCloud,
    EmptyDisk,
    Ephemeral,
    PersistentVolumeClaim,
    RegistryDisk,
}

impl Volume {
    /// The sources this volume sets; a valid volume sets exactly one.
    pub fn kinds(&self) -> Vec<VolumeKind> {
        [
            self.cloud_init_no_cloud
                .as_ref()
                .map(|_| VolumeKind::CloudInitNoCloud),
            self.empty_disk.as_ref().map(|_| VolumeKind::EmptyDisk),
            self.ephemeral.as_ref().map(|_| VolumeKind::Ephemeral),
            self.persistent_volume_claim
                .as_ref()
                .map(|_| VolumeKind::PersistentVolumeClaim),
            self.registry_disk
                .as_ref()
                .map(|_| VolumeKind::RegistryDisk),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl VolumeKind {
    pub const ALL_NAMES: &'static str =
        "cloudInitNoCloud, emptyDisk, ephemeral, persistentVolumeClaim, registryDisk";
}
