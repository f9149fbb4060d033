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

use crate::api::preset;
use crate::api::quantity::{parse_bytes, parse_millicores};
use crate::api::virtual_machine::unreadable_message;
use crate::api::{
    HEARTBEAT_ANNOTATION, NODE_NAME_LABEL, Phase, SCHEDULABLE_LABEL, VirtualMachine,
    VirtualMachinePreset,
};
use crate::events::{EventRecorder, EventType};
use crate::k8s::{error_chain, object_key as key};

use super::metrics::{ControllerMetrics, ReasonLabel, Step};
use super::placement::{self, NodeInfo, PlacementError, Usage};
use super::status;
use super::status_writer::{self, StatusWriteError};

pub mod reasons {
    pub const SCHEDULED: &str = "Scheduled";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const FAILED_SCHEDULING: &str = "FailedScheduling";
    pub const PRESET_CONFLICT: &str = "PresetConflict";
    pub const NODE_UNRESPONSIVE: &str = "NodeUnresponsive";
    pub const NODE_NOT_FOUND: &str = "NodeNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(5);

pub struct Context {
    pub client: Client,
    pub recorder: Arc<EventRecorder>,
    pub nodes: Store<Node>,
    pub vms: Store<VirtualMachine>,
    pub presets: Store<VirtualMachinePreset>,
    pub heartbeat_timeout: SignedDuration,
    pub metrics: Arc<ControllerMetrics>,
}

/// One variant per failing step of placing a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The writer's error names the step and the VM already.
    #[error(transparent)]
    WriteStatus(#[from] StatusWriteError),
    #[error("labelling VirtualMachine {vm} with its node and merged presets")]
    Place {
        vm: String,
        #[source]
        source: kube::Error,
    },
}

impl Step for Error {
    fn step(&self) -> &'static str {
        match self {
            Error::WriteStatus(_) => "write_status",
            Error::Place { .. } => "place",
        }
    }
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
    // Placing it would write back a spec nodevirt could not read: it fails here instead.
    if let Some(message) = unreadable_message(&vm) {
        return fail(&vm, &ctx, reasons::INVALID_SPEC, &message).await;
    }
    let presets: Vec<VirtualMachinePreset> = ctx
        .presets
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| (**p).clone())
        .collect();
    let merged = match preset::apply(&vm, &presets) {
        Ok(merged) => merged,
        Err(e) => return fail(&vm, &ctx, reasons::PRESET_CONFLICT, &error_chain(&e)).await,
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
            return fail(&vm, &ctx, reasons::UNSCHEDULABLE, &message).await;
        }
        Err(e @ PlacementError::NoNode { .. }) => {
            let message = e.to_string();
            let wanted = status::not_ready(
                vm.status.as_ref(),
                Phase::Pending,
                reasons::UNSCHEDULABLE,
                &message,
                Timestamp::now(),
            );
            if vm.status.as_ref() != Some(&wanted) {
                status_writer::write(&ctx.client, &*vm, &wanted).await?;
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
    let wanted = status::scheduled(vm.status.as_ref(), &node);
    let written = status_writer::write(&ctx.client, &*vm, &wanted).await?;
    // The replace carries the status write's resourceVersion: it fails if anyone changed the
    // VM in between.
    let mut labelled = (*vm).clone();
    labelled.metadata.resource_version = written;
    labelled.status = Some(wanted);
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
        Err(source) => {
            return Err(Error::Place {
                vm: key(&*vm),
                source,
            });
        }
    }
    info!(vm = %key(&*vm), node, "placed");
    let note = format!("Placed on node {node}.");
    ctx.recorder
        .publish(&*vm, EventType::Normal, reasons::SCHEDULED, &note)
        .await;
    Ok(Action::await_change())
}

async fn fail(
    vm: &VirtualMachine,
    ctx: &Context,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    let wanted = status::not_ready(
        vm.status.as_ref(),
        Phase::Failed,
        reason,
        message,
        Timestamp::now(),
    );
    status_writer::write(&ctx.client, vm, &wanted).await?;
    ctx.recorder
        .publish(vm, EventType::Warning, reason, message)
        .await;
    Ok(Action::await_change())
}

pub fn error_policy(_vm: Arc<VirtualMachine>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(error = %error_chain(err), "scheduling failed");
    Action::requeue(Duration::from_secs(5))
}

/// Why a VM assigned to a node is in an unknown state: the node's agent went silent, or the
/// node does not exist (a label written by hand, a node deleted). Pure.
fn lost_assignment(
    vm: &VirtualMachine,
    nodes: &[NodeInfo],
    now: Timestamp,
    timeout: SignedDuration,
) -> Option<(&'static str, String)> {
    let node = vm.labels().get(NODE_NAME_LABEL)?;
    if vm.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let stale = |since: Timestamp| now.duration_since(since) > timeout;
    match nodes.iter().find(|n| &n.name == node) {
        Some(n) if matches!(vm.phase(), Phase::Scheduled | Phase::Running) => {
            n.heartbeat.is_none_or(stale).then(|| {
                (
                    reasons::NODE_UNRESPONSIVE,
                    "The node's nodevirt agent stopped reporting; the VM's state is unknown."
                        .to_string(),
                )
            })
        }
        Some(_) => None,
        // As silent as a node can be: the same timeout, counted from the VM's creation.
        None if !vm.phase().is_final() && vm.phase() != Phase::Unknown => {
            let created = vm.metadata.creation_timestamp.as_ref().map(|t| t.0)?;
            stale(created).then(|| {
                (
                    reasons::NODE_NOT_FOUND,
                    format!(
                        "The VM is assigned to node {}, which does not exist; its state is unknown.",
                        crate::api::quoted(node)
                    ),
                )
            })
        }
        None => None,
    }
}

/// Marks `Unknown` the VMs of nodes whose heartbeat is older than the timeout, and of nodes
/// that do not exist; the node's agent sets them right again when it is back.
pub async fn watch_node_health(ctx: Arc<Context>) {
    let period = Duration::from_secs((ctx.heartbeat_timeout.as_secs() / 4).clamp(1, 30) as u64);
    loop {
        tokio::time::sleep(period).await;
        let now = Timestamp::now();
        let nodes: Vec<NodeInfo> = ctx.nodes.state().iter().map(|n| node_info(n)).collect();
        for vm in ctx.vms.state() {
            let Some((reason, message)) = lost_assignment(&vm, &nodes, now, ctx.heartbeat_timeout)
            else {
                continue;
            };
            let wanted =
                status::not_ready(vm.status.as_ref(), Phase::Unknown, reason, &message, now);
            match status_writer::write(&ctx.client, &*vm, &wanted).await {
                Ok(_) => {
                    ctx.metrics
                        .vms_unknown
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    warn!(vm = %key(&*vm), reason, "VM Unknown");
                    ctx.recorder
                        .publish(&*vm, EventType::Warning, reason, &message)
                        .await;
                }
                Err(e) => warn!(error = %error_chain(&e), "cannot mark VM Unknown"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, heartbeat: Option<Timestamp>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            schedulable: true,
            labels: Default::default(),
            heartbeat,
            allocatable_memory: 0,
            allocatable_millicores: 0,
        }
    }

    fn vm(node: &str, phase: Option<Phase>, created: Timestamp) -> VirtualMachine {
        let mut vm = VirtualMachine::new("vm", Default::default());
        vm.labels_mut().insert(NODE_NAME_LABEL.into(), node.into());
        vm.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created),
        );
        vm.status = Some(crate::api::VirtualMachineStatus {
            phase,
            ..Default::default()
        });
        vm
    }

    #[test]
    fn vms_of_silent_or_missing_nodes_are_unknown_after_the_timeout() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let timeout = SignedDuration::from_secs(300);
        let long_ago = now - SignedDuration::from_secs(301);
        let nodes = [node("live", Some(now)), node("silent", Some(long_ago))];
        let reason = |vm: &VirtualMachine| lost_assignment(vm, &nodes, now, timeout).map(|r| r.0);
        assert_eq!(reason(&vm("live", Some(Phase::Running), long_ago)), None);
        assert_eq!(
            reason(&vm("silent", Some(Phase::Running), long_ago)),
            Some(reasons::NODE_UNRESPONSIVE)
        );
        assert_eq!(
            reason(&vm("silent", Some(Phase::Succeeded), long_ago)),
            None
        );
        for phase in [
            None,
            Some(Phase::Pending),
            Some(Phase::Scheduled),
            Some(Phase::Running),
        ] {
            assert_eq!(
                reason(&vm("ghost", phase, long_ago)),
                Some(reasons::NODE_NOT_FOUND),
                "{phase:?}"
            );
        }
        assert_eq!(
            reason(&vm("ghost", None, now)),
            None,
            "the node may be joining"
        );
        assert_eq!(
            reason(&vm("ghost", Some(Phase::Unknown), long_ago)),
            None,
            "once"
        );
        let (_, message) =
            lost_assignment(&vm("ghost", None, long_ago), &nodes, now, timeout).unwrap();
        assert!(
            message.contains("\"ghost\", which does not exist"),
            "{message}"
        );
    }
}
