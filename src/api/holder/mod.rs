//! The holder pod: one pod per VM that holds the VM's place and resources on a node, so that
//! kube-scheduler places VMs and kubelet, cordon, drain, taints and quotas apply to them as to
//! pods. QEMU stays under the node's libvirtd; the pod runs only a process that waits.
//!
//! The controller creates the pod (named after the VM's UID, so a retry or a restarted
//! controller finds the same name) and hands the VM to the node the scheduler bound it to; the
//! agent runs the VM only while the pod holds its place. A pod holds a VM when its controller
//! owner reference names the VM's UID: a VM deleted and created again under the same name has
//! a new UID and is never held by its predecessor's pod.

use std::hash::Hasher;

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
    // FNV-1a: stable across builds and versions, unlike std's DefaultHasher.
    let mut hasher = Fnv1a::default();
    hasher.write(vm_uid.as_bytes());
    let mut bits = hasher.finish();
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

/// The pod among `pods` that holds `vm`, if any.
pub fn holder_of<'a>(
    vm: &VirtualMachine,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<&'a Pod> {
    pods.into_iter().find(|pod| holds(pod, vm))
}

/// The node a holder pod is bound to, once kube-scheduler bound it.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

#[derive(Default)]
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0100_0000_01b3;
        if self.0 == 0 {
            self.0 = OFFSET;
        }
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
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
    fn a_pod_holds_only_the_vm_whose_uid_its_controller_reference_names() {
        let pods = [pod_owned_by("old", true), pod_owned_by("new", false)];
        assert!(holds(&pods[0], &vm("old")));
        assert!(!holds(&pods[1], &vm("new")), "not the controller reference");
        assert!(holder_of(&vm("new"), &pods).is_none());
        assert!(holder_of(&vm("old"), &pods).is_some());
        assert!(
            !holds(&pods[0], &VirtualMachine::new("testvm", Default::default())),
            "a VM without a UID is held by nothing"
        );
    }
}
