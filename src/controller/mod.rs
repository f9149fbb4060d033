//! `nodevirt controller`: the cluster-wide part.
//!
//! Only the holder of the Lease `nodevirt-controller` acts (`leader`). While leading it runs:
//! - `scheduling`: presets, and new VMs' holder pods, placed by kube-scheduler;
//! - `node_health`: silent nodes take no new VMs, and their VMs are `Unknown`;
//! - `workloads`: OfflineVirtualMachines (spec.running) and VirtualMachineReplicaSets.
//!
//! When the Lease cannot be renewed in time (an API outage, a partition) the leader stops
//! acting, a third of the lease duration before another replica may take over, and joins the
//! election again: the process stays up and its caches stay warm.
//!
//! Every replica, leading or not, serves the aggregated API `subresources` (console and VNC
//! through the API server) and its metrics port (`crate::metrics_port`): `metrics`
//! (what it counts) and `health` (its `/healthz` and `/readyz`).

pub mod backoff;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod node_health;
pub mod scheduling;
pub mod status;
pub mod status_writer;
pub mod subresources;
pub mod workloads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::SignedDuration;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::holder::{self, spec::HolderConfig};
use crate::api::{
    OfflineVirtualMachine, VirtualMachine, VirtualMachinePreset, VirtualMachineReplicaSet,
};
use crate::events::EventRecorder;

use self::health::Pulse;
use self::metrics::{ControllerMetrics, controllers};
use crate::metrics_port::{self, MetricsArgs, PortError};

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
    /// The image of the holder pods' `/pause`; by default the image of this controller's own
    /// container (read from its Pod, POD_NAMESPACE/POD_NAME).
    #[arg(long, env = "NODEVIRT_HOLDER_IMAGE")]
    pub holder_image: Option<String>,
    /// CPU a holder pod requests per guest core (1 = one CPU per core; 0.1 = 100m), unless the
    /// VM requests CPU itself.
    #[arg(long, default_value_t = 1.0, value_parser = parse_cpu_ratio)]
    pub cpu_ratio: f64,
    /// The metrics port: /metrics (nodevirt_controller_*), /healthz, /readyz; on every replica.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub subresources: subresources::SubresourceArgs,
}

fn parse_cpu_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if ratio > 0.0 && ratio <= 64.0 => Ok(ratio),
        _ => Err(format!(
            "{value:?}: expected a number above 0 and at most 64, e.g. 0.25"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Client(#[from] crate::k8s::ClientError),
    #[error(
        "finding the holder pods' image: no --holder-image, and this controller's own Pod \
         {pod:?} in namespace {namespace:?} could not be read"
    )]
    HolderImage {
        namespace: String,
        pod: String,
        #[source]
        source: Option<kube::Error>,
    },
    #[error("starting the metrics port")]
    Metrics(#[source] PortError),
}

/// `stream` of a watch of `K`, its errors counted and logged (the watch re-lists after each).
fn counted<K: Resource<DynamicType = ()>, T>(
    stream: impl Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    metrics: &Arc<ControllerMetrics>,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static {
    let metrics = Arc::clone(metrics);
    stream.inspect_err(move |e| {
        let kind = K::kind(&());
        metrics.watch_error(&kind);
        warn!(%kind, error = %e, "watching failed; watching again with backoff");
    })
}

/// A reflector's cache, kept current by a task of its own (whose end `/healthz` reports).
fn cache<K>(
    client: &kube::Client,
    config: watcher::Config,
    metrics: &Arc<ControllerMetrics>,
    tasks: &mut Vec<(String, JoinHandle<()>)>,
) -> reflector::Store<K>
where
    K: crate::watch::Decode + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    cache_calling(client, config, metrics, tasks, |_: &K| {})
}

/// The same, calling `changed` with each object once the cache holds its new version.
fn cache_calling<K>(
    client: &kube::Client,
    config: watcher::Config,
    metrics: &Arc<ControllerMetrics>,
    tasks: &mut Vec<(String, JoinHandle<()>)>,
    mut changed: impl FnMut(&K) + Send + 'static,
) -> reflector::Store<K>
where
    K: crate::watch::Decode + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, stream) = crate::watch::reflected::<K>(client.clone(), config);
    let task = tokio::spawn(counted::<K, _>(stream, metrics).for_each(move |object| {
        if let Ok(object) = object {
            changed(&object);
        }
        async {}
    }));
    tasks.push((K::kind(&()).into_owned(), task));
    reader
}

/// The holder pods' cache, and the VMs whose pod changed, sent only once the cache has the
/// change: a trigger from a watch of its own could come first, and the reconcile would read
/// the pod as it was (seen: a VM never handed over, its pod's binding read as not yet made).
fn holder_pod_cache(
    client: &kube::Client,
    metrics: &Arc<ControllerMetrics>,
    tasks: &mut Vec<(String, JoinHandle<()>)>,
) -> (
    reflector::Store<Pod>,
    broadcast::Sender<ObjectRef<VirtualMachine>>,
) {
    let (changes, _) = broadcast::channel(1024);
    let sender = changes.clone();
    let store = cache_calling(client, holders(), metrics, tasks, move |pod: &Pod| {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for owner in pod.metadata.owner_references.iter().flatten() {
            if owner.controller == Some(true) && owner.kind == "VirtualMachine" {
                let _ = sender.send(ObjectRef::new(&owner.name).within(&namespace));
            }
        }
    });
    (store, changes)
}

/// The VMs whose holder pod changed, for one leadership term; a term that falls behind by
/// more than the channel holds skips what it missed (each VM is looked at again on its next
/// change, and the term's start looks at every VM).
fn pod_changes(
    changes: &broadcast::Sender<ObjectRef<VirtualMachine>>,
) -> impl Stream<Item = ObjectRef<VirtualMachine>> + Send + 'static {
    futures::stream::unfold(changes.subscribe(), |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(vm) => return Some((vm, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// A Controller for `K` whose watch is [`crate::watch::watch`], so one object that does not
/// decode never stops it.
fn controller<K>(client: &kube::Client, metrics: &Arc<ControllerMetrics>) -> Controller<K>
where
    K: crate::watch::Decode + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, stream) = crate::watch::reflected::<K>(client.clone(), watcher::Config::default());
    Controller::for_stream(counted::<K, _>(stream, metrics), reader)
        .with_config(crate::k8s::controller_config())
}

fn holders() -> watcher::Config {
    watcher::Config::default().labels(holder::SELECTOR)
}

/// `--holder-image`, else the image of this controller's own container.
async fn holder_image(
    client: &kube::Client,
    args: &ControllerArgs,
) -> Result<String, ControllerError> {
    if let Some(image) = &args.holder_image {
        return Ok(image.clone());
    }
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| args.lease_namespace.clone());
    let pod = args.identity.clone().unwrap_or_default();
    let unknown = |source| ControllerError::HolderImage {
        namespace: namespace.clone(),
        pod: pod.clone(),
        source,
    };
    let own: Pod = Api::namespaced(client.clone(), &namespace)
        .get(&pod)
        .await
        .map_err(|e| unknown(Some(e)))?;
    own.spec
        .and_then(|spec| spec.containers.into_iter().find(|c| c.name == "controller"))
        .and_then(|c| c.image)
        .ok_or_else(|| unknown(None))
}

/// The owned VMs of a workload controller, as triggers.
fn owned_vms(
    client: &kube::Client,
    metrics: &Arc<ControllerMetrics>,
) -> impl Stream<Item = Result<VirtualMachine, watcher::Error>> + Send + 'static {
    let watch = crate::watch::watch::<VirtualMachine>(client.clone(), watcher::Config::default());
    counted::<VirtualMachine, _>(watch, metrics).touched_objects()
}

pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let metrics = Arc::new(ControllerMetrics::new());
    let client =
        crate::k8s::client_counted(args.kubeconfig.as_deref(), metrics.api_requests.clone())
            .await?;
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
    let mut cache_tasks = Vec::new();
    let all = watcher::Config::default;
    let (pods, pod_changed) = holder_pod_cache(&client, &metrics, &mut cache_tasks);
    let scheduling_ctx = Arc::new(scheduling::Context {
        client: client.clone(),
        recorder: recorder.clone(),
        nodes: cache::<Node>(&client, all(), &metrics, &mut cache_tasks),
        vms: cache::<VirtualMachine>(&client, all(), &metrics, &mut cache_tasks),
        presets: cache::<VirtualMachinePreset>(&client, all(), &metrics, &mut cache_tasks),
        pods: pods.clone(),
        holder: HolderConfig {
            image: holder_image(&client, &args).await?,
            millicores_per_core: (args.cpu_ratio * 1000.0).round() as u64,
        },
        heartbeat_timeout: SignedDuration::from_secs(args.node_heartbeat_timeout as i64),
        metrics: Arc::clone(&metrics),
    });
    let workloads_ctx = Arc::new(workloads::Context {
        client: client.clone(),
        recorder,
        backoff: Default::default(),
        metrics: Arc::clone(&metrics),
    });
    // The one waiter on the caches: kube's Store wakes only the last of several tasks waiting
    // in `wait_until_ready` at once (one oneshot waker), so `/readyz` and `lead` both wait on
    // `synced` instead (seen: leading on synced caches while /readyz stayed 503).
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let caches = Arc::clone(&scheduling_ctx);
    tokio::spawn(async move {
        let _ = caches.nodes.wait_until_ready().await;
        let _ = caches.presets.wait_until_ready().await;
        let _ = caches.vms.wait_until_ready().await;
        let _ = caches.pods.wait_until_ready().await;
        synced_tx.send_replace(true);
    });
    let election = Pulse::default();
    let endpoint = Arc::new(health::Endpoint {
        metrics: Arc::clone(&metrics),
        election: election.clone(),
        election_stall_limit: health::election_stall_limit(&lease),
        caches: cache_tasks,
        synced: synced.clone(),
    });
    // Bound before leading, on every replica: a standby answers its probes too.
    let port = metrics_port::Server::bind(
        &args.metrics,
        &identity,
        endpoint,
        &metrics.http,
        client.clone(),
    )
    .await
    .map_err(ControllerError::Metrics)?;
    tokio::spawn(port.serve());
    let api = tokio::spawn(subresources::run(
        args.subresources.clone(),
        client.clone(),
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| args.lease_namespace.clone()),
        identity.clone(),
        scheduling_ctx.vms.clone(),
        scheduling_ctx.nodes.clone(),
        metrics.http.connections("subresources"),
    ));
    tokio::spawn(async move {
        if let Ok(Err(e)) = api.await {
            warn!(error = %crate::k8s::error_chain(&e), "the aggregated API {} is not served by this replica: nodevirt console and vnc cannot reach it", subresources::GROUP);
        }
    });
    let shutdown = crate::k8s::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let acquiring = leader::acquire(client.clone(), lease.clone(), election.clone());
        let leadership = tokio::select! {
            leadership = acquiring => leadership,
            _ = &mut shutdown => return Ok(()),
        };
        metrics.leader.set(1);
        let leading = lead(
            &client,
            &metrics,
            &pod_changed,
            synced.clone(),
            &scheduling_ctx,
            &workloads_ctx,
        );
        tokio::select! {
            _ = leadership.hold() => {
                warn!("stopped acting: the leader Lease lapsed; waiting to lead again");
            }
            _ = leading => return Ok(()),
            _ = &mut shutdown => return Ok(()),
        }
        metrics.leader.set(0);
    }
}

/// What only the leader runs, until one of its parts ends (they end only on shutdown).
/// Dropped when leadership is lost: every watch and reconcile in it stops with it.
async fn lead(
    client: &kube::Client,
    metrics: &Arc<ControllerMetrics>,
    pod_changed: &broadcast::Sender<ObjectRef<VirtualMachine>>,
    mut synced: tokio::sync::watch::Receiver<bool>,
    scheduling_ctx: &Arc<scheduling::Context>,
    workloads_ctx: &Arc<workloads::Context>,
) {
    // Decide only on complete caches: a partial Node list would misplace VMs.
    let _ = synced.wait_for(|synced| *synced).await;
    let vms = controller::<VirtualMachine>(client, metrics)
        .reconcile_on(pod_changes(pod_changed))
        .run(
            metrics::instrumented(
                Arc::clone(metrics),
                controllers::SCHEDULING,
                scheduling::reconcile,
            ),
            scheduling::error_policy,
            Arc::clone(scheduling_ctx),
        )
        .for_each(|_| async {});
    let offline = controller::<OfflineVirtualMachine>(client, metrics)
        .owns_stream(owned_vms(client, metrics))
        .run(
            metrics::instrumented(
                Arc::clone(metrics),
                controllers::OFFLINE_VIRTUAL_MACHINE,
                workloads::reconcile_offline,
            ),
            workloads::error_policy,
            Arc::clone(workloads_ctx),
        )
        .for_each(|_| async {});
    let replica_sets = controller::<VirtualMachineReplicaSet>(client, metrics)
        .owns_stream(owned_vms(client, metrics))
        .run(
            metrics::instrumented(
                Arc::clone(metrics),
                controllers::REPLICA_SET,
                workloads::reconcile_replica_set,
            ),
            workloads::error_policy,
            Arc::clone(workloads_ctx),
        )
        .for_each(|_| async {});
    info!("controller running");
    tokio::select! {
        _ = vms => {},
        _ = offline => {},
        _ = replica_sets => {},
        _ = node_health::watch_node_health(Arc::clone(scheduling_ctx)) => {},
    }
}
