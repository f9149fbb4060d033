//! Removing what no VM owns any more: domains whose VM is gone (deleted while the agent was
//! down, or moved away), and VM folders with neither a VM nor a domain.
//!
//! It only runs once the watch has listed every VM of this node: acting on a partial cache
//! would destroy healthy VMs (KubeVirt #18763). It only touches domains whose metadata names
//! this node, so agents that share a libvirtd never remove each other's domains. A domain whose
//! VM exists with another UID is left to that VM's reconcile, and one whose VM was moved to
//! another node without ending is left running.
//!
//! A pass observes (domains, the VMs that keep theirs, folders), plans its removals with a pure
//! function, then applies them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use crate::api::{NODE_NAME_LABEL, Phase, VirtualMachine};
use crate::domain::names::check_uid;
use crate::hypervisor::{HypervisorError, Libvirt, OwnedDomain};
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

/// What one pass saw: the domains carrying nodevirt's metadata, which of their VMs are still
/// live (in the watch's cache, or running though assigned elsewhere), and the VM folders.
#[derive(Debug, Default)]
struct Seen {
    domains: Vec<OwnedDomain>,
    /// UIDs of the VMs that keep their domain and folder.
    live: BTreeSet<String>,
    /// Names of the folders under the node's `vms/`.
    folders: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Removal {
    /// Destroy and undefine the domain, then remove its VM's folder (when its UID is one).
    Domain {
        name: String,
        uid: String,
    },
    Folder {
        uid: String,
    },
}

async fn collect(store: &Store<VirtualMachine>, ctx: &Collector) -> Result<(), GcError> {
    let seen = observe(store, ctx).await?;
    for removal in plan(&ctx.node, seen) {
        match removal {
            Removal::Domain { name, uid } => {
                info!(domain = %name, uid = %uid, "removing a domain whose VM is gone");
                ctx.libvirt
                    .run(move |lv| {
                        lv.destroy(&name)?;
                        lv.undefine(&name)
                    })
                    .await?;
                if check_uid(&uid, "domain metadata uid").is_ok() {
                    remove_vm_dir(VmLayout::new(&ctx.state_dir, &uid).dir()).await?;
                }
            }
            Removal::Folder { uid } => {
                info!(uid, "removing the folder of a VM that is gone");
                remove_vm_dir(VmLayout::new(&ctx.state_dir, &uid).dir()).await?;
            }
        }
    }
    Ok(())
}

async fn observe(store: &Store<VirtualMachine>, ctx: &Collector) -> Result<Seen, GcError> {
    let domains = ctx.libvirt.run(|lv| lv.owned_domains()).await?;
    let mut live: BTreeSet<String> = store.state().iter().filter_map(|vm| vm.uid()).collect();
    for domain in domains.iter().filter(|d| is_mine(d, &ctx.node)) {
        let vm_ref = ObjectRef::<VirtualMachine>::new(&domain.vm.name).within(&domain.vm.namespace);
        if store.get(&vm_ref).is_some() || still_running_elsewhere(ctx, &domain.vm).await? {
            live.insert(domain.vm.uid.clone());
        }
    }
    let mut folders = Vec::new();
    if let Ok(mut entries) = tokio::fs::read_dir(vms_dir(&ctx.state_dir)).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            folders.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(Seen {
        domains,
        live,
        folders,
    })
}

fn is_mine(domain: &OwnedDomain, node: &str) -> bool {
    domain.vm.node.as_deref() == Some(node)
}

/// The domains of this node whose VM is not live, then the folders named by a UID that no live
/// VM has (a removed domain's folder goes with it).
fn plan(node: &str, seen: Seen) -> Vec<Removal> {
    let mut removals: Vec<Removal> = seen
        .domains
        .into_iter()
        .filter(|d| is_mine(d, node) && !seen.live.contains(&d.vm.uid))
        .map(|d| Removal::Domain {
            name: d.name,
            uid: d.vm.uid,
        })
        .collect();
    let removed: BTreeSet<String> = removals
        .iter()
        .filter_map(|r| match r {
            Removal::Domain { uid, .. } => Some(uid.clone()),
            Removal::Folder { .. } => None,
        })
        .collect();
    removals.extend(
        seen.folders
            .into_iter()
            .filter(|uid| {
                check_uid(uid, "folder").is_ok()
                    && !seen.live.contains(uid)
                    && !removed.contains(uid)
            })
            .map(|uid| Removal::Folder { uid }),
    );
    removals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::VmMetadata;

    const A: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const B: &str = "11111111-2222-3333-4444-555555555555";
    const C: &str = "22222222-3333-4444-5555-666666666666";

    fn domain(name: &str, uid: &str, node: Option<&str>) -> OwnedDomain {
        OwnedDomain {
            name: format!("default_{name}"),
            vm: VmMetadata {
                namespace: "default".into(),
                name: name.into(),
                uid: uid.into(),
                node: node.map(Into::into),
                xmlns: String::new(),
            },
        }
    }

    #[test]
    fn only_this_nodes_domains_without_a_live_vm_are_removed() {
        let seen = Seen {
            domains: vec![
                domain("kept", A, Some("node1")),
                domain("gone", B, Some("node1")),
                domain("theirs", C, Some("node2")),
                domain("unlabelled", C, None),
            ],
            live: [A.to_string()].into(),
            folders: Vec::new(),
        };
        assert_eq!(
            plan("node1", seen),
            [Removal::Domain {
                name: "default_gone".into(),
                uid: B.into()
            }]
        );
    }

    #[test]
    fn folders_go_when_no_live_vm_has_their_uid_and_never_twice() {
        let seen = Seen {
            domains: vec![domain("gone", B, Some("node1"))],
            live: [A.to_string()].into(),
            folders: vec![A.into(), B.into(), C.into(), "lost+found".into()],
        };
        assert_eq!(
            plan("node1", seen),
            [
                Removal::Domain {
                    name: "default_gone".into(),
                    uid: B.into()
                },
                // Not A (live), not B (goes with its domain), not a name that is no UID.
                Removal::Folder { uid: C.into() },
            ]
        );
    }

    #[test]
    fn nothing_seen_removes_nothing() {
        assert_eq!(plan("node1", Seen::default()), []);
    }
}
