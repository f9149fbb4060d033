//! The controller's work on a new VirtualMachine: presets, then its place on a node, chosen by
//! kube-scheduler through the VM's holder pod (`crate::api::holder`).
//!
//! Observe the VM, its holder pod (cache) and the presets; plan one step ([`plan`], pure);
//! apply it:
//! 1. No pod yet: create it (event `SuccessfulCreate`), phase Scheduling. A refusal of the
//!    API server (a ResourceQuota, a LimitRange) leaves the VM Pending with its message.
//! 2. The scheduler cannot bind it: Pending, with the scheduler's message in the condition
//!    and a `FailedScheduling` event. It retries on its own; the pod's next change wakes us.
//! 3. Bound: status Scheduled + nodeName first, then the label `kubevirt.io/nodeName` (with
//!    the merged spec and preset annotations) in one replace with the status write's
//!    resourceVersion (event `SuccessfulHandOver`). The agent sees the VM only once labelled,
//!    so its Running is never overwritten by a late Scheduled, and a VM is placed once.
//! 4. The VM ended: its pod is deleted, so the node's resources are free again.
//! 5. A VM a cluster admin pinned to a node at creation (the label, as a Pod's spec.nodeName)
//!    gets a pod bound to that node at once: the agent runs no VM without one.
//!
//! Deleting a VM deletes its pod (controller owner reference, garbage collector).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::api::holder::spec::{HolderConfig, holder_pod};
use crate::api::holder::{self, Hold};
use crate::api::preset;
use crate::api::virtual_machine::unreadable_message;
use crate::api::{NODE_NAME_LABEL, Phase, VirtualMachine, VirtualMachinePreset};
use crate::events::{EventRecorder, EventType};
use crate::k8s::{error_chain, object_key as key};

use super::metrics::{ControllerMetrics, Step as ErrorStep};
use super::status;
use super::status_writer::{self, StatusWriteError};

pub mod reasons {
    pub const SUCCESSFUL_CREATE: &str = "SuccessfulCreate";
    pub const FAILED_CREATE: &str = "FailedCreate";
    pub const SUCCESSFUL_HAND_OVER: &str = "SuccessfulHandOver";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const FAILED_SCHEDULING: &str = "FailedScheduling";
    pub const PRESET_FAILED: &str = crate::api::preset::Notice::PRESET_FAILED;
    pub const NODE_UNRESPONSIVE: &str = "NodeUnresponsive";
    pub const NODE_NOT_FOUND: &str = "NodeNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// How soon a pod the API server refused (quota) is tried again: nothing wakes us when the
/// quota frees up.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

pub struct Context {
    pub client: Client,
    pub recorder: Arc<EventRecorder>,
    pub nodes: Store<Node>,
    pub vms: Store<VirtualMachine>,
    pub presets: Store<VirtualMachinePreset>,
    pub pods: Store<Pod>,
    pub holder: HolderConfig,
    pub heartbeat_timeout: SignedDuration,
    pub metrics: Arc<ControllerMetrics>,
}

/// One variant per failing step of placing a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The writer's error names the step and the VM already.
    #[error(transparent)]
    WriteStatus(#[from] StatusWriteError),
    #[error("creating the holder pod {pod} of VirtualMachine {vm}")]
    CreatePod {
        vm: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting the holder pod {pod} of the ended VirtualMachine {vm}")]
    DeletePod {
        vm: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("labelling VirtualMachine {vm} with its node and merged presets")]
    Place {
        vm: String,
        #[source]
        source: kube::Error,
    },
}

impl ErrorStep for Error {
    fn step(&self) -> &'static str {
        match self {
            Error::WriteStatus(_) => "write_status",
            Error::CreatePod { .. } => "create_pod",
            Error::DeletePod { .. } => "delete_pod",
            Error::Place { .. } => "place",
        }
    }
}

/// The one thing to do for a VM now.
#[derive(Debug)]
pub enum Step {
    Nothing,
    Fail {
        reason: &'static str,
        message: String,
    },
    CreatePod(Box<Pod>),
    /// The pod waits for the scheduler: phase Scheduling.
    Scheduling,
    /// No node fits: Pending with the scheduler's message.
    Unschedulable(String),
    /// Bound to `node`: label the VM (with its merged spec) and hand it over, then tell
    /// what the merge of its presets left out.
    HandOver {
        node: String,
        merged: Box<preset::Merged>,
    },
    /// The VM ended or is gone from its pod's view: free its node's resources.
    DeletePod(String),
}

/// What to do for `vm`, held by `pod` (if any), with its namespace's `presets`. Pure.
pub fn plan(
    vm: &VirtualMachine,
    pod: Option<&Pod>,
    presets: &[VirtualMachinePreset],
    config: &HolderConfig,
) -> Step {
    use Step::*;
    let hold = pod.map(holder::hold);
    if vm.phase().is_final() {
        return match (pod, hold) {
            (Some(pod), Some(hold)) if hold != Hold::Released => DeletePod(pod.name_any()),
            _ => Nothing,
        };
    }
    if vm.metadata.deletion_timestamp.is_some() {
        return Nothing;
    }
    if let Some(node) = vm.labels().get(NODE_NAME_LABEL) {
        // Handed over (Scheduled, Running): its pod is the scheduler's. Pinned by a cluster
        // admin at creation (never handed over): its pod is bound to that node at once, as a
        // Pod with spec.nodeName, and kubelet admits it or not.
        let pinned = hold.is_none() && vm.phase() == Phase::Pending;
        return match holder_pod(vm, config) {
            Ok(mut pod) if pinned => {
                if let Some(spec) = pod.spec.as_mut() {
                    spec.node_name = Some(node.clone());
                }
                CreatePod(Box::new(pod))
            }
            _ => Nothing,
        };
    }
    // Placing it would write back a spec nodevirt could not read: it fails here instead.
    if let Some(message) = unreadable_message(vm) {
        return Fail {
            reason: reasons::INVALID_SPEC,
            message,
        };
    }
    let merged = match preset::apply(vm, presets) {
        Ok(merged) => merged,
        Err(e) => {
            return Fail {
                reason: reasons::PRESET_FAILED,
                message: error_chain(&e),
            };
        }
    };
    match hold {
        None => match holder_pod(&merged.vm, config) {
            Ok(pod) => CreatePod(Box::new(pod)),
            Err(e) => Fail {
                reason: reasons::INVALID_SPEC,
                message: e.to_string(),
            },
        },
        // A pod deleted before it was bound: a new one once it is gone.
        Some(Hold::Released) => Nothing,
        Some(Hold::Waiting) => Scheduling,
        Some(Hold::Unschedulable(message)) => Unschedulable(message.to_string()),
        Some(Hold::Bound(node)) => HandOver {
            node: node.to_string(),
            merged: Box::new(merged),
        },
    }
}

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let presets: Vec<VirtualMachinePreset> = ctx
        .presets
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| (**p).clone())
        .collect();
    let pod = holder::holder_of(&vm, ctx.pods.state());
    match plan(&vm, pod.as_deref(), &presets, &ctx.holder) {
        Step::Nothing => Ok(Action::await_change()),
        Step::Fail { reason, message } => fail(&vm, &ctx, reason, &message).await,
        Step::CreatePod(pod) => create_pod(&vm, &ctx, &pod).await,
        Step::Scheduling => {
            write_if_changed(&ctx, &vm, status::scheduling(vm.status.as_ref())).await?;
            Ok(Action::await_change())
        }
        Step::Unschedulable(message) => {
            pending(
                &vm,
                &ctx,
                reasons::UNSCHEDULABLE,
                reasons::FAILED_SCHEDULING,
                &message,
            )
            .await?;
            Ok(Action::await_change())
        }
        Step::HandOver { node, merged } => {
            let pod = pod.map(|p| p.name_any()).unwrap_or_default();
            hand_over(&vm, &ctx, &node, *merged, &pod).await
        }
        Step::DeletePod(pod) => {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            // At once: its holder would otherwise wait out the VM's grace period, booking a
            // node for a guest that is already down.
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            match api.delete(&pod, &now).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::DeletePod {
                        vm: key(&*vm),
                        pod,
                        source,
                    });
                }
            }
            info!(vm = %key(&*vm), pod, "deleted the ended VM's holder pod");
            Ok(Action::await_change())
        }
    }
}

async fn write_if_changed(
    ctx: &Context,
    vm: &VirtualMachine,
    wanted: crate::api::VirtualMachineStatus,
) -> Result<bool, Error> {
    if vm.status.as_ref() == Some(&wanted) {
        return Ok(false);
    }
    status_writer::write(&ctx.client, vm, &wanted).await?;
    Ok(true)
}

/// Pending for `reason`; a Warning event when the message is new.
async fn pending(
    vm: &VirtualMachine,
    ctx: &Context,
    reason: &str,
    event_reason: &str,
    message: &str,
) -> Result<(), Error> {
    let wanted = status::not_ready(
        vm.status.as_ref(),
        Phase::Pending,
        reason,
        message,
        Timestamp::now(),
    );
    if write_if_changed(ctx, vm, wanted).await? {
        ctx.recorder
            .publish(vm, EventType::Warning, event_reason, message)
            .await;
    }
    Ok(())
}

async fn create_pod(vm: &VirtualMachine, ctx: &Context, pod: &Pod) -> Result<Action, Error> {
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), pod).await {
        Ok(_) => {
            info!(vm = %key(vm), pod = name, "created the holder pod");
            ctx.recorder
                .publish(
                    vm,
                    EventType::Normal,
                    reasons::SUCCESSFUL_CREATE,
                    &format!("Created virtual machine pod {name}"),
                )
                .await;
        }
        // The cache had not seen it yet: the pod's own event brings us back.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        // The VM's own scheduling fields make an invalid pod (an affinity operator Kubernetes
        // does not know, a bad label value): it can never be placed.
        Err(kube::Error::Api(s)) if s.code == 422 => {
            let message = format!("its holder pod {name} is invalid: {}", s.message);
            return fail(vm, ctx, reasons::INVALID_SPEC, &message).await;
        }
        // A ResourceQuota or LimitRange refused it: the VM waits with the API's own words.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            let message = format!("creating pod {name}: {}", s.message);
            pending(
                vm,
                ctx,
                reasons::FAILED_CREATE,
                reasons::FAILED_CREATE,
                &message,
            )
            .await?;
            return Ok(Action::requeue(REFUSED_RETRY));
        }
        Err(source) => {
            return Err(Error::CreatePod {
                vm: key(vm),
                pod: name,
                source,
            });
        }
    }
    // A pinned VM's status is its agent's from the start.
    if holder::bound_node(pod).is_none() {
        write_if_changed(ctx, vm, status::scheduling(vm.status.as_ref())).await?;
    }
    Ok(Action::await_change())
}

async fn hand_over(
    vm: &VirtualMachine,
    ctx: &Context,
    node: &str,
    preset::Merged {
        vm: merged,
        notices,
    }: preset::Merged,
    pod: &str,
) -> Result<Action, Error> {
    let wanted = status::scheduled(vm.status.as_ref(), node);
    let written = status_writer::write(&ctx.client, vm, &wanted).await?;
    // The replace carries the status write's resourceVersion: it fails if anyone changed the
    // VM in between.
    let mut labelled = vm.clone();
    labelled.metadata.resource_version = written;
    labelled.status = Some(wanted);
    labelled.spec = merged.spec;
    labelled.metadata.annotations = merged.metadata.annotations;
    labelled
        .labels_mut()
        .insert(NODE_NAME_LABEL.into(), node.to_string());
    let api: Api<VirtualMachine> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    match api
        .replace(&vm.name_any(), &PostParams::default(), &labelled)
        .await
    {
        Ok(_) => {}
        // Someone changed the VM meanwhile: look again with the new version.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::ZERO)),
        Err(source) => {
            return Err(Error::Place {
                vm: key(vm),
                source,
            });
        }
    }
    info!(vm = %key(vm), node, pod, "handed over");
    let note = format!("Pod owner ship transfered to the node {node}: pod {pod}");
    ctx.recorder
        .publish(vm, EventType::Normal, reasons::SUCCESSFUL_HAND_OVER, &note)
        .await;
    for notice in notices {
        let kind = if notice.is_warning() {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let message = notice.to_string();
        ctx.recorder
            .publish(vm, kind, notice.reason(), &message)
            .await;
    }
    Ok(Action::await_change())
}

pub(super) async fn fail(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::holder::spec::test_config as config;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn vm(phase: Option<Phase>) -> VirtualMachine {
        let mut vm: VirtualMachine = serde_yaml::from_str(
            "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: testvm, namespace: ns, uid: u1, labels: {size: small}}\n\
             spec: {domain: {resources: {requests: {memory: 64Mi}}}}\n",
        )
        .unwrap();
        vm.status = phase.map(|phase| crate::api::VirtualMachineStatus {
            phase: Some(phase),
            ..Default::default()
        });
        vm
    }

    fn pod_of(vm: &VirtualMachine) -> Pod {
        holder_pod(vm, &config()).unwrap()
    }

    #[test]
    fn a_new_vm_gets_its_pod_then_waits_for_the_scheduler() {
        let vm = vm(None);
        let Step::CreatePod(pod) = plan(&vm, None, &[], &config()) else {
            panic!("a pod first");
        };
        assert!(holder::holds(&pod, &vm));
        let mut pod = *pod;
        assert!(matches!(
            plan(&vm, Some(&pod), &[], &config()),
            Step::Scheduling
        ));
        pod.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/2 nodes are available: 2 node(s) were unschedulable.".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(matches!(
            plan(&vm, Some(&pod), &[], &config()),
            Step::Unschedulable(m) if m == "0/2 nodes are available: 2 node(s) were unschedulable."
        ));
    }

    #[test]
    fn a_bound_pod_hands_the_vm_over_with_its_presets_merged() {
        let vm = vm(None);
        let mut pod = pod_of(&vm);
        pod.spec = Some(PodSpec {
            node_name: Some("node2".into()),
            ..pod.spec.unwrap()
        });
        let preset: VirtualMachinePreset = serde_yaml::from_str(
            "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachinePreset\nmetadata: {name: small, namespace: ns}\n\
             spec: {selector: {matchLabels: {size: small}}, domain: {cpu: {cores: 2}}}\n",
        )
        .unwrap();
        let Step::HandOver { node, merged } = plan(&vm, Some(&pod), &[preset], &config()) else {
            panic!("bound: hand over");
        };
        assert_eq!(node, "node2");
        assert_eq!(merged.vm.spec.domain.cpu.and_then(|c| c.cores), Some(2));
    }

    #[test]
    fn a_pinned_vm_gets_a_pod_bound_to_its_node_and_a_handed_over_one_none() {
        let mut pinned = vm(None);
        pinned
            .labels_mut()
            .insert(NODE_NAME_LABEL.into(), "node1".into());
        let Step::CreatePod(pod) = plan(&pinned, None, &[], &config()) else {
            panic!("a pinned VM's pod");
        };
        assert_eq!(holder::bound_node(&pod), Some("node1"));
        let mut handed_over = pinned.clone();
        handed_over.status = vm(Some(Phase::Scheduled)).status;
        assert!(
            matches!(plan(&handed_over, None, &[], &config()), Step::Nothing),
            "its pod went: the agent fails it, nothing books the node again"
        );
    }

    #[test]
    fn placed_deleted_and_ended_vms() {
        let mut placed = vm(Some(Phase::Running));
        placed
            .labels_mut()
            .insert(NODE_NAME_LABEL.into(), "node1".into());
        let pod = pod_of(&placed);
        assert!(matches!(
            plan(&placed, Some(&pod), &[], &config()),
            Step::Nothing
        ));
        let ended = vm(Some(Phase::Succeeded));
        assert!(
            matches!(plan(&ended, Some(&pod), &[], &config()), Step::DeletePod(p) if p == pod.name_any()),
            "an ended VM frees its node"
        );
        let mut going = pod.clone();
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        );
        assert!(matches!(
            plan(&ended, Some(&going), &[], &config()),
            Step::Nothing
        ));
        assert!(
            matches!(plan(&vm(None), Some(&going), &[], &config()), Step::Nothing),
            "a new pod only once the old one is gone"
        );
    }
}
