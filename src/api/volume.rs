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

/// A volume's source, borrowed from it: the one place that tells the kinds apart. The
/// renderer, the layout, the agent's inputs and its disks all match on this.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VolumeSource<'a> {
    CloudInitNoCloud(&'a CloudInitNoCloudSource),
    EmptyDisk(&'a EmptyDiskSource),
    Ephemeral(&'a EphemeralVolumeSource),
    PersistentVolumeClaim(&'a PersistentVolumeClaimSource),
    RegistryDisk(&'a RegistryDiskSource),
}

/// The kind of a volume's source, without its settings: what names the file the agent
/// generates for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    CloudInitNoCloud,
    EmptyDisk,
    Ephemeral,
    PersistentVolumeClaim,
    RegistryDisk,
}

impl Volume {
    /// Every source this volume sets; a valid volume sets exactly one.
    pub fn sources(&self) -> Vec<VolumeSource<'_>> {
        [
            self.cloud_init_no_cloud
                .as_ref()
                .map(VolumeSource::CloudInitNoCloud),
            self.empty_disk.as_ref().map(VolumeSource::EmptyDisk),
            self.ephemeral.as_ref().map(VolumeSource::Ephemeral),
            self.persistent_volume_claim
                .as_ref()
                .map(VolumeSource::PersistentVolumeClaim),
            self.registry_disk.as_ref().map(VolumeSource::RegistryDisk),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The one source of a valid volume; `None` when it sets none or several, which the
    /// renderer refuses (naming the volume) before anything is read or written for it.
    pub fn source(&self) -> Option<VolumeSource<'_>> {
        match self.sources().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

impl<'a> VolumeSource<'a> {
    pub fn kind(self) -> VolumeKind {
        match self {
            VolumeSource::CloudInitNoCloud(_) => VolumeKind::CloudInitNoCloud,
            VolumeSource::EmptyDisk(_) => VolumeKind::EmptyDisk,
            VolumeSource::Ephemeral(_) => VolumeKind::Ephemeral,
            VolumeSource::PersistentVolumeClaim(_) => VolumeKind::PersistentVolumeClaim,
            VolumeSource::RegistryDisk(_) => VolumeKind::RegistryDisk,
        }
    }

    /// The claim whose image backs the volume: a persistentVolumeClaim's own, or the one an
    /// ephemeral overlay is over.
    pub fn claim(self) -> Option<&'a PersistentVolumeClaimSource> {
        match self {
            VolumeSource::PersistentVolumeClaim(claim) => Some(claim),
            VolumeSource::Ephemeral(ephemeral) => ephemeral.persistent_volume_claim.as_ref(),
            _ => None,
        }
    }
}

impl VolumeKind {
    pub const ALL_NAMES: &'static str =
        "cloudInitNoCloud, emptyDisk, ephemeral, persistentVolumeClaim, registryDisk";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str) -> PersistentVolumeClaimSource {
        PersistentVolumeClaimSource {
            claim_name: name.into(),
            read_only: None,
        }
    }

    #[test]
    fn a_volume_has_a_source_only_when_it_sets_exactly_one() {
        let none = Volume::default();
        assert_eq!(none.source(), None);
        let both = Volume {
            empty_disk: Some(EmptyDiskSource::default()),
            persistent_volume_claim: Some(claim("c")),
            ..Default::default()
        };
        assert_eq!(both.sources().len(), 2);
        assert_eq!(both.source(), None, "two sources are no source");
        let one = Volume {
            registry_disk: Some(RegistryDiskSource::default()),
            ..Default::default()
        };
        assert_eq!(
            one.source().map(VolumeSource::kind),
            Some(VolumeKind::RegistryDisk)
        );
    }

    #[test]
    fn the_claim_of_a_claim_and_of_an_overlay_over_one() {
        let own = Volume {
            persistent_volume_claim: Some(claim("own")),
            ..Default::default()
        };
        let overlay = Volume {
            ephemeral: Some(EphemeralVolumeSource {
                persistent_volume_claim: Some(claim("under")),
            }),
            ..Default::default()
        };
        let empty = Volume {
            empty_disk: Some(EmptyDiskSource::default()),
            ..Default::default()
        };
        let claim_of = |v: &Volume| v.source()?.claim().map(|c| c.claim_name.clone());
        assert_eq!(claim_of(&own).as_deref(), Some("own"));
        assert_eq!(claim_of(&overlay).as_deref(), Some("under"));
        assert_eq!(claim_of(&empty), None);
    }
}
