//! A VM of this node that the API server holds but the agent cannot read (see `crate::watch`):
//! it is failed with the field at fault, once. Its deletion is the common one (its metadata
//! is all cleanup needs).
//!
//! Its status goes through an untyped client: a typed one would try to decode the answer (the
//! unreadable VM itself), fail, and log the whole object.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use tracing::info;

use crate::api::{Phase, VirtualMachine};
use crate::events::EventType;
use crate::k8s;

use super::reconcile::{Context, Error, key, publish};
use super::{reasons, status};

/// `message`: what `unreadable_message` says of the VM.
pub async fn fail(vm: &VirtualMachine, message: &str, ctx: &Context) -> Result<Action, Error> {
    if vm.phase().is_final() {
        return Ok(Action::await_change());
    }
    info!(vm = %key(vm), message, "VM ended");
    let current = vm.status.clone().unwrap_or_default();
    let new = status::ended(
        &current,
        &ctx.settings.node,
        Phase::Failed,
        reasons::INVALID_SPEC,
        message,
        Timestamp::now(),
    );
    k8s::patch_status_untyped(&ctx.client, vm, &new)
        .await
        .map_err(|source| Error::Status {
            vm: key(vm),
            source,
        })?;
    publish(ctx, vm, EventType::Warning, reasons::EVENT_FAILED, message).await;
    Ok(Action::await_change())
}
