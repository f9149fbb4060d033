//! Reconciling one VirtualMachine: observe (`observe`), plan (`plan::plan`, pure), execute
//! (`execute`), until the plan has nothing more to observe.
//!
//! Level-triggered and idempotent: it may run any number of times, after any crash, and
//! converges. Nothing in it waits: a VM that must be looked at later (a guest shutting down, a
//! claim not yet bound) is requeued.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use tracing::{Instrument, debug, warn};

use crate::api::VirtualMachine;
use crate::event_log::EventLog;
use crate::events::EventType;
use crate::hypervisor::choice::HypervisorChoice;
use crate::hypervisor::seam::Hypervisor;
use crate::k8s::{error_chain, object_key};
use crate::metrics::{AgentMetrics, ResultLabel};

use super::cluster::Cluster;
use super::execute::{self, Error, Outcome, publish};
use super::observe::observe;
use super::plan::{self, Next};
use super::reasons;

/// After the VM changed under a finalizer write: soon, as the watch brings the new version.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Plans per reconcile: each further one follows something newly observed (inputs, the API
/// server's copy, a failed step), and four cover the longest path (a VM created, its define
/// refused, its end recorded).
const MAX_ROUNDS: usize = 6;

/// Node-side settings of the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: plan::Node,
    /// The domain type, decided once libvirtd first answers.
    pub hypervisor: Arc<HypervisorChoice>,
}

pub struct Context {
    pub cluster: Arc<dyn Cluster>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub metrics: Arc<AgentMetrics>,
    pub events: Arc<EventLog>,
    pub settings: Settings,
    /// Consecutive failures per VM UID, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// UIDs of VMs being deleted whose guest was sent the ACPI shutdown: sent once.
    shutdowns_sent: Mutex<HashSet<String>>,
}

impl Context {
    pub fn new(
        cluster: Arc<dyn Cluster>,
        hypervisor: Arc<dyn Hypervisor>,
        settings: Settings,
        metrics: Arc<AgentMetrics>,
        events: Arc<EventLog>,
    ) -> Self {
        Self {
            cluster,
            hypervisor,
            metrics,
            events,
            settings,
            failures: Mutex::default(),
            shutdowns_sent: Mutex::default(),
        }
    }

    /// Starts every VM's error backoff afresh: for when what they were failing on (libvirtd,
    /// the API server) is back, so that a VM looked at again too early does not wait a minute.
    pub fn forget_failures(&self) {
        self.failures.lock().map(|mut f| f.clear()).ok();
    }

    pub(super) fn shutdown_sent(&self, uid: &str) -> bool {
        self.shutdowns_sent.lock().is_ok_and(|s| s.contains(uid))
    }

    pub(super) fn mark_shutdown_sent(&self, uid: &str) {
        if let Ok(mut sent) = self.shutdowns_sent.lock() {
            sent.insert(uid.to_string());
        }
    }

    pub(super) fn forget_shutdown(&self, uid: &str) {
        if let Ok(mut sent) = self.shutdowns_sent.lock() {
            sent.remove(uid);
        }
    }
}

/// The controller's reconcile function: one span per reconcile, carrying the VM's identity.
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let span = tracing::info_span!(
        "reconcile",
        namespace = %vm.namespace().unwrap_or_default(),
        name = %vm.name_any(),
        uid = %vm.uid().unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let result = reconcile_in_span(&vm, &ctx)
        .instrument(span)
        .await
        .map(|next| match next {
            Next::AwaitChange => Requeue::await_change(),
            Next::RequeueAfter(after) => Requeue::requeue(after),
        });
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel { result: outcome })
        .inc();
    result
}

/// Observe, plan, execute; again while the plan asked for more to be observed.
pub(super) async fn step(vm: &VirtualMachine, ctx: &Context) -> Result<Next, Error> {
    let mut observed = observe(vm, ctx)
        .await
        .inspect_err(|e| execute::count(ctx, e))?;
    for _ in 0..MAX_ROUNDS {
        let plan = plan::plan(&observed);
        match execute::run(&plan.actions, &mut observed, ctx).await? {
            Outcome::Done => return Ok(plan.next),
            Outcome::Again => {}
            Outcome::Conflict => return Ok(Next::RequeueAfter(CONFLICT_RETRY)),
        }
    }
    warn!(vm = %object_key(vm), "reconcile planned {MAX_ROUNDS} times without settling; later again");
    Ok(Next::RequeueAfter(CONFLICT_RETRY))
}

async fn reconcile_in_span(vm: &VirtualMachine, ctx: &Context) -> Result<Next, Error> {
    let result = step(vm, ctx).await;
    let uid = vm.uid().unwrap_or_default();
    match &result {
        Ok(_) => {
            ctx.failures.lock().map(|mut f| f.remove(&uid)).ok();
        }
        Err(err) if err.libvirt_lost() => {
            debug!(vm = %object_key(vm), error = %error_chain(err), "reconcile waits for libvirt");
        }
        Err(err) if err.api_unreachable() => {
            debug!(vm = %object_key(vm), error = %error_chain(err), "reconcile waits for the API server");
        }
        Err(err) => {
            warn!(vm = %object_key(vm), error = %error_chain(err), "reconcile failed");
            publish(
                ctx,
                vm,
                EventType::Warning,
                reasons::EVENT_SYNC_FAILED,
                &error_chain(err),
            )
            .await;
        }
    }
    result
}

/// Retries a failed VM with exponential backoff: 2 s, 4 s, 8 s, ... up to a minute.
pub fn error_policy(vm: Arc<VirtualMachine>, _err: &Error, ctx: Arc<Context>) -> Requeue {
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
    Requeue::requeue(backoff(failures))
}

/// The wait after the `failures`-th failure in a row.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}
