//! `nodevirt controller`: the cluster-wide part.
//!
//! Only the holder of the Lease `nodevirt-controller` acts (`leader`). While leading it runs:
//! - `scheduling`: presets and placement of new VMs; `Unknown` for VMs of silent nodes;
//! - `workloads`: OfflineVirtualMachines (spec.running) and VirtualMachineReplicaSets.
//!
//! When the Lease cannot be renewed in time (an API outage, a partition) the leader stops
//! acting, a third of the lease duration before another replica may take over, and joins the
//! election again: the process stays up and its caches stay warm.

pub mod backoff;
pub mod leader;
pub mod placement;
pub mod scheduling;
pub mod workloads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::SignedDuration;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use tracing::{info, warn};

use crate::api::{
    OfflineVirtualMachine, VirtualMachine, VirtualMachinePreset, VirtualMachineReplicaSet,
};
use crate::events::EventRecorder;

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// A kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This replica's name in the leader Lease (the Pod name in a Deployment).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, env = "NODEVIRT_LEASE_NAMESPACE", default_value = "nodevirt")]
    pub lease_namespace: String,
    /// Seconds a leader may go without renewing its Lease before another replica takes over.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds without an agent heartbeat after which a node's VMs are Unknown and the node
    /// gets no new VMs.
    #[arg(long, default_value_t = 300)]
    pub node_heartbeat_timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Client(#[from] crate::k8s::ClientError),
}

/// A reflector's cache, kept current by a task of its own.
fn cache<K>(client: &kube::Client) -> reflector::Store<K>
where
    K: crate::watch::Decode + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, stream) = crate::watch::reflected::<K>(client.clone(), watcher::Config::default());
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

/// A Controller for `K` whose watch is [`crate::watch::watch`], so one object that does not
/// decode never stops it.
fn controller<K>(client: &kube::Client) -> Controller<K>
where
    K: crate::watch::Decode + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, stream) = crate::watch::reflected::<K>(client.clone(), watcher::Config::default());
    Controller::for_stream(stream, reader).with_config(crate::k8s::controller_config())
}

/// The owned VMs of a workload controller, as triggers.
fn owned_vms(
    client: &kube::Client,
) -> impl futures::Stream<Item = Result<VirtualMachine, watcher::Error>> + Send + 'static {
    crate::watch::watch::<VirtualMachine>(client.clone(), watcher::Config::default())
        .touched_objects()
}

pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let client = crate::k8s::client(args.kubeconfig.as_deref()).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::k8s::hostname(), std::process::id()));
    let duration = Duration::from_secs(args.lease_duration);
    let lease = leader::LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: "nodevirt-controller".into(),
        identity: identity.clone(),
        duration,
        // client-go's proportions (15 s / 10 s / 2 s): a leader that cannot renew stops acting
        // a third of the duration before anyone else may take the Lease.
        renew_deadline: duration * 2 / 3,
        renew: (duration / 7).max(Duration::from_secs(1)),
    };
    let recorder = Arc::new(EventRecorder::new(
        client.clone(),
        "nodevirt-controller",
        &identity,
    ));
    // The caches only read: they outlive a leadership term, so a new term starts warm.
    let scheduling_ctx = Arc::new(scheduling::Context {
        client: client.clone(),
        recorder: recorder.clone(),
        nodes: cache::<Node>(&client),
        vms: cache::<VirtualMachine>(&client),
        presets: cache::<VirtualMachinePreset>(&client),
        heartbeat_timeout: SignedDuration::from_secs(args.node_heartbeat_timeout as i64),
    });
    let workloads_ctx = Arc::new(workloads::Context {
        client: client.clone(),
        recorder,
        backoff: Default::default(),
    });
    let shutdown = crate::k8s::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let leadership = tokio::select! {
            leadership = leader::acquire(client.clone(), lease.clone()) => leadership,
            _ = &mut shutdown => return Ok(()),
        };
        tokio::select! {
            _ = leadership.hold() => {
                warn!("stopped acting: the leader Lease lapsed; waiting to lead again");
            }
            _ = lead(&client, &scheduling_ctx, &workloads_ctx) => return Ok(()),
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// What only the leader runs, until one of its parts ends (they end only on shutdown).
/// Dropped when leadership is lost: every watch and reconcile in it stops with it.
async fn lead(
    client: &kube::Client,
    scheduling_ctx: &Arc<scheduling::Context>,
    workloads_ctx: &Arc<workloads::Context>,
) {
    // Decide only on complete caches: a partial Node list would misplace VMs.
    let _ = scheduling_ctx.nodes.wait_until_ready().await;
    let _ = scheduling_ctx.presets.wait_until_ready().await;
    let _ = scheduling_ctx.vms.wait_until_ready().await;
    let vms = controller::<VirtualMachine>(client)
        .run(
            scheduling::reconcile,
            scheduling::error_policy,
            Arc::clone(scheduling_ctx),
        )
        .for_each(|_| async {});
    let offline = controller::<OfflineVirtualMachine>(client)
        .owns_stream(owned_vms(client))
        .run(
            workloads::reconcile_offline,
            workloads::error_policy,
            Arc::clone(workloads_ctx),
        )
        .for_each(|_| async {});
    let replica_sets = controller::<VirtualMachineReplicaSet>(client)
        .owns_stream(owned_vms(client))
        .run(
            workloads::reconcile_replica_set,
            workloads::error_policy,
            Arc::clone(workloads_ctx),
        )
        .for_each(|_| async {});
    info!("controller running");
    tokio::select! {
        _ = vms => {},
        _ = offline => {},
        _ = replica_sets => {},
        _ = scheduling::watch_node_health(Arc::clone(scheduling_ctx)) => {},
    }
}
