//! Slow, silent and too many clients on a real agent's two endpoints, the metrics port (HTTPS)
//! and the admin socket (issue 15): each held connection is closed by the server within its
//! timeout, a real request is still answered meanwhile, and the connection past the cap is
//! closed at once. Also the metrics port's TLS: an operator's certificate, the self-signed
//! one, and plain HTTP only with --metrics-insecure-http.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nodevirt::server::{
    HEADER_READ_TIMEOUT, MAX_CONNECTIONS, TLS_HANDSHAKE_TIMEOUT, WRITE_STALL_TIMEOUT,
};
use rustls::pki_types::{CertificateDer, ServerName};
use support::agent::{Agent, NodeOptions};
use support::cluster::{Cluster, wait_for};
use support::https;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const TEST_DRIVER: &str = "test+unix:///default";
/// Slow clients per endpoint, as in issue 15.
const SLOW: usize = 150;
/// Silent clients per endpoint.
const SILENT: usize = 100;
/// How much later than its timeout a connection may be closed: scheduling on a loaded
/// 2-core machine, never a second timeout period.
const MARGIN: Duration = Duration::from_secs(2);
/// Half a request head: the request line and one header, never the blank line.
const PARTIAL_METRICS_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: agent\r\n";
const PARTIAL_ADMIN_HEAD: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: agent\r\n";

fn light_agent(prefix: &str, extra_args: &[&str]) -> Agent {
    Agent::start_with(
        Cluster::get(),
        prefix,
        NodeOptions {
            libvirt_uri: TEST_DRIVER,
            extra_args,
            ..Default::default()
        },
    )
}

/// Reads until the server closes the stream (end of file or an error); the time that took
/// from `since`, or None if it is still open after `give_up`.
async fn closed<S: AsyncRead + Unpin>(
    mut stream: S,
    since: Instant,
    give_up: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(give_up, read_all).await.ok()?;
    Some(since.elapsed())
}

/// Asserts that every connection closed between `timeout - 1 s` (so it was served, not
/// refused) and `timeout + MARGIN`; returns the latest close.
fn assert_closed_by_timeout(
    what: &str,
    closes: &[Option<Duration>],
    timeout: Duration,
) -> Duration {
    let open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{what}: {open} of {} still open", closes.len());
    let closes: Vec<Duration> = closes.iter().flatten().copied().collect();
    let (first, last) = (*closes.iter().min().unwrap(), *closes.iter().max().unwrap());
    eprintln!(
        "timing: {what}: {} closed by the server {:.2}-{:.2}s after their last byte",
        closes.len(),
        first.as_secs_f64(),
        last.as_secs_f64()
    );
    assert!(
        last <= timeout + MARGIN,
        "{what}: one was closed only after {last:?} (timeout {timeout:?})"
    );
    assert!(
        first + Duration::from_secs(1) >= timeout,
        "{what}: one was closed after {first:?}, before its timeout {timeout:?}"
    );
    last
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The sum of the samples of `series` (a metric name and labels) in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(https::any_certificate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_closes_slow_and_silent_connections_and_still_serves() {
    let agent = light_agent("slow-metrics", &[]);
    let pid = agent.pid().unwrap();
    let addr = agent.http.clone();
    let rss_before = rss_kib(pid);
    let give_up = HEADER_READ_TIMEOUT * 3;

    // 150 clients finish the TLS handshake, send half a head, then nothing.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tls_connector().connect(name, tcp).await.unwrap();
        tls.write_all(PARTIAL_METRICS_HEAD).await.unwrap();
        tls.flush().await.unwrap();
        let sent = Instant::now();
        slow.push(tokio::spawn(closed(tls, sent, give_up)));
    }
    // 100 open TCP and send nothing, not even a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        silent.push(tokio::spawn(closed(tcp, Instant::now(), give_up)));
    }
    let rss_held = rss_kib(pid);

    // Meanwhile a scraper is served, and the probes too.
    let started = Instant::now();
    let (status, body) = tokio::task::block_in_place(|| agent.get("/metrics"));
    let scrape = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("nodevirt_build_info"), "{body}");
    assert_eq!(
        tokio::task::block_in_place(|| agent.get_as("/healthz", None)).status,
        200
    );
    eprintln!(
        "timing: a scrape with {SLOW} slow and {SILENT} silent connections held: {:.1} ms; \
         agent RSS {} KiB before, {} KiB while held ({:.1} KiB per connection)",
        scrape.as_secs_f64() * 1e3,
        rss_before,
        rss_held,
        rss_held.saturating_sub(rss_before) as f64 / (SLOW + SILENT) as f64
    );

    let mut closes = Vec::new();
    for task in slow {
        closes.push(task.await.unwrap());
    }
    assert_closed_by_timeout("half-sent heads (HTTPS)", &closes, HEADER_READ_TIMEOUT);
    let mut closes = Vec::new();
    for task in silent {
        closes.push(task.await.unwrap());
    }
    assert_closed_by_timeout("silent TCP", &closes, TLS_HANDSHAKE_TIMEOUT);

    let (_, text) = tokio::task::block_in_place(|| agent.get("/metrics"));
    let header = sample(
        &text,
        r#"nodevirt_http_connection_timeouts_total{server="metrics",phase="request_header"}"#,
    );
    let handshake = sample(
        &text,
        r#"nodevirt_http_connection_timeouts_total{server="metrics",phase="tls_handshake"}"#,
    );
    assert!(
        header >= SLOW as f64 && handshake >= SILENT as f64,
        "timeouts counted: header {header}, handshake {handshake}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_closes_slow_and_silent_connections_and_still_answers() {
    let agent = light_agent("slow-admin", &[]);
    let give_up = HEADER_READ_TIMEOUT * 3;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut stream = UnixStream::connect(&agent.admin_socket).await.unwrap();
        stream.write_all(PARTIAL_ADMIN_HEAD).await.unwrap();
        let sent = Instant::now();
        slow.push(tokio::spawn(closed(stream, sent, give_up)));
    }
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let stream = UnixStream::connect(&agent.admin_socket).await.unwrap();
        silent.push(tokio::spawn(closed(stream, Instant::now(), give_up)));
    }
    let started = Instant::now();
    let (ok, out, err) = tokio::task::block_in_place(|| agent.admin(&["health"]));
    assert!(ok && out.contains("watch synced"), "{out}{err}");
    eprintln!(
        "timing: `nodevirt admin health` with {SLOW} slow and {SILENT} silent connections held: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut closes = Vec::new();
    for task in slow.into_iter().chain(silent) {
        closes.push(task.await.unwrap());
    }
    assert_closed_by_timeout(
        "half-sent and silent admin connections",
        &closes,
        HEADER_READ_TIMEOUT,
    );
}

/// Connections tried past the cap, each of which must be closed at once.
const PAST_THE_CAP: usize = 20;

/// Holds `MAX_CONNECTIONS` silent connections made by `connect`, then checks that each of
/// [`PAST_THE_CAP`] more is closed at once while the held ones stay open; returns the held ones.
async fn fill_the_cap<S, F>(what: &str, connect: impl Fn() -> F) -> Vec<S>
where
    S: AsyncRead + Unpin,
    F: std::future::Future<Output = S>,
{
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(connect().await);
    }
    let mut slowest = Duration::ZERO;
    for i in 1..=PAST_THE_CAP {
        let extra = connect().await;
        let refused = closed(extra, Instant::now(), TLS_HANDSHAKE_TIMEOUT / 2).await;
        let refused = refused.unwrap_or_else(|| {
            panic!(
                "{what}: connection {} was not closed at once",
                MAX_CONNECTIONS + i
            )
        });
        slowest = slowest.max(refused);
    }
    eprintln!(
        "timing: {what}: {PAST_THE_CAP} connections past the cap of {MAX_CONNECTIONS}, each \
         closed within {:.1} ms",
        slowest.as_secs_f64() * 1e3
    );
    // The last one held is still open: it was served, not refused.
    let last = held.last_mut().unwrap();
    let mut byte = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(300), last.read(&mut byte)).await;
    assert!(
        still_open.is_err(),
        "{what}: a held connection was closed early"
    );
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_closes_the_connection_past_its_cap_at_once() {
    let agent = light_agent("cap", &[]);
    let addr = agent.http.clone();
    let held = fill_the_cap("metrics port", || async {
        TcpStream::connect(&addr).await.unwrap()
    })
    .await;
    drop(held);
    let socket = agent.admin_socket.clone();
    let held = fill_the_cap("admin socket", || async {
        UnixStream::connect(&socket).await.unwrap()
    })
    .await;
    drop(held);

    // Once they are gone, both serve again; each refusal was counted and logged.
    let text = wait_for(
        Duration::from_secs(10),
        "the metrics port to serve again",
        || {
            let (status, text) = agent.get("/metrics");
            (status == 200).then_some(text)
        },
    );
    for server in ["metrics", "admin"] {
        let refused = sample(
            &text,
            &format!(r#"nodevirt_http_connections_refused_total{{server="{server}"}}"#),
        );
        assert!(
            refused >= PAST_THE_CAP as f64,
            "{server}: refused {refused}\n{text}"
        );
    }
    let (ok, _, err) = tokio::task::block_in_place(|| agent.admin(&["health"]));
    assert!(ok, "{err}");
    let log = agent.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("refusing connections"))
        .count();
    assert_eq!(
        lines, 2,
        "one line per endpoint for {PAST_THE_CAP} refusals each (rate-limited):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed_after_the_write_timeout() {
    let agent = light_agent("stall", &[]);
    let stream = UnixStream::connect(&agent.admin_socket).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Pipelined requests whose answers (about 150 bytes each, 3 MB in all) overflow the
    // socket's buffers; nothing reads them.
    let request = b"GET /v1/health HTTP/1.1\r\nHost: agent\r\n\r\n".repeat(20_000);
    let sender = tokio::spawn(async move {
        // The server stops reading once it cannot write: this may block, then fail.
        let _ = writer.write_all(&request).await;
        writer
    });
    tokio::time::sleep(WRITE_STALL_TIMEOUT + MARGIN).await;
    // By now the server has given up: what it wrote is still buffered, then end of file.
    let drained = closed(&mut reader, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        drained.is_some(),
        "the stalled connection is still open after {:?}",
        WRITE_STALL_TIMEOUT + MARGIN
    );
    drop(sender);
    let (_, text) = tokio::task::block_in_place(|| agent.get("/metrics"));
    let stalls = sample(
        &text,
        r#"nodevirt_http_connection_timeouts_total{server="admin",phase="write"}"#,
    );
    assert_eq!(stalls, 1.0, "{text}");
}

/// A CA and a serving certificate for `localhost` it signed, as PEM files in `dir`; returns
/// the CA's certificate.
fn operator_certificate(dir: &Path) -> CertificateDer<'static> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    ca_cert.der().clone()
}

#[test]
fn the_metrics_port_serves_an_operators_certificate_or_else_a_self_signed_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = operator_certificate(dir.path());
    let cert_flag = format!(
        "--metrics-tls-cert-file={}",
        dir.path().join("tls.crt").display()
    );
    let key_flag = format!(
        "--metrics-tls-key-file={}",
        dir.path().join("tls.key").display()
    );
    let operators = light_agent("tls-files", &[&cert_flag, &key_flag]);
    let verified = https::get(
        &operators.http,
        "/healthz",
        None,
        https::trusting(ca.clone()),
        "localhost",
    );
    assert_eq!(
        verified.status, 200,
        "verified against the CA: {verified:?}"
    );

    // Without the flags: a certificate made at start, for the node's name too, which the
    // operator's CA does not vouch for.
    let own = light_agent("tls-own", &[]);
    let refused = https::get(
        &own.http,
        "/healthz",
        None,
        https::trusting(ca),
        "localhost",
    );
    assert_eq!(refused.status, 0, "{refused:?}");
    let presented = presented_certificate(&own.http);
    for name in [own.node.as_str(), "localhost"] {
        let pinned = https::get(
            &own.http,
            "/healthz",
            None,
            https::trusting(presented.clone()),
            name,
        );
        assert_eq!(pinned.status, 200, "self-signed for {name}: {pinned:?}");
    }
}

/// The certificate a TLS server at `addr` presents.
fn presented_certificate(addr: &str) -> CertificateDer<'static> {
    use std::io::Write;
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(https::any_certificate(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.flush().unwrap();
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[test]
fn plain_http_only_with_the_insecure_flag() {
    let secure = light_agent("https-only", &[]);
    let plain = plain_get(&secure.http, "/healthz");
    assert!(
        !plain.starts_with("HTTP/1.1 200"),
        "plain HTTP to the HTTPS port: {plain:?}"
    );
    let insecure = light_agent("plain-http", &["--metrics-insecure-http"]);
    let answer = plain_get(&insecure.http, "/metrics");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("nodevirt_build_info"),
        "{answer}"
    );
    let text = insecure.log_text();
    assert!(
        text.contains("--metrics-insecure-http"),
        "the agent warns:\n{text}"
    );
}

/// GET over plain HTTP: all the server sent.
fn plain_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}
