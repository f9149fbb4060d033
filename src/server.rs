//! HTTP/1 serving with limits, shared by every endpoint: the metrics port of the agent and of
//! the controller (`metrics_port`, TCP, usually TLS) and the agent's admin socket
//! (`admin::server`, a Unix socket). Its job is that slow, silent or many clients cannot hold
//! any of them.
//!
//! For each connection:
//!
//! 1. Accept, then take a permit of a semaphore of [`MAX_CONNECTIONS`]. Without one the
//!    connection is closed at once (accepted and dropped: left in the kernel's backlog, it
//!    would wait where no timeout of ours applies), counted in
//!    `nodevirt_http_connections_refused_total{server}`, and logged at most once per
//!    [`REFUSAL_LOG_INTERVAL`] with the number refused since the last line.
//! 2. TLS, where the server has it: the handshake must end within [`TLS_HANDSHAKE_TIMEOUT`].
//! 3. HTTP/1 by hyper, serving the axum Router with the connection's [`ConnectInfo`] in every
//!    request's extensions. A request head must arrive whole within [`HEADER_READ_TIMEOUT`]
//!    and be at most [`MAX_HEAD_BYTES`]; hyper starts that timer whenever it waits for a
//!    request, so it is also the idle keep-alive timeout ([`KEEP_ALIVE_IDLE_TIMEOUT`]). Every
//!    write must make progress within [`WRITE_STALL_TIMEOUT`] ([`WriteDeadline`]), so a client
//!    that stops reading cannot hold a connection either.
//! 4. The permit is released when the connection ends, whichever way it ends; a timeout is
//!    counted in `nodevirt_http_connection_timeouts_total{server, phase}`.
//!
//! Measured before these limits (issue 15): 150 connections each holding half a request head
//! stayed open for the 60 s they were held, as did 100 that sent nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::metrics::ResultLabel;

/// Connections served at once by one endpoint. What uses them is a scraper or two, kubelet's
/// two probes and a person with `curl` or `nodevirt admin`: a handful. The cap bounds what a
/// flood costs (a task, a head buffer and, on the metrics port, a TLS session each: 20 KiB of
/// RSS per held connection, so about 5 MiB at the cap, measured by `limits_e2e`) and stays
/// well above the 150 held connections of issue 15, so that a flood of that size costs the
/// endpoint nothing but timeouts. A larger flood is refused at once rather than queued.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send one request head. Real clients (Prometheus, kubelet's
/// probes, curl, `nodevirt admin`) send a head of a few hundred bytes in one segment, and
/// kubelet gives a probe 1 s in all; 5 s leaves room for a loaded node and still frees a
/// connection that trickles its head (slowloris) or sends nothing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a kept-alive connection may sit between requests: hyper 1 starts the head timer as
/// soon as it waits for the next request, so this is [`HEADER_READ_TIMEOUT`] and cannot be
/// longer. A scraper every 15 s or more reconnects each time anyway (one TLS handshake, well
/// under a millisecond of CPU).
pub const KEEP_ALIVE_IDLE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;

/// How long a TLS handshake may take, for the same reason as [`HEADER_READ_TIMEOUT`]: a
/// ClientHello is one segment, and a silent TCP connection to the TLS port never reaches hyper.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write may make no progress. The largest answer (a scrape of 1100 VMs, about
/// 1 MB) leaves in milliseconds when the client reads; Prometheus's own scrape timeout is 10 s.
/// Without it, a client that sends requests and never reads the answers holds its connection
/// forever, since no head timer runs while hyper writes.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers) read into memory: hyper's default is
/// 400 KiB a connection. A real head is under 1 KiB; a bearer token is a JWT of 1-2 KiB (an
/// OIDC one a few KiB). Larger heads get 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// At most one log line per endpoint per interval about refused connections, so a flood
/// cannot fill the node's log; the first refusal is logged at once, the metric counts all.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits one endpoint runs with: the constants above, or shorter ones in unit tests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub write_stall_timeout: Duration,
    pub max_head_bytes: usize,
}

impl Limits {
    pub const STANDARD: Limits = Limits {
        max_connections: MAX_CONNECTIONS,
        header_read_timeout: HEADER_READ_TIMEOUT,
        tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
        write_stall_timeout: WRITE_STALL_TIMEOUT,
        max_head_bytes: MAX_HEAD_BYTES,
    };
}

/// The counters of one endpoint (see [`HttpMetrics::connections`]); unregistered ones by
/// default.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    pub refused: Counter,
    pub tls_handshake_timeouts: Counter,
    pub header_timeouts: Counter,
    pub write_timeouts: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    server: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    server: &'static str,
    phase: &'static str,
}

/// The HTTP counters of one process (agent or controller), under the same names in both:
/// its endpoints' connections and its metrics port's token reviews.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    /// Connections closed at once because their endpoint served its limit, by endpoint.
    connections_refused: Family<ServerLabel, Counter>,
    /// Connections closed by a timeout, by endpoint and phase.
    connection_timeouts: Family<TimeoutLabels, Counter>,
    /// Token and access reviews of /metrics requests (cache misses), by result: allowed,
    /// unauthenticated, forbidden, error.
    pub metrics_reviews: Family<ResultLabel, Counter>,
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "nodevirt_http_connections_refused",
            "Connections closed at once because the endpoint (metrics, admin) served its limit",
            self.connections_refused.clone(),
        );
        registry.register(
            "nodevirt_http_connection_timeouts",
            "Connections closed by a timeout, by endpoint and phase (tls_handshake, request_header, write)",
            self.connection_timeouts.clone(),
        );
        registry.register(
            "nodevirt_metrics_auth_reviews",
            "TokenReview and SubjectAccessReview round trips for /metrics (cache misses), by result",
            self.metrics_reviews.clone(),
        );
    }

    /// The counters of endpoint `server` ("metrics", "admin").
    pub fn connections(&self, server: &'static str) -> ConnectionMetrics {
        let timeouts = |phase| {
            self.connection_timeouts
                .get_or_create(&TimeoutLabels { server, phase })
                .clone()
        };
        ConnectionMetrics {
            refused: self
                .connections_refused
                .get_or_create(&ServerLabel { server })
                .clone(),
            tls_handshake_timeouts: timeouts("tls_handshake"),
            header_timeouts: timeouts("request_header"),
            write_timeouts: timeouts("write"),
        }
    }
}

/// A listening socket `serve` accepts from: TCP or Unix.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Small answers, sent whole: no point waiting for more to fill a segment.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// One endpoint: its name in logs and metrics, limits, optional TLS and counters.
#[derive(Clone)]
pub struct Endpoint {
    pub name: &'static str,
    pub limits: Limits,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub metrics: ConnectionMetrics,
}

/// Serves `app` on `listener` until the task is dropped (see the module's steps).
/// `connect_info` is read from each accepted stream before anything else (the admin socket's
/// peer credentials) and reaches handlers as `ConnectInfo<C>`.
pub async fn serve<L, C>(
    listener: L,
    app: Router,
    endpoint: Endpoint,
    connect_info: impl Fn(&L::Io) -> C + Send + 'static,
) where
    L: Listener,
    C: Clone + Send + Sync + 'static,
{
    let permits = Arc::new(Semaphore::new(endpoint.limits.max_connections));
    let refusals = Throttle::new(REFUSAL_LOG_INTERVAL);
    let accept_errors = Throttle::new(REFUSAL_LOG_INTERVAL);
    loop {
        let io = match listener.accept().await {
            Ok(io) => io,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // nothing to do for it but go on, a little later if the process is short
                // of something.
                if let Some(count) = accept_errors.note() {
                    tracing::warn!(server = endpoint.name, error = %e, count, "cannot accept connections");
                }
                if !is_connection_error(&e) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(io);
            endpoint.metrics.refused.inc();
            if let Some(count) = refusals.note() {
                tracing::warn!(
                    server = endpoint.name,
                    limit = endpoint.limits.max_connections,
                    refused = count,
                    "refusing connections: the endpoint already serves its limit"
                );
            }
            continue;
        };
        let info = connect_info(&io);
        let (app, endpoint) = (app.clone(), endpoint.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_one(io, app, info, &endpoint).await;
        });
    }
}

/// Steps 2 and 3 for one connection; returns when it is closed.
async fn serve_one<I, C>(io: I, app: Router, info: C, endpoint: &Endpoint)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    let limits = &endpoint.limits;
    let io = WriteDeadline::new(io, limits.write_stall_timeout);
    let result = match &endpoint.tls {
        None => serve_http(io, app, info, limits).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(io)).await {
                Err(_) => {
                    endpoint.metrics.tls_handshake_timeouts.inc();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(server = endpoint.name, error = %e, "TLS handshake failed");
                    return;
                }
                Ok(Ok(tls)) => serve_http(tls, app, info, limits).await,
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            endpoint.metrics.header_timeouts.inc();
        } else if is_write_stall(&e) {
            endpoint.metrics.write_timeouts.inc();
        } else {
            tracing::debug!(server = endpoint.name, error = %e, "connection ended with an error");
        }
    }
}

/// hyper's HTTP/1 connection with the head limits, serving `app`.
pub async fn serve_http<I, C>(io: I, app: Router, info: C, limits: &Limits) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    let service = app.map_request(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(info.clone()));
        request
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        // The admin socket's console attach keeps its connection as a byte stream.
        .with_upgrades()
        .await
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn is_write_stall(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = inner.source();
    }
    false
}

/// Lets one event in `interval` through, reporting how many happened since the last one let
/// through (itself included); the others are only counted.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    pending: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            state: Mutex::new(ThrottleState::default()),
        }
    }

    /// Notes an event; `Some(count)` when it is to be reported now.
    pub fn note(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending += 1;
        let now = Instant::now();
        match state.last {
            Some(last) if now.duration_since(last) < self.interval => None,
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.pending))
            }
        }
    }
}

/// An I/O stream whose writes fail with `TimedOut` once one has made no progress for `limit`;
/// reads pass through (hyper's head timer covers them).
pub struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> WriteDeadline<T> {
    fn progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client took no byte of the answer for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.progress(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.progress(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.progress(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.progress(cx, |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn app() -> Router {
        Router::new().route(
            "/who",
            get(|ConnectInfo(who): ConnectInfo<&'static str>| async move { who }),
        )
    }

    /// Serves one in-memory connection with the standard limits; returns the client's end and
    /// the connection's task.
    fn connection() -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task =
            tokio::spawn(async move { serve_http(server, app(), "me", &Limits::STANDARD).await });
        (client, task)
    }

    /// Reads until the server closes; the time that took. Fails, rather than waits forever,
    /// when the server never closes.
    async fn closed_after(client: &mut tokio::io::DuplexStream) -> (Duration, String) {
        let started = Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(3600), client.read_to_end(&mut out))
            .await
            .expect("the server never closed the connection")
            .unwrap();
        (
            started.elapsed(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_request_head_is_closed_after_the_header_timeout() {
        let (mut client, task) = connection();
        client
            .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (waited, answer) = closed_after(&mut client).await;
        assert_eq!(waited, HEADER_READ_TIMEOUT);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
        assert!(task.await.unwrap().unwrap_err().is_timeout());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_idle_kept_alive_connection_is_closed_too() {
        let (mut silent, _task) = connection();
        assert_eq!(closed_after(&mut silent).await.0, HEADER_READ_TIMEOUT);

        let (mut kept, _task) = connection();
        kept.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 256];
        let n = kept.read(&mut first).await.unwrap();
        let answer = String::from_utf8_lossy(&first[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("me"),
            "{answer}"
        );
        // The connection stays open for another request, then times out idle.
        assert_eq!(closed_after(&mut kept).await.0, KEEP_ALIVE_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_head_is_refused() {
        let (mut client, _task) = connection();
        let head = format!(
            "GET /who HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        // The server may stop reading before the whole head is in.
        let _ = client.write_all(head.as_bytes()).await;
        let (_, answer) = closed_after(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_stall_timeout() {
        let (mut reader, writer) = tokio::io::duplex(1024);
        let mut guarded = WriteDeadline::new(writer, WRITE_STALL_TIMEOUT);
        let started = Instant::now();
        // Progress while the reader reads: no error, however long it takes in all.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < 8192 {
                tokio::time::sleep(WRITE_STALL_TIMEOUT / 2).await;
                got += reader.read(&mut buf).await.unwrap();
            }
            reader
        });
        guarded.write_all(&[7u8; 8192]).await.unwrap();
        assert!(started.elapsed() > WRITE_STALL_TIMEOUT);
        let _reader = drain.await.unwrap();
        // Nobody reads any more: the write fails once the stall lasts the limit.
        let started = Instant::now();
        let err = guarded.write_all(&[7u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), WRITE_STALL_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_reports_once_per_interval_with_the_count() {
        let throttle = Throttle::new(REFUSAL_LOG_INTERVAL);
        assert_eq!(throttle.note(), Some(1), "the first is reported at once");
        assert_eq!(throttle.note(), None);
        assert_eq!(throttle.note(), None);
        tokio::time::advance(REFUSAL_LOG_INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(throttle.note(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.note(), Some(4), "the three held back and this one");
        tokio::time::advance(REFUSAL_LOG_INTERVAL * 3).await;
        assert_eq!(throttle.note(), Some(1));
    }
}
