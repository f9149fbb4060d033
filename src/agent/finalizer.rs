//! The agent's finalizer on its VMs: what a VM's metadata says about its deletion (pure), and
//! the two writes that add and remove the finalizer.
//!
//! Not kube-runtime's `finalizer` helper: it removes the finalizer as soon as cleanup returns,
//! so a deletion that waits for the guest's ACPI shutdown would have to wait inside the
//! reconcile, holding one of the agent's workers for the whole grace period. Here cleanup
//! says whether it is done, and the finalizer goes only then. Both writes are merge patches
//! carrying the object's resourceVersion, a compare-and-swap of the finalizer list (another
//! controller's finalizer is never dropped), and go through an untyped client, so that they
//! work on a VM nodevirt cannot read as on any other.

use kube::api::{Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::api::VirtualMachine;

/// The finalizer the agent puts on every VM it runs.
pub const FINALIZER: &str = "nodevirt.io/agent";

/// Where a VM stands with respect to its deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Not being deleted; `finalized` says whether the finalizer is already on.
    Live { finalized: bool },
    /// Being deleted with the finalizer on: the agent's cleanup must run.
    Deleting,
    /// Being deleted, the finalizer already removed: nothing left to do.
    Released,
}

pub fn stage(vm: &VirtualMachine) -> Stage {
    let finalized = vm.finalizers().iter().any(|f| f == FINALIZER);
    match (vm.metadata.deletion_timestamp.is_some(), finalized) {
        (false, finalized) => Stage::Live { finalized },
        (true, true) => Stage::Deleting,
        (true, false) => Stage::Released,
    }
}

/// The finalizer list with ours added, or removed.
fn with_finalizer(vm: &VirtualMachine, present: bool) -> Vec<String> {
    let mut finalizers: Vec<String> = vm
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.into());
    }
    finalizers
}

/// Adds (`present`) or removes the finalizer; a 409 means the VM changed meanwhile.
pub async fn set(client: &Client, vm: &VirtualMachine, present: bool) -> Result<(), kube::Error> {
    let api =
        crate::k8s::untyped_api::<VirtualMachine>(client, &vm.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": vm.resource_version(),
        "finalizers": with_finalizer(vm, present),
    }});
    api.patch(
        &vm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn vm(finalizers: &[&str], deleting: bool) -> VirtualMachine {
        let mut vm = VirtualMachine::new("vm", Default::default());
        vm.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        vm.metadata.deletion_timestamp =
            deleting.then(|| Time(k8s_openapi::jiff::Timestamp::now()));
        vm
    }

    #[test]
    fn the_stage_follows_the_deletion_and_our_finalizer_only() {
        assert_eq!(stage(&vm(&[], false)), Stage::Live { finalized: false });
        assert_eq!(
            stage(&vm(&["other.io/x"], false)),
            Stage::Live { finalized: false }
        );
        assert_eq!(
            stage(&vm(&[FINALIZER], false)),
            Stage::Live { finalized: true }
        );
        assert_eq!(
            stage(&vm(&["other.io/x", FINALIZER], true)),
            Stage::Deleting
        );
        assert_eq!(stage(&vm(&["other.io/x"], true)), Stage::Released);
    }

    #[test]
    fn other_finalizers_are_kept_when_ours_comes_and_goes() {
        let v = vm(&["other.io/x"], false);
        assert_eq!(with_finalizer(&v, true), ["other.io/x", FINALIZER]);
        let v = vm(&["other.io/x", FINALIZER], true);
        assert_eq!(with_finalizer(&v, false), ["other.io/x"]);
        assert_eq!(with_finalizer(&v, true), ["other.io/x", FINALIZER], "once");
    }
}
