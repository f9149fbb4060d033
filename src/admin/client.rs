//! A minimal HTTP/1.1 client for the admin socket: one request per connection, written from
//! a `route::Route`.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::api::ErrorBody;
use super::route::Route;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the admin socket {path} (is the agent running, and are you root?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the admin socket {path}")]
    Http {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("the agent answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("reading the agent's answer")]
    Decode(#[source] serde_json::Error),
}

/// Sends `route` to the socket and decodes the JSON answer.
pub async fn call<T: DeserializeOwned>(socket: &Path, route: &Route) -> Result<T, ClientError> {
    let response = send(socket, route, None).await?;
    let status = response.status();
    let body = body_of(socket, response).await?;
    if !status.is_success() {
        return Err(refusal(status, &body));
    }
    serde_json::from_slice(&body).map_err(ClientError::Decode)
}

/// Sends `route` asking to switch to `protocol`, and gives the connection once the agent
/// switched (101).
pub async fn upgrade(
    socket: &Path,
    route: &Route,
    protocol: &str,
) -> Result<TokioIo<Upgraded>, ClientError> {
    let response = send(socket, route, Some(protocol)).await?;
    let status = response.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let body = body_of(socket, response).await?;
        return Err(refusal(status, &body));
    }
    hyper::upgrade::on(response)
        .await
        .map(TokioIo::new)
        .map_err(|source| ClientError::Http {
            path: socket.to_path_buf(),
            source,
        })
}

async fn send(
    socket: &Path,
    route: &Route,
    protocol: Option<&str>,
) -> Result<Response<Incoming>, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let http = |source| ClientError::Http {
        path: socket.to_path_buf(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(connection.with_upgrades());
    let mut request = Request::builder()
        .method(route.method())
        .uri(route.path())
        .header(hyper::header::HOST, "nodevirt-agent");
    if let Some(protocol) = protocol {
        request = request
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Refused {
            status: 0,
            message: e.to_string(),
        })?;
    sender.send_request(request).await.map_err(http)
}

async fn body_of(socket: &Path, response: Response<Incoming>) -> Result<Bytes, ClientError> {
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Http {
            path: socket.to_path_buf(),
            source,
        })?
        .to_bytes())
}

/// The agent's error answer: its JSON `error`, or the body as text.
fn refusal(status: hyper::StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    ClientError::Refused {
        status: status.as_u16(),
        message,
    }
}
