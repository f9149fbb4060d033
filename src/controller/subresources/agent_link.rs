//! The controller's side of the console port: a websocket to the agent of the VM's node, over
//! TLS with this replica's client certificate, to a server whose certificate must be the one
//! the node's agent published (`tunnel::pin`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

use crate::tunnel::pin::{self, AGENT_FINGERPRINT_ANNOTATION, Identity};

/// How long connecting and the handshakes may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("node {0} has no InternalIP address")]
    NoAddress(String),
    #[error(
        "the agent of node {0} has published no console certificate (annotation {AGENT_FINGERPRINT_ANNOTATION}): is it running, and recent enough?"
    )]
    NoFingerprint(String),
    #[error("connecting to the agent of node {node} at {addr}")]
    Connect {
        node: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent of node {node} did not answer within {DIAL_TIMEOUT:?}")]
    Timeout { node: String },
    #[error("TLS with the agent of node {node}")]
    Tls {
        node: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up TLS to the agents")]
    Config(#[source] rustls::Error),
    /// The agent answered, but not 101: its status and message are the user's answer.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the websocket handshake with the agent of node {node}")]
    Handshake {
        node: String,
        #[source]
        source: tungstenite::Error,
    },
}

pub type AgentStream = WebSocketStream<TlsStream<TcpStream>>;

pub struct AgentLink {
    pub identity: Arc<Identity>,
    pub port: u16,
}

/// The node's InternalIP.
pub fn internal_ip(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

impl AgentLink {
    /// A websocket to `path` (with its query) on the agent of `node`.
    pub async fn open(&self, node: &Node, path: &str) -> Result<AgentStream, DialError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ip = internal_ip(node).ok_or_else(|| DialError::NoAddress(name.clone()))?;
        let fingerprint = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(AGENT_FINGERPRINT_ANNOTATION))
            .cloned()
            .ok_or_else(|| DialError::NoFingerprint(name.clone()))?;
        let config = pin::client_config(&self.identity, fingerprint).map_err(DialError::Config)?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        let addr = format!("{host}:{}", self.port);
        let dial = async {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|source| DialError::Connect {
                    node: name.clone(),
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            // The name is not checked (the fingerprint is): any valid one will do.
            let server = ServerName::try_from(ip.clone())
                .unwrap_or_else(|_| ServerName::try_from("agent").expect("a valid DNS name"));
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server.to_owned(), tcp)
                .await
                .map_err(|source| DialError::Tls {
                    node: name.clone(),
                    source,
                })?;
            let url = format!("wss://{addr}{path}");
            match tokio_tungstenite::client_async(url, tls).await {
                Ok((ws, _)) => Ok(ws),
                Err(tungstenite::Error::Http(response)) => Err(refused(&response)),
                Err(source) => Err(DialError::Handshake {
                    node: name.clone(),
                    source,
                }),
            }
        };
        tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .map_err(|_| DialError::Timeout { node: name.clone() })?
    }
}

/// The agent's refusal: its status and the `error` of its JSON body.
fn refused(response: &http::Response<Option<Vec<u8>>>) -> DialError {
    #[derive(serde::Deserialize)]
    struct Body {
        error: String,
    }
    let message = response
        .body()
        .as_deref()
        .and_then(|body| serde_json::from_slice::<Body>(body).ok())
        .map(|b| b.error)
        .unwrap_or_else(|| format!("the agent answered {}", response.status()));
    DialError::Refused {
        status: response.status().as_u16(),
        message,
    }
}
