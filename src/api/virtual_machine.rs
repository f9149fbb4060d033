//! The VirtualMachine kind: one mortal guest, placed on a node and run by that node's agent.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeAffinity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::CustomResource;
use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::domain_spec::DomainSpec;
use super::schema::{bound_node_affinity, rule, unique};
use super::volume::Volume;
use crate::domain::limits::{MAX_TERMINATION_GRACE_PERIOD_SECONDS, MAX_VOLUMES};
use crate::domain::values::IDE_BUS;

/// Grace period for an ACPI shutdown on delete, when the VM does not set one.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;

/// `kubectl annotate vm NAME nodevirt.io/force-stop=true`: a VM being deleted is stopped now
/// instead of at the end of its grace period (a guest that ignores ACPI, a node to drain).
/// Only honoured on deletion: a running VM is stopped by deleting it.
pub const FORCE_STOP_ANNOTATION: &str = "nodevirt.io/force-stop";

/// Whether an operator asked for the VM to be stopped without waiting for its guest.
pub fn force_stop_requested(vm: &VirtualMachine) -> bool {
    vm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORCE_STOP_ANNOTATION))
        .is_some_and(|v| v == "true")
}

// kube's printcolumn(...) entries repeat `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    shortname = "vm",
    shortname = "vms",
    category = "all",
    category = "kubevirt",
    status = "VirtualMachineStatus",
    doc = "A virtual machine: mortal, like a Pod; it runs once on one node.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.interfaces[0].ipAddress"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = spec_rules()))]
pub struct VirtualMachineSpec {
    pub domain: DomainSpec,
    /// Labels a node must have for the VM to be placed there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_VOLUMES),
        extend("x-kubernetes-validations" = [unique("self", "name", "volume names must be unique")]),
    )]
    pub volumes: Vec<Volume>,
    /// Seconds between the ACPI shutdown request and a forced stop on delete (default 30,
    /// at most an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_TERMINATION_GRACE_PERIOD_SECONDS))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// The rules that relate `spec.domain` to `spec.volumes`, or hold only for a VM's whole
/// domain (a preset's partial one may be completed by the VM's own leaves).
fn spec_rules() -> Vec<kube::core::Rule> {
    let disks = "self.domain.devices.disks";
    let has_disks = "has(self.domain.devices) && has(self.domain.devices.disks)";
    let has_volume = "has(self.volumes) && self.volumes.exists(v, v.name == d.volumeName)";
    let on_ide =
        |kind: &str| format!("(has(d.{kind}) && has(d.{kind}.bus) && d.{kind}.bus == '{IDE_BUS}')");
    vec![
        rule(
            format!("!({has_disks}) || {disks}.all(d, {has_volume})"),
            "every disk's volumeName must be the name of one of spec.volumes",
        )
        .field_path(".domain.devices.disks"),
        rule(
            format!(
                "!(has(self.domain.machine) && self.domain.machine.type.contains('q35') && {has_disks}) || {disks}.all(d, !{} && !{})",
                on_ide("disk"),
                on_ide("cdrom")
            ),
            "the q35 machine type has no IDE controller; use sata, or machine type pc",
        )
        .field_path(".domain.devices.disks"),
    ]
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// Node affinity scheduling rules, as in a Pod; a preferred term's weight is 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bound_node_affinity)]
    pub node_affinity: Option<NodeAffinity>,
}

/// The lifecycle of a VirtualMachine. Succeeded and Failed are final.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not yet placed on a node.
    #[default]
    Pending,
    /// The controller is choosing a node.
    Scheduling,
    /// A node was chosen; its agent has not started the domain yet.
    Scheduled,
    /// The domain is running (or paused) on its node.
    Running,
    /// The guest shut down, or the VM was stopped on request.
    Succeeded,
    /// The guest crashed, or the VM could not be started.
    Failed,
    /// The node's agent stopped reporting.
    Unknown,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<VirtualMachineNetworkInterface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineNetworkInterface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A status condition, shaped like the ones of core Kubernetes objects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
}

/// The one condition type nodevirt sets on a VM, by the agent and by the controller.
pub const CONDITION_READY: &str = "Ready";

/// Sets the Ready condition, keeping its transition time when nothing changed.
/// A condition of `type_` with status True, keeping the transition time of the same condition
/// in `previous`, so an unchanged one is not written again.
pub fn true_condition(
    previous: &[Condition],
    type_: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .and_then(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: since.or(Some(Time(now))),
        last_probe_time: None,
    }
}

pub fn set_ready(
    status: &mut VirtualMachineStatus,
    ready: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let value = if ready { "True" } else { "False" };
    let previous = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY);
    let transition = match previous {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    let condition = Condition {
        type_: CONDITION_READY.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: transition,
        last_probe_time: None,
    };
    status.conditions.retain(|c| c.type_ != CONDITION_READY);
    status.conditions.push(condition);
}

impl VirtualMachine {
    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

/// Marks, in memory only, a VM the API server holds but nodevirt's types cannot read: its
/// value says which field is at fault. `crate::watch` sets it (and drops a user's copy), so
/// a VM the agent cannot read still reaches its reconcile, which fails it with the reason
/// instead of leaving it without status.
pub const UNREADABLE_ANNOTATION: &str = "nodevirt.io/unreadable";

/// The stand-in for an unreadable VM: its metadata and status, an empty spec, and the mark.
pub fn unreadable(
    mut meta: ObjectMeta,
    status: Option<VirtualMachineStatus>,
    problem: String,
) -> VirtualMachine {
    meta.annotations
        .get_or_insert_default()
        .insert(UNREADABLE_ANNOTATION.into(), problem);
    VirtualMachine {
        metadata: meta,
        spec: VirtualMachineSpec::default(),
        status,
    }
}

/// What the status of such a stand-in says, when it is one.
pub fn unreadable_message(vm: &VirtualMachine) -> Option<String> {
    unreadable_problem(vm)
        .map(|problem| format!("The VM cannot be read: {}", super::quoted(problem)))
}

/// Why the VM could not be read, when it is such a stand-in.
pub fn unreadable_problem(vm: &VirtualMachine) -> Option<&str> {
    vm.metadata
        .annotations
        .as_ref()?
        .get(UNREADABLE_ANNOTATION)
        .map(String::as_str)
}
