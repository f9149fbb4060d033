//! OfflineVirtualMachine and VirtualMachineReplicaSet: both keep VirtualMachines made from a
//! template, owned through an owner reference (so deleting the owner deletes them, by the
//! garbage collector). They read owned VMs from the API, not a cache, so a VM just created is
//! never created twice.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::replica_set::GENERATED_NAME_SUFFIX_LEN;
use crate::api::selector::matches;
use crate::api::virtual_machine::Condition;
use crate::api::{OfflineVirtualMachine, Phase, VirtualMachine, VirtualMachineReplicaSet};
use crate::events::{EventRecorder, EventType};
use crate::k8s::{error_chain, object_key as key};

use super::backoff::RecreateBackoff;
use super::metrics::{ControllerLabel, ControllerMetrics, Step, controllers};
use super::status;
use super::status_writer::{self, StatusWriteError};

pub mod reasons {
    pub const BACK_OFF: &str = "BackOff";
    pub const SUCCESSFUL_CREATE: &str = "SuccessfulCreate";
    pub const SUCCESSFUL_DELETE: &str = "SuccessfulDelete";
    pub const NAME_TAKEN: &str = "VirtualMachineExists";
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    pub const FAILED_CREATE: &str = "FailedCreate";
    pub const FAILED_DELETE: &str = "FailedDelete";
    pub const SUCCESSFUL_PAUSED: &str = "SuccessfulPaused";
    pub const SUCCESSFUL_RESUMED: &str = "SuccessfulResumed";
}

pub struct Context {
    pub client: Client,
    pub recorder: Arc<EventRecorder>,
    pub backoff: RecreateBackoff,
    pub metrics: Arc<ControllerMetrics>,
}

/// A kind that owns VirtualMachines, and the controller that keeps them.
pub trait Owner: Resource<DynamicType = ()> + ResourceExt {
    const CONTROLLER: &'static str;
}

impl Owner for OfflineVirtualMachine {
    const CONTROLLER: &'static str = controllers::OFFLINE_VIRTUAL_MACHINE;
}

impl Owner for VirtualMachineReplicaSet {
    const CONTROLLER: &'static str = controllers::REPLICA_SET;
}

/// The condition type saying that an owner's VMs keep failing or cannot be created or deleted
/// (KubeVirt's ReplicaSet condition of the same name).
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// The condition type of a ReplicaSet whose spec.paused is true.
pub const REPLICA_PAUSED: &str = "ReplicaPaused";

/// One variant per failing step of a reconcile; `owner` is `<namespace>/<name>`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the VirtualMachine of {owner}")]
    ReadVm {
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the VirtualMachines of {owner}")]
    ListVms {
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating a VirtualMachine for {owner}")]
    CreateVm {
        owner: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting VirtualMachine {vm} of {owner}")]
    DeleteVm {
        owner: String,
        vm: String,
        #[source]
        source: kube::Error,
    },
    // The writer's error names the step and the object already.
    #[error(transparent)]
    WriteStatus(#[from] StatusWriteError),
}

impl Step for Error {
    fn step(&self) -> &'static str {
        match self {
            Error::ReadVm { .. } => "read_vm",
            Error::ListVms { .. } => "list_vms",
            Error::CreateVm { .. } => "create_vm",
            Error::DeleteVm { .. } => "delete_vm",
            Error::WriteStatus(_) => "write_status",
        }
    }
}

pub fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(error = %error_chain(err), "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn owned_by(vm: &VirtualMachine, uid: &str) -> bool {
    vm.owner_references()
        .iter()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// `<name>` followed by 5 random lowercase letters, as the API text's `replicanmgjl`.
pub fn generated_name(base: &str) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Timestamp::now().as_nanosecond() as u128);
    let mut bits = hasher.finish();
    let suffix: String = (0..GENERATED_NAME_SUFFIX_LEN)
        .map(|_| {
            let letter = (b'a' + (bits % 26) as u8) as char;
            bits /= 26;
            letter
        })
        .collect();
    format!("{base}{suffix}")
}

async fn create_vm<K: Owner>(
    ctx: &Context,
    api: &Api<VirtualMachine>,
    owner: &K,
    mut vm: VirtualMachine,
) -> Result<(), Error> {
    vm.metadata.owner_references = controller_ref(owner).map(|r| vec![r]);
    let created = api
        .create(&PostParams::default(), &vm)
        .await
        .map_err(|source| Error::CreateVm {
            owner: key(owner),
            source,
        })?;
    ctx.metrics
        .vms_created
        .get_or_create(&ControllerLabel {
            controller: K::CONTROLLER,
        })
        .inc();
    let note = format!("Created virtual machine {}", created.name_any());
    info!(owner = %owner.name_any(), vm = %created.name_any(), "created VM");
    ctx.recorder
        .publish(owner, EventType::Normal, reasons::SUCCESSFUL_CREATE, &note)
        .await;
    Ok(())
}

async fn delete_vm<K: Owner>(
    ctx: &Context,
    api: &Api<VirtualMachine>,
    owner: &K,
    vm: &VirtualMachine,
) -> Result<(), Error> {
    match api.delete(&vm.name_any(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::DeleteVm {
                owner: key(owner),
                vm: vm.name_any(),
                source,
            });
        }
    }
    ctx.metrics
        .vms_deleted
        .get_or_create(&ControllerLabel {
            controller: K::CONTROLLER,
        })
        .inc();
    let note = format!("Deleted virtual machine {}", vm.name_any());
    ctx.recorder
        .publish(owner, EventType::Normal, reasons::SUCCESSFUL_DELETE, &note)
        .await;
    Ok(())
}

/// Failed, and not because its holder pod was evicted, preempted or deleted: such a VM says
/// nothing about its template, and is replaced at once, as a ReplicaSet's pod would be.
fn failed_of_itself(vm: &VirtualMachine) -> bool {
    use crate::api::holder::reservation::{EVICTED, POD_DELETED, PREEMPTED};
    let disrupted = vm.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && [EVICTED, PREEMPTED, POD_DELETED].contains(&c.reason.as_deref().unwrap_or(""))
        })
    });
    vm.phase() == Phase::Failed && !disrupted
}

/// Counts the failed VMs among `deleted` for `owner`; while it must wait before creating
/// another, returns the wait and the `ReplicaFailure` condition saying why (kept from
/// `previous` conditions when nothing changed, so an unchanged status is not written again).
fn backing_off(
    ctx: &Context,
    owner: &str,
    deleted: &[&VirtualMachine],
    previous: &[Condition],
) -> Option<(Duration, Condition)> {
    let now = std::time::Instant::now();
    let failed: Vec<String> = deleted
        .iter()
        .filter(|vm| failed_of_itself(vm))
        .map(|vm| {
            let why = vm
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find_map(|c| c.message.clone()))
                .unwrap_or_else(|| "no reason recorded".into());
            // The agent's own message, already bounded; cut again so the condition stays short.
            let why: String = why.chars().take(300).collect();
            format!("{}: {why}", vm.name_any())
        })
        .collect();
    let (count, last) = ctx.backoff.record(owner, &failed, now);
    let wait = ctx.backoff.remaining(owner, now)?;
    let until = Timestamp::now()
        .checked_add(wait)
        .map(|t| t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t))
        .unwrap_or_else(|_| Timestamp::now());
    let message = format!(
        "{count} VirtualMachine(s) failed in a row (the last, {last}); the next is created after {until}"
    );
    let kept = previous.iter().find(|c| {
        c.type_ == REPLICA_FAILURE
            && c.status == "True"
            && c.reason.as_deref() == Some(reasons::BACK_OFF)
    });
    let condition = match kept {
        Some(c) if !failed.is_empty() || c.message.is_none() => Condition {
            message: Some(message),
            ..c.clone()
        },
        Some(c) => c.clone(),
        None => status::true_condition(
            previous,
            REPLICA_FAILURE,
            reasons::BACK_OFF,
            &message,
            Timestamp::now(),
        ),
    };
    Some((wait, condition))
}

/// Publishes a problem condition (back-off, a failed create or delete) as a Warning event of
/// its reason and message when it is news.
async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    previous: &[Condition],
    condition: &Condition,
) {
    if previous.contains(condition) {
        return;
    }
    let reason = condition.reason.as_deref().unwrap_or_default();
    let message = condition.message.as_deref().unwrap_or_default();
    ctx.recorder
        .publish(owner, EventType::Warning, reason, message)
        .await;
}

pub async fn reconcile_offline(
    ovm: Arc<OfflineVirtualMachine>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = ovm.namespace().unwrap_or_default();
    let name = ovm.name_any();
    let uid = ovm.uid().unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let read_vm = |source| Error::ReadVm {
        owner: key(&*ovm),
        source,
    };
    let vm = vms.get_opt(&name).await.map_err(read_vm)?;
    let previous = ovm
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions = Vec::new();
    let mut requeue = Duration::from_secs(60);
    let mut deleted = Vec::new();
    match &vm {
        Some(vm) if !owned_by(vm, &uid) => {
            conditions = status::problem(
                reasons::NAME_TAKEN,
                &format!(
                    "A VirtualMachine named {name} exists and does not belong to this OfflineVirtualMachine."
                ),
                Timestamp::now(),
            );
        }
        None if ovm.spec.running
            && ovm.metadata.deletion_timestamp.is_none()
            && ctx
                .backoff
                .remaining(&uid, std::time::Instant::now())
                .is_none() =>
        {
            let vm = ovm
                .spec
                .template
                .instantiate(&name, Some(namespace.clone()));
            create_vm(&ctx, &vms, &*ovm, vm).await?;
        }
        // Ended, or not wanted: delete it; while running it is created again once gone, after
        // a back-off if it failed.
        Some(vm)
            if vm.metadata.deletion_timestamp.is_none()
                && (!ovm.spec.running || vm.phase().is_final()) =>
        {
            delete_vm(&ctx, &vms, &*ovm, vm).await?;
            deleted.push(vm);
        }
        _ => {}
    }
    if conditions.is_empty()
        && ovm.spec.running
        && let Some((wait, condition)) = backing_off(&ctx, &uid, &deleted, &previous)
    {
        announce(&ctx, &*ovm, &previous, &condition).await;
        conditions = vec![condition];
        requeue = wait;
    }
    if ovm.metadata.deletion_timestamp.is_some() {
        ctx.backoff.forget(&uid);
    }
    let vm = vms.get_opt(&name).await.map_err(read_vm)?;
    let wanted = status::offline(vm.as_ref().filter(|v| owned_by(v, &uid)), conditions);
    if ovm.status.as_ref() != Some(&wanted) {
        status_writer::write(&ctx.client, &*ovm, &wanted).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Which VMs to delete when there are `excess` too many: those not yet Running first, then the
/// newest.
fn pick_excess(live: &[VirtualMachine], excess: usize) -> Vec<&VirtualMachine> {
    let mut live: Vec<&VirtualMachine> = live.iter().collect();
    live.sort_by_key(|vm| {
        (
            vm.phase() == Phase::Running,
            std::cmp::Reverse(vm.metadata.creation_timestamp.clone().map(|t| t.0)),
        )
    });
    live.into_iter().take(excess).collect()
}

pub async fn reconcile_replica_set(
    rs: Arc<VirtualMachineReplicaSet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let template_labels = rs
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector_ok = matches(&rs.spec.selector, &template_labels, "spec.selector");
    if !matches!(selector_ok, Ok(true)) {
        let message = match selector_ok {
            Err(e) => e.to_string(),
            Ok(_) => "spec.selector does not match the labels of spec.template.metadata.labels; the ReplicaSet would never find the VMs it creates".into(),
        };
        let wanted = status::invalid_replica_set(
            rs.status.as_ref(),
            reasons::INVALID_SELECTOR,
            &message,
            Timestamp::now(),
        );
        if rs.status.as_ref() != Some(&wanted) {
            status_writer::write(&ctx.client, &*rs, &wanted).await?;
            ctx.recorder
                .publish(
                    &*rs,
                    EventType::Warning,
                    reasons::INVALID_SELECTOR,
                    &message,
                )
                .await;
        }
        return Ok(Action::await_change());
    }
    let owned: Vec<VirtualMachine> = vms
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::ListVms {
            owner: key(&*rs),
            source,
        })?
        .items
        .into_iter()
        .filter(|vm| owned_by(vm, &uid))
        .collect();
    // A replica on a lost node (Unknown) is replaced like an ended one: its deletion waits on
    // the node's agent (the finalizer), which destroys the domain when the node returns.
    let (live, ended): (Vec<_>, Vec<_>) = owned
        .into_iter()
        .filter(|vm| vm.metadata.deletion_timestamp.is_none())
        .partition(|vm| !vm.phase().is_final() && vm.phase() != Phase::Unknown);
    let previous = rs
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions = Vec::new();
    let mut requeue = Duration::from_secs(60);
    let mut scale_error = None;
    if rs.metadata.deletion_timestamp.is_some() {
        ctx.backoff.forget(&uid);
    } else if rs.spec.paused {
        conditions.push(status::true_condition(
            &previous,
            REPLICA_PAUSED,
            reasons::SUCCESSFUL_PAUSED,
            "the ReplicaSet is paused: it neither creates nor deletes VirtualMachines",
            Timestamp::now(),
        ));
    } else {
        match scale(&ctx, &vms, &rs, &live, &ended, &previous).await {
            Ok(Some((wait, condition))) => {
                conditions.push(condition);
                requeue = wait;
            }
            Ok(None) => {}
            Err(e) => {
                let reason = match e {
                    Error::DeleteVm { .. } => reasons::FAILED_DELETE,
                    _ => reasons::FAILED_CREATE,
                };
                let condition = status::true_condition(
                    &previous,
                    REPLICA_FAILURE,
                    reason,
                    &error_chain(&e),
                    Timestamp::now(),
                );
                announce(&ctx, &*rs, &previous, &condition).await;
                conditions.push(condition);
                scale_error = Some(e);
            }
        }
    }
    let selector = kube::core::Selector::try_from(rs.spec.selector.clone())
        .map(|s| s.to_string())
        .ok();
    // The status counts the replicas seen at the start: those created or deleted now are
    // counted by the reconcile their watch events bring.
    let wanted = status::replica_set(&live, selector, conditions);
    if rs.status.as_ref() != Some(&wanted) {
        status_writer::write(&ctx.client, &*rs, &wanted).await?;
        let was_paused = previous.iter().any(|c| c.type_ == REPLICA_PAUSED);
        let change = match (was_paused, rs.spec.paused) {
            (false, true) => Some((reasons::SUCCESSFUL_PAUSED, "Paused")),
            (true, false) => Some((reasons::SUCCESSFUL_RESUMED, "Resumed")),
            _ => None,
        };
        if let Some((reason, note)) = change {
            ctx.recorder
                .publish(&*rs, EventType::Normal, reason, note)
                .await;
        }
    }
    // The error is reported in the condition and counted by the controller's metrics.
    match scale_error {
        Some(e) => Err(e),
        None => Ok(Action::requeue(requeue)),
    }
}

/// Deletes the `ended` replicas and creates or deletes live ones until there are as many as
/// wanted, unless failed ones make it back off: then the wait and its condition.
async fn scale(
    ctx: &Context,
    vms: &Api<VirtualMachine>,
    rs: &VirtualMachineReplicaSet,
    live: &[VirtualMachine],
    ended: &[VirtualMachine],
    previous: &[Condition],
) -> Result<Option<(Duration, Condition)>, Error> {
    let uid = rs.uid().unwrap_or_default();
    let wanted = rs.spec.replicas.unwrap_or(1).max(0) as usize;
    let replicas = live.len();
    for vm in ended {
        delete_vm(ctx, vms, rs, vm).await?;
    }
    let ended: Vec<&VirtualMachine> = ended.iter().collect();
    let mut backing_off_now = None;
    match backing_off(ctx, &uid, &ended, previous) {
        Some((wait, condition)) if replicas < wanted => {
            announce(ctx, rs, previous, &condition).await;
            backing_off_now = Some((wait, condition));
        }
        _ => {
            let namespace = rs.namespace().unwrap_or_default();
            for _ in replicas..wanted {
                let vm = rs
                    .spec
                    .template
                    .instantiate(&generated_name(&rs.name_any()), Some(namespace.clone()));
                create_vm(ctx, vms, rs, vm).await?;
            }
        }
    }
    for vm in pick_excess(live, replicas.saturating_sub(wanted)) {
        delete_vm(ctx, vms, rs, vm).await?;
    }
    Ok(backing_off_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_have_five_lowercase_letters() {
        let a = generated_name("replica");
        assert_eq!(a.len(), "replica".len() + GENERATED_NAME_SUFFIX_LEN);
        assert!(
            a["replica".len()..].bytes().all(|b| b.is_ascii_lowercase()),
            "{a}"
        );
        let names: std::collections::BTreeSet<_> = (0..50).map(|_| generated_name("r")).collect();
        assert!(names.len() > 45, "names repeat too often: {names:?}");
    }

    #[test]
    fn a_vm_whose_pod_was_taken_does_not_back_its_owner_off() {
        let ended = |reason: &str| {
            let mut vm = VirtualMachine::new("vm", Default::default());
            let mut status = crate::api::VirtualMachineStatus {
                phase: Some(Phase::Failed),
                ..Default::default()
            };
            crate::api::virtual_machine::set_ready(
                &mut status,
                false,
                reason,
                "m",
                Timestamp::UNIX_EPOCH,
            );
            vm.status = Some(status);
            vm
        };
        assert!(failed_of_itself(&ended("StartFailed")));
        for taken in ["Evicted", "Preempted", "PodDeleted"] {
            assert!(!failed_of_itself(&ended(taken)), "{taken}");
        }
    }

    #[test]
    fn excess_prefers_not_running_then_newest() {
        let vm = |name: &str, phase: Phase, second: i64| {
            let mut vm = VirtualMachine::new(name, Default::default());
            vm.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(1_800_000_000 + second).unwrap(),
                ));
            vm.status = Some(crate::api::VirtualMachineStatus {
                phase: Some(phase),
                ..Default::default()
            });
            vm
        };
        let live = vec![
            vm("old-running", Phase::Running, 0),
            vm("new-running", Phase::Running, 10),
            vm("scheduled", Phase::Scheduled, 5),
        ];
        let names: Vec<_> = pick_excess(&live, 2).iter().map(|v| v.name_any()).collect();
        assert_eq!(names, ["scheduled", "new-running"]);
    }
}
