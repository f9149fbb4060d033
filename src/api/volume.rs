//! `spec.volumes`: where a disk's bytes come from. Exactly one source per volume.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::patterns::{
    BASE64_PATTERN, BASE64_WHITESPACE_ALLOWANCE, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN,
    IMAGE_REFERENCE_PATTERN, base64_decoded_size, base64_len,
};
use super::schema::rule;
use crate::domain::limits::{
    DNS_LABEL_MAX_LEN, DNS_SUBDOMAIN_MAX_LEN, MAX_IMAGE_REFERENCE_LEN, MAX_QUANTITY_LEN,
    MAX_USER_DATA_BYTES,
};

/// The longest `userDataBase64` the schema lets through to its decoded-size rule.
const MAX_USER_DATA_BASE64_LEN: usize =
    base64_len(MAX_USER_DATA_BYTES) + BASE64_WHITESPACE_ALLOWANCE;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [rule(
    "(has(self.cloudInitNoCloud) ? 1 : 0) + (has(self.emptyDisk) ? 1 : 0) + (has(self.ephemeral) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.registryDisk) ? 1 : 0) == 1",
    format!("a volume needs exactly one source, one of {}", VolumeKind::ALL_NAMES),
)]))]
pub struct Volume {
    #[schemars(length(max = DNS_LABEL_MAX_LEN), pattern(DNS_LABEL_PATTERN))]
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
#[schemars(extend("x-kubernetes-validations" = [rule(
    "(has(self.secretRef) ? 1 : 0) + (has(self.userData) ? 1 : 0) + (has(self.userDataBase64) ? 1 : 0) == 1",
    "expected exactly one of secretRef, userData or userDataBase64",
)]))]
pub struct CloudInitNoCloudSource {
    /// A Secret in the VM's namespace whose key `userdata` (or `userData`) holds the user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// At most 64 KiB (in UTF-8); larger user-data belongs in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = MAX_USER_DATA_BYTES),
        extend("x-kubernetes-validations" = [rule(
            format!("size(bytes(self)) <= {MAX_USER_DATA_BYTES}"),
            format!(
                "at most {MAX_USER_DATA_BYTES} bytes ({} KiB) are allowed inline; put larger user-data in a Secret and name it in secretRef",
                MAX_USER_DATA_BYTES / 1024
            ),
        )]),
    )]
    pub user_data: Option<String>,
    /// Standard base64 (padded) of at most 64 KiB once decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = MAX_USER_DATA_BASE64_LEN),
        pattern(BASE64_PATTERN),
        extend("x-kubernetes-validations" = [rule(
            format!("{} <= {MAX_USER_DATA_BYTES}", base64_decoded_size("self")),
            format!(
                "decodes to more than {MAX_USER_DATA_BYTES} bytes ({} KiB); put larger user-data in a Secret and name it in secretRef",
                MAX_USER_DATA_BYTES / 1024
            ),
        )]),
    )]
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
    #[schemars(length(max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// Size of the disk, e.g. "2Gi".
    #[schemars(extend(
        "maxLength" = MAX_QUANTITY_LEN,
        "x-kubernetes-validations" = [rule(
            "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('0')) > 0",
            "capacity must be a quantity larger than 0, e.g. 2Gi",
        )],
    ))]
    pub capacity: Quantity,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralVolumeSource {
    /// Required: the claim whose image the overlay is over.
    // Not `serde(default)`, which would keep it out of the schema's `required`; serde reads a
    // missing Option as None regardless.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(required)]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimSource {
    #[schemars(length(max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryDiskSource {
    /// An image reference, e.g. registry.example/disks/debian:12.
    #[schemars(length(max = MAX_IMAGE_REFERENCE_LEN), pattern(IMAGE_REFERENCE_PATTERN))]
    pub image: String,
    /// A Secret of type kubernetes.io/dockerconfigjson in the VM's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DNS_SUBDOMAIN_MAX_LEN), pattern(DNS_SUBDOMAIN_PATTERN))]
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
