//! The controller's work on VirtualMachines: presets and placement of new VMs, and `Unknown`
//! for VMs whose node's agent stopped heart-beating.
//!
//! Placement of one VM:
//! 1. Presets of its namespace that match are merged into spec.domain (a conflict fails it).
//! 2. A node is chosen (`placement::choose_node`) from the Node cache and the requests of the
//!    VMs already placed.
//! 3. Status phase Scheduled + nodeName is written first, then the label
//!    `kubevirt.io/nodeName` (with the merged spec and preset annotations) in one replace with
//!    the status write's resourceVersion. The agent sees the VM only once labelled, so its
//!    Running is never overwritten by a late Scheduled, and a VM is placed at most once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::agent::heartbeat::{HEARTBEAT_ANNOTATION, SCHEDULABLE_LABEL};
use crate::agent::status::set_ready;
use crate::api::quantity::{parse_bytes, parse_millicores};
use crate::api::{NODE_NAME_LABEL, Phase, VirtualMachine, VirtualMachinePreset};
use crate::events::{EventRecorder, EventType};
use crate::k8s::{self, error_chain};

use super::placement::{self, NodeInfo, PlacementError, Usage};
use super::presets;

pub mod reasons {
    pub const SCHEDULED: &str = "Scheduled";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const FAILED_SCHEDULING: &str = "FailedScheduling";
    pub const PRESET_CONFLICT: &str = "PresetConflict";
    pub const NODE_UNRESPONSIVE: &str = "NodeUnresponsive";
}

const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(5);

pub struct Context {
    pub client: Client,
    pub recorder: Arc<EventRecorder>,
    pub nodes: Store<Node>,
    pub vms: Store<VirtualMachine>,
    pub presets: Store<VirtualMachinePreset>,
    pub heartbeat_timeout: SignedDuration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing VirtualMachine {vm}")]
    Write {
        vm: String,
        #[source]
        source: kube::Error,
    },
}

fn key(vm: &VirtualMachine) -> String {
    format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())
}

fn write_error(vm: &VirtualMachine) -> impl FnOnce(kube::Error) -> Error {
    let vm = key(vm);
    move |source| Error::Write { vm, source }
}

pub fn node_info(node: &Node) -> NodeInfo {
    let labels = node.labels().clone();
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone().or(s.capacity.clone()))
        .unwrap_or_default();
    NodeInfo {
        name: node.name_any(),
        schedulable: labels.get(SCHEDULABLE_LABEL).map(String::as_str) == Some("true"),
        labels,
        heartbeat: node
            .annotations()
            .get(HEARTBEAT_ANNOTATION)
            .and_then(|t| t.parse::<Timestamp>().ok()),
        allocatable_memory: allocatable
            .get("memory")
            .and_then(|q| parse_bytes(&q.0, "allocatable.memory").ok())
            .unwrap_or(0),
        allocatable_millicores: allocatable
            .get("cpu")
            .and_then(|q| parse_millicores(&q.0, "allocatable.cpu").ok())
            .unwrap_or(0),
    }
}

/// Requests of the VMs placed on each node that still hold their resources.
fn usage_by_node(vms: &[Arc<VirtualMachine>]) -> BTreeMap<String, Usage> {
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    for vm in vms {
        let Some(node) = vm.labels().get(NODE_NAME_LABEL) else {
            continue;
        };
        if vm.phase().is_final() {
            continue;
        }
        let Ok(requests) = placement::requests(&vm.spec) else {
            continue;
        };
        let entry = usage.entry(node.clone()).or_default();
        entry.memory = entry.memory.saturating_add(requests.memory);
        entry.millicores = entry.millicores.saturating_add(requests.millicores);
    }
    usage
}

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let placed = vm.labels().contains_key(NODE_NAME_LABEL);
    if placed || vm.metadata.deletion_timestamp.is_some() || vm.phase().is_final() {
        return Ok(Action::await_change());
    }
    let namespace = vm.namespace().unwrap_or_default();
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let presets: Vec<VirtualMachinePreset> = ctx
        .presets
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| (**p).clone())
        .collect();
    let merged = match presets::apply(&vm, &presets) {
        Ok(merged) => merged,
        Err(e) => return fail(&api, &vm, &ctx, reasons::PRESET_CONFLICT, &error_chain(&e)).await,
    };
    let nodes: Vec<NodeInfo> = ctx.nodes.state().iter().map(|n| node_info(n)).collect();
    let usage = usage_by_node(&ctx.vms.state());
    let node = match placement::choose_node(
        &merged.spec,
        &nodes,
        &usage,
        Timestamp::now(),
        ctx.heartbeat_timeout,
    ) {
        Ok(node) => node,
        Err(PlacementError::InvalidSpec(message)) => {
            return fail(&api, &vm, &ctx, reasons::UNSCHEDULABLE, &message).await;
        }
        Err(e @ PlacementError::NoNode { .. }) => {
            let message = e.to_string();
            let mut status = vm.status.clone().unwrap_or_default();
            let changed = status
                .conditions
                .iter()
                .all(|c| c.message.as_deref() != Some(message.as_str()));
            status.phase = Some(Phase::Pending);
            set_ready(
                &mut status,
                false,
                reasons::UNSCHEDULABLE,
                &message,
                Timestamp::now(),
            );
            if changed {
                k8s::patch_status(&api, &vm, &status)
                    .await
                    .map_err(write_error(&vm))?;
                ctx.recorder
                    .publish(
                        &*vm,
                        EventType::Warning,
                        reasons::FAILED_SCHEDULING,
                        &message,
                    )
                    .await;
            }
            return Ok(Action::requeue(UNSCHEDULABLE_RETRY));
        }
    };
    let mut status = vm.status.clone().unwrap_or_default();
    status.phase = Some(Phase::Scheduled);
    status.node_name = Some(node.clone());
    status.conditions.clear();
    let written = k8s::patch_status(&api, &vm, &status)
        .await
        .map_err(write_error(&vm))?;
    let mut labelled = written;
    labelled.spec = merged.spec;
    labelled.metadata.annotations = merged.metadata.annotations;
    labelled
        .labels_mut()
        .insert(NODE_NAME_LABEL.into(), node.clone());
    match api
        .replace(&vm.name_any(), &PostParams::default(), &labelled)
        .await
    {
        Ok(_) => {}
        // Someone changed the VM meanwhile: look again with the new version.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::ZERO)),
        Err(e) => return Err(write_error(&vm)(e)),
    }
    info!(vm = %key(&vm), node, "placed");
    let note = format!("Placed on node {node}.");
    ctx.recorder
        .publish(&*vm, EventType::Normal, reasons::SCHEDULED, &note)
        .await;
    Ok(Action::await_change())
}

async fn fail(
    api: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    ctx: &Context,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    let mut status = vm.status.clone().unwrap_or_default();
    status.phase = Some(Phase::Failed);
    set_ready(&mut status, false, reason, message, Timestamp::now());
    k8s::patch_status(api, vm, &status)
        .await
        .map_err(write_error(vm))?;
    ctx.recorder
        .publish(vm, EventType::Warning, reason, message)
        .await;
    Ok(Action::await_change())
}

pub fn error_policy(_vm: Arc<VirtualMachine>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(error = %error_chain(err), "scheduling failed");
    Action::requeue(Duration::from_secs(5))
}

/// Marks `Unknown` the VMs of nodes whose heartbeat is older than the timeout; the node's
/// agent sets them right again when it is back.
pub async fn watch_node_health(ctx: Arc<Context>) {
    let period = Duration::from_secs((ctx.heartbeat_timeout.as_secs() / 4).clamp(1, 30) as u64);
    loop {
        tokio::time::sleep(period).await;
        let now = Timestamp::now();
        let stale: Vec<String> = ctx
            .nodes
            .state()
            .iter()
            .map(|n| node_info(n))
            .filter(|n| {
                n.heartbeat
                    .is_none_or(|beat| now.duration_since(beat) > ctx.heartbeat_timeout)
            })
            .map(|n| n.name)
            .collect();
        for vm in ctx.vms.state() {
            let on_stale_node = vm
                .labels()
                .get(NODE_NAME_LABEL)
                .is_some_and(|n| stale.contains(n));
            if !on_stale_node || !matches!(vm.phase(), Phase::Scheduled | Phase::Running) {
                continue;
            }
            let api: Api<VirtualMachine> =
                Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
            let mut status = vm.status.clone().unwrap_or_default();
            status.phase = Some(Phase::Unknown);
            let message = "The node's nodevirt agent stopped reporting; the VM's state is unknown.";
            set_ready(&mut status, false, reasons::NODE_UNRESPONSIVE, message, now);
            match k8s::patch_status(&api, &vm, &status).await {
                Ok(_) => {
                    warn!(vm = %key(&vm), "node unresponsive: VM Unknown");
                    ctx.recorder
                        .publish(
                            &*vm,
                            EventType::Warning,
                            reasons::NODE_UNRESPONSIVE,
                            message,
                        )
                        .await;
                }
                Err(e) => warn!(vm = %key(&vm), error = %e, "cannot mark VM Unknown"),
            }
        }
    }
}
