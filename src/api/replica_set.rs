//! The VirtualMachineReplicaSet kind: keeps `spec.replicas` identical VMs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::offline_virtual_machine::VirtualMachineTemplateSpec;
use super::virtual_machine::Condition;

/// The letters the controller appends to a ReplicaSet's name to name each of its VMs
/// (`controller::workloads::generated_name`): a ReplicaSet's name is therefore a DNS label
/// this much shorter than one, so that its VMs' names are labels.
pub const GENERATED_NAME_SUFFIX_LEN: usize = 5;

// kube's printcolumn(...) entries repeat `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1alpha1",
    kind = "VirtualMachineReplicaSet",
    namespaced,
    shortname = "vmrs",
    shortname = "vmrss",
    category = "all",
    category = "kubevirt",
    status = "VirtualMachineReplicaSetStatus",
    doc = "Keeps a number of identical VirtualMachines running.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Current", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineReplicaSetSpec {
    /// Number of VMs to keep (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub replicas: Option<i32>,
    /// Must match the template's labels.
    pub selector: LabelSelector,
    pub template: VirtualMachineTemplateSpec,
    /// While true, no VM is created or deleted.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineReplicaSetStatus {
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub replicas: i32,
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub ready_replicas: i32,
    /// The selector as a string, for the scale subresource (`kubectl scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
