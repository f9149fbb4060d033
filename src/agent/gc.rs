//! Removing what no VM owns any more: domains whose VM is gone (deleted while the agent was
//! down, or moved away), and VM folders with neither a VM nor a domain.
//!
//! It only runs once the watch has listed every VM of this node: acting on a partial cache
//! would destroy healthy VMs (KubeVirt #18763). It only touches domains whose metadata names
//! this node, so agents that share a libvirtd never remove each other's domains. A domain whose
//! VM exists with another UID is left to that VM's reconcile, and one whose VM was moved to
//! another node without ending is left running.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use crate::api::{NODE_NAME_LABEL, Phase, VirtualMachine};
use crate::domain::names::check_uid;
use crate::hypervisor::{HypervisorError, Libvirt};
use crate::k8s::error_chain;
use crate::storage::files::{StorageError, remove_vm_dir};
use crate::storage::layout::{VmLayout, vms_dir};

/// What the collector works with.
pub struct Collector {
    pub client: kube::Client,
    pub libvirt: Arc<Libvirt>,
    pub node: String,
    pub state_dir: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("reading VM {vm}")]
    Read {
        vm: String,
        #[source]
        source: kube::Error,
    },
}

const INTERVAL: Duration = Duration::from_secs(60);
/// After a failed pass (libvirt away, a file busy): sooner than the next full interval.
const RETRY: Duration = Duration::from_secs(5);

/// Runs every minute once `synced` turns true (the watch has listed every VM of the node),
/// whenever `connected` says libvirt answers.
pub async fn run(
    store: Store<VirtualMachine>,
    mut synced: tokio::sync::watch::Receiver<bool>,
    mut connected: tokio::sync::watch::Receiver<bool>,
    ctx: Collector,
) {
    if synced.wait_for(|listed| *listed).await.is_err() {
        return;
    }
    loop {
        if connected.wait_for(|up| *up).await.is_err() {
            return;
        }
        let pause = match collect(&store, &ctx).await {
            Ok(()) => INTERVAL,
            Err(e) => {
                warn!(error = %error_chain(&e), "cleaning up orphaned domains failed; retrying");
                RETRY
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Whether the VM of a domain this node runs still exists, unended, though this node's watch no
/// longer has it: its `kubevirt.io/nodeName` label was changed (admission forbids it, but a
/// cluster admin can bypass that). Its domain is left alone until the VM ends or is deleted:
/// destroying it would kill a guest whose VM says it runs. Asked of the API server, untyped,
/// so that a VM nodevirt cannot read is still recognised.
async fn still_running_elsewhere(
    ctx: &Collector,
    owner: &crate::domain::model::VmMetadata,
) -> Result<bool, GcError> {
    let vm = crate::k8s::untyped_api::<VirtualMachine>(&ctx.client, &owner.namespace)
        .get_opt(&owner.name)
        .await
        .map_err(|source| GcError::Read {
            vm: format!("{}/{}", owner.namespace, owner.name),
            source,
        })?;
    let Some(vm) = vm.filter(|vm| vm.metadata.uid.as_deref() == Some(owner.uid.as_str())) else {
        return Ok(false);
    };
    let phase: Option<Phase> = serde_json::from_value(vm.data["status"]["phase"].clone()).ok();
    let ended = vm.metadata.deletion_timestamp.is_some() || phase.is_some_and(Phase::is_final);
    if !ended {
        warn!(
            vm = %format!("{}/{}", owner.namespace, owner.name),
            node = vm.labels().get(NODE_NAME_LABEL).map(String::as_str).unwrap_or("none"),
            "the VM of a domain running here is assigned to another node; leaving its domain \
             alone until the VM ends"
        );
    }
    Ok(!ended)
}

async fn collect(store: &Store<VirtualMachine>, ctx: &Collector) -> Result<(), GcError> {
    let domains = ctx.libvirt.run(|lv| lv.owned_domains()).await?;
    let mut live_uids: BTreeSet<String> = store.state().iter().filter_map(|vm| vm.uid()).collect();
    let mine = domains
        .into_iter()
        .filter(|d| d.vm.node.as_deref() == Some(ctx.node.as_str()));
    for domain in mine {
        let vm_ref = ObjectRef::<VirtualMachine>::new(&domain.vm.name).within(&domain.vm.namespace);
        if store.get(&vm_ref).is_some() || still_running_elsewhere(ctx, &domain.vm).await? {
            live_uids.insert(domain.vm.uid.clone());
            continue;
        }
        info!(domain = %domain.name, uid = %domain.vm.uid, "removing a domain whose VM is gone");
        let name = domain.name.clone();
        ctx.libvirt
            .run(move |lv| {
                lv.destroy(&name)?;
                lv.undefine(&name)
            })
            .await?;
        if check_uid(&domain.vm.uid, "domain metadata uid").is_ok() {
            remove_vm_dir(VmLayout::new(&ctx.state_dir, &domain.vm.uid).dir()).await?;
        }
    }
    let Ok(mut entries) = tokio::fs::read_dir(vms_dir(&ctx.state_dir)).await else {
        return Ok(());
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if check_uid(&uid, "folder").is_ok() && !live_uids.contains(&uid) {
            info!(uid, "removing the folder of a VM that is gone");
            remove_vm_dir(VmLayout::new(&ctx.state_dir, &uid).dir()).await?;
        }
    }
    Ok(())
}
