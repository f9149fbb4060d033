//! The OfflineVirtualMachine kind: an immortal VM, created from its template while
//! `spec.running` is true.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::virtual_machine::{Condition, VirtualMachine, VirtualMachineSpec};

// kube's printcolumn(...) entries repeat `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1alpha1",
    kind = "OfflineVirtualMachine",
    namespaced,
    shortname = "ovm",
    shortname = "ovms",
    category = "all",
    category = "kubevirt",
    status = "OfflineVirtualMachineStatus",
    doc = "A virtual machine that outlives its runs: started and stopped with spec.running.",
    printcolumn(name = "Running", type_ = "boolean", json_path = ".spec.running"),
    printcolumn(name = "Created", type_ = "boolean", json_path = ".status.created"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OfflineVirtualMachineSpec {
    /// Whether the VirtualMachine of this template should exist (and so run).
    #[serde(default)]
    pub running: bool,
    pub template: VirtualMachineTemplateSpec,
}

/// The VirtualMachine to create: its labels and annotations, and its spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    pub spec: VirtualMachineSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfflineVirtualMachineStatus {
    /// The VirtualMachine exists.
    #[serde(default)]
    pub created: bool,
    /// The VirtualMachine is Running.
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl VirtualMachineTemplateSpec {
    /// The VirtualMachine this template describes, named `name` in `namespace`, with the
    /// template's labels and annotations.
    pub fn instantiate(&self, name: &str, namespace: Option<String>) -> VirtualMachine {
        let mut vm = VirtualMachine::new(name, self.spec.clone());
        let metadata = self.metadata.clone().unwrap_or_default();
        vm.metadata.namespace = namespace;
        vm.metadata.labels = metadata.labels;
        vm.metadata.annotations = metadata.annotations;
        vm
    }
}
