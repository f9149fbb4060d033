//! The agent's HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text), `/healthz`
//! (the process answers) and `/readyz` (libvirt answers and the VM watch has listed once), for
//! the DaemonSet's probes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::VirtualMachine;
use crate::domain::domain_name;
use crate::hypervisor::Libvirt;
use crate::metrics::{AgentMetrics, VmUsage};

pub struct Endpoint {
    pub metrics: Arc<AgentMetrics>,
    pub libvirt: Arc<Libvirt>,
    pub vms: Store<VirtualMachine>,
    pub node: String,
    /// True once the VM watch has listed every VM of the node.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

pub async fn serve(addr: SocketAddr, endpoint: Arc<Endpoint>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(endpoint);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

async fn metrics(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let counters = match endpoint.libvirt.run(|lv| lv.running_counters()).await {
        Ok(counters) => counters,
        Err(e) => {
            endpoint.metrics.libvirt_errors.inc();
            tracing::warn!(error = %crate::k8s::error_chain(&e), "metrics: cannot read domain counters");
            Default::default()
        }
    };
    // The node's VMs come from the watch cache; libvirt only adds the counters of those
    // whose domain runs (its name is `<namespace>_<name>`).
    let vms = endpoint.vms.state();
    let usage: Vec<VmUsage> = vms
        .iter()
        .filter_map(|vm| {
            let (namespace, name) = (vm.namespace()?, vm.name_any());
            let counters = counters.get(&domain_name(&namespace, &name))?.clone();
            Some(VmUsage {
                namespace,
                name,
                counters,
            })
        })
        .collect();
    let phases: Vec<_> = vms.iter().map(|vm| vm.phase()).collect();
    match endpoint.metrics.render(&endpoint.node, &usage, &phases) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let alive = endpoint
        .libvirt
        .run(|lv| Ok(lv.is_alive()))
        .await
        .unwrap_or(false);
    let synced = *endpoint.synced.borrow();
    let body = format!("libvirt: {}\nwatch synced: {}\n", alive, synced);
    let status = if alive && synced {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}
