//! The kubevirt.io/v1alpha1 API: the four kinds of the API text and their CRDs.
//! Pure data: no I/O, no async.

pub mod domain_spec;
pub mod holder;
pub mod offline_virtual_machine;
pub mod preset;
pub mod quantity;
pub mod replica_set;
pub mod schema;
pub mod selector;
pub mod virtual_machine;
pub mod volume;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use offline_virtual_machine::{OfflineVirtualMachine, VirtualMachineTemplateSpec};
pub use preset::VirtualMachinePreset;
pub use replica_set::VirtualMachineReplicaSet;
pub use virtual_machine::{Phase, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};

/// `value` quoted for an error message, cut after 64 characters: messages end up in a VM's
/// status (in etcd, beside the value itself) and in logs, and must stay short whatever the
/// manifest holds.
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    let length = value.chars().count();
    if length <= SHOWN {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head:?}... ({length} characters)")
    }
}

/// Label assigning a VM to a node; the agent of that node watches by it.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";

/// Label on a Node: `true` while its agent runs, `false` after a clean exit. The controller
/// places VMs only on schedulable nodes.
pub const SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";

/// Annotation on a Node: the RFC 3339 time of its agent's last heartbeat. The controller
/// takes a node whose heartbeat is too old for lost.
pub const HEARTBEAT_ANNOTATION: &str = "kubevirt.io/heartbeat";

/// The four CRDs, in the order they are applied. A VM's name is a DNS label (the libvirt
/// domain is named after it); an OfflineVirtualMachine's VM takes its name, a ReplicaSet's VMs
/// take its name and a suffix. A preset's name is any object name.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use crate::domain::limits::DNS_LABEL_MAX_LEN;
    use schema::bound_name;
    vec![
        bound_name(VirtualMachine::crd(), DNS_LABEL_MAX_LEN),
        bound_name(OfflineVirtualMachine::crd(), DNS_LABEL_MAX_LEN),
        bound_name(
            VirtualMachineReplicaSet::crd(),
            DNS_LABEL_MAX_LEN - replica_set::GENERATED_NAME_SUFFIX_LEN,
        ),
        VirtualMachinePreset::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `nodevirt crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
