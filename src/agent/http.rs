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
use kube::runtime::reflector::Store;

use crate::api::VirtualMachine;
use crate::hypervisor::Libvirt;
use crate::metrics::AgentMetrics;

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
    let node = endpoint.node.clone();
    let usage = endpoint.libvirt.run(move |lv| lv.usage(&node)).await;
    let usage = match usage {
        Ok(usage) => usage,
        Err(e) => {
            endpoint.metrics.libvirt_errors.inc();
            tracing::warn!(error = %crate::k8s::error_chain(&e), "metrics: cannot read domain counters");
            Vec::new()
        }
    };
    let phases: Vec<_> = endpoint.vms.state().iter().map(|vm| vm.phase()).collect();
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
