//! The agent's HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text), `/healthz`
//! (the process answers) and `/readyz` (libvirt answers and the VM watch has listed once), for
//! the DaemonSet's probes.
//!
//! As kubelet's: HTTPS ([`metrics_tls`](super::metrics_tls)), `/metrics` only for a bearer
//! token allowed to `get` it ([`metrics_auth`](super::metrics_auth)), the probes open to all.
//! `--metrics-insecure-http` serves plain HTTP without authentication, for tests and local
//! use. The connection limits are `crate::server`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use super::metrics_auth::{self, Authorizer};
use super::metrics_tls::{self, CertificateSource, TlsError};
use crate::api::VirtualMachine;
use crate::domain::names::domain_name;
use crate::hypervisor::Libvirt;
use crate::metrics::{AgentMetrics, VmUsage};
use crate::server::{Endpoint as Connections, Limits};

/// The metrics port's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Where /metrics, /healthz and /readyz are served (HTTPS unless --metrics-insecure-http).
    #[arg(long, env = "NODEVIRT_METRICS_ADDR", default_value = "0.0.0.0:9186")]
    pub metrics_addr: SocketAddr,
    /// The metrics port's serving certificate (PEM, leaf first), with --metrics-tls-key-file.
    /// Without both: a self-signed certificate made at start, which scrapers cannot verify.
    #[arg(
        long,
        env = "NODEVIRT_METRICS_TLS_CERT_FILE",
        requires = "metrics_tls_key_file"
    )]
    pub metrics_tls_cert_file: Option<PathBuf>,
    /// The private key of --metrics-tls-cert-file (PEM).
    #[arg(
        long,
        env = "NODEVIRT_METRICS_TLS_KEY_FILE",
        requires = "metrics_tls_cert_file"
    )]
    pub metrics_tls_key_file: Option<PathBuf>,
    /// Plain HTTP, and /metrics without authentication: for tests and local use only (bind it
    /// to 127.0.0.1). By default the port is HTTPS and /metrics needs a bearer token allowed to
    /// get it (ClusterRole nodevirt-metrics-reader).
    #[arg(
        long,
        env = "NODEVIRT_METRICS_INSECURE_HTTP",
        conflicts_with_all = ["metrics_tls_cert_file", "metrics_tls_key_file"]
    )]
    pub metrics_insecure_http: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding the metrics port {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the metrics port's TLS")]
    Tls(#[source] TlsError),
}

pub struct Endpoint {
    pub metrics: Arc<AgentMetrics>,
    pub libvirt: Arc<Libvirt>,
    pub vms: Store<VirtualMachine>,
    pub node: String,
    /// True once the VM watch has listed every VM of the node.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

/// The metrics port, bound and ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
    connections: Connections,
}

impl Server {
    /// Binds `args.metrics_addr` and prepares TLS and the authorizer (whose reviews go
    /// through `client`), so that a bad flag or a busy port stops the agent at start.
    pub async fn bind(
        args: &MetricsArgs,
        endpoint: Arc<Endpoint>,
        client: kube::Client,
    ) -> Result<Server, HttpError> {
        let connections = endpoint.metrics.connections("metrics");
        let (tls, authorizer) = if args.metrics_insecure_http {
            tracing::warn!(
                addr = %args.metrics_addr,
                "the metrics port serves plain HTTP and /metrics to anyone (--metrics-insecure-http)"
            );
            (None, None)
        } else {
            let source = CertificateSource::choose(
                args.metrics_tls_cert_file.as_deref(),
                args.metrics_tls_key_file.as_deref(),
                &endpoint.node,
                args.metrics_addr.ip(),
            );
            let (chain, key) = metrics_tls::load(&source).map_err(HttpError::Tls)?;
            let fingerprint = metrics_tls::fingerprint(&chain[0]);
            match &source {
                CertificateSource::Files { certificate, .. } => tracing::info!(
                    certificate = %certificate.display(), sha256 = %fingerprint,
                    "metrics port: HTTPS with the given certificate"
                ),
                CertificateSource::SelfSigned { names } => tracing::info!(
                    names = ?names, sha256 = %fingerprint,
                    "metrics port: HTTPS with a self-signed certificate made at start"
                ),
            }
            let config = metrics_tls::server_config(chain, key).map_err(HttpError::Tls)?;
            let reviewer = Box::new(metrics_auth::KubeReviewer { client });
            let authorizer = Authorizer::new(reviewer, endpoint.metrics.metrics_reviews.clone());
            (
                Some(tokio_rustls::TlsAcceptor::from(config)),
                Some(Arc::new(authorizer)),
            )
        };
        let listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .map_err(|source| HttpError::Bind {
                addr: args.metrics_addr,
                source,
            })?;
        Ok(Server {
            listener,
            app: router(endpoint, authorizer),
            connections: Connections {
                name: "metrics",
                limits: Limits::STANDARD,
                tls,
                metrics: connections,
            },
        })
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        crate::server::serve(self.listener, self.app, self.connections, |_| ()).await
    }
}

/// The routes; `/metrics` behind `authorizer` when there is one.
fn router(endpoint: Arc<Endpoint>, authorizer: Option<Arc<Authorizer>>) -> Router {
    let mut scrape = Router::new().route("/metrics", get(metrics));
    if let Some(authorizer) = authorizer {
        scrape = scrape.route_layer(axum::middleware::from_fn_with_state(
            authorizer,
            metrics_auth::require_metrics_access,
        ));
    }
    Router::new()
        .merge(scrape)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(endpoint)
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
