//! The observe step of a reconcile: what the plan is made from, read from the cache, libvirt,
//! the clock and the agent's memory; and, when a plan asks, the VM's inputs or the API
//! server's copy of it.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::VirtualMachine;
use crate::api::holder::reservation::{Reservation, reservation};
use crate::domain::names::domain_name;
use crate::hypervisor::{DomainState, seam};
use crate::metrics::ResultLabel;
use crate::storage::registry::Fetch;

use super::cluster::HolderLookup;
use super::execute::Error;
use super::finalizer::{self, Stage};
use super::inputs::InputError;
use super::plan::{InputsSeen, Need, Observed};
use super::reasons;
use super::reconcile::Context;
use crate::k8s::object_key;

pub fn domain_of(vm: &VirtualMachine) -> String {
    domain_name(&vm.namespace().unwrap_or_default(), &vm.name_any())
}

pub async fn observe<'a>(vm: &'a VirtualMachine, ctx: &'a Context) -> Result<Observed<'a>, Error> {
    let stage = finalizer::stage(vm);
    let uid = vm.uid().unwrap_or_default();
    let name = domain_of(vm);
    let domain = if stage == Stage::Released {
        None
    } else {
        let lookup = name.clone();
        seam::call(&ctx.hypervisor, move |h| h.status(&lookup))
            .await
            .map_err(|source| Error::Observe {
                vm: object_key(vm),
                source,
            })?
    };
    let off = domain.as_ref().is_some_and(|d| d.state.is_off());
    // Addresses are only reported for a live VM whose own domain runs.
    let reports = matches!(stage, Stage::Live { .. })
        && !vm.phase().is_final()
        && domain.as_ref().is_some_and(|d| {
            d.vm_uid.as_deref() == Some(uid.as_str())
                && matches!(d.state, DomainState::Running | DomainState::Paused(_))
        });
    let addresses = if reports {
        let lookup = name.clone();
        seam::call(&ctx.hypervisor, move |h| h.addresses(&lookup))
            .await
            .map_err(|source| Error::Observe {
                vm: object_key(vm),
                source,
            })?
    } else {
        Vec::new()
    };
    // Started here: a pod missing now was removed, not yet created.
    let started = vm.phase() == crate::api::Phase::Running
        || domain
            .as_ref()
            .is_some_and(|d| d.vm_uid.as_deref() == Some(uid.as_str()));
    let now = Timestamp::now();
    let reservation = match ctx.cluster.holder_pod(vm).await {
        HolderLookup::NotRequired => Reservation::NotRequired,
        HolderLookup::Cached(pod) => {
            reservation(pod.as_deref(), &ctx.settings.node.name, started, now)
        }
    };
    Ok(Observed {
        vm,
        node: &ctx.settings.node,
        stage,
        domain_type: ctx.settings.hypervisor.domain_type(),
        domain,
        addresses,
        qemu_log: ctx.hypervisor.qemu_log(&name),
        run: ctx.hypervisor.run(&name, off),
        shutdown_sent: ctx.shutdown_sent(&uid),
        reservation,
        now,
        inputs: None,
        latest: None,
        failure: None,
    })
}

/// Observes what a plan asked for.
pub async fn more(need: Need, o: &mut Observed<'_>, ctx: &Context) -> Result<(), Error> {
    match need {
        Need::Inputs => {
            let gathered = ctx.cluster.gather(o.vm).await;
            if let Ok(inputs) = &gathered {
                count_fetches(ctx, &inputs.fetches);
            }
            o.inputs = Some(seen(gathered).map_err(|source| Error::Inputs {
                vm: object_key(o.vm),
                source,
            })?);
        }
        Need::Latest => {
            let latest = ctx
                .cluster
                .latest(o.vm)
                .await
                .map_err(|source| Error::Latest {
                    vm: object_key(o.vm),
                    source,
                })?;
            o.latest = Some(latest);
        }
    }
    Ok(())
}

/// What gathering gave, for the plan; an API server that did not answer is the reconcile's
/// error, retried, not the VM's.
fn seen(gathered: Result<super::inputs::Inputs, InputError>) -> Result<InputsSeen, InputError> {
    let refused = |reason, message| InputsSeen::Refused { reason, message };
    Ok(match gathered {
        Ok(inputs) => InputsSeen::Ready(Arc::new(inputs)),
        Err(InputError::Waiting(message)) => InputsSeen::Waiting(message),
        Err(InputError::Invalid(message)) => refused(reasons::MISSING_INPUT, message),
        Err(InputError::InvalidSpec(message)) => refused(reasons::INVALID_SPEC, message),
        Err(InputError::DiskFull(message)) => refused(reasons::STORAGE_FAILED, message),
        Err(e @ InputError::Api { .. }) => return Err(e),
    })
}

fn count_fetches(ctx: &Context, fetches: &[Fetch]) {
    for fetch in fetches {
        let result = match fetch {
            Fetch::Pulled => "pulled",
            Fetch::Cached => "cached",
        };
        ctx.metrics
            .registry_fetches
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}
