//! HTTPS to an agent's metrics port, as its scrapers speak it: TLS and a bearer token. The
//! agents here serve the self-signed certificate they make at start, so the client accepts any
//! certificate, as Prometheus with `insecure_skip_verify` and kubelet's HTTPS probes do;
//! `limits_e2e` verifies an operator's certificate for real.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Takes any certificate, still checking that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    nodevirt::handshake_signatures!(0);
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that accepts the agent's self-signed certificate.
pub fn any_certificate() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = provider();
            let verifier = AnyCertificate(provider.signature_verification_algorithms);
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A client configuration that trusts only `root`: a real verification.
pub fn trusting(root: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// What one request got: the status (0 when there was no HTTP answer) and the body, or why
/// there was none.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub error: Option<String>,
}

/// `GET path` over a new TLS connection to `addr` with `config` (server name `name`), with
/// the bearer `token` if given.
pub fn get(
    addr: &str,
    path: &str,
    token: Option<&str>,
    config: Arc<ClientConfig>,
    name: &str,
) -> Answer {
    let failed = |error: String| Answer {
        status: 0,
        body: String::new(),
        error: Some(error),
    };
    let Ok(tcp) = TcpStream::connect(addr) else {
        return failed(format!("connecting to {addr}"));
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let connection = rustls::ClientConnection::new(config, server_name).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n");
    if let Err(e) = tls.write_all(request.as_bytes()) {
        return failed(format!("TLS to {addr}: {e}"));
    }
    let mut raw = Vec::new();
    // The server may close without a TLS close_notify: what was read is the answer.
    let read = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Answer {
        status,
        body,
        error: match read {
            Err(e) if status == 0 => Some(format!("reading from {addr}: {e}")),
            _ => None,
        },
    }
}
