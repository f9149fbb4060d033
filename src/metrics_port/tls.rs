//! The metrics port's serving certificate, as kubelet's: the operator's certificate and key
//! (`--metrics-tls-cert-file`, `--metrics-tls-key-file`, PEM), or else a self-signed one made
//! at every start for the process's host (the agent's node, the controller's Pod), `localhost` and the loopback addresses. Nobody can
//! verify a self-signed certificate, so a scraper then skips verification (Prometheus:
//! `tls_config: {insecure_skip_verify: true}`; kubelet's HTTPS probes never verify); the
//! certificate's SHA-256 fingerprint is logged for whoever wants to pin it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the metrics port's certificate {path}")]
    ReadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("reading the metrics port's private key {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("generating a self-signed certificate for the metrics port")]
    Generate(#[source] rcgen::Error),
    #[error("setting up TLS with the metrics port's certificate and key")]
    Configure(#[source] rustls::Error),
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// PEM files given by the operator: the certificate chain, leaf first, and its key.
    Files { certificate: PathBuf, key: PathBuf },
    /// Made at start for these names (DNS names or IP addresses).
    SelfSigned { names: Vec<String> },
}

impl CertificateSource {
    /// The operator's files if both are given, else a self-signed certificate for `host`,
    /// `localhost`, the loopback addresses and `bound` if it is a specific address.
    pub fn choose(
        certificate: Option<&Path>,
        key: Option<&Path>,
        host: &str,
        bound: IpAddr,
    ) -> Self {
        if let (Some(certificate), Some(key)) = (certificate, key) {
            return CertificateSource::Files {
                certificate: certificate.to_path_buf(),
                key: key.to_path_buf(),
            };
        }
        let mut names = vec![
            host.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        if !bound.is_unspecified() && !bound.is_loopback() {
            names.push(bound.to_string());
        }
        CertificateSource::SelfSigned { names }
    }
}

/// The certificate chain and key `source` names, read or made.
pub fn load(
    source: &CertificateSource,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match source {
        CertificateSource::Files { certificate, key } => {
            let read_cert = |source| TlsError::ReadCertificate {
                path: certificate.clone(),
                source,
            };
            let chain = CertificateDer::pem_file_iter(certificate)
                .map_err(read_cert)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(read_cert)?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate(certificate.clone()));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
                path: key.clone(),
                source,
            })?;
            Ok((chain, key))
        }
        CertificateSource::SelfSigned { names } => {
            let common_name = format!("nodevirt@{}", names[0]);
            let (cert, key) = crate::self_signed::generate(names.clone(), &common_name, None)
                .map_err(TlsError::Generate)?;
            let key = PrivatePkcs8KeyDer::from(key.serialize_der());
            Ok((vec![cert.der().clone()], key.into()))
        }
    }
}

/// The TLS server configuration of the metrics port: TLS 1.2 and 1.3 with ring's safe
/// defaults, no client certificates (clients prove who they are with a bearer token), HTTP/1.1.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Configure)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Configure)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SHA-256 fingerprint of a certificate, as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_names_the_node_and_loopback_and_serves() {
        let any = IpAddr::from([0, 0, 0, 0]);
        let source = CertificateSource::choose(None, None, "node-a", any);
        assert_eq!(
            source,
            CertificateSource::SelfSigned {
                names: vec![
                    "node-a".into(),
                    "localhost".into(),
                    "127.0.0.1".into(),
                    "::1".into()
                ]
            }
        );
        let CertificateSource::SelfSigned { names } =
            CertificateSource::choose(None, None, "n", IpAddr::from([10, 1, 2, 3]))
        else {
            panic!("self-signed expected");
        };
        assert_eq!(names.last().map(String::as_str), Some("10.1.2.3"));
        let (chain, key) = load(&source).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(fingerprint(&chain[0]).len(), 32 * 3 - 1);
        server_config(chain, key).unwrap();
    }

    #[test]
    fn operator_files_are_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["agent.example".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let source = CertificateSource::choose(Some(&cert), Some(&key), "n", [0; 4].into());
        let (chain, key_der) = load(&source).unwrap();
        assert_eq!(chain[0], *made.cert.der());
        server_config(chain, key_der).unwrap();

        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let bad = CertificateSource::Files {
            certificate: empty.clone(),
            key: key.clone(),
        };
        let err = load(&bad).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate(p) if *p == empty),
            "{err}"
        );
        let missing = CertificateSource::Files {
            certificate: cert,
            key: dir.path().join("missing.key"),
        };
        let err = load(&missing).unwrap_err();
        assert!(
            err.to_string().contains("missing.key") && matches!(err, TlsError::ReadKey { .. }),
            "{err}"
        );
    }
}
