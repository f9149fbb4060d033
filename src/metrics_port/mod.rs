//! The metrics port of nodevirt's long-running processes, the agent and the controller: one
//! implementation for both, on `--metrics-addr`.
//!
//! 1. `/metrics`: the process's [`Exposition`] (OpenMetrics text), only for a bearer token
//!    allowed to `get` it ([`auth`]), as kubelet's.
//! 2. `/healthz` and `/readyz`: the process's own answers, open to all (kubelet probes them
//!    without a token); 200 when true, else 503, with a body saying why.
//! 3. HTTPS ([`tls`]); `--metrics-insecure-http` serves plain HTTP without authentication, for
//!    tests and local use. The connection limits are `crate::server`'s.

pub mod auth;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use self::auth::Authorizer;
use self::tls::{CertificateSource, TlsError};
use crate::server::{Endpoint, HttpMetrics, Limits};

/// The metrics port's flags, the same for the agent and the controller.
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
pub enum PortError {
    #[error("binding the metrics port {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the metrics port's TLS")]
    Tls(#[source] TlsError),
}

/// A probe's answer: 200 or 503, and a body saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    pub body: String,
}

impl IntoResponse for Probe {
    fn into_response(self) -> Response {
        let status = if self.ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, self.body).into_response()
    }
}

/// What one process serves on its metrics port.
pub trait Exposition: Send + Sync + 'static {
    /// The whole `/metrics` body, OpenMetrics text ending in `# EOF`.
    fn metrics(&self) -> impl Future<Output = Result<String, std::fmt::Error>> + Send;
    /// `/healthz`: whether the process works at all (kubelet restarts it when not).
    fn health(&self) -> impl Future<Output = Probe> + Send;
    /// `/readyz`: whether it is ready to do its job.
    fn readiness(&self) -> impl Future<Output = Probe> + Send;
}

/// The metrics port, bound and ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
    endpoint: Endpoint,
}

impl Server {
    /// Binds `args.metrics_addr` and prepares TLS (a self-signed certificate names `host`)
    /// and the authorizer (whose reviews go through `client`), so that a bad flag or a busy
    /// port stops the process at start.
    pub async fn bind<E: Exposition>(
        args: &MetricsArgs,
        host: &str,
        exposition: Arc<E>,
        metrics: &HttpMetrics,
        client: kube::Client,
    ) -> Result<Server, PortError> {
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
                host,
                args.metrics_addr.ip(),
            );
            let (chain, key) = tls::load(&source).map_err(PortError::Tls)?;
            let fingerprint = tls::fingerprint(&chain[0]);
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
            let config = tls::server_config(chain, key).map_err(PortError::Tls)?;
            let reviewer = Box::new(auth::KubeReviewer { client });
            let authorizer = Authorizer::new(reviewer, metrics.metrics_reviews.clone());
            (
                Some(tokio_rustls::TlsAcceptor::from(config)),
                Some(Arc::new(authorizer)),
            )
        };
        let listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .map_err(|source| PortError::Bind {
                addr: args.metrics_addr,
                source,
            })?;
        Ok(Server {
            listener,
            app: router(exposition, authorizer),
            endpoint: Endpoint {
                name: "metrics",
                limits: Limits::STANDARD,
                tls,
                metrics: metrics.connections("metrics"),
            },
        })
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        crate::server::serve(self.listener, self.app, self.endpoint, |_| ()).await
    }
}

/// The routes; `/metrics` behind `authorizer` when there is one.
fn router<E: Exposition>(exposition: Arc<E>, authorizer: Option<Arc<Authorizer>>) -> Router {
    let mut scrape = Router::new().route("/metrics", get(metrics::<E>));
    if let Some(authorizer) = authorizer {
        scrape = scrape.route_layer(axum::middleware::from_fn_with_state(
            authorizer,
            auth::require_metrics_access,
        ));
    }
    Router::new()
        .merge(scrape)
        .route(
            "/healthz",
            get(|State(e): State<Arc<E>>| async move { e.health().await }),
        )
        .route(
            "/readyz",
            get(|State(e): State<Arc<E>>| async move { e.readiness().await }),
        )
        .with_state(exposition)
}

async fn metrics<E: Exposition>(State(exposition): State<Arc<E>>) -> Response {
    match exposition.metrics().await {
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
