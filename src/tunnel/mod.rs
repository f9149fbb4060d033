//! A byte stream carried by a websocket: the hops of `nodevirt console` and `nodevirt vnc`
//! (the CLI to the API server to the controller, the controller to the agent) are websockets,
//! so that each can keep itself alive with pings through proxies that cut idle connections.
//!
//! [`pipe`] turns a websocket into a local byte stream: what is written to it goes out in
//! binary messages, what arrives (binary or text) comes out of it. Every [`Keepalive`]
//! interval it sends a ping; a peer silent (no message, no pong) for [`Keepalive::dead_after`]
//! is taken for gone and the stream ends, so a dropped connection is noticed and reported
//! rather than hanging.

pub mod pin;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};

pub use tokio_tungstenite::tungstenite::handshake::client::generate_key;
pub use tokio_tungstenite::tungstenite::protocol::Role;

/// The default ping interval: well under the 60 s idle timeout of common proxies and load
/// balancers, and under the ~20 s some users reported their sessions cut at.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// The websocket subprotocol of KubeVirt's console and VNC: binary messages of raw bytes.
pub const SUBPROTOCOL: &str = "plain.kubevirt.io";
/// How much is read from the local side into one message.
const CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub interval: Duration,
}

impl Keepalive {
    /// Three missed intervals: one lost ping is not a dead peer.
    pub fn dead_after(&self) -> Duration {
        self.interval * 3
    }
}

/// Why a pipe ended, for the log and the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The local side closed (the user left, the guest's console ended).
    Local,
    /// The peer closed the websocket.
    Closed,
    /// The peer said nothing for this long.
    Silent(Duration),
    /// The connection failed.
    Broken(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Local => write!(f, "closed here"),
            Ended::Closed => write!(f, "closed by the other side"),
            Ended::Silent(d) => write!(f, "the other side did not answer pings for {d:?}"),
            Ended::Broken(e) => write!(f, "the connection broke: {e}"),
        }
    }
}

/// The websocket `ws` as a local byte stream; `ended` says why it ended, once.
pub fn pipe<S>(
    ws: WebSocketStream<S>,
    keepalive: Keepalive,
) -> (DuplexStream, tokio::sync::oneshot::Receiver<Ended>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (local, inner) = tokio::io::duplex(4 * CHUNK);
    let (tell, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let why = carry(ws, inner, keepalive).await;
        let _ = tell.send(why);
    });
    (local, ended)
}

async fn carry<S>(ws: WebSocketStream<S>, inner: DuplexStream, keepalive: Keepalive) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut from_local, mut to_local) = tokio::io::split(inner);
    let mut pings = tokio::time::interval(keepalive.interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    let mut heard = tokio::time::Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let why = loop {
        tokio::select! {
            read = from_local.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = sink.send(Message::Close(None)).await;
                    break Ended::Local;
                }
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if let Err(e) = sink.send(Message::Binary(chunk)).await {
                        break Ended::Broken(e.to_string());
                    }
                }
            },
            message = stream.next() => {
                heard = tokio::time::Instant::now();
                let bytes = match message {
                    None | Some(Ok(Message::Close(_))) => break Ended::Closed,
                    Some(Err(e)) => break Ended::Broken(e.to_string()),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Text(text))) => Bytes::from(text),
                    // Pongs to our pings, pings (answered by tungstenite), raw frames.
                    Some(Ok(_)) => continue,
                };
                if to_local.write_all(&bytes).await.is_err() {
                    let _ = sink.send(Message::Close(None)).await;
                    break Ended::Local;
                }
            },
            _ = pings.tick() => {
                if heard.elapsed() >= keepalive.dead_after() {
                    break Ended::Silent(heard.elapsed());
                }
                if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                    break Ended::Broken(e.to_string());
                }
            }
        }
    };
    let _ = to_local.shutdown().await;
    why
}

/// Whether a request asks to switch to a websocket.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The headers of the 101 that accepts a websocket request (RFC 6455 section 4.2.2), with
/// [`SUBPROTOCOL`] if the client offered it.
pub fn accept_headers(request: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(key) = request.get(header::SEC_WEBSOCKET_KEY) {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    let offered = request
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if offered {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    headers
}

/// Whether a 101 answers the websocket request made with `key`.
pub fn accepts(response: &HeaderMap, key: &str) -> bool {
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    response
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

/// The headers that ask to switch to a websocket, with the key `accepts` checks.
pub fn request_headers(headers: &mut HeaderMap, key: &str) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    if let Ok(key) = HeaderValue::from_str(key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
}

/// A stream already switched (after the 101), as a websocket.
pub async fn websocket<S>(io: S, role: Role) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(io, role, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        keepalive: Keepalive,
    ) -> (
        (DuplexStream, tokio::sync::oneshot::Receiver<Ended>),
        WebSocketStream<DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = websocket(a, Role::Client).await;
        let server = websocket(b, Role::Server).await;
        (pipe(client, keepalive), server)
    }

    #[tokio::test]
    async fn bytes_go_both_ways_in_binary_messages_and_text_is_taken_as_bytes() {
        let keepalive = Keepalive {
            interval: Duration::from_secs(30),
        };
        let ((mut local, _ended), mut server) = pair(keepalive).await;
        local.write_all(b"echo hi\n").await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"echo hi\n"))
        );
        server
            .send(Message::Binary(Bytes::from_static(b"hi\r\n")))
            .await
            .unwrap();
        server.send(Message::text("ok")).await.unwrap();
        let mut got = vec![0u8; 6];
        local.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"hi\r\nok");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_keep_an_answering_peer_and_a_silent_one_ends_the_stream() {
        let keepalive = Keepalive {
            interval: Duration::from_secs(10),
        };
        let ((mut local, ended), mut server) = pair(keepalive).await;
        // The peer reads (so tungstenite answers the pings) for a minute: the pipe stays.
        let answering = async {
            let mut pings = 0;
            while let Some(Ok(message)) = server.next().await {
                if matches!(message, Message::Ping(_)) {
                    pings += 1;
                    if pings == 6 {
                        break;
                    }
                }
            }
            pings
        };
        assert_eq!(answering.await, 6);
        local.write_all(b"x").await.unwrap();
        assert!(matches!(server.next().await, Some(Ok(Message::Binary(_)))));
        // Then it stops reading: no pongs, and after three intervals the pipe gives up.
        let mut rest = Vec::new();
        local.read_to_end(&mut rest).await.unwrap();
        assert!(matches!(ended.await.unwrap(), Ended::Silent(d) if d >= keepalive.dead_after()));
        drop(server);
    }

    #[tokio::test]
    async fn closing_either_side_ends_the_other() {
        let keepalive = Keepalive {
            interval: Duration::from_secs(30),
        };
        let ((local, ended), mut server) = pair(keepalive).await;
        drop(local);
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
        assert_eq!(ended.await.unwrap(), Ended::Local);

        let ((mut local, ended), mut server) = pair(keepalive).await;
        server.close(None).await.unwrap();
        let mut rest = Vec::new();
        local.read_to_end(&mut rest).await.unwrap();
        assert_eq!(ended.await.unwrap(), Ended::Closed);
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_and_the_subprotocol_is_echoed_only_when_offered() {
        let mut request = HeaderMap::new();
        // RFC 6455's own example.
        request_headers(&mut request, "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(is_websocket_upgrade(&request));
        let answer = accept_headers(&request);
        assert_eq!(
            answer[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(answer[header::SEC_WEBSOCKET_PROTOCOL], SUBPROTOCOL);
        assert!(accepts(&answer, "dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!accepts(&answer, "another key"));
        request.remove(header::SEC_WEBSOCKET_PROTOCOL);
        assert!(!accept_headers(&request).contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }
}
