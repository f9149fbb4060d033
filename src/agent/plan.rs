//! What to do for one VM, decided from what was observed alone. Pure.

use crate::api::Phase;
use crate::hypervisor::{DomainState, DomainStatus, ShutoffReason};

use super::reasons;

/// The next step of a VM that is not being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the VM's disks, define the domain and start it.
    Create,
    /// The domain is defined but was never started: start it.
    Start,
    /// A domain of the same name belongs to an earlier VM (another UID): remove it first.
    RemoveStale { old_uid: String },
    /// The domain runs: report Running, its node and addresses.
    Report,
    /// The VM has ended: record its final phase, once.
    Finish {
        phase: Phase,
        reason: &'static str,
        message: &'static str,
    },
    /// Nothing to do now (the VM has ended, or libvirt is between states).
    Wait,
}

/// Decides the step for a VM in `phase` with UID `uid`, whose domain is `domain`.
pub fn plan(phase: Phase, uid: &str, domain: Option<&DomainStatus>) -> Step {
    // A VirtualMachine is mortal: once it has ended nothing brings it back.
    if phase.is_final() {
        return Step::Wait;
    }
    let Some(domain) = domain else {
        return if phase == Phase::Running {
            finish(
                Phase::Failed,
                reasons::DOMAIN_LOST,
                "The domain disappeared from libvirt.",
            )
        } else {
            Step::Create
        };
    };
    if !domain.uuid.eq_ignore_ascii_case(uid) {
        return Step::RemoveStale {
            old_uid: domain.uuid.clone(),
        };
    }
    match domain.state {
        DomainState::Running | DomainState::Paused => Step::Report,
        DomainState::Transient => Step::Wait,
        DomainState::Crashed => finish(Phase::Failed, reasons::CRASHED, "The VM crashed."),
        DomainState::ShutOff(reason) => match reason {
            ShutoffReason::Shutdown => finish(
                Phase::Succeeded,
                reasons::SHUT_DOWN,
                "The VM was shut down.",
            ),
            ShutoffReason::Destroyed => finish(
                Phase::Failed,
                reasons::DESTROYED,
                "The domain was destroyed outside nodevirt.",
            ),
            ShutoffReason::Crashed => finish(Phase::Failed, reasons::CRASHED, "The VM crashed."),
            ShutoffReason::Failed => finish(
                Phase::Failed,
                reasons::START_FAILED,
                "QEMU failed to start.",
            ),
            // Defined and never started (the agent stopped in between): start it now.
            ShutoffReason::Unknown if phase != Phase::Running => Step::Start,
            ShutoffReason::Unknown => finish(
                Phase::Failed,
                reasons::DOMAIN_LOST,
                "The domain stopped for a reason libvirt does not know.",
            ),
        },
    }
}

fn finish(phase: Phase, reason: &'static str, message: &'static str) -> Step {
    Step::Finish {
        phase,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn domain(state: DomainState) -> DomainStatus {
        DomainStatus {
            uuid: UID.into(),
            id: None,
            state,
        }
    }

    #[test]
    fn ended_vms_are_never_started_again() {
        for phase in [Phase::Succeeded, Phase::Failed] {
            assert_eq!(plan(phase, UID, None), Step::Wait);
            let off = domain(DomainState::ShutOff(ShutoffReason::Unknown));
            assert_eq!(plan(phase, UID, Some(&off)), Step::Wait);
        }
    }

    #[test]
    fn new_vms_are_created_and_half_made_ones_started() {
        for phase in [Phase::Pending, Phase::Scheduled, Phase::Unknown] {
            assert_eq!(plan(phase, UID, None), Step::Create);
            let defined = domain(DomainState::ShutOff(ShutoffReason::Unknown));
            assert_eq!(plan(phase, UID, Some(&defined)), Step::Start);
        }
    }

    #[test]
    fn running_domains_are_adopted_not_restarted() {
        for phase in [Phase::Scheduled, Phase::Running, Phase::Unknown] {
            assert_eq!(
                plan(phase, UID, Some(&domain(DomainState::Running))),
                Step::Report
            );
            assert_eq!(
                plan(phase, UID, Some(&domain(DomainState::Paused))),
                Step::Report
            );
        }
    }

    #[test]
    fn how_a_domain_stopped_decides_the_final_phase() {
        let cases = [
            (ShutoffReason::Shutdown, Phase::Succeeded),
            (ShutoffReason::Destroyed, Phase::Failed),
            (ShutoffReason::Crashed, Phase::Failed),
            (ShutoffReason::Failed, Phase::Failed),
            (ShutoffReason::Unknown, Phase::Failed),
        ];
        for (reason, expected) in cases {
            let step = plan(
                Phase::Running,
                UID,
                Some(&domain(DomainState::ShutOff(reason))),
            );
            assert!(
                matches!(step, Step::Finish { phase, .. } if phase == expected),
                "{reason:?}: {step:?}"
            );
        }
        let step = plan(Phase::Running, UID, Some(&domain(DomainState::Crashed)));
        assert!(matches!(
            step,
            Step::Finish {
                phase: Phase::Failed,
                ..
            }
        ));
    }

    #[test]
    fn a_running_vm_without_domain_failed() {
        let step = plan(Phase::Running, UID, None);
        assert!(
            matches!(step, Step::Finish { phase: Phase::Failed, reason, .. } if reason == reasons::DOMAIN_LOST)
        );
    }

    #[test]
    fn a_domain_of_an_earlier_vm_is_removed_first() {
        let mut old = domain(DomainState::Running);
        old.uuid = "11111111-2222-3333-4444-555555555555".into();
        assert_eq!(
            plan(Phase::Scheduled, UID, Some(&old)),
            Step::RemoveStale {
                old_uid: old.uuid.clone()
            }
        );
        old.uuid = UID.to_uppercase();
        assert_eq!(plan(Phase::Running, UID, Some(&old)), Step::Report);
    }

    #[test]
    fn transient_states_wait() {
        assert_eq!(
            plan(Phase::Running, UID, Some(&domain(DomainState::Transient))),
            Step::Wait
        );
    }
}
