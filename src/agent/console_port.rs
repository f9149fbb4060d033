//! The agent's console port (`--console-addr`, TCP, mutual TLS): where the controller opens a
//! VM's serial console or VNC server for `nodevirt console` and `nodevirt vnc`.
//!
//! 1. A key and self-signed certificate made at start ([`pin::Identity`]); its fingerprint is
//!    published on the agent's Node (annotation [`pin::AGENT_FINGERPRINT_ANNOTATION`], with
//!    the heartbeat), and the controller accepts no other certificate for this node.
//! 2. A client must present a certificate whose fingerprint a controller Pod published in the
//!    ConfigMap [`pin::CONTROLLER_IDENTITIES`] (watched here): anything else fails the TLS
//!    handshake. Only the controller's ServiceAccount may write that ConfigMap.
//! 3. Only the admin socket's `.../console/attach` and `.../vnc` routes, as websockets: the
//!    same sessions as `nodevirt admin attach|vnc` (one console writer, `force` takes over).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::admin::server::AdminState;
use crate::tunnel::pin::{self, AllowedClients, Identity};

#[derive(Debug, thiserror::Error)]
pub enum ConsolePortError {
    #[error("generating the console port's certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("setting up the console port's TLS")]
    Tls(#[source] rustls::Error),
    #[error("binding the console port {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The bound port, ready to serve; `fingerprint` is what the heartbeat publishes.
pub struct ConsolePort {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    allowed: AllowedClients,
    pub fingerprint: String,
}

impl ConsolePort {
    pub async fn bind(addr: SocketAddr, node: &str) -> Result<Self, ConsolePortError> {
        let identity = Identity::generate(&format!("nodevirt-agent@{node}"))
            .map_err(ConsolePortError::Certificate)?;
        let allowed = AllowedClients::default();
        let config =
            pin::server_config(&identity, allowed.clone()).map_err(ConsolePortError::Tls)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ConsolePortError::Bind { addr, source })?;
        info!(
            addr = %listener.local_addr().unwrap_or(addr),
            fingerprint = identity.fingerprint(),
            "console port listening"
        );
        Ok(Self {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            allowed,
            fingerprint: identity.fingerprint(),
        })
    }

    /// Serves until the task is dropped, following the controllers' published identities.
    pub async fn serve(
        self,
        client: Client,
        namespace: String,
        state: Arc<AdminState>,
        connections: crate::server::ConnectionMetrics,
    ) {
        let identities = tokio::spawn(follow_identities(client, namespace, self.allowed));
        let endpoint = crate::server::Endpoint {
            name: "console",
            limits: crate::server::Limits::STANDARD,
            tls: Some(self.acceptor),
            metrics: connections,
        };
        let app = crate::admin::server::console_router(state);
        crate::server::serve(self.listener, app, endpoint, |_| ()).await;
        identities.abort();
    }
}

/// Keeps `allowed` equal to the fingerprints in the ConfigMap (none while it is absent).
async fn follow_identities(client: Client, namespace: String, allowed: AllowedClients) {
    let configmaps: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config =
        watcher::Config::default().fields(&format!("metadata.name={}", pin::CONTROLLER_IDENTITIES));
    let mut events = std::pin::pin!(watcher(configmaps, config).default_backoff());
    // A relist that finds no ConfigMap (deleted while the watch was down) empties the set.
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map)) => {
                listed = true;
                allowed.replace(fingerprints(&map));
                info!(controllers = allowed.len(), "controller identities updated");
            }
            Ok(watcher::Event::Delete(_)) => allowed.replace(BTreeSet::new()),
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitDone) if !listed => allowed.replace(BTreeSet::new()),
            Ok(watcher::Event::InitDone) => {}
            Err(e) => warn!(
                namespace,
                configmap = pin::CONTROLLER_IDENTITIES,
                error = %e,
                "cannot watch the controller identities; the console port keeps the last ones"
            ),
        }
    }
}

/// The ConfigMap's values: one fingerprint per controller Pod.
fn fingerprints(map: &ConfigMap) -> BTreeSet<String> {
    map.data
        .iter()
        .flatten()
        .map(|(_, fingerprint)| fingerprint.trim().to_ascii_lowercase())
        .collect()
}
