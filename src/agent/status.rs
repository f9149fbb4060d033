//! The status the agent writes, computed from the current one. Pure.

use k8s_openapi::jiff::Timestamp;

use crate::api::virtual_machine::{VirtualMachineNetworkInterface, set_ready};
use crate::api::{Phase, VirtualMachineStatus};
use crate::hypervisor::GuestAddress;

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
    status
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
