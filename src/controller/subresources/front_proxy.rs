//! Who is asking, as the kube-apiserver's front proxy says: the aggregated API trusts the
//! identity headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`) only on
//! connections whose client certificate the requestheader CA signed and whose common name is
//! one of the allowed names — what the API server publishes in the ConfigMap
//! `kube-system/extension-apiserver-authentication`, as for every aggregated API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName};

pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP: &str = "extension-apiserver-authentication";

#[derive(Debug, thiserror::Error)]
pub enum FrontProxyError {
    #[error("reading ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}")]
    Read(#[source] kube::Error),
    #[error(
        "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP} has no requestheader-client-ca-file: \
         the API server runs without --requestheader-client-ca-file, so it cannot front an aggregated API"
    )]
    NoCa,
    #[error("ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}: {key} is not a JSON list of strings")]
    NotAList {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}: requestheader-client-ca-file holds no usable CA certificate"
    )]
    Ca(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The front proxy's settings, from the ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontProxy {
    pub ca: Vec<CertificateDer<'static>>,
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

/// The user a request is made for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl FrontProxy {
    pub async fn read(client: &Client) -> Result<Self, FrontProxyError> {
        let map = Api::<ConfigMap>::namespaced(client.clone(), CONFIGMAP_NAMESPACE)
            .get(CONFIGMAP)
            .await
            .map_err(FrontProxyError::Read)?;
        Self::from_data(&map.data.unwrap_or_default())
    }

    /// Pure: the ConfigMap's data, read.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, FrontProxyError> {
        let pem = data
            .get("requestheader-client-ca-file")
            .filter(|pem| !pem.trim().is_empty())
            .ok_or(FrontProxyError::NoCa)?;
        let ca = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FrontProxyError::Ca(Box::new(e)))?;
        let list = |key: &'static str| -> Result<Vec<String>, FrontProxyError> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(json) if json.trim().is_empty() => Ok(Vec::new()),
                Some(json) => serde_json::from_str(json)
                    .map_err(|source| FrontProxyError::NotAList { key, source }),
            }
        };
        Ok(Self {
            ca,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_prefixes: list("requestheader-extra-headers-prefix")?,
        })
    }

    /// The user named by `headers` (None when no username header is set). Extra keys are
    /// lowercased and percent-decoded, as the API server encodes them.
    pub fn user(&self, headers: &HeaderMap) -> Option<User> {
        let name = self
            .username_headers
            .iter()
            .find_map(|h| headers.get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())?
            .to_string();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let header = header.as_str();
            let Some(key) = self.extra_prefixes.iter().find_map(|prefix| {
                header
                    .get(..prefix.len())
                    .filter(|head| head.eq_ignore_ascii_case(prefix))
                    .map(|_| &header[prefix.len()..])
            }) else {
                continue;
            };
            if let Ok(value) = value.to_str() {
                extra
                    .entry(percent_decode(&key.to_ascii_lowercase()))
                    .or_default()
                    .push(value.to_string());
            }
        }
        Some(User {
            name,
            groups,
            extra,
        })
    }

    /// The TLS client verifier of the aggregated API's port.
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, FrontProxyError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| FrontProxyError::Ca(Box::new(e)))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signatures = provider.signature_verification_algorithms;
        let chain =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| FrontProxyError::Ca(Box::new(e)))?;
        Ok(Arc::new(AllowedNames {
            chain,
            names: self.allowed_names.clone(),
            signatures,
        }))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The chain checked by webpki, then the common name against the allowed names (any, when
/// the list is empty, as the API server's own rule says).
#[derive(Debug)]
struct AllowedNames {
    chain: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
    /// The handshake signatures, checked with the algorithms the chain is checked with.
    signatures: rustls::crypto::WebPkiSupportedAlgorithms,
}

/// The subject's common name of a DER certificate.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}

impl ClientCertVerifier for AllowedNames {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(verified);
        }
        match common_name(end_entity) {
            Some(name) if self.names.contains(&name) => Ok(verified),
            name => {
                tracing::warn!(
                    common_name = name.as_deref().unwrap_or("(none)"),
                    allowed = ?self.names,
                    "refused a client certificate of the requestheader CA with a name not allowed"
                );
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    crate::handshake_signatures!(signatures);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, String> {
        let ca = rcgen::CertificateParams::new(vec![]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = ca.self_signed(&key).unwrap().pem();
        [
            ("requestheader-client-ca-file", pem.as_str()),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_user_is_read_from_the_headers_the_configmap_names() {
        let proxy = FrontProxy::from_data(&data()).unwrap();
        assert_eq!(proxy.allowed_names, ["front-proxy-client"]);
        let mut headers = HeaderMap::new();
        assert_eq!(proxy.user(&headers), None, "no user header: nobody");
        headers.insert("x-remote-user", "alice".parse().unwrap());
        headers.append("x-remote-group", "dev".parse().unwrap());
        headers.append("x-remote-group", "system:authenticated".parse().unwrap());
        headers.insert("x-remote-extra-scopes%2fA", "one".parse().unwrap());
        headers.insert("x-other", "ignored".parse().unwrap());
        let user = proxy.user(&headers).unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert_eq!(
            user.extra,
            [("scopes/a".to_string(), vec!["one".to_string()])].into()
        );
    }

    #[test]
    fn an_api_server_without_the_front_proxy_ca_is_a_clear_error() {
        let mut data = data();
        data.remove("requestheader-client-ca-file");
        let e = FrontProxy::from_data(&data).unwrap_err();
        assert!(
            e.to_string().contains("--requestheader-client-ca-file"),
            "{e}"
        );
        let mut data = self::tests::data();
        data.insert(
            "requestheader-group-headers".into(),
            "X-Remote-Group".into(),
        );
        let e = FrontProxy::from_data(&data).unwrap_err();
        assert!(e.to_string().contains("requestheader-group-headers"), "{e}");
    }

    #[test]
    fn the_common_name_is_read_from_the_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "front-proxy-client");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            common_name(cert.der()).as_deref(),
            Some("front-proxy-client")
        );
    }

    #[test]
    fn only_the_front_proxy_cas_certificates_with_an_allowed_name_are_accepted() {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let mut data = data();
        data.insert("requestheader-client-ca-file".into(), ca.pem());
        let verifier = FrontProxy::from_data(&data).unwrap().verifier().unwrap();
        let accepted = |name: &str, by_the_ca: bool| {
            let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = if by_the_ca {
                params.signed_by(&key, &*ca)
            } else {
                params.self_signed(&key)
            }
            .unwrap();
            verifier
                .verify_client_cert(cert.der(), &[], UnixTime::now())
                .is_ok()
        };
        assert!(accepted("front-proxy-client", true));
        assert!(!accepted("mallory", true), "another name, from the same CA");
        assert!(
            !accepted("front-proxy-client", false),
            "the allowed name, self-signed"
        );
    }
}
