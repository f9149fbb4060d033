//! Reconciling one VirtualMachine: observe (the VM from the cache, its domain from libvirt),
//! plan (`plan::plan`, pure), apply (files, libvirt, status, events).
//!
//! Level-triggered and idempotent: it may run any number of times, after any crash, and
//! converges. Deletion goes through kube-runtime's finalizer helper; cleanup copes with apply
//! never having run.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use tracing::{Instrument, debug, info, warn};

use crate::api::virtual_machine::{
    DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS, force_stop_requested, unreadable_message,
};
use crate::api::{Phase, VirtualMachine, VirtualMachineStatus};
use crate::domain::limits::MAX_TERMINATION_GRACE_PERIOD_SECONDS;
use crate::domain::names::check_uid;
use crate::domain::{RenderOptions, ResolvedVolume, domain_name, render};
use crate::events::{EventRecorder, EventType};
use crate::hypervisor::{DomainState, HypervisorError, Libvirt};
use crate::k8s::{self, error_chain};
use crate::metrics::{AgentMetrics, ResultLabel};
use crate::storage::files::{StorageError, remove_vm_dir};
use crate::storage::layout::{VmLayout, resolve_volumes};
use crate::storage::registry::{Fetch, Puller};

use super::disks::{self, DiskError};
use super::event_log::EventLog;
use super::finalizer::{self, Stage};
use super::hypervisor_choice::HypervisorChoice;
use super::inputs::{InputError, gather};
use super::plan::{Step, plan};
use super::{reasons, status};

/// After the VM changed under a finalizer write: soon, as the watch brings the new version.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);
/// How often a running VM without an address is looked at again.
const ADDRESS_POLL: Duration = Duration::from_secs(2);
/// Periodic resync of a running VM, besides libvirt's events.
const RESYNC: Duration = Duration::from_secs(60);
const WAITING_RETRY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Node-side settings of the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub state_dir: PathBuf,
    pub network: Option<String>,
    /// The domain type, decided once libvirtd first answers.
    pub hypervisor: Arc<HypervisorChoice>,
}

pub struct Context {
    pub client: Client,
    pub libvirt: Arc<Libvirt>,
    pub puller: Puller,
    pub metrics: Arc<AgentMetrics>,
    pub events: Arc<EventLog>,
    pub recorder: EventRecorder,
    pub settings: Settings,
    /// Consecutive failures per VM UID, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// UIDs of VMs being deleted whose guest was sent the ACPI shutdown: sent once.
    shutdowns_requested: Mutex<HashSet<String>>,
}

impl Context {
    pub fn new(
        client: Client,
        libvirt: Arc<Libvirt>,
        puller: Puller,
        recorder: EventRecorder,
        settings: Settings,
        metrics: Arc<AgentMetrics>,
        events: Arc<EventLog>,
    ) -> Self {
        Self {
            client,
            libvirt,
            puller,
            metrics,
            events,
            recorder,
            settings,
            failures: Mutex::default(),
            shutdowns_requested: Mutex::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("reading VM {vm}")]
    Read {
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of VM {vm}")]
    Status {
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the finalizer of VM {vm}")]
    Finalizer {
        vm: String,
        #[source]
        source: kube::Error,
    },
}

pub(super) fn key(vm: &VirtualMachine) -> String {
    format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())
}

impl Error {
    /// libvirtd is away: the node's problem, logged once by the link, not an event per VM.
    fn libvirt_lost(&self) -> bool {
        matches!(self, Error::Hypervisor(e) if e.is_connection_lost())
    }

    /// The API server did not answer (an outage, not a refusal): the watch's recovery looks
    /// at every VM again, and an event about it could not be recorded anyway.
    fn api_unreachable(&self) -> bool {
        match self {
            Error::Read { source, .. }
            | Error::Status { source, .. }
            | Error::Finalizer { source, .. } => !matches!(source, kube::Error::Api(_)),
            _ => false,
        }
    }
}

/// The controller's reconcile function: one span per reconcile, carrying the VM's identity.
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        namespace = %vm.namespace().unwrap_or_default(),
        name = %vm.name_any(),
        uid = %vm.uid().unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let metrics = Arc::clone(&ctx.metrics);
    let result = reconcile_in_span(vm, ctx).instrument(span).await;
    metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics
        .reconciles
        .get_or_create(&ResultLabel { result: outcome })
        .inc();
    if let Err(Error::Hypervisor(_)) = &result {
        metrics.libvirt_errors.inc();
    }
    result
}

/// Adds (`present`) or removes the agent's finalizer; false when the VM changed meanwhile
/// (or is gone): the watch brings the new version, which is reconciled in turn.
async fn set_finalizer(vm: &VirtualMachine, ctx: &Context, present: bool) -> Result<bool, Error> {
    match finalizer::set(&ctx.client, vm, present).await {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(source) => Err(Error::Finalizer {
            vm: key(vm),
            source,
        }),
    }
}

/// One step of the VM's life: the finalizer first, then what the VM's state calls for.
async fn step(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    match finalizer::stage(vm) {
        Stage::Released => Ok(Action::await_change()),
        Stage::Deleting => match cleanup(vm, ctx).await? {
            Some(wait) => Ok(Action::requeue(wait)),
            None => {
                set_finalizer(vm, ctx, false).await?;
                Ok(Action::await_change())
            }
        },
        Stage::Live { finalized } => {
            // The finalizer before anything that would need cleaning up.
            if !finalized && !set_finalizer(vm, ctx, true).await? {
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            match unreadable_message(vm) {
                Some(message) => super::unreadable::fail(vm, &message, ctx).await,
                None => apply(vm, ctx).await,
            }
        }
    }
}

async fn reconcile_in_span(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = step(&vm, &ctx).await;
    let uid = vm.uid().unwrap_or_default();
    match &result {
        Ok(_) => {
            ctx.failures.lock().map(|mut f| f.remove(&uid)).ok();
        }
        Err(err) if err.libvirt_lost() => {
            debug!(vm = %key(&vm), error = %error_chain(err), "reconcile waits for libvirt");
        }
        Err(err) if err.api_unreachable() => {
            debug!(vm = %key(&vm), error = %error_chain(err), "reconcile waits for the API server");
        }
        Err(err) => {
            warn!(vm = %key(&vm), error = %error_chain(err), "reconcile failed");
            publish(
                &ctx,
                &vm,
                EventType::Warning,
                reasons::EVENT_SYNC_FAILED,
                &error_chain(err),
            )
            .await;
        }
    }
    result
}

/// Retries a failed VM with exponential backoff: 1 s, 2 s, 4 s, ... up to a minute.
pub fn error_policy(vm: Arc<VirtualMachine>, _err: &Error, ctx: Arc<Context>) -> Action {
    let uid = vm.uid().unwrap_or_default();
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(uid).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
    Action::requeue(delay)
}

pub(super) async fn publish(
    ctx: &Context,
    vm: &VirtualMachine,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    ctx.events
        .record(&vm.uid().unwrap_or_default(), type_.as_str(), reason, note);
    ctx.recorder.publish(vm, type_, reason, note).await;
}

async fn write_status(
    ctx: &Context,
    vm: &VirtualMachine,
    new: &VirtualMachineStatus,
) -> Result<(), Error> {
    let current = vm.status.clone().unwrap_or_default();
    if !status::differs(&current, new) {
        return Ok(());
    }
    let api: Api<VirtualMachine> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    k8s::patch_status(&api, vm, new)
        .await
        .map(drop)
        .map_err(|source| Error::Status {
            vm: key(vm),
            source,
        })
}

/// Records that the VM failed for good, with a condition and a Warning event.
async fn fail(
    ctx: &Context,
    vm: &VirtualMachine,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    record_end(
        ctx,
        vm,
        Phase::Failed,
        reason,
        message,
        reasons::EVENT_FAILED,
    )
    .await
}

/// A crash or a failed start is explained in QEMU's own log: the message says where it is.
fn with_qemu_log(ctx: &Context, vm: &VirtualMachine, reason: &str, message: &str) -> String {
    let domain = domain_name(&vm.namespace().unwrap_or_default(), &vm.name_any());
    match ctx.libvirt.qemu_log(&domain) {
        Some(log) if [reasons::CRASHED, reasons::START_FAILED].contains(&reason) => format!(
            "{message} (QEMU's log on node {}: {})",
            ctx.settings.node,
            log.display()
        ),
        _ => message.to_string(),
    }
}

/// Records the VM's final phase with a condition and an event, once. The cache can lag behind
/// this agent's own last write: a reconcile queued by the domain's lifecycle event may still
/// see the VM unfinished after `fail` recorded why, and must not replace that message with the
/// generic one. So the end is checked against the API server's current object first (the
/// controller runs one reconcile per VM at a time, so nothing of ours writes in between).
async fn record_end(
    ctx: &Context,
    vm: &VirtualMachine,
    phase: Phase,
    reason: &str,
    message: &str,
    event_reason: &str,
) -> Result<Action, Error> {
    let api: Api<VirtualMachine> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let latest = api
        .get_opt(&vm.name_any())
        .await
        .map_err(|source| Error::Read {
            vm: key(vm),
            source,
        })?;
    let Some(latest) = latest.filter(|latest| latest.uid() == vm.uid()) else {
        return Ok(Action::await_change());
    };
    if latest.phase().is_final() {
        return Ok(Action::await_change());
    }
    let message = &with_qemu_log(ctx, vm, reason, message);
    info!(vm = %key(vm), phase = ?phase, reason, message, "VM ended");
    let current = latest.status.clone().unwrap_or_default();
    let new = status::ended(
        &current,
        &ctx.settings.node,
        phase,
        reason,
        message,
        Timestamp::now(),
    );
    write_status(ctx, &latest, &new).await?;
    let type_ = if phase == Phase::Succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(ctx, vm, type_, event_reason, message).await;
    Ok(Action::await_change())
}

async fn apply(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    let uid = vm.uid().unwrap_or_default();
    if let Err(e) = check_uid(&uid, "metadata.uid") {
        return fail(ctx, vm, reasons::INVALID_SPEC, &e.to_string()).await;
    }
    let name = domain_name(&vm.namespace().unwrap_or_default(), &vm.name_any());
    let lookup = name.clone();
    let observed = ctx.libvirt.run(move |lv| lv.status(&lookup)).await?;
    match plan(vm.phase(), &uid, observed.as_ref()) {
        Step::Create => create(vm, ctx, &uid, &name).await,
        Step::Start => start(vm, ctx, &name).await,
        Step::RemoveStale { old_uid } => {
            info!(vm = %key(vm), old_uid, "removing the domain of an earlier VM of the same name");
            remove_domain(ctx, &name).await?;
            if check_uid(&old_uid, "domain uuid").is_ok() {
                remove_vm_dir(VmLayout::new(&ctx.settings.state_dir, &old_uid).dir()).await?;
            }
            Ok(Action::requeue(Duration::ZERO))
        }
        Step::Report => report(vm, ctx, &name).await,
        Step::Finish {
            phase,
            reason,
            message,
        } => record_end(ctx, vm, phase, reason, message, reasons::EVENT_STOPPED).await,
        Step::Wait if vm.phase().is_final() => Ok(Action::await_change()),
        Step::Wait => Ok(Action::requeue(ADDRESS_POLL)),
    }
}

async fn create(
    vm: &VirtualMachine,
    ctx: &Context,
    uid: &str,
    name: &str,
) -> Result<Action, Error> {
    // Decided on connecting, before the first define; a reconcile can only get here in the
    // moment between the connection and the decision. The link resyncs every VM after it.
    let Some(domain_type) = ctx.settings.hypervisor.domain_type() else {
        debug!(vm = %key(vm), "waiting for the hypervisor to be chosen");
        return Ok(Action::requeue(WAITING_RETRY));
    };
    let layout = VmLayout::new(&ctx.settings.state_dir, uid);
    let options = RenderOptions {
        domain_type,
        network: ctx.settings.network.clone(),
        console_log: layout.console_log().display().to_string(),
        node: Some(ctx.settings.node.clone()),
    };
    // Check the whole spec before reading anything it names (claims, Secrets, images): a bad
    // name must fail the VM, never reach a lookup. Claims stand in as block devices, which
    // every disk kind accepts.
    let stand_in = resolve_volumes(&vm.spec, &layout, |_| {
        Some(ResolvedVolume::Block {
            path: "/dev/null".into(),
        })
    });
    if let Err(e) = render(vm, &stand_in, &options) {
        return fail(ctx, vm, reasons::INVALID_SPEC, &e.to_string()).await;
    }
    let inputs = match gather(&ctx.client, &ctx.puller, vm).await {
        Ok(inputs) => inputs,
        Err(InputError::Invalid(message)) => {
            return fail(ctx, vm, reasons::MISSING_INPUT, &message).await;
        }
        Err(InputError::InvalidSpec(message)) => {
            return fail(ctx, vm, reasons::INVALID_SPEC, &message).await;
        }
        Err(InputError::DiskFull(message)) => {
            return fail(ctx, vm, reasons::STORAGE_FAILED, &message).await;
        }
        Err(InputError::Waiting(message)) => {
            let mut new = vm.status.clone().unwrap_or_default();
            status::set_ready(
                &mut new,
                false,
                reasons::MISSING_INPUT,
                &message,
                Timestamp::now(),
            );
            write_status(ctx, vm, &new).await?;
            return Ok(Action::requeue(WAITING_RETRY));
        }
        Err(e) => return Err(e.into()),
    };
    for fetch in &inputs.fetches {
        let result = match fetch {
            Fetch::Pulled => "pulled",
            Fetch::Cached => "cached",
        };
        ctx.metrics
            .registry_fetches
            .get_or_create(&ResultLabel { result })
            .inc();
    }
    let volumes = resolve_volumes(&vm.spec, &layout, |claim| inputs.claims.get(claim).cloned());
    let rendered = render(vm, &volumes, &options)
        .map_err(|e| e.to_string())
        .and_then(|domain| domain.to_xml().map_err(|e| e.to_string()));
    let xml = match rendered {
        Ok(xml) => xml,
        Err(message) => return fail(ctx, vm, reasons::INVALID_SPEC, &message).await,
    };
    let hostname = vm.name_any();
    match disks::prepare(&vm.spec, &layout, uid, &hostname, &inputs, &ctx.libvirt).await {
        Ok(()) => {}
        // libvirtd went away while sizing a claim's image: not the VM's fault, try again.
        Err(DiskError::Backing { source, .. }) if source.is_connection_lost() => {
            return Err(source.into());
        }
        Err(e) => {
            if matches!(e, DiskError::Backing { .. }) {
                ctx.metrics.libvirt_errors.inc();
            }
            return fail(ctx, vm, reasons::STORAGE_FAILED, &error_chain(&e)).await;
        }
    }
    let domain = name.to_string();
    if let Err(e) = ctx.libvirt.run(move |lv| lv.define(&domain, &xml)).await {
        if e.is_connection_lost() {
            return Err(e.into());
        }
        ctx.metrics.libvirt_errors.inc();
        return fail(ctx, vm, reasons::DEFINE_FAILED, &error_chain(&e)).await;
    }
    publish(
        ctx,
        vm,
        EventType::Normal,
        reasons::EVENT_CREATED,
        "VM defined.",
    )
    .await;
    start(vm, ctx, name).await
}

async fn start(vm: &VirtualMachine, ctx: &Context, name: &str) -> Result<Action, Error> {
    let domain = name.to_string();
    if let Err(e) = ctx.libvirt.run(move |lv| lv.start(&domain)).await {
        if e.is_connection_lost() {
            return Err(e.into());
        }
        ctx.metrics.libvirt_errors.inc();
        return fail(ctx, vm, reasons::START_FAILED, &error_chain(&e)).await;
    }
    publish(
        ctx,
        vm,
        EventType::Normal,
        reasons::EVENT_STARTED,
        "VM started.",
    )
    .await;
    let current = vm.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let new = status::running(&current, &ctx.settings.node, &[], now);
    write_status(ctx, vm, &new).await?;
    if let Some(created) = &vm.metadata.creation_timestamp {
        let seconds = now.duration_since(created.0).as_secs_f64();
        ctx.metrics
            .creation_to_running_seconds
            .observe(seconds.max(0.0));
    }
    Ok(Action::requeue(ADDRESS_POLL))
}

async fn report(vm: &VirtualMachine, ctx: &Context, name: &str) -> Result<Action, Error> {
    let domain = name.to_string();
    let addresses = ctx.libvirt.run(move |lv| lv.addresses(&domain)).await?;
    let current = vm.status.clone().unwrap_or_default();
    let new = status::running(&current, &ctx.settings.node, &addresses, Timestamp::now());
    write_status(ctx, vm, &new).await?;
    let has_address = new.interfaces.iter().any(|i| i.ip_address.is_some());
    // The test driver has no network: polling it for addresses would never end.
    let can_have_address = ctx.settings.network.is_some() && !ctx.libvirt.uri().starts_with("test");
    Ok(Action::requeue(if has_address || !can_have_address {
        RESYNC
    } else {
        ADDRESS_POLL
    }))
}

async fn remove_domain(ctx: &Context, name: &str) -> Result<(), Error> {
    let domain = name.to_string();
    ctx.libvirt
        .run(move |lv| {
            lv.destroy(&domain)?;
            lv.undefine(&domain)
        })
        .await?;
    Ok(())
}

/// When a VM being deleted must be stopped: the deletion request plus its grace period
/// (bounded, whatever an old object says), or now when an operator forced it. Counted from
/// the request, so an agent restart does not extend it. Pure.
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

/// Deletion: an ACPI shutdown, then, once the guest is off or the deadline has passed, the
/// domain and the VM's folder are removed (`None`: done). It never waits inside the
/// reconcile: while the guest shuts down it returns the time left (`Some`), to be looked at
/// again then, and libvirt's lifecycle event brings it back sooner when the guest powers off.
/// Copes with apply never having run.
async fn cleanup(vm: &VirtualMachine, ctx: &Context) -> Result<Option<Duration>, Error> {
    let uid = vm.uid().unwrap_or_default();
    let name = domain_name(&vm.namespace().unwrap_or_default(), &vm.name_any());
    let lookup = name.clone();
    let observed = ctx.libvirt.run(move |lv| lv.status(&lookup)).await?;
    let owned = observed
        .as_ref()
        .filter(|d| d.uuid.eq_ignore_ascii_case(&uid));
    if let Some(domain) = owned {
        let running = matches!(
            domain.state,
            DomainState::Running | DomainState::Paused | DomainState::Transient
        );
        let now = Timestamp::now();
        let deadline = stop_deadline(vm, now);
        if running && now < deadline {
            if ctx
                .shutdowns_requested
                .lock()
                .is_ok_and(|mut s| s.insert(uid.clone()))
            {
                let domain = name.clone();
                ctx.libvirt.run(move |lv| lv.shutdown(&domain)).await?;
                publish(
                    ctx,
                    vm,
                    EventType::Normal,
                    reasons::EVENT_SHUTTING_DOWN,
                    "Signaled Graceful Shutdown",
                )
                .await;
            }
            let left = now.duration_until(deadline).unsigned_abs();
            return Ok(Some(left.max(Duration::from_millis(100))));
        }
        if running && force_stop_requested(vm) {
            info!(vm = %key(vm), "stopping the VM now: an operator forced it");
        }
        publish(
            ctx,
            vm,
            EventType::Normal,
            reasons::EVENT_DELETED,
            "VM stopping",
        )
        .await;
        remove_domain(ctx, &name).await?;
    }
    if check_uid(&uid, "metadata.uid").is_ok() {
        remove_vm_dir(VmLayout::new(&ctx.settings.state_dir, &uid).dir()).await?;
    }
    ctx.events.forget(&uid);
    ctx.shutdowns_requested
        .lock()
        .map(|mut s| s.remove(&uid))
        .ok();
    info!(vm = %key(vm), "VM cleaned up");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::virtual_machine::FORCE_STOP_ANNOTATION;

    fn deleted_vm(grace: Option<i64>, annotations: &[(&str, &str)]) -> VirtualMachine {
        let mut vm = VirtualMachine::new("vm", Default::default());
        vm.spec.termination_grace_period_seconds = grace;
        vm.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(1_800_000_000).unwrap(),
            ));
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
        let after =
            |vm: &VirtualMachine| stop_deadline(vm, now).duration_since(requested).as_secs();
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
}
