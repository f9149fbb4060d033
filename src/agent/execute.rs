//! The execute step of a reconcile: each planned [`Action`] is one I/O call, with one error
//! variant naming the step and the VM, and one `step` label of
//! `nodevirt_reconcile_errors_total`, counted here and nowhere else.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::info;

use crate::api::VirtualMachine;
use crate::events::EventType;
use crate::hypervisor::{HypervisorError, seam};
use crate::k8s::error_chain;
use crate::metrics::StepLabel;
use crate::storage::files::{StorageError, remove_vm_dir};
use crate::storage::layout::VmLayout;

use super::disks::{self, DiskError};
use super::finalizer::Stage;
use super::inputs::InputError;
use super::observe::{domain_of, more};
use super::plan::{Action, Failure, InputsSeen, Observed};
use super::reconcile::Context;
use crate::k8s::object_key;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("looking up the domain of VM {vm}")]
    Observe {
        vm: String,
        #[source]
        source: HypervisorError,
    },
    #[error("reading the inputs of VM {vm}")]
    Inputs {
        vm: String,
        #[source]
        source: InputError,
    },
    #[error("reading VM {vm} from the API server")]
    Latest {
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("adding the finalizer to VM {vm}")]
    AddFinalizer {
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing the finalizer of VM {vm}")]
    RemoveFinalizer {
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("preparing the disks of VM {vm}")]
    PrepareDisks {
        vm: String,
        #[source]
        source: DiskError,
    },
    #[error("defining the domain of VM {vm}")]
    Define {
        vm: String,
        #[source]
        source: HypervisorError,
    },
    #[error("starting the domain of VM {vm}")]
    Start {
        vm: String,
        #[source]
        source: HypervisorError,
    },
    #[error("shutting down the guest of VM {vm}")]
    Shutdown {
        vm: String,
        #[source]
        source: HypervisorError,
    },
    #[error("destroying the domain of VM {vm}")]
    Destroy {
        vm: String,
        #[source]
        source: HypervisorError,
    },
    #[error("undefining the domain of VM {vm}")]
    Undefine {
        vm: String,
        #[source]
        source: HypervisorError,
    },
    #[error("removing the folder of VM {vm}")]
    RemoveDir {
        vm: String,
        #[source]
        source: StorageError,
    },
    #[error("writing the status of VM {vm}")]
    WriteStatus {
        vm: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The step's label in `nodevirt_reconcile_errors_total`.
    pub fn step(&self) -> &'static str {
        match self {
            Error::Observe { .. } => "observe",
            Error::Inputs { .. } => "inputs",
            Error::Latest { .. } => "latest",
            Error::AddFinalizer { .. } => "add_finalizer",
            Error::RemoveFinalizer { .. } => "remove_finalizer",
            Error::PrepareDisks { .. } => "prepare_disks",
            Error::Define { .. } => "define",
            Error::Start { .. } => "start",
            Error::Shutdown { .. } => "shutdown",
            Error::Destroy { .. } => "destroy",
            Error::Undefine { .. } => "undefine",
            Error::RemoveDir { .. } => "remove_dir",
            Error::WriteStatus { .. } => "write_status",
        }
    }

    fn hypervisor(&self) -> Option<&HypervisorError> {
        match self {
            Error::Observe { source, .. }
            | Error::Define { source, .. }
            | Error::Start { source, .. }
            | Error::Shutdown { source, .. }
            | Error::Destroy { source, .. }
            | Error::Undefine { source, .. } => Some(source),
            Error::PrepareDisks {
                source: DiskError::Backing { source, .. },
                ..
            } => Some(source),
            _ => None,
        }
    }

    fn api(&self) -> Option<&kube::Error> {
        match self {
            Error::Latest { source, .. }
            | Error::AddFinalizer { source, .. }
            | Error::RemoveFinalizer { source, .. }
            | Error::WriteStatus { source, .. }
            | Error::Inputs {
                source: InputError::Api { source, .. },
                ..
            } => Some(source),
            _ => None,
        }
    }

    /// libvirtd is away: the node's problem, logged once by the link, not an event per VM.
    pub fn libvirt_lost(&self) -> bool {
        self.hypervisor()
            .is_some_and(HypervisorError::is_connection_lost)
    }

    /// The API server did not answer (an outage, not a refusal): the watch's recovery looks
    /// at every VM again, and an event about it could not be recorded anyway.
    pub fn api_unreachable(&self) -> bool {
        self.api()
            .is_some_and(|e| !matches!(e, kube::Error::Api(_)))
    }

    /// What the VM fails with when this error is its own (not libvirtd or the API server
    /// being away): the whole chain below the step, which names the call and the field.
    fn vm_fault(&self) -> Option<String> {
        if self.libvirt_lost() || self.api().is_some() {
            return None;
        }
        match self {
            Error::PrepareDisks { source, .. } => Some(error_chain(source)),
            Error::Define { source, .. } | Error::Start { source, .. } => Some(error_chain(source)),
            _ => None,
        }
    }
}

/// How the actions ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All were done.
    Done,
    /// More was observed (asked for, or a step failed the VM): plan again.
    Again,
    /// The VM changed under a write: the watch brings the new version.
    Conflict,
}

/// Runs `actions` in order, stopping at the first that does not simply succeed.
pub async fn run(
    actions: &[Action],
    o: &mut Observed<'_>,
    ctx: &Context,
) -> Result<Outcome, Error> {
    for action in actions {
        match perform(action, o, ctx).await {
            Ok(None) => {}
            Ok(Some(outcome)) => return Ok(outcome),
            Err(e) => {
                count(ctx, &e);
                return match (action.fails_vm_as(), e.vm_fault()) {
                    (Some(reason), Some(message)) => {
                        o.failure = Some(Failure { reason, message });
                        Ok(Outcome::Again)
                    }
                    _ => Err(e),
                };
            }
        }
    }
    Ok(Outcome::Done)
}

/// Counts a failed step: by step, and as a libvirt error when libvirt failed it.
pub fn count(ctx: &Context, e: &Error) {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&StepLabel { step: e.step() })
        .inc();
    if e.hypervisor().is_some() {
        ctx.metrics.libvirt_errors.inc();
    }
}

/// Records an event on the VM and in the agent's own log of it (for the admin socket).
pub async fn publish(
    ctx: &Context,
    vm: &VirtualMachine,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    ctx.events
        .record(&vm.uid().unwrap_or_default(), type_.as_str(), reason, note);
    ctx.cluster.publish(vm, type_, reason, note).await;
}

/// A finalizer write that found the VM changed (409) or gone (404).
fn changed(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404)
}

async fn perform(
    action: &Action,
    o: &mut Observed<'_>,
    ctx: &Context,
) -> Result<Option<Outcome>, Error> {
    let vm = o.vm;
    let uid = vm.uid().unwrap_or_default();
    let hypervisor = |call: fn(&dyn seam::Hypervisor, &str) -> Result<(), HypervisorError>| {
        let name = domain_of(vm);
        seam::call(&ctx.hypervisor, move |h| call(h, &name))
    };
    match action {
        Action::AddFinalizer | Action::RemoveFinalizer => {
            let adding = *action == Action::AddFinalizer;
            match ctx.cluster.set_finalizer(vm, adding).await {
                Ok(()) if adding => o.stage = Stage::Live { finalized: true },
                Ok(()) => {}
                Err(e) if changed(&e) => return Ok(Some(Outcome::Conflict)),
                Err(source) if adding => {
                    return Err(Error::AddFinalizer {
                        vm: object_key(vm),
                        source,
                    });
                }
                Err(source) => {
                    return Err(Error::RemoveFinalizer {
                        vm: object_key(vm),
                        source,
                    });
                }
            }
        }
        Action::Observe(need) => {
            more(*need, o, ctx).await?;
            return Ok(Some(Outcome::Again));
        }
        Action::PrepareDisks => {
            let inputs = match &o.inputs {
                Some(InputsSeen::Ready(inputs)) => inputs.clone(),
                _ => Default::default(),
            };
            let layout = VmLayout::new(&ctx.settings.node.state_dir, &uid);
            disks::prepare(
                &vm.spec,
                &layout,
                &uid,
                &vm.name_any(),
                &inputs,
                &ctx.hypervisor,
            )
            .await
            .map_err(|source| Error::PrepareDisks {
                vm: object_key(vm),
                source,
            })?;
        }
        Action::Define { xml } => {
            let (name, xml) = (domain_of(vm), xml.clone());
            seam::call(&ctx.hypervisor, move |h| h.define(&name, &xml))
                .await
                .map_err(|source| Error::Define {
                    vm: object_key(vm),
                    source,
                })?;
        }
        Action::Start => {
            hypervisor(|h, name| h.start(name))
                .await
                .map_err(|source| Error::Start {
                    vm: object_key(vm),
                    source,
                })?;
            if let Some(created) = &vm.metadata.creation_timestamp {
                let seconds = Timestamp::now().duration_since(created.0).as_secs_f64();
                ctx.metrics
                    .creation_to_running_seconds
                    .observe(seconds.max(0.0));
            }
        }
        Action::Shutdown => {
            hypervisor(|h, name| h.shutdown(name))
                .await
                .map_err(|source| Error::Shutdown {
                    vm: object_key(vm),
                    source,
                })?;
            ctx.mark_shutdown_sent(&uid);
        }
        Action::Destroy => hypervisor(|h, name| h.destroy(name))
            .await
            .map_err(|source| Error::Destroy {
                vm: object_key(vm),
                source,
            })?,
        Action::Undefine => hypervisor(|h, name| h.undefine(name))
            .await
            .map_err(|source| Error::Undefine {
                vm: object_key(vm),
                source,
            })?,
        Action::RemoveDir { uid } => {
            remove_vm_dir(VmLayout::new(&ctx.settings.node.state_dir, uid).dir())
                .await
                .map_err(|source| Error::RemoveDir {
                    vm: object_key(vm),
                    source,
                })?;
        }
        Action::AcknowledgeWatchdog => ctx.hypervisor.acknowledge_watchdog(&domain_of(vm)),
        Action::Forget => {
            ctx.events.forget(&uid);
            ctx.forget_shutdown(&uid);
            info!(vm = %object_key(vm), "VM cleaned up");
        }
        Action::WriteStatus(status) => {
            ctx.cluster
                .write_status(vm, status)
                .await
                .map_err(|source| Error::WriteStatus {
                    vm: object_key(vm),
                    source,
                })?;
            if let Some(phase) = status.phase.filter(|p| p.is_final()) {
                let ready = status.conditions.last();
                info!(
                    vm = %object_key(vm),
                    ?phase,
                    reason = ready.and_then(|c| c.reason.as_deref()),
                    message = ready.and_then(|c| c.message.as_deref()),
                    "VM ended"
                );
            }
        }
        Action::Event {
            type_,
            reason,
            message,
        } => publish(ctx, vm, *type_, reason, message).await,
    }
    Ok(None)
}
