//! A minimal HTTP/1.1 client for the admin socket: one request per connection, written from
//! a `route::Route`.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
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
    tokio::spawn(connection);
    let request = Request::builder()
        .method(route.method())
        .uri(route.path())
        .header(hyper::header::HOST, "nodevirt-agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Refused {
            status: 0,
            message: e.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(ClientError::Decode)
}
