//! What a VM's holder pod means for the agent on the pod's node: whether the VM may run there,
//! and, once the pod goes, why and by when the guest must be down. Pure.
//!
//! The pod's `DisruptionTarget` condition says who took it (Kubernetes sets it on eviction,
//! preemption, taint-based eviction and kubelet's node-pressure eviction); a pod deleted
//! without one was deleted by someone (`PodDeleted`). Its deletionTimestamp is the end of
//! its grace period, when kubelet kills the holder: the guest is stopped a little before.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::bound_node;

pub const EVICTED: &str = "Evicted";
pub const PREEMPTED: &str = "Preempted";
pub const POD_DELETED: &str = "PodDeleted";

/// The guest is stopped this long before kubelet kills the holder, so the booking outlasts it.
const BEFORE_KILL: SignedDuration = SignedDuration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The agent runs VMs without holder pods (`--require-holder-pod=false`).
    NotRequired,
    /// The pod is bound to this node and holds the VM's place.
    Held,
    /// No pod of the VM on this node (yet): the VM may not start.
    Absent,
    /// The pod is going or gone: the guest must be down by `stop_by`; the VM fails for
    /// `reason`.
    Lost {
        reason: &'static str,
        message: String,
        stop_by: Timestamp,
    },
}

/// The reservation `pod` (the VM's holder, if the agent's cache has it) gives on `node`.
/// `started` says whether the VM was started here: a pod missing then was removed at once (a
/// forced deletion), so its guest is stopped now.
pub fn reservation(pod: Option<&Pod>, node: &str, started: bool, now: Timestamp) -> Reservation {
    let Some(pod) = pod.filter(|p| bound_node(p) == Some(node)) else {
        return if started {
            Reservation::Lost {
                reason: POD_DELETED,
                message: "The VM's holder pod was removed at once (a forced deletion); the VM \
                          stopped with it."
                    .into(),
                stop_by: now,
            }
        } else {
            Reservation::Absent
        };
    };
    let status = pod.status.as_ref();
    let kubelet_ended = status.and_then(|s| s.phase.as_deref()) == Some("Failed");
    let deleting = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    if deleting.is_none() && !kubelet_ended {
        return Reservation::Held;
    }
    let disruption = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    let cause = disruption.and_then(|c| c.reason.as_deref());
    let reason = match cause {
        Some("PreemptionByScheduler") => PREEMPTED,
        Some(_) => EVICTED,
        None if kubelet_ended => EVICTED,
        None => POD_DELETED,
    };
    let why = match cause {
        Some("EvictionByEvictionAPI") => "was evicted (kubectl drain or the Eviction API)",
        Some("PreemptionByScheduler") => "was preempted by a pod of higher priority",
        Some("DeletionByTaintManager") => "was evicted by a NoExecute taint of the node",
        Some("TerminationByKubelet") => "was evicted by kubelet (node pressure or shutdown)",
        Some(_) => "was evicted",
        None if kubelet_ended => "was stopped by kubelet",
        None => "was deleted",
    };
    let detail = disruption
        .and_then(|c| c.message.clone())
        .or_else(|| status.and_then(|s| s.message.clone()))
        .map(|m| format!(": {}", m.trim_end_matches('.')))
        .unwrap_or_default();
    Reservation::Lost {
        reason,
        message: format!("The VM's holder pod {} {why}{detail}.", pod.name_any()),
        stop_by: deleting
            .map(|end| end.saturating_sub(BEFORE_KILL).unwrap_or(end))
            .unwrap_or(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = serde_json::json!({
            "metadata": {"name": "virt-launcher-vm-abcde"},
            "spec": {"nodeName": "node1", "containers": []},
        });
        json_merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn json_merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_object() => json_merge(existing, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
    }

    fn going(condition: Option<&str>) -> Pod {
        let mut pod = pod(serde_json::json!({}));
        pod.metadata.deletion_timestamp = Some(Time(now() + SignedDuration::from_secs(30)));
        if let Some(reason) = condition {
            pod.status = serde_json::from_value(serde_json::json!({"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": reason,
                "message": "Eviction API: evicting"}]}))
            .unwrap();
        }
        pod
    }

    #[test]
    fn a_bound_pod_holds_and_no_pod_lets_nothing_start() {
        let bound = pod(serde_json::json!({}));
        assert_eq!(
            reservation(Some(&bound), "node1", false, now()),
            Reservation::Held
        );
        assert_eq!(
            reservation(Some(&bound), "node2", false, now()),
            Reservation::Absent,
            "bound elsewhere"
        );
        assert_eq!(
            reservation(None, "node1", false, now()),
            Reservation::Absent
        );
        let Reservation::Lost {
            reason, stop_by, ..
        } = reservation(None, "node1", true, now())
        else {
            panic!("a running VM without its pod")
        };
        assert_eq!((reason, stop_by), (POD_DELETED, now()));
    }

    #[test]
    fn a_going_pod_says_who_took_it_and_the_guest_stops_before_kubelet_kills_it() {
        let cases = [
            (
                Some("EvictionByEvictionAPI"),
                EVICTED,
                "was evicted (kubectl drain",
            ),
            (Some("PreemptionByScheduler"), PREEMPTED, "preempted"),
            (Some("DeletionByTaintManager"), EVICTED, "NoExecute taint"),
            (None, POD_DELETED, "was deleted."),
        ];
        for (condition, want, words) in cases {
            let Reservation::Lost {
                reason,
                message,
                stop_by,
            } = reservation(Some(&going(condition)), "node1", true, now())
            else {
                panic!("{condition:?}: lost")
            };
            assert_eq!(reason, want, "{condition:?}");
            assert!(message.contains(words), "{message}");
            assert!(message.contains("virt-launcher-vm-abcde"), "{message}");
            assert_eq!(stop_by, now() + SignedDuration::from_secs(28));
        }
        let evicted_by_kubelet = pod(serde_json::json!({"status": {"phase": "Failed",
            "reason": "Evicted", "message": "The node was low on resource: memory."}}));
        let Reservation::Lost {
            reason,
            message,
            stop_by,
        } = reservation(Some(&evicted_by_kubelet), "node1", true, now())
        else {
            panic!("a failed pod holds nothing")
        };
        assert_eq!((reason, stop_by), (EVICTED, now()));
        assert!(
            message.ends_with("by kubelet: The node was low on resource: memory."),
            "{message}"
        );
    }
}
