//! The plan's decisions that the executor tests (`reconcile_tests`) do not reach by name.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::api::holder::reservation::Reservation;
use crate::api::virtual_machine::FORCE_STOP_ANNOTATION;
use crate::hypervisor::watchdog::WatchdogAction;
use crate::storage::layout::DEFAULT_STATE_DIR;

const UID: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

fn node() -> Node {
    Node {
        name: "node1".into(),
        state_dir: DEFAULT_STATE_DIR.into(),
        network: None,
        addresses_possible: false,
        cpu_model: Default::default(),
    }
}

fn observed<'a>(
    vm: &'a VirtualMachine,
    node: &'a Node,
    domain: Option<DomainState>,
) -> Observed<'a> {
    Observed {
        vm,
        node,
        stage: Stage::Live { finalized: true },
        domain_type: Some(DomainType::Qemu),
        domain: domain.map(|state| DomainStatus {
            vm_uid: Some(UID.into()),
            id: None,
            state,
        }),
        addresses: Vec::new(),
        qemu_log: None,
        run: RunSeen::default(),
        shutdown_sent: false,
        reservation: Reservation::NotRequired,
        now: Timestamp::from_second(1_800_000_000).unwrap(),
        inputs: None,
        latest: Some(Some(vm.clone())),
        failure: None,
    }
}

fn vm_in(phase: Phase) -> VirtualMachine {
    let mut vm = crate::domain::fixtures::vm(crate::domain::fixtures::DOMAIN, "[]");
    vm.metadata.uid = Some(UID.into());
    vm.status = Some(VirtualMachineStatus {
        phase: Some(phase),
        ..Default::default()
    });
    vm
}

#[test]
fn ended_vms_are_never_started_again() {
    let node = node();
    for phase in [Phase::Succeeded, Phase::Failed] {
        let vm = vm_in(phase);
        for domain in [None, Some(DomainState::ShutOff(ShutoffReason::Unknown))] {
            assert_eq!(plan(&observed(&vm, &node, domain)), Plan::wait());
        }
    }
}

#[test]
fn a_defined_domain_never_started_is_started_but_one_that_ran_is_lost() {
    let node = node();
    let off = Some(DomainState::ShutOff(ShutoffReason::Unknown));
    for phase in [Phase::Pending, Phase::Scheduled, Phase::Unknown] {
        let vm = vm_in(phase);
        let actions = plan(&observed(&vm, &node, off)).actions;
        assert_eq!(actions[0], Action::Start, "{phase:?}");
    }
    let vm = vm_in(Phase::Running);
    let actions = plan(&observed(&vm, &node, off)).actions;
    assert!(
        matches!(&actions[0], Action::WriteStatus(s) if s.phase == Some(Phase::Failed)),
        "{actions:?}"
    );
}

#[test]
fn running_domains_are_adopted_and_transient_ones_waited_for() {
    let node = node();
    for phase in [Phase::Scheduled, Phase::Running, Phase::Unknown] {
        let vm = vm_in(phase);
        for state in [DomainState::Running, DomainState::Paused(PauseReason::User)] {
            let plan = plan(&observed(&vm, &node, Some(state)));
            assert!(!plan.actions.contains(&Action::Start), "{phase:?}");
            // The test node cannot have addresses: the slow resync.
            assert_eq!(plan.next, Next::RequeueAfter(RESYNC));
        }
    }
    let vm = vm_in(Phase::Running);
    assert_eq!(
        plan(&observed(&vm, &node, Some(DomainState::Transient))),
        Plan::requeue(ADDRESS_POLL)
    );
}

#[test]
fn the_finalizer_goes_on_before_anything_else() {
    let node = node();
    let vm = vm_in(Phase::Scheduled);
    let mut o = observed(&vm, &node, None);
    o.stage = Stage::Live { finalized: false };
    assert_eq!(
        plan(&o).actions,
        [Action::AddFinalizer, Action::Observe(Need::Inputs)]
    );
    o.stage = Stage::Released;
    assert_eq!(plan(&o), Plan::wait());
}

#[test]
fn an_invalid_uid_fails_the_vm_and_touches_no_folder() {
    let node = node();
    let mut vm = vm_in(Phase::Scheduled);
    vm.metadata.uid = Some("../../etc".into());
    let o = observed(&vm, &node, None);
    let mut latest = vm.clone();
    latest.metadata.uid = vm.metadata.uid.clone();
    let o = Observed {
        latest: Some(Some(latest)),
        ..o
    };
    let actions = plan(&o).actions;
    assert!(matches!(&actions[0], Action::WriteStatus(s) if s.phase == Some(Phase::Failed)));
    let mut deleting = observed(&vm, &node, None);
    deleting.stage = Stage::Deleting;
    assert!(
        !plan(&deleting)
            .actions
            .iter()
            .any(|a| matches!(a, Action::RemoveDir { .. }))
    );
}

fn deleted_vm(grace: Option<i64>, annotations: &[(&str, &str)]) -> VirtualMachine {
    let mut vm = VirtualMachine::new("vm", Default::default());
    vm.spec.termination_grace_period_seconds = grace;
    vm.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
    vm.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    vm
}

#[test]
fn the_stop_deadline_is_the_request_plus_a_bounded_grace_period_or_now_when_forced() {
    let requested = Timestamp::from_second(1_800_000_000).unwrap();
    let now = requested + SignedDuration::from_secs(5);
    let after = |vm: &VirtualMachine| stop_deadline(vm, now).duration_since(requested).as_secs();
    assert_eq!(after(&deleted_vm(None, &[])), 30);
    assert_eq!(after(&deleted_vm(Some(150), &[])), 150);
    assert_eq!(after(&deleted_vm(Some(-4), &[])), 0);
    assert_eq!(
        after(&deleted_vm(Some(i64::MAX), &[])),
        MAX_TERMINATION_GRACE_PERIOD_SECONDS
    );
    let forced = deleted_vm(Some(150), &[(FORCE_STOP_ANNOTATION, "true")]);
    assert_eq!(stop_deadline(&forced, now), now);
    let not_forced = deleted_vm(Some(150), &[(FORCE_STOP_ANNOTATION, "no")]);
    assert_eq!(after(&not_forced), 150);
}

#[test]
fn without_its_holder_pod_a_vm_waits_and_once_the_pod_goes_it_stops_and_fails() {
    let node = node();
    let vm = vm_in(Phase::Scheduled);
    let mut o = observed(&vm, &node, None);
    o.reservation = Reservation::Absent;
    let waiting = plan(&o);
    assert!(
        matches!(&waiting.actions[..], [Action::WriteStatus(s)]
            if s.conditions[0].reason.as_deref() == Some(reasons::WAITING_FOR_POD)),
        "{waiting:?}"
    );
    let now = o.now;
    let lost = |stop_by| Reservation::Lost {
        reason: crate::api::holder::reservation::EVICTED,
        message: "The VM's holder pod p was evicted.".into(),
        stop_by,
    };
    let running = vm_in(Phase::Running);
    let mut o = observed(&running, &node, Some(DomainState::Running));
    o.reservation = lost(now + SignedDuration::from_secs(28));
    let first = plan(&o);
    assert_eq!(first.actions[0], Action::Shutdown);
    assert_eq!(first.next, Next::RequeueAfter(Duration::from_secs(28)));
    o.shutdown_sent = true;
    assert!(plan(&o).actions.is_empty(), "the ACPI request is sent once");
    o.reservation = lost(now);
    assert!(
        plan(&o).actions.contains(&Action::Destroy),
        "destroyed at stop_by"
    );
    let mut o = observed(
        &running,
        &node,
        Some(DomainState::ShutOff(ShutoffReason::Shutdown)),
    );
    o.reservation = lost(now);
    let ended = plan(&o);
    assert!(
        matches!(&ended.actions[0], Action::WriteStatus(s)
            if s.phase == Some(Phase::Failed)
                && s.conditions[0].reason.as_deref() == Some("Evicted")),
        "the pod's reason, not a plain shutdown: {ended:?}"
    );
}

#[test]
fn a_watchdog_that_stopped_the_guest_fails_the_vm_naming_its_action() {
    let node = node();
    let running = vm_in(Phase::Running);
    // Action shutdown: the guest obeyed the power button, which alone would be Succeeded.
    // Action poweroff: QEMU quits without a shutdown, which libvirt calls a crash.
    for (state, action) in [
        (
            DomainState::ShutOff(ShutoffReason::Shutdown),
            WatchdogAction::Shutdown,
        ),
        (
            DomainState::ShutOff(ShutoffReason::Crashed),
            WatchdogAction::PowerOff,
        ),
    ] {
        let mut o = observed(&running, &node, Some(state));
        o.run.firing = Some(fired(action, Duration::from_secs(1)));
        let ended = plan(&o);
        let Action::WriteStatus(status) = &ended.actions[0] else {
            panic!("the end is written first: {ended:?}");
        };
        let ready = &status.conditions[0];
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(ready.reason.as_deref(), Some("WatchdogFired"));
        let message = ready.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("watchdog") && message.contains(action.name()),
            "{message}"
        );
    }
}

fn fired(action: WatchdogAction, age: Duration) -> Firing {
    Firing {
        action,
        acknowledged: false,
        age,
    }
}

fn watchdog_warnings(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                type_: EventType::Warning,
                reason: "WatchdogFired",
                message,
            } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_firing_the_guest_survives_is_a_warning_once_and_blames_no_later_stop() {
    let node = node();
    let running = vm_in(Phase::Running);
    let mut o = observed(&running, &node, Some(DomainState::Running));
    o.run.firing = Some(fired(WatchdogAction::Reset, Duration::ZERO));
    let actions = plan(&o).actions;
    assert_eq!(watchdog_warnings(&actions).len(), 1, "{actions:?}");
    assert!(watchdog_warnings(&actions)[0].contains("reset"));
    assert!(actions.contains(&Action::AcknowledgeWatchdog));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::WriteStatus(s) if s.phase != Some(Phase::Running)))
    );
    o.run.firing.as_mut().unwrap().acknowledged = true;
    let again = plan(&o).actions;
    assert!(watchdog_warnings(&again).is_empty());
    assert!(!again.contains(&Action::AcknowledgeWatchdog));

    // A reset followed by a plain power-off: the watchdog did not stop it.
    let mut o = observed(
        &running,
        &node,
        Some(DomainState::ShutOff(ShutoffReason::Shutdown)),
    );
    o.run.firing = Some(fired(WatchdogAction::Reset, Duration::ZERO));
    assert!(
        matches!(&plan(&o).actions[0], Action::WriteStatus(s) if s.phase == Some(Phase::Succeeded))
    );
}

#[test]
fn a_guest_given_the_watchdogs_shutdown_has_a_grace_then_its_own_stop_is_its_own() {
    let node = node();
    let running = vm_in(Phase::Running);
    let mut o = observed(&running, &node, Some(DomainState::Running));
    // Shutting down after the power button: not yet a firing it survived.
    o.run.firing = Some(fired(WatchdogAction::Shutdown, Duration::from_secs(5)));
    let shutting_down = plan(&o).actions;
    assert!(watchdog_warnings(&shutting_down).is_empty());
    assert!(!shutting_down.contains(&Action::AcknowledgeWatchdog));
    // Still running past the grace: it ignored the button, said once.
    o.run.firing = Some(fired(WatchdogAction::Shutdown, Duration::from_secs(121)));
    let ignored = plan(&o).actions;
    let warnings = watchdog_warnings(&ignored);
    assert!(
        warnings.len() == 1 && warnings[0].contains("still runs 121 s later"),
        "{ignored:?}"
    );
    assert!(ignored.contains(&Action::AcknowledgeWatchdog));
    // A shutdown of the guest's own, hours later, is a plain one.
    let mut o = observed(
        &running,
        &node,
        Some(DomainState::ShutOff(ShutoffReason::Shutdown)),
    );
    o.run.firing = Some(Firing {
        acknowledged: true,
        ..fired(WatchdogAction::Shutdown, Duration::from_secs(7200))
    });
    assert!(
        matches!(&plan(&o).actions[0], Action::WriteStatus(s) if s.phase == Some(Phase::Succeeded))
    );
}

#[test]
fn an_off_domain_whose_stop_is_not_told_yet_waits_for_the_event() {
    let node = node();
    let running = vm_in(Phase::Running);
    let mut o = observed(
        &running,
        &node,
        Some(DomainState::ShutOff(ShutoffReason::Shutdown)),
    );
    o.run.stop_pending = true;
    let waiting = plan(&o);
    assert!(waiting.actions.is_empty(), "{waiting:?}");
    assert!(
        matches!(waiting.next, Next::RequeueAfter(d) if d < Duration::from_secs(1)),
        "{waiting:?}"
    );
    o.run.stop_pending = false;
    assert!(
        matches!(&plan(&o).actions[0], Action::WriteStatus(s) if s.phase == Some(Phase::Succeeded))
    );
}
