//! `nodevirt controller`: the cluster-wide part.
//!
//! Only the holder of the Lease `nodevirt-controller` acts (`leader`). While leading it runs:
//! - `scheduling`: presets and placement of new VMs; `Unknown` for VMs of silent nodes;
//! - `workloads`: OfflineVirtualMachines (spec.running) and VirtualMachineReplicaSets.
//!
//! When leadership is lost the process exits, so it can never act beside a new leader.

pub mod leader;
pub mod placement;
pub mod presets;
pub mod scheduling;
pub mod workloads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::SignedDuration;
use kube::Api;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use tracing::info;

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
    #[error("lost the leader Lease; exiting so that only the new leader acts")]
    LostLeadership,
}

/// A reflector's cache, kept current by a task of its own.
fn cache<K>(api: Api<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(crate::k8s::drop_managed_fields)
        .reflect(writer)
        .applied_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let client = crate::k8s::client(args.kubeconfig.as_deref()).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::k8s::hostname(), std::process::id()));
    let lease = leader::LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: "nodevirt-controller".into(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration),
        renew: Duration::from_secs((args.lease_duration / 5).max(1)),
    };
    let leadership = leader::acquire(client.clone(), lease).await;
    let recorder = Arc::new(EventRecorder::new(
        client.clone(),
        "nodevirt-controller",
        &identity,
    ));
    let scheduling_ctx = Arc::new(scheduling::Context {
        client: client.clone(),
        recorder: recorder.clone(),
        nodes: cache(Api::<Node>::all(client.clone())),
        vms: cache(Api::<VirtualMachine>::all(client.clone())),
        presets: cache(Api::<VirtualMachinePreset>::all(client.clone())),
        heartbeat_timeout: SignedDuration::from_secs(args.node_heartbeat_timeout as i64),
    });
    // Decide only on complete caches: a partial Node list would misplace VMs.
    let _ = scheduling_ctx.nodes.wait_until_ready().await;
    let _ = scheduling_ctx.presets.wait_until_ready().await;
    let _ = scheduling_ctx.vms.wait_until_ready().await;
    let workloads_ctx = Arc::new(workloads::Context {
        client: client.clone(),
        recorder,
    });

    let vms = Controller::new(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(crate::k8s::controller_config())
    .run(
        scheduling::reconcile,
        scheduling::error_policy,
        Arc::clone(&scheduling_ctx),
    )
    .for_each(|_| async {});
    let offline = Controller::new(
        Api::<OfflineVirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(crate::k8s::controller_config())
    .run(
        workloads::reconcile_offline,
        workloads::error_policy,
        Arc::clone(&workloads_ctx),
    )
    .for_each(|_| async {});
    let replica_sets = Controller::new(
        Api::<VirtualMachineReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(crate::k8s::controller_config())
    .run(
        workloads::reconcile_replica_set,
        workloads::error_policy,
        workloads_ctx,
    )
    .for_each(|_| async {});
    info!("controller running");
    tokio::select! {
        _ = leadership.hold() => Err(ControllerError::LostLeadership),
        _ = vms => Ok(()),
        _ = offline => Ok(()),
        _ = replica_sets => Ok(()),
        _ = scheduling::watch_node_health(scheduling_ctx) => Ok(()),
        _ = crate::k8s::shutdown_signal() => Ok(()),
    }
}
