//! The status the controller wants for each object it writes, computed from what it observed
//! and the clock; no I/O. Every one is written by [`super::status_writer::write`], and only
//! when it differs from the object's current status.

use k8s_openapi::jiff::Timestamp;

use crate::api::offline_virtual_machine::OfflineVirtualMachineStatus;
use crate::api::replica_set::VirtualMachineReplicaSetStatus;
use crate::api::virtual_machine::Condition;
use crate::api::virtual_machine::set_ready;
pub use crate::api::virtual_machine::true_condition;
use crate::api::{Phase, VirtualMachine, VirtualMachineStatus};

/// Neither being deleted nor ended: a VM that counts as its owner's.
pub fn is_live(vm: &VirtualMachine) -> bool {
    vm.metadata.deletion_timestamp.is_none() && !vm.phase().is_final()
}

/// A Ready-style condition list: one condition saying why the object is not well.
pub fn problem(reason: &str, message: &str, now: Timestamp) -> Vec<Condition> {
    let mut status = VirtualMachineStatus::default();
    set_ready(&mut status, false, reason, message, now);
    status.conditions
}

/// An OfflineVirtualMachine's, from its own VM (if any) and the conditions decided.
pub fn offline(
    vm: Option<&VirtualMachine>,
    conditions: Vec<Condition>,
) -> OfflineVirtualMachineStatus {
    let live = vm.is_some_and(is_live);
    OfflineVirtualMachineStatus {
        created: live,
        ready: live && vm.is_some_and(|v| v.phase() == Phase::Running),
        conditions,
    }
}

/// A ReplicaSet's, from its live replicas and its selector as a string.
pub fn replica_set(
    live: &[VirtualMachine],
    label_selector: Option<String>,
    conditions: Vec<Condition>,
) -> VirtualMachineReplicaSetStatus {
    VirtualMachineReplicaSetStatus {
        replicas: live.len() as i32,
        ready_replicas: live
            .iter()
            .filter(|vm| vm.phase() == Phase::Running)
            .count() as i32,
        label_selector,
        conditions,
    }
}

/// A ReplicaSet's whose selector is unusable: its counts kept, one condition saying why.
pub fn invalid_replica_set(
    current: Option<&VirtualMachineReplicaSetStatus>,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> VirtualMachineReplicaSetStatus {
    VirtualMachineReplicaSetStatus {
        conditions: problem(reason, message, now),
        ..current.cloned().unwrap_or_default()
    }
}

/// A VM's in `phase`, not Ready for `reason` (Pending unschedulable, Failed, Unknown).
pub fn not_ready(
    current: Option<&VirtualMachineStatus>,
    phase: Phase,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> VirtualMachineStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.phase = Some(phase);
    set_ready(&mut status, false, reason, message, now);
    status
}

/// A VM's while its holder pod waits for kube-scheduler.
pub fn scheduling(current: Option<&VirtualMachineStatus>) -> VirtualMachineStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.phase = Some(Phase::Scheduling);
    status.conditions.clear();
    status
}

/// A VM's once placed on `node`: Scheduled, and the conditions of its pending days gone.
pub fn scheduled(current: Option<&VirtualMachineStatus>, node: &str) -> VirtualMachineStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.phase = Some(Phase::Scheduled);
    status.node_name = Some(node.to_string());
    status.conditions.clear();
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn vm(phase: Phase) -> VirtualMachine {
        let mut vm = VirtualMachine::new("vm", Default::default());
        vm.status = Some(VirtualMachineStatus {
            phase: Some(phase),
            ..Default::default()
        });
        vm
    }

    fn ready_reason(status: &[Condition]) -> Option<&str> {
        status
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .and_then(|c| c.reason.as_deref())
    }

    #[test]
    fn an_offline_vm_is_created_while_its_vm_lives_and_ready_while_it_runs() {
        let status = |vm: Option<&VirtualMachine>| {
            let s = offline(vm, Vec::new());
            (s.created, s.ready)
        };
        assert_eq!(status(None), (false, false));
        assert_eq!(status(Some(&vm(Phase::Scheduled))), (true, false));
        assert_eq!(status(Some(&vm(Phase::Running))), (true, true));
        assert_eq!(status(Some(&vm(Phase::Failed))), (false, false));
        let mut going = vm(Phase::Running);
        going.metadata.deletion_timestamp = Some(Time(now()));
        assert_eq!(status(Some(&going)), (false, false), "being deleted");
        let taken = offline(None, problem("VirtualMachineExists", "taken", now()));
        assert_eq!(
            ready_reason(&taken.conditions),
            Some("VirtualMachineExists")
        );
    }

    #[test]
    fn a_replica_set_counts_its_live_replicas_and_keeps_counts_when_invalid() {
        let live = [vm(Phase::Running), vm(Phase::Scheduled), vm(Phase::Running)];
        let status = replica_set(&live, Some("app=a".into()), Vec::new());
        assert_eq!((status.replicas, status.ready_replicas), (3, 2));
        assert_eq!(status.label_selector.as_deref(), Some("app=a"));
        let invalid = invalid_replica_set(Some(&status), "InvalidSelector", "bad", now());
        assert_eq!((invalid.replicas, invalid.ready_replicas), (3, 2));
        assert_eq!(ready_reason(&invalid.conditions), Some("InvalidSelector"));
        assert_eq!(
            invalid_replica_set(None, "InvalidSelector", "bad", now()).replicas,
            0
        );
    }

    #[test]
    fn a_true_condition_keeps_its_transition_time_while_it_holds() {
        let first = true_condition(&[], "ReplicaPaused", "SuccessfulPaused", "paused", now());
        assert_eq!(first.last_transition_time, Some(Time(now())));
        let later = now() + k8s_openapi::jiff::SignedDuration::from_secs(60);
        let again = true_condition(
            std::slice::from_ref(&first),
            "ReplicaPaused",
            "SuccessfulPaused",
            "paused",
            later,
        );
        assert_eq!(again, first);
        let other = true_condition(&[first], "ReplicaFailure", "FailedCreate", "quota", later);
        assert_eq!(other.last_transition_time, Some(Time(later)));
    }

    #[test]
    fn a_vm_is_not_ready_in_its_phase_or_scheduled_without_its_old_conditions() {
        let pending = not_ready(None, Phase::Pending, "Unschedulable", "no node", now());
        assert_eq!(pending.phase, Some(Phase::Pending));
        assert_eq!(ready_reason(&pending.conditions), Some("Unschedulable"));
        // The same answer later is the same status: nothing to write again.
        let later = now() + k8s_openapi::jiff::SignedDuration::from_secs(60);
        assert_eq!(
            not_ready(
                Some(&pending),
                Phase::Pending,
                "Unschedulable",
                "no node",
                later
            ),
            pending
        );
        let failed = not_ready(Some(&pending), Phase::Failed, "InvalidSpec", "bad", now());
        assert_eq!(failed.conditions.len(), 1, "one Ready condition, replaced");
        let placed = scheduled(Some(&pending), "node-a");
        assert_eq!(placed.phase, Some(Phase::Scheduled));
        assert_eq!(placed.node_name.as_deref(), Some("node-a"));
        assert!(placed.conditions.is_empty());
    }
}
