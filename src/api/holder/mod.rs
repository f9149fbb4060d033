//! The holder pod: one pod per VM that holds the VM's place and resources on a node, so that
//! kube-scheduler places VMs and kubelet, cordon, drain, taints and quotas apply to them as to
//! pods. QEMU stays under the node's libvirtd; the pod runs only a process that waits.
//!
//! The controller creates the pod (named after the VM's UID, so a retry or a restarted
//! controller finds the same name) and hands the VM to the node the scheduler bound it to; the
//! agent runs the VM only while the pod holds its place. A pod holds a VM when its controller
//! owner reference names the VM's UID: a VM deleted and created again under the same name has
//! a new UID and is never held by its predecessor's pod.

pub mod reservation;
pub mod spec;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::VirtualMachine;

/// Label on every holder pod, with value [`APP`], as KubeVirt labels its launcher pods.
pub const APP_LABEL: &str = "kubevirt.io";
pub const APP: &str = "virt-launcher";
/// Label on a holder pod: the name of the VM it holds (what a PodDisruptionBudget selects).
pub const VM_LABEL: &str = "kubevirt.io/vm";
/// The label selector of every holder pod.
pub const SELECTOR: &str = "kubevirt.io=virt-launcher";

const NAME_PREFIX: &str = "virt-launcher-";
/// Letters as Kubernetes' own generated names use them: no vowels, no look-alikes.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const SUFFIX_LEN: usize = 5;

/// `virt-launcher-<vm>-<5 characters of the VM's UID>`: the same for a VM every time.
pub fn pod_name(vm_name: &str, vm_uid: &str) -> String {
    let mut bits = crate::hash::fnv1a(vm_uid.as_bytes());
    let base = SUFFIX_ALPHABET.len() as u64;
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| {
            let letter = SUFFIX_ALPHABET[(bits % base) as usize] as char;
            bits /= base;
            letter
        })
        .collect();
    format!("{NAME_PREFIX}{vm_name}-{suffix}")
}

/// Whether `pod` holds `vm`: its controller owner reference is the VM (by UID).
pub fn holds(pod: &Pod, vm: &VirtualMachine) -> bool {
    let Some(uid) = vm.metadata.uid.as_deref() else {
        return false;
    };
    pod.owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == uid)
}

/// The pod among `pods` (a cache's) that holds `vm`: in its namespace, labelled with its
/// name, and owned by it.
pub fn holder_of(
    vm: &VirtualMachine,
    pods: impl IntoIterator<Item = std::sync::Arc<Pod>>,
) -> Option<std::sync::Arc<Pod>> {
    let (namespace, name) = (vm.namespace(), vm.name_any());
    pods.into_iter().find(|pod| {
        pod.namespace() == namespace && pod.labels().get(VM_LABEL) == Some(&name) && holds(pod, vm)
    })
}

/// The node a holder pod is bound to, once kube-scheduler bound it.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// What a holder pod says of its VM's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold<'a> {
    /// Not bound yet, and the scheduler has not said it cannot bind it.
    Waiting,
    /// The scheduler's own words on why no node fits ("0/2 nodes are available: ...").
    Unschedulable(&'a str),
    /// Bound to this node, holding the VM's place there.
    Bound(&'a str),
    /// Being deleted (evicted, drained, preempted, deleted by a user) or ended: it holds
    /// nothing any more.
    Released,
}

pub fn hold(pod: &Pod) -> Hold<'_> {
    let ended = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if pod.metadata.deletion_timestamp.is_some() || ended {
        return Hold::Released;
    }
    if let Some(node) = bound_node(pod) {
        return Hold::Bound(node);
    }
    let unschedulable = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .filter(|c| c.reason.as_deref() == Some("Unschedulable"));
    match unschedulable {
        Some(condition) => Hold::Unschedulable(condition.message.as_deref().unwrap_or_default()),
        None => Hold::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn vm(uid: &str) -> VirtualMachine {
        let mut vm = VirtualMachine::new("testvm", Default::default());
        vm.metadata.uid = Some(uid.into());
        vm
    }

    fn pod_owned_by(uid: &str, controller: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.labels = Some([(VM_LABEL.to_string(), "testvm".to_string())].into());
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "kubevirt.io/v1alpha1".into(),
            kind: "VirtualMachine".into(),
            name: "testvm".into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: Some(true),
        }]);
        pod
    }

    #[test]
    fn the_name_is_stable_per_uid_and_differs_between_uids() {
        let a = pod_name("testvm", "5e0b5b2a-0001");
        assert_eq!(a, pod_name("testvm", "5e0b5b2a-0001"));
        assert!(a.starts_with("virt-launcher-testvm-"), "{a}");
        let suffix = &a["virt-launcher-testvm-".len()..];
        assert_eq!(suffix.len(), SUFFIX_LEN);
        assert!(suffix.bytes().all(|b| SUFFIX_ALPHABET.contains(&b)), "{a}");
        let names: std::collections::BTreeSet<_> = (0..200)
            .map(|i| pod_name("testvm", &format!("uid-{i}")))
            .collect();
        assert!(names.len() > 195, "suffixes repeat too often");
    }

    #[test]
    fn a_pod_holds_its_node_once_bound_and_nothing_once_going() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient memory."}]}
        }))
        .unwrap();
        assert_eq!(
            hold(&pod),
            Hold::Unschedulable("0/2 nodes are available: 2 Insufficient memory.")
        );
        pod.status = None;
        assert_eq!(hold(&pod), Hold::Waiting);
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("node1".into()),
            ..Default::default()
        });
        assert_eq!(hold(&pod), Hold::Bound("node1"));
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert_eq!(hold(&pod), Hold::Released, "evicted by kubelet");
        pod.status = None;
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(hold(&pod), Hold::Released, "drained");
    }

    #[test]
    fn a_pod_holds_only_the_vm_whose_uid_its_controller_reference_names() {
        let pods = [pod_owned_by("old", true), pod_owned_by("new", false)];
        assert!(holds(&pods[0], &vm("old")));
        assert!(!holds(&pods[1], &vm("new")), "not the controller reference");
        let cached = || pods.iter().cloned().map(std::sync::Arc::new);
        assert!(holder_of(&vm("new"), cached()).is_none());
        assert!(holder_of(&vm("old"), cached()).is_some());
        assert!(
            !holds(&pods[0], &VirtualMachine::new("testvm", Default::default())),
            "a VM without a UID is held by nothing"
        );
    }
}
