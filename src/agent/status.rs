//! The status the agent writes, computed from the current one. Pure.

use k8s_openapi::jiff::Timestamp;

use crate::api::virtual_machine::{VirtualMachineNetworkInterface, set_ready, true_condition};
use crate::api::{Phase, VirtualMachineStatus};
use crate::hypervisor::{GuestAddress, PauseReason};

/// The condition type of a VM whose domain libvirt paused (KubeVirt's name).
pub const CONDITION_PAUSED: &str = "Paused";

/// The status of a VM whose domain runs on `node` with `addresses`.
pub fn running(
    current: &VirtualMachineStatus,
    node: &str,
    addresses: &[GuestAddress],
    now: Timestamp,
) -> VirtualMachineStatus {
    let mut status = current.clone();
    status.phase = Some(Phase::Running);
    status.node_name = Some(node.into());
    // Keep an address once seen: a lease that briefly disappears is not a new address.
    if !addresses.is_empty() {
        status.interfaces = addresses
            .iter()
            .map(|a| VirtualMachineNetworkInterface {
                ip_address: Some(a.ip.clone()),
                mac: Some(a.mac.clone()),
            })
            .collect();
    }
    set_ready(
        &mut status,
        true,
        super::reasons::RUNNING,
        "The domain is running.",
        now,
    );
    status
}

/// The status of a VM that ended, or could not start.
pub fn ended(
    current: &VirtualMachineStatus,
    node: &str,
    phase: Phase,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> VirtualMachineStatus {
    let mut status = current.clone();
    status.phase = Some(phase);
    status.node_name = Some(node.into());
    set_ready(&mut status, false, reason, message, now);
    set_paused(&mut status, None, now);
    status
}

/// Adds the `Paused` condition (reason and message from libvirt's pause reason), kept with its
/// transition time while the pause lasts, or removes it (`None`).
pub fn set_paused(status: &mut VirtualMachineStatus, paused: Option<PauseReason>, now: Timestamp) {
    let Some(why) = paused else {
        status.conditions.retain(|c| c.type_ != CONDITION_PAUSED);
        return;
    };
    let message = match why {
        PauseReason::User => {
            "The domain was paused by a libvirt client (virsh suspend); virsh resume continues it."
        }
        PauseReason::IoError => {
            "libvirt paused the domain after a disk I/O error (a full or failing disk); \
             it continues once the disk has space and the domain is resumed."
        }
        PauseReason::Watchdog => "The guest's watchdog fired with action pause.",
        PauseReason::Other => "libvirt paused the domain.",
    };
    let reason = why.name();
    let condition = true_condition(&status.conditions, CONDITION_PAUSED, reason, message, now);
    status.conditions.retain(|c| c.type_ != CONDITION_PAUSED);
    status.conditions.push(condition);
}

/// Whether the two differ in anything but timestamps (so an unchanged status is not written).
pub fn differs(a: &VirtualMachineStatus, b: &VirtualMachineStatus) -> bool {
    let strip = |s: &VirtualMachineStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
            c.last_probe_time = None;
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    #[test]
    fn a_paused_domain_has_a_paused_condition_until_it_resumes_or_ends() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let later = Timestamp::from_second(1_700_000_060).unwrap();
        let mut status = running(&Default::default(), "n1", &[], now);
        set_paused(&mut status, Some(PauseReason::IoError), now);
        let paused = |s: &VirtualMachineStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == CONDITION_PAUSED)
                .cloned()
        };
        let first = paused(&status).unwrap();
        assert_eq!(first.reason.as_deref(), Some("PausedIOError"));
        assert_eq!(status.phase, Some(Phase::Running), "still Running");
        let mut again = running(&status, "n1", &[], later);
        set_paused(&mut again, Some(PauseReason::IoError), later);
        assert!(!differs(&status, &again));
        assert_eq!(paused(&again), Some(first), "kept while the pause lasts");
        set_paused(&mut again, Some(PauseReason::User), later);
        assert_eq!(
            paused(&again).unwrap().reason.as_deref(),
            Some("PausedByUser")
        );
        set_paused(&mut again, None, later);
        assert_eq!(paused(&again), None, "cleared on resume");
        status = ended(&status, "n1", Phase::Failed, "Crashed", "crashed", later);
        assert_eq!(paused(&status), None, "an ended VM is not paused");
    }

    #[test]
    fn running_sets_phase_node_addresses_and_ready() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let addr = GuestAddress {
            mac: "52:54:00:01:02:03".into(),
            ip: "10.213.0.5".into(),
        };
        let status = running(&VirtualMachineStatus::default(), "node1", &[addr], now);
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.node_name.as_deref(), Some("node1"));
        assert_eq!(
            status.interfaces[0].ip_address.as_deref(),
            Some("10.213.0.5")
        );
        assert_eq!(status.conditions[0].status, "True");
        let later = Timestamp::from_second(1_700_000_100).unwrap();
        let again = running(&status, "node1", &[], later);
        assert_eq!(again.interfaces.len(), 1, "an address once seen is kept");
        assert_eq!(again.conditions[0].last_transition_time, Some(Time(now)));
        assert!(!differs(&status, &again));
    }

    #[test]
    fn ended_records_reason_and_flips_ready() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let run = running(&VirtualMachineStatus::default(), "n", &[], now);
        let later = Timestamp::from_second(1_700_000_100).unwrap();
        let done = ended(
            &run,
            "n",
            Phase::Succeeded,
            "ShutDown",
            "The VM was shut down.",
            later,
        );
        assert_eq!(done.phase, Some(Phase::Succeeded));
        assert_eq!(done.conditions.len(), 1);
        assert_eq!(done.conditions[0].status, "False");
        assert_eq!(done.conditions[0].last_transition_time, Some(Time(later)));
        assert!(differs(&run, &done));
    }
}
