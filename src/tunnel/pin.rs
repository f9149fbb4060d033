//! TLS between the controller and the agents, by pinned certificates instead of a CA: each
//! process makes its own key and self-signed certificate at start (nothing to issue, nothing
//! stored, a restart rotates it) and publishes the certificate's SHA-256 fingerprint where only
//! it may write — the agent on its Node (annotation [`AGENT_FINGERPRINT_ANNOTATION`]), each
//! controller Pod in the ConfigMap [`CONTROLLER_IDENTITIES`]. A peer is accepted when its
//! certificate's fingerprint is the published one and it proves it holds the key (the TLS
//! handshake's signature, checked with ring's algorithms).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName};

/// The Node annotation where an agent publishes its console port's certificate fingerprint.
pub const AGENT_FINGERPRINT_ANNOTATION: &str = "nodevirt.io/console-tls-sha256";
/// The ConfigMap (in the controller's namespace) where each controller Pod publishes its
/// client certificate's fingerprint, under its Pod name.
pub const CONTROLLER_IDENTITIES: &str = "nodevirt-controller-identities";

/// A certificate's SHA-256 fingerprint, lowercase hex.
pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key and its self-signed certificate, made now.
pub struct Identity {
    pub certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// `common_name` is only for people reading the certificate: peers check the fingerprint.
    pub fn generate(common_name: &str) -> Result<Self, rcgen::Error> {
        let (certificate, key) =
            crate::self_signed::generate(vec![common_name.to_string()], common_name, None)?;
        Ok(Self {
            certificate: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certificate)
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.certificate.clone()]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The fingerprints a server accepts clients by; replaced whole as the ConfigMap changes.
#[derive(Debug, Default, Clone)]
pub struct AllowedClients(Arc<RwLock<BTreeSet<String>>>);

impl AllowedClients {
    pub fn replace(&self, fingerprints: BTreeSet<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = fingerprints;
    }

    pub fn allows(&self, fingerprint: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unknown_peer() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// The server side: a client certificate is required and must be one of `allowed`.
pub struct PinnedClients {
    allowed: AllowedClients,
    signatures: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinnedClients({} allowed)", self.allowed.len())
    }
}

impl PinnedClients {
    pub fn new(allowed: AllowedClients) -> Self {
        Self {
            allowed,
            signatures: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        if self.allowed.allows(&presented) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(
                fingerprint = presented,
                "refused a TLS client whose certificate is not a controller's"
            );
            Err(unknown_peer())
        }
    }

    crate::handshake_signatures!(signatures);
}

/// The client side: the server's certificate must have the fingerprint `expected`, whatever
/// name it was reached by.
#[derive(Debug)]
pub struct PinnedServer {
    expected: String,
    signatures: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub fn new(expected: String) -> Self {
        Self {
            expected,
            signatures: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(unknown_peer())
        }
    }

    crate::handshake_signatures!(signatures);
}

/// A TLS server that accepts only `allowed` clients (the agent's console port).
pub fn server_config(
    identity: &Identity,
    allowed: AllowedClients,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(PinnedClients::new(allowed)))
        .with_single_cert(identity.chain(), identity.key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client presenting `identity` to a server whose fingerprint is `expected`.
pub fn client_config(
    identity: &Identity,
    expected: String,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer::new(expected)))
        .with_client_auth_cert(identity.chain(), identity.key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A handshake over an in-memory pipe: Ok with the byte the server read, or the error.
    async fn handshake(
        server: &Identity,
        allowed: AllowedClients,
        client: &Identity,
        pinned: String,
    ) -> Result<u8, std::io::Error> {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(server, allowed).unwrap());
        let connector = tokio_rustls::TlsConnector::from(client_config(client, pinned).unwrap());
        let (a, b) = tokio::io::duplex(16 * 1024);
        let serve = async move {
            let mut tls = acceptor.accept(a).await?;
            tls.read_u8().await
        };
        let connect = async move {
            let name = ServerName::try_from("agent").unwrap();
            let mut tls = connector.connect(name, b).await?;
            tls.write_u8(7).await?;
            tls.flush().await?;
            // Keeps the connection open until the server has read.
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
            Ok::<_, std::io::Error>(())
        };
        let (served, _) = tokio::join!(serve, connect);
        served
    }

    #[tokio::test]
    async fn only_the_published_client_and_server_certificates_are_accepted() {
        let agent = Identity::generate("agent").unwrap();
        let controller = Identity::generate("controller").unwrap();
        let stranger = Identity::generate("controller").unwrap();
        let allowed = AllowedClients::default();
        allowed.replace([controller.fingerprint()].into());

        let ok = handshake(&agent, allowed.clone(), &controller, agent.fingerprint()).await;
        assert_eq!(ok.unwrap(), 7);

        // Same name, other key: refused by the server.
        let refused = handshake(&agent, allowed.clone(), &stranger, agent.fingerprint()).await;
        assert!(refused.is_err(), "a client not published was accepted");

        // The controller refuses a server whose fingerprint is not the Node's.
        let impostor = Identity::generate("agent").unwrap();
        let refused = handshake(&impostor, allowed.clone(), &controller, agent.fingerprint()).await;
        assert!(
            refused.is_err(),
            "a server with another certificate was accepted"
        );

        // Once the ConfigMap no longer lists the controller, it is refused too.
        allowed.replace(BTreeSet::new());
        let refused = handshake(&agent, allowed, &controller, agent.fingerprint()).await;
        assert!(refused.is_err(), "a withdrawn client was accepted");
    }

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_certificate_in_hex() {
        let identity = Identity::generate("x").unwrap();
        let print = identity.fingerprint();
        assert_eq!(print.len(), 64);
        assert!(
            print
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(print, Identity::generate("x").unwrap().fingerprint());
    }
}
