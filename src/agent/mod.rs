//! `nodevirt agent`: the per-node daemon (KubeVirt's virt-handler).
//!
//! 1. Watches the VirtualMachines labelled `kubevirt.io/nodeName=<node>` (server-side label
//!    selector) with kube-runtime's Controller.
//! 2. Reconciles each VM (`reconcile`): disks, domain, status, events; level-triggered.
//! 3. libvirt's domain events (lifecycle, watchdog) trigger the reconcile of the domain's VM,
//!    so a guest that stops is reported within seconds.
//! 4. Beside it: the libvirt connection with reconnect (`libvirt_link`), which also decides
//!    the domain type once (`hypervisor::choice`), orphaned-domain cleanup (`gc`) and the node
//!    heartbeat (`heartbeat`).
//!
//! It runs on the node or in a Pod: libvirtd is reached through its socket, the node's KVM is
//! libvirtd's to report, and the node's files (a claim's image) are libvirtd's to open: the
//! agent sees none of them, only its state folder, which is at the node's own path.

mod cluster;
pub mod console_port;
mod disks;
mod execute;
#[cfg(test)]
mod fake;
pub mod finalizer;
pub mod gc;
pub mod heartbeat;
pub mod http;
mod inputs;
mod libvirt_link;
mod observe;
pub mod plan;
pub mod reasons;
pub mod reconcile;
#[cfg(test)]
mod reconcile_tests;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

use crate::admin::server::AdminState;
use crate::api::{NODE_NAME_LABEL, VirtualMachine, holder};
use crate::domain::CpuModel;
use crate::domain::names::vm_of_domain;
use crate::event_log::EventLog;
use crate::events::EventRecorder;
use crate::hypervisor::choice::{HypervisorChoice, LibvirtArgs};
use crate::hypervisor::{Libvirt, events};
use crate::metrics::AgentMetrics;
use crate::storage::files;
use crate::storage::layout::DEFAULT_STATE_DIR;
use crate::storage::registry::Puller;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use reconcile::{Context, Settings};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The node this agent runs; its VMs carry the label kubevirt.io/nodeName=<node>.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// A kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub libvirt: LibvirtArgs,
    /// One folder per VM UID holding its generated disks and console log.
    #[arg(long, env = "NODEVIRT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The libvirt network of each guest's NIC; "none" gives guests no NIC.
    #[arg(long, env = "NODEVIRT_NETWORK", default_value = "default")]
    pub network: String,
    /// A registry (host:port) reached over plain HTTP instead of HTTPS; repeatable.
    #[arg(
        long = "insecure-registry",
        env = "NODEVIRT_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// The only registries (host or host:port, as written in image references; docker.io
    /// for Docker Hub) registryDisk images may come from; repeatable. Without it, any: the
    /// agent then connects, from the node's network, to whatever host a VM names.
    #[arg(
        long = "allowed-registry",
        env = "NODEVIRT_ALLOWED_REGISTRIES",
        value_delimiter = ','
    )]
    pub allowed_registries: Vec<String>,
    /// The CPU guests see under KVM: host-model (KubeVirt's default), host-passthrough, or a
    /// libvirt CPU model name (e.g. Skylake-Server) that every node of the cluster has.
    /// Under TCG guests get QEMU's default CPU whatever this says.
    #[arg(long, env = "NODEVIRT_CPU_MODEL", default_value = "host-model")]
    pub cpu_model: CpuModel,
    /// The admin socket (HTTP/JSON, mode 0600) that `nodevirt admin` talks to.
    #[arg(long, env = "NODEVIRT_ADMIN_SOCKET", default_value = crate::admin::api::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,
    /// A group (name or GID) whose members may use the admin socket besides root; the socket
    /// is then mode 0660 with that group. Without it: 0600, root only.
    #[arg(long, env = "NODEVIRT_ADMIN_GROUP", value_parser = parse_group)]
    pub admin_group: Option<u32>,
    #[command(flatten)]
    pub metrics: crate::metrics_port::MetricsArgs,
    /// The console port (mutual TLS): the controller opens VMs' consoles and VNC servers here
    /// for `nodevirt console` and `nodevirt vnc` (docs/security.md).
    #[arg(long, env = "NODEVIRT_CONSOLE_ADDR", default_value = "0.0.0.0:9187")]
    pub console_addr: std::net::SocketAddr,
    /// Seconds between websocket pings on console and VNC sessions; a peer silent for three
    /// intervals is taken for gone.
    #[arg(long, env = "NODEVIRT_KEEPALIVE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_seconds: u64,
    /// Console and VNC sessions served at once, over the admin socket and the console port
    /// together; one more is refused with 503.
    #[arg(long, env = "NODEVIRT_MAX_SESSIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_sessions: u64,
    /// The controller's namespace, where its Pods publish their client certificates'
    /// fingerprints (ConfigMap nodevirt-controller-identities).
    #[arg(
        long,
        env = "NODEVIRT_CONTROLLER_NAMESPACE",
        default_value = "nodevirt"
    )]
    pub controller_namespace: String,
    /// Seconds between heartbeats on the Node (jittered by up to 10%).
    #[arg(long, default_value_t = 60)]
    pub heartbeat_interval: u64,
    /// Run a VM only while its holder pod is bound to this node (the controller creates it;
    /// kube-scheduler, kubelet, drain and quotas act on it), and stop it when the pod goes.
    /// false: run every VM labelled for this node, as on a host outside Kubernetes'
    /// scheduling (the systemd unit).
    #[arg(long, env = "NODEVIRT_REQUIRE_HOLDER_POD", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_holder_pod: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] crate::k8s::ClientError),
    #[error(transparent)]
    Events(#[from] events::EventError),
    #[error("preparing the state folder")]
    StateDir(#[source] crate::storage::files::StorageError),
    #[error("starting the metrics port")]
    Metrics(#[source] crate::metrics_port::PortError),
}

/// Makes the state folder and the VMs' folder traversable by QEMU, and warns about any folder
/// above them that is not: every VM would then fail to start with "Permission denied".
async fn prepare_state_dir(state_dir: &Path) -> Result<(), AgentError> {
    files::ensure_state_dir(state_dir)
        .await
        .map_err(AgentError::StateDir)?;
    for (dir, mode) in files::untraversable_ancestors(state_dir) {
        warn!(
            folder = %dir.display(),
            mode = format!("{mode:04o}"),
            state_dir = %state_dir.display(),
            "QEMU runs as its own user and cannot traverse this folder above the state folder; \
             VMs with disks will fail to start (give it o+x, or move --state-dir)"
        );
    }
    Ok(())
}

/// A group name or numeric GID -> GID.
fn parse_group(value: &str) -> Result<u32, String> {
    if let Ok(gid) = value.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(value) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {value:?} on this host")),
        Err(e) => Err(format!("looking up group {value:?}: {e}")),
    }
}

pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let metrics = Arc::new(AgentMetrics::new());
    let client =
        crate::k8s::client_counted(args.kubeconfig.as_deref(), metrics.api_requests.clone())
            .await?;
    prepare_state_dir(&args.state_dir).await?;
    events::start_event_loop()?;
    // Connected (and reconnected) by `libvirt_link`, so the agent starts while libvirtd is away.
    let libvirt = Arc::new(Libvirt::new(&args.libvirt.libvirt_uri));
    let hypervisor = Arc::new(HypervisorChoice::new(args.libvirt.hypervisor));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();

    let settings = Settings {
        node: plan::Node {
            name: args.node_name.clone(),
            state_dir: args.state_dir.clone(),
            network: (args.network != "none").then(|| args.network.clone()),
            // libvirt's test driver has no network.
            addresses_possible: args.network != "none"
                && !args.libvirt.libvirt_uri.starts_with("test"),
            cpu_model: args.cpu_model.clone(),
        },
        hypervisor: Arc::clone(&hypervisor),
    };
    info!(
        node = %settings.node.name,
        libvirt = %args.libvirt.libvirt_uri,
        hypervisor = ?args.libvirt.hypervisor,
        "agent starting"
    );
    let recorder = EventRecorder::new(client.clone(), "nodevirt-agent", &args.node_name);
    let puller = Puller::new(
        &args.state_dir,
        &args.insecure_registries,
        &args.allowed_registries,
    );
    let events = Arc::new(EventLog::default());
    let (holders, holder_events) = if args.require_holder_pod {
        let (holders, events) = holder_pods(&client, &args.node_name);
        (Some(holders), Some(events))
    } else {
        (None, None)
    };
    let ctx = Arc::new(Context::new(
        Arc::new(cluster::Kube {
            client: client.clone(),
            recorder,
            puller,
            holders,
        }),
        Arc::clone(&libvirt) as Arc<dyn crate::hypervisor::seam::Hypervisor>,
        settings,
        Arc::clone(&metrics),
        Arc::clone(&events),
    ));

    let selector = format!("{NODE_NAME_LABEL}={}", args.node_name);
    // Our own watcher -> reflector, so that "listed once" can be observed from the events:
    // kube-runtime's Store::wait_until_ready wakes only its last waiter, and the controller is
    // already one (kube-runtime 5.0, utils/delayed_init.rs keeps a single oneshot waker).
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let (store, writer) = reflector::store();
    let (resync_tx, resync_rx) = tokio::sync::mpsc::unbounded_channel();
    let resync_all = {
        let (store, resync, ctx) = (store.clone(), resync_tx.clone(), Arc::clone(&ctx));
        move || {
            ctx.forget_failures();
            for vm in store.state() {
                resync.send(ObjectRef::from_obj(&*vm)).ok();
            }
        }
    };
    let watch_errors = Arc::clone(&metrics);
    let api_lost = Arc::new(tokio::sync::Notify::new());
    let catch_up = tokio::spawn(resync_when_api_ready(
        client.clone(),
        Arc::clone(&api_lost),
        resync_all.clone(),
    ));
    let vm_events = crate::watch::watch::<VirtualMachine>(
        client.clone(),
        watcher::Config::default().labels(&selector),
    )
    .reflect(writer)
    .inspect(move |event| match event {
        Err(e) => {
            watch_errors.watch_errors.inc();
            api_lost.notify_one();
            warn!(error = %e, "watching VMs failed; watching again with backoff");
        }
        Ok(watcher::Event::InitDone) => {
            synced_tx.send_replace(true);
        }
        Ok(_) => {}
    })
    .applied_objects();
    let controller = Controller::for_stream(vm_events, store.clone())
        .with_config(crate::k8s::controller_config());
    let domain_events =
        UnboundedReceiverStream::new(rx).filter_map(|e: events::DomainEvent| async move {
            let (namespace, name) = vm_of_domain(&e.domain)?;
            Some(ObjectRef::<VirtualMachine>::new(name).within(namespace))
        });

    let endpoint = Arc::new(http::Endpoint {
        metrics: Arc::clone(&metrics),
        libvirt,
        vms: store.clone(),
        node: args.node_name.clone(),
        synced: synced.clone(),
    });
    let server = crate::metrics_port::Server::bind(
        &args.metrics,
        &args.node_name,
        Arc::clone(&endpoint),
        &metrics.http,
        client.clone(),
    )
    .await
    .map_err(AgentError::Metrics)?;
    let server = tokio::spawn(server.serve());
    let admin_state = Arc::new(AdminState {
        node: args.node_name.clone(),
        libvirt: Arc::clone(&endpoint.libvirt),
        vms: store.clone(),
        synced: synced.clone(),
        state_dir: args.state_dir.clone(),
        resync: resync_tx.clone(),
        events,
        hypervisor: Arc::clone(&hypervisor),
        keepalive: crate::tunnel::Keepalive {
            interval: Duration::from_secs(args.keepalive_seconds),
        },
        sessions: crate::admin::attach::SessionLimit::new(args.max_sessions as usize),
    });
    let console_port = match console_port::ConsolePort::bind(args.console_addr, &args.node_name)
        .await
    {
        Ok(port) => Some(port),
        Err(e) => {
            warn!(error = %crate::k8s::error_chain(&e), "the console port is not available: no nodevirt console or vnc on this node");
            None
        }
    };
    let fingerprint = console_port.as_ref().map(|port| port.fingerprint.clone());
    let console = console_port.map(|port| {
        tokio::spawn(port.serve(
            client.clone(),
            args.controller_namespace.clone(),
            Arc::clone(&admin_state),
            metrics.http.connections("console"),
        ))
    });
    let admin_path = args.admin_socket.clone();
    let access = crate::admin::peer::Access {
        group: args.admin_group,
    };
    let admin_connections = metrics.http.connections("admin");
    let admin = tokio::spawn(async move {
        let served =
            crate::admin::server::serve(&admin_path, admin_state, access, admin_connections);
        if let Err(e) = served.await {
            warn!(error = %crate::k8s::error_chain(&e), "the admin socket is not available");
        }
    });
    let (connected_tx, connected) = tokio::sync::watch::channel(false);
    let link = tokio::spawn(libvirt_link::run(
        Arc::clone(&endpoint.libvirt),
        hypervisor,
        tx,
        Arc::clone(&metrics),
        connected_tx,
        resync_all,
    ));
    let collector = gc::Collector {
        client: client.clone(),
        libvirt: Arc::clone(&endpoint.libvirt),
        node: args.node_name.clone(),
        state_dir: args.state_dir.clone(),
    };
    let gc = tokio::spawn(gc::run(store, synced, connected, collector));
    let heartbeat = tokio::spawn(heartbeat::run(
        client.clone(),
        args.node_name.clone(),
        Duration::from_secs(args.heartbeat_interval),
        fingerprint,
    ));
    controller
        .reconcile_on(domain_events)
        .reconcile_on(UnboundedReceiverStream::new(resync_rx))
        .reconcile_on(futures::stream::iter(holder_events).flatten())
        .graceful_shutdown_on(crate::k8s::shutdown_signal())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| async {})
        .await;
    server.abort();
    admin.abort();
    if let Some(console) = console {
        console.abort();
    }
    link.abort();
    gc.abort();
    heartbeat.abort();
    catch_up.abort();
    if let Err(e) = heartbeat::beat(&client, &args.node_name, false, None).await {
        warn!(error = %e, "cannot mark the node unschedulable on exit");
    }
    info!("agent stopped; running VMs keep running");
    Ok(())
}

/// This node's holder pods, cached, and a stream of the VMs whose pod changed (the stream
/// also keeps the cache current, so it must be polled: the Controller does).
fn holder_pods(
    client: &kube::Client,
    node: &str,
) -> (
    cluster::HolderPods,
    impl futures::Stream<Item = ObjectRef<VirtualMachine>> + Send + 'static,
) {
    let config = watcher::Config::default()
        .labels(holder::SELECTOR)
        .fields(&format!("spec.nodeName={node}"));
    let (store, changes) = crate::watch::reflected::<Pod>(client.clone(), config);
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    // The one waiter on the store's readiness; every reconcile waits on `synced` instead.
    let ready = store.clone();
    tokio::spawn(async move {
        let _ = ready.wait_until_ready().await;
        synced_tx.send_replace(true);
    });
    let vms = changes.filter_map(|pod| async move {
        let pod = pod
            .inspect_err(
                |e| warn!(error = %e, "watching holder pods failed; watching again with backoff"),
            )
            .ok()?;
        let name = pod.labels().get(holder::VM_LABEL)?.clone();
        Some(ObjectRef::<VirtualMachine>::new(&name).within(&pod.namespace()?))
    });
    (cluster::HolderPods { store, synced }, vms)
}

/// After the API server was away, every VM is looked at again as soon as it is ready.
/// Reconciles that failed meanwhile sit in their error backoff (up to a minute), and the
/// watch, resumed from its last resourceVersion, brings no event when no VM changed: the
/// status of VMs whose domain changed meanwhile would wait for either.
async fn resync_when_api_ready(
    client: kube::Client,
    api_lost: Arc<tokio::sync::Notify>,
    resync_all: impl Fn(),
) {
    const PROBE_INTERVAL: Duration = Duration::from_secs(1);
    loop {
        api_lost.notified().await;
        // Ready, not only answering: /version answers before the API server can serve writes.
        while !is_ready(&client).await {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        info!("the API server is ready again; looking at every VM again");
        resync_all();
    }
}

async fn is_ready(client: &kube::Client) -> bool {
    let Ok(request) = ::http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client.request_text(request).await.is_ok()
}
