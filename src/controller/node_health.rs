//! Nodes whose agent went silent: no new VMs go there, and their VMs' state is `Unknown`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::warn;

use crate::api::{HEARTBEAT_ANNOTATION, NODE_NAME_LABEL, Phase, SCHEDULABLE_LABEL, VirtualMachine};
use crate::events::EventType;
use crate::k8s::{error_chain, object_key as key};

use super::metrics::ReasonLabel;
use super::scheduling::{Context, reasons};
use super::{status, status_writer};

/// What the health check needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Its agent's `kubevirt.io/schedulable` label says it takes VMs.
    pub schedulable: bool,
    pub heartbeat: Option<Timestamp>,
}

pub fn node_info(node: &Node) -> NodeInfo {
    NodeInfo {
        name: node.name_any(),
        schedulable: node.labels().get(SCHEDULABLE_LABEL).map(String::as_str) == Some("true"),
        heartbeat: node
            .annotations()
            .get(HEARTBEAT_ANNOTATION)
            .and_then(|t| t.parse::<Timestamp>().ok()),
    }
}

/// No heartbeat from the node's agent within `timeout`.
fn is_silent(node: &NodeInfo, now: Timestamp, timeout: SignedDuration) -> bool {
    node.heartbeat
        .is_none_or(|beat| now.duration_since(beat) > timeout)
}

async fn mark_unschedulable(ctx: &Context, node: &str) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {SCHEDULABLE_LABEL: "false"}}});
    match api
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => warn!(node, "the node's agent is silent: no new VMs go there"),
        Err(e) => {
            warn!(node, error = %error_chain(&e), "cannot mark the silent node unschedulable")
        }
    }
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
            is_silent(n, now, timeout).then(|| {
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

/// Takes nodes whose agent went silent out of kube-scheduler's choice for holder pods
/// (`kubevirt.io/schedulable=false`, which the agent's next heartbeat sets back), and marks
/// `Unknown` the VMs of such nodes and of nodes that do not exist; the node's agent sets them
/// right again when it is back.
pub async fn watch_node_health(ctx: Arc<Context>) {
    let period = Duration::from_secs((ctx.heartbeat_timeout.as_secs() / 4).clamp(1, 30) as u64);
    loop {
        tokio::time::sleep(period).await;
        let now = Timestamp::now();
        let nodes: Vec<NodeInfo> = ctx.nodes.state().iter().map(|n| node_info(n)).collect();
        for node in nodes
            .iter()
            .filter(|n| n.schedulable && is_silent(n, now, ctx.heartbeat_timeout))
        {
            mark_unschedulable(&ctx, &node.name).await;
        }
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
            heartbeat,
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
