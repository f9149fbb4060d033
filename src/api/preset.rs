//! The VirtualMachinePreset kind: a partial DomainSpec merged into matching new VMs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::domain_spec::DomainSpec;

/// Annotation prefix recording that a preset was applied to a VM.
pub const PRESET_ANNOTATION_PREFIX: &str = "virtualmachinepreset.kubevirt.io/";

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1alpha1",
    kind = "VirtualMachinePreset",
    namespaced,
    shortname = "vmpreset",
    shortname = "vmpresets",
    category = "all",
    category = "kubevirt",
    doc = "Settings merged into the spec.domain of every new VM its selector matches.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachinePresetSpec {
    /// VMs whose labels match; without a selector the preset applies to every VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainSpec>,
}
