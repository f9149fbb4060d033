//! What to do for one VM, decided from what was observed alone: its whole life, deletion
//! included. Pure: no I/O, no clock (the time is observed too).
//!
//! A plan is a list of [`Action`]s and what follows them ([`Next`]). It may ask for more to be
//! observed ([`Action::Observe`]: the VM's inputs before creating it, the API server's copy
//! before recording its end); the reconcile then observes that and plans again, so every
//! decision stays here.

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::api::holder::reservation::Reservation;
use crate::api::virtual_machine::{
    DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS, force_stop_requested, set_ready, unreadable_message,
};
use crate::api::{Phase, VirtualMachine, VirtualMachineStatus};
use crate::domain::limits::MAX_TERMINATION_GRACE_PERIOD_SECONDS;
use crate::domain::names::check_uid;
use crate::domain::{CpuModel, DomainType, RenderOptions, ResolvedVolume, render};
use crate::events::EventType;
use crate::hypervisor::runs::{Firing, RunSeen};
use crate::hypervisor::{DomainState, DomainStatus, GuestAddress, PauseReason, ShutoffReason};
use crate::storage::layout::{VmLayout, resolve_volumes};

use super::finalizer::Stage;
use super::inputs::Inputs;
use super::{reasons, status};

/// How often a running VM without an address is looked at again.
pub const ADDRESS_POLL: Duration = Duration::from_secs(2);
/// Periodic resync of a running VM, besides libvirt's events.
pub const RESYNC: Duration = Duration::from_secs(60);
/// A VM waiting for something outside it (a claim to bind, the hypervisor to be chosen).
pub const WAITING_RETRY: Duration = Duration::from_secs(5);
/// The shortest wait for a guest shutting down: the deadline's own rounding.
const MIN_SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// How often an off domain is looked at while its stop event is awaited.
const STOP_EVENT_POLL: Duration = Duration::from_millis(200);
/// How long a guest has to stop after its watchdog fired with `poweroff` or `shutdown`; a
/// stop later than that is the guest's own.
const WATCHDOG_STOP_GRACE: Duration = Duration::from_secs(120);

/// What the node is, for every VM on it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub state_dir: PathBuf,
    /// The libvirt network of each guest's NIC; `None` gives guests no NIC.
    pub network: Option<String>,
    /// False when guests cannot have addresses at all (libvirt's test driver has no network):
    /// polling for one would never end.
    pub addresses_possible: bool,
    /// The guest CPU under KVM.
    pub cpu_model: CpuModel,
}

/// Everything a plan is made from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub vm: &'a VirtualMachine,
    pub node: &'a Node,
    /// The finalizer's stage, updated as this reconcile adds it.
    pub stage: Stage,
    /// `None` until libvirtd first answered and the domain type was decided.
    pub domain_type: Option<DomainType>,
    /// The domain of the VM's name, whoever's it is.
    pub domain: Option<DomainStatus>,
    /// The guest's addresses, read when its domain runs.
    pub addresses: Vec<GuestAddress>,
    /// Where the node keeps the domain's QEMU log, if anywhere.
    pub qemu_log: Option<PathBuf>,
    /// What libvirt's events told of the domain's run: its watchdog's last firing, and whether
    /// an off domain's stop is yet to be told.
    pub run: RunSeen,
    /// Whether the guest of this VM being deleted was already sent the ACPI shutdown.
    pub shutdown_sent: bool,
    /// What the VM's holder pod says: whether it may run here, and until when.
    pub reservation: Reservation,
    pub now: Timestamp,
    /// Asked for by [`Need::Inputs`].
    pub inputs: Option<InputsSeen>,
    /// Asked for by [`Need::Latest`]: the API server's copy of the VM, if it still exists.
    pub latest: Option<Option<VirtualMachine>>,
    /// A step of this reconcile failed in a way that fails the VM.
    pub failure: Option<Failure>,
}

/// What gathering a VM's inputs gave, as far as the plan cares.
#[derive(Debug, Clone)]
pub enum InputsSeen {
    Ready(std::sync::Arc<Inputs>),
    /// Not there yet (a claim not bound): the VM waits.
    Waiting(String),
    /// The VM can never start as it is.
    Refused {
        reason: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Inputs,
    Latest,
}

/// One I/O call of the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    /// Observe this, then plan again: always a plan's last action.
    Observe(Need),
    /// Creates the VM's generated disks from the observed inputs.
    PrepareDisks,
    Define {
        xml: String,
    },
    Start,
    Shutdown,
    Destroy,
    Undefine,
    /// Removes the folder of the VM with this UID (an earlier VM's, for a stale domain).
    RemoveDir {
        uid: String,
    },
    /// The watchdog's firing was reported (an event): not again.
    AcknowledgeWatchdog,
    /// Forgets what the agent keeps in memory about the VM (its event log, its shutdown).
    Forget,
    /// Merge-patches the status; planned only when it differs from the current one.
    WriteStatus(Box<VirtualMachineStatus>),
    Event {
        type_: EventType,
        reason: &'static str,
        message: String,
    },
}

impl Action {
    /// The reason the VM fails with when this step fails for a reason of the VM's own (not a
    /// lost connection or an unreachable API server, which are retried).
    pub fn fails_vm_as(&self) -> Option<&'static str> {
        match self {
            Action::PrepareDisks => Some(reasons::STORAGE_FAILED),
            Action::Define { .. } => Some(reasons::DEFINE_FAILED),
            Action::Start => Some(reasons::START_FAILED),
            _ => None,
        }
    }
}

/// When the VM is looked at again after the actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// When it or its domain changes.
    AwaitChange,
    RequeueAfter(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub next: Next,
}

impl Plan {
    fn new(actions: Vec<Action>, next: Next) -> Self {
        Self { actions, next }
    }

    fn wait() -> Self {
        Self::new(Vec::new(), Next::AwaitChange)
    }

    fn requeue(after: Duration) -> Self {
        Self::new(Vec::new(), Next::RequeueAfter(after))
    }

    fn observe(need: Need) -> Self {
        Self::new(vec![Action::Observe(need)], Next::AwaitChange)
    }
}

/// The plan for the VM as observed.
pub fn plan(o: &Observed) -> Plan {
    match o.stage {
        Stage::Released => Plan::wait(),
        Stage::Deleting => deletion(o),
        Stage::Live { finalized } => {
            let mut plan = live(o);
            // The finalizer before anything that would need cleaning up.
            if !finalized {
                plan.actions.insert(0, Action::AddFinalizer);
            }
            plan
        }
    }
}

fn uid(vm: &VirtualMachine) -> String {
    vm.uid().unwrap_or_default()
}

/// The domain of this VM (same UID), if the observed one is.
fn owned<'a>(o: &'a Observed) -> Option<&'a DomainStatus> {
    let uid = uid(o.vm);
    o.domain
        .as_ref()
        .filter(|d| d.vm_uid.as_deref() == Some(uid.as_str()))
}

fn live(o: &Observed) -> Plan {
    let vm = o.vm;
    let phase = vm.phase();
    if let Some(message) = unreadable_message(vm) {
        // Nothing of it can be trusted but its metadata; its cached status is what there is.
        return if phase.is_final() {
            Plan::wait()
        } else {
            ending(o, vm, failed(reasons::INVALID_SPEC, &message))
        };
    }
    if let Some(failure) = &o.failure {
        return end(o, failed(failure.reason, &failure.message));
    }
    if let Err(e) = check_uid(&uid(vm), "metadata.uid") {
        return end(o, failed(reasons::INVALID_SPEC, &e.to_string()));
    }
    // A VirtualMachine is mortal: once it has ended nothing brings it back.
    if phase.is_final() {
        return Plan::wait();
    }
    match &o.reservation {
        Reservation::Lost {
            reason,
            message,
            stop_by,
        } => return reservation_lost(o, reason, message, *stop_by),
        Reservation::Absent => return waiting_for_pod(o),
        Reservation::NotRequired | Reservation::Held => {}
    }
    let Some(domain) = &o.domain else {
        return if phase == Phase::Running {
            end(
                o,
                stopped(
                    Phase::Failed,
                    reasons::DOMAIN_LOST,
                    "The domain disappeared from libvirt.",
                ),
            )
        } else {
            create(o)
        };
    };
    if owned(o).is_none() {
        // A domain of the same name belongs to an earlier VM: it goes first.
        let mut actions = vec![Action::Destroy, Action::Undefine];
        if let Some(earlier) = domain.vm_uid.as_ref()
            && check_uid(earlier, "the domain's nodevirt:uid").is_ok()
        {
            actions.push(Action::RemoveDir {
                uid: earlier.clone(),
            });
        }
        return Plan::new(actions, Next::RequeueAfter(Duration::ZERO));
    }
    let domain_stopped = |phase, reason, message| end(o, stopped(phase, reason, message));
    let off = domain.state.is_off();
    if off && phase == Phase::Running && o.run.stop_pending {
        // A watchdog's firing would be told before the stop: wait for it, briefly.
        return Plan::requeue(STOP_EVENT_POLL);
    }
    let stopped_by_watchdog = |f: &Firing| f.action.stops_guest() && !f.acknowledged;
    if let Some(fired) = o.run.firing.filter(|f| off && stopped_by_watchdog(f)) {
        // Not the plain power-off or crash it looks like.
        let message = format!(
            "The guest's watchdog fired and its action, {}, stopped the VM.",
            fired.action.name()
        );
        return end(o, stopped(Phase::Failed, reasons::WATCHDOG_FIRED, &message));
    }
    match domain.state {
        DomainState::Running => report(o, None),
        DomainState::Paused(reason) => report(o, Some(reason)),
        DomainState::Transient => Plan::requeue(ADDRESS_POLL),
        DomainState::Crashed => domain_stopped(Phase::Failed, reasons::CRASHED, "The VM crashed."),
        DomainState::ShutOff(reason) => match reason {
            ShutoffReason::Shutdown => domain_stopped(
                Phase::Succeeded,
                reasons::SHUT_DOWN,
                "The VM was shut down.",
            ),
            ShutoffReason::Destroyed => domain_stopped(
                Phase::Failed,
                reasons::DESTROYED,
                "The domain was destroyed outside nodevirt.",
            ),
            ShutoffReason::Crashed => {
                domain_stopped(Phase::Failed, reasons::CRASHED, "The VM crashed.")
            }
            ShutoffReason::Failed => domain_stopped(
                Phase::Failed,
                reasons::START_FAILED,
                "QEMU failed to start.",
            ),
            // Defined and never started (the agent stopped in between): start it now.
            ShutoffReason::Unknown if phase != Phase::Running => start(o, Vec::new()),
            ShutoffReason::Unknown => domain_stopped(
                Phase::Failed,
                reasons::DOMAIN_LOST,
                "The domain stopped for a reason libvirt does not know.",
            ),
        },
    }
}

/// No holder pod of the VM on this node yet: it may not start (kube-scheduler has not given
/// it this node's resources, or a cluster admin pinned it and the controller has yet to book
/// them). The pod's events bring it back.
fn waiting_for_pod(o: &Observed) -> Plan {
    let vm = o.vm;
    let mut new = current_status(vm);
    let message = format!(
        "Waiting for its holder pod on node {} (kubectl get pods -l {}={}).",
        o.node.name,
        crate::api::holder::VM_LABEL,
        vm.name_any()
    );
    set_ready(&mut new, false, reasons::WAITING_FOR_POD, &message, o.now);
    Plan::new(write_if_changed(vm, new), Next::RequeueAfter(WAITING_RETRY))
}

/// The holder pod went (drain, eviction, preemption, a deletion): the guest gets the ACPI
/// shutdown at once and is destroyed at `stop_by`, before kubelet frees its resources; once
/// it is down the VM ends Failed with the pod's reason.
fn reservation_lost(o: &Observed, reason: &'static str, message: &str, stop_by: Timestamp) -> Plan {
    let domain = owned(o).filter(|d| {
        matches!(
            d.state,
            DomainState::Running | DomainState::Paused(_) | DomainState::Transient
        )
    });
    let Some(domain) = domain else {
        // The event says why, as a Pod's `Evicted` or `Preempted` does.
        let why = End {
            event_reason: reason,
            ..failed(reason, message)
        };
        return end(o, why);
    };
    // A paused guest cannot answer the ACPI button: it is stopped at once.
    if matches!(domain.state, DomainState::Paused(_)) || o.now >= stop_by {
        let note = format!("VM stopping now: {message}");
        return Plan::new(
            vec![
                event(EventType::Normal, reasons::EVENT_STOPPED, &note),
                Action::Destroy,
            ],
            Next::RequeueAfter(Duration::ZERO),
        );
    }
    let mut actions = Vec::new();
    if !o.shutdown_sent {
        actions.push(Action::Shutdown);
        let note = format!("Signaled Graceful Shutdown: {message}");
        actions.push(event(
            EventType::Normal,
            reasons::EVENT_SHUTTING_DOWN,
            &note,
        ));
    }
    let left = o.now.duration_until(stop_by).unsigned_abs();
    Plan::new(actions, Next::RequeueAfter(left.max(MIN_SHUTDOWN_POLL)))
}

fn render_options(o: &Observed, domain_type: DomainType, layout: &VmLayout) -> RenderOptions {
    RenderOptions {
        domain_type,
        cpu_model: o.node.cpu_model.clone(),
        network: o.node.network.clone(),
        console_log: layout.console_log().display().to_string(),
        node: Some(o.node.name.clone()),
    }
}

fn create(o: &Observed) -> Plan {
    // Decided on connecting, before the first define; a reconcile can only get here in the
    // moment between the connection and the decision. The link resyncs every VM after it.
    let Some(domain_type) = o.domain_type else {
        return Plan::requeue(WAITING_RETRY);
    };
    let vm = o.vm;
    let layout = VmLayout::new(&o.node.state_dir, &uid(vm));
    let options = render_options(o, domain_type, &layout);
    let inputs = match &o.inputs {
        None => {
            // The whole spec is checked before anything it names is read (claims, Secrets,
            // images): a bad name must fail the VM, never reach a lookup. Claims stand in as
            // block devices, which every disk kind accepts.
            let stand_in = resolve_volumes(&vm.spec, &layout, |_| {
                Some(ResolvedVolume::Block {
                    path: "/dev/null".into(),
                })
            });
            return match render(vm, &stand_in, &options) {
                Ok(_) => Plan::observe(Need::Inputs),
                Err(e) => end(o, failed(reasons::INVALID_SPEC, &e.to_string())),
            };
        }
        Some(InputsSeen::Waiting(message)) => {
            let mut new = current_status(vm);
            set_ready(&mut new, false, reasons::MISSING_INPUT, message, o.now);
            return Plan::new(write_if_changed(vm, new), Next::RequeueAfter(WAITING_RETRY));
        }
        Some(InputsSeen::Refused { reason, message }) => {
            return end(o, failed(reason, message));
        }
        Some(InputsSeen::Ready(inputs)) => inputs,
    };
    let volumes = resolve_volumes(&vm.spec, &layout, |claim| inputs.claims.get(claim).cloned());
    let rendered = render(vm, &volumes, &options)
        .map_err(|e| e.to_string())
        .and_then(|domain| domain.to_xml().map_err(|e| e.to_string()));
    match rendered {
        Ok(xml) => start(
            o,
            vec![
                Action::PrepareDisks,
                Action::Define { xml },
                event(EventType::Normal, reasons::EVENT_CREATED, "VM defined."),
            ],
        ),
        Err(message) => end(o, failed(reasons::INVALID_SPEC, &message)),
    }
}

/// `before`, then the domain's start, reported Running.
fn start(o: &Observed, before: Vec<Action>) -> Plan {
    let mut actions = before;
    actions.push(Action::Start);
    actions.push(event(
        EventType::Normal,
        reasons::EVENT_STARTED,
        "VM started.",
    ));
    let new = status::running(&current_status(o.vm), &o.node.name, &[], o.now);
    actions.extend(write_if_changed(o.vm, new));
    Plan::new(actions, Next::RequeueAfter(ADDRESS_POLL))
}

/// The domain runs: Running, its node and addresses.
/// A running domain's status; `paused` while libvirt holds its vCPUs (phase stays Running).
fn report(o: &Observed, paused: Option<PauseReason>) -> Plan {
    let mut new = status::running(&current_status(o.vm), &o.node.name, &o.addresses, o.now);
    status::set_paused(&mut new, paused, o.now);
    let has_address = new.interfaces.iter().any(|i| i.ip_address.is_some());
    let next = if has_address || !o.node.addresses_possible {
        RESYNC
    } else {
        ADDRESS_POLL
    };
    let mut actions = write_if_changed(o.vm, new);
    // A firing the guest survived (reset, pause, ...): said once, as it happened. After one
    // that stops the guest, it has a while to do so; only then is it a firing it survived, so a
    // later stop of the guest's own is not blamed on it.
    let survived = |f: &Firing| !f.action.stops_guest() || f.age >= WATCHDOG_STOP_GRACE;
    if let Some(fired) = o.run.firing.filter(|f| !f.acknowledged && survived(f)) {
        let message = if fired.action.stops_guest() {
            format!(
                "The guest's watchdog fired with action {}, yet the guest still runs {} s later.",
                fired.action.name(),
                fired.age.as_secs()
            )
        } else {
            format!(
                "The guest's watchdog fired; its action: {}.",
                fired.action.name()
            )
        };
        actions.push(event(EventType::Warning, reasons::WATCHDOG_FIRED, &message));
        actions.push(Action::AcknowledgeWatchdog);
    }
    Plan::new(actions, Next::RequeueAfter(next))
}

/// Records the VM's final phase with a condition and an event, once. The cache can lag behind
/// this agent's own last write: a reconcile queued by the domain's lifecycle event may still
/// see the VM unfinished after a failure was recorded, and must not replace that message with
/// a generic one. So the end is decided against the API server's current object.
fn end(o: &Observed, end: End) -> Plan {
    match &o.latest {
        None => Plan::observe(Need::Latest),
        Some(Some(latest)) if latest.uid() == o.vm.uid() && !latest.phase().is_final() => {
            ending(o, latest, end)
        }
        Some(_) => Plan::wait(),
    }
}

/// How a VM ends: its phase, the Ready condition's reason and message, and the event's reason
/// (Failed when it could not run, Stopped when its domain stopped).
struct End<'a> {
    phase: Phase,
    reason: &'a str,
    message: &'a str,
    event_reason: &'static str,
}

/// The VM could not run as it is.
fn failed<'a>(reason: &'a str, message: &'a str) -> End<'a> {
    End {
        phase: Phase::Failed,
        reason,
        message,
        event_reason: reasons::EVENT_FAILED,
    }
}

/// Its domain stopped.
fn stopped<'a>(phase: Phase, reason: &'a str, message: &'a str) -> End<'a> {
    End {
        phase,
        reason,
        message,
        event_reason: reasons::EVENT_STOPPED,
    }
}

/// The end of the VM whose current status is `current`'s.
fn ending(o: &Observed, current: &VirtualMachine, end: End) -> Plan {
    let End {
        phase,
        reason,
        message,
        event_reason,
    } = end;
    // A crash or a failed start is explained in QEMU's own log: the message says where it is.
    let message = match &o.qemu_log {
        Some(log) if [reasons::CRASHED, reasons::START_FAILED].contains(&reason) => format!(
            "{message} (QEMU's log on node {}: {})",
            o.node.name,
            log.display()
        ),
        _ => message.to_string(),
    };
    let new = status::ended(
        &current_status(current),
        &o.node.name,
        phase,
        reason,
        &message,
        o.now,
    );
    let type_ = if phase == Phase::Succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let mut actions = write_if_changed(current, new);
    actions.push(Action::Event {
        type_,
        reason: event_reason,
        message,
    });
    Plan::new(actions, Next::AwaitChange)
}

/// Deletion: an ACPI shutdown, then, once the guest is off or the deadline has passed, the
/// domain and the VM's folder are removed and the finalizer with them. It never waits inside
/// the reconcile: while the guest shuts down it asks to be looked at again at the deadline,
/// and libvirt's lifecycle event brings it back sooner when the guest powers off. Copes with
/// the VM never having been created.
fn deletion(o: &Observed) -> Plan {
    let vm = o.vm;
    let mut actions = Vec::new();
    if let Some(domain) = owned(o) {
        // A paused guest cannot answer the ACPI button (libvirt refuses to send it): it is
        // stopped at once rather than waited for until its deadline.
        let running = matches!(
            domain.state,
            DomainState::Running | DomainState::Paused(_) | DomainState::Transient
        );
        let paused = matches!(domain.state, DomainState::Paused(_));
        let deadline = stop_deadline(vm, o.now);
        if running && !paused && o.now < deadline {
            if !o.shutdown_sent {
                actions.push(Action::Shutdown);
                actions.push(event(
                    EventType::Normal,
                    reasons::EVENT_SHUTTING_DOWN,
                    "Signaled Graceful Shutdown",
                ));
            }
            let left = o.now.duration_until(deadline).unsigned_abs();
            return Plan::new(actions, Next::RequeueAfter(left.max(MIN_SHUTDOWN_POLL)));
        }
        let message = if running && force_stop_requested(vm) {
            "VM stopping now: an operator forced it"
        } else if paused {
            "VM stopping now: it is paused and cannot shut down by itself"
        } else {
            "VM stopping"
        };
        actions.push(event(EventType::Normal, reasons::EVENT_DELETED, message));
        actions.push(Action::Destroy);
        actions.push(Action::Undefine);
    }
    let uid = uid(vm);
    if check_uid(&uid, "metadata.uid").is_ok() {
        actions.push(Action::RemoveDir { uid });
    }
    actions.push(Action::Forget);
    actions.push(Action::RemoveFinalizer);
    Plan::new(actions, Next::AwaitChange)
}

/// When a VM being deleted must be stopped: the deletion request plus its grace period
/// (bounded, whatever an old object says), or now when an operator forced it. Counted from
/// the request, so an agent restart does not extend it.
fn stop_deadline(vm: &VirtualMachine, now: Timestamp) -> Timestamp {
    if force_stop_requested(vm) {
        return now;
    }
    let grace = vm
        .spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
        .clamp(0, MAX_TERMINATION_GRACE_PERIOD_SECONDS);
    let requested = vm
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    requested
        .saturating_add(SignedDuration::from_secs(grace))
        .unwrap_or(requested)
}

fn current_status(vm: &VirtualMachine) -> VirtualMachineStatus {
    vm.status.clone().unwrap_or_default()
}

/// The status write, if `new` differs from `vm`'s status in more than timestamps.
fn write_if_changed(vm: &VirtualMachine, new: VirtualMachineStatus) -> Vec<Action> {
    if status::differs(&current_status(vm), &new) {
        vec![Action::WriteStatus(Box::new(new))]
    } else {
        Vec::new()
    }
}

fn event(type_: EventType, reason: &'static str, message: &str) -> Action {
    Action::Event {
        type_,
        reason,
        message: message.to_string(),
    }
}
