//! The aggregated API's serving certificate and the controller's client identity, both made
//! by the controller itself: nothing to issue beforehand, nothing in the repository.
//!
//! - Serving: the Secret [`SERVING_SECRET`] (type kubernetes.io/tls) holds a self-signed
//!   certificate for the Service's DNS names. The first replica to start creates it (a second
//!   one's create conflicts, and it reads the first's); every replica then writes the
//!   certificate into the APIService's `caBundle`, so the API server verifies the Service.
//!   Rotation: delete the Secret and restart the controllers (docs/security.md).
//! - Client: each replica makes a key at start and publishes its certificate's fingerprint
//!   under its Pod name in the ConfigMap [`pin::CONTROLLER_IDENTITIES`], removing the entries
//!   of Pods that are gone; the agents accept only those (`agent::console_port`).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tunnel::pin::{CONTROLLER_IDENTITIES, Identity};

pub const SERVING_SECRET: &str = "nodevirt-subresources-tls";
pub const API_SERVICE: &str = "v1alpha1.subresources.kubevirt.io";
/// The controller Pods' label, to tell the identities of Pods that are gone.
pub const CONTROLLER_POD_SELECTOR: &str = "app.kubernetes.io/name=nodevirt-controller";
/// How long the serving certificate is valid.
const SERVING_VALIDITY_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("{action} Secret {namespace}/{SERVING_SECRET}")]
    Secret {
        action: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{SERVING_SECRET} holds no usable tls.crt and tls.key (delete it: the controller makes a new one)"
    )]
    Unusable { namespace: String },
    #[error("generating the serving certificate")]
    Generate(#[source] rcgen::Error),
    #[error("writing the caBundle of APIService {API_SERVICE}")]
    CaBundle(#[source] kube::Error),
    #[error(
        "publishing this controller's identity in ConfigMap {namespace}/{CONTROLLER_IDENTITIES}"
    )]
    Identity {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// The Service's DNS names, for the serving certificate.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

/// A new self-signed serving certificate and key, PEM.
fn generate(names: Vec<String>) -> Result<(String, String), rcgen::Error> {
    let common_name = names[0].clone();
    let (cert, key) =
        crate::self_signed::generate(names, &common_name, Some(SERVING_VALIDITY_DAYS))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The serving certificate chain and key, from the Secret (made if absent).
pub async fn serving_certificate(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), ServingError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let failed = |action| {
        move |source| ServingError::Secret {
            action,
            namespace: namespace.to_string(),
            source,
        }
    };
    let secret = match secrets
        .get_opt(SERVING_SECRET)
        .await
        .map_err(failed("reading"))?
    {
        Some(secret) => secret,
        None => {
            let (cert, key) =
                generate(service_names(service, namespace)).map_err(ServingError::Generate)?;
            let new = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(SERVING_SECRET.into()),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(BTreeMap::from([
                    ("tls.crt".to_string(), ByteString(cert.into_bytes())),
                    ("tls.key".to_string(), ByteString(key.into_bytes())),
                ])),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &new).await {
                Ok(created) => created,
                // Another replica made it first: use its.
                Err(kube::Error::Api(status)) if status.code == 409 => secrets
                    .get(SERVING_SECRET)
                    .await
                    .map_err(failed("reading"))?,
                Err(e) => return Err(failed("creating")(e)),
            }
        }
    };
    let unusable = || ServingError::Unusable {
        namespace: namespace.to_string(),
    };
    let data = secret.data.unwrap_or_default();
    let cert_pem = data.get("tls.crt").ok_or_else(unusable)?.0.clone();
    let key_pem = data.get("tls.key").ok_or_else(unusable)?.0.clone();
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| unusable())?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| unusable())?;
    if chain.is_empty() {
        return Err(unusable());
    }
    Ok((chain, key, String::from_utf8_lossy(&cert_pem).into_owned()))
}

/// Writes `cert_pem` as the APIService's caBundle.
pub async fn publish_ca_bundle(client: &Client, cert_pem: &str) -> Result<(), ServingError> {
    let resource = ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    let services: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let bundle = base64::engine::general_purpose::STANDARD.encode(cert_pem);
    let patch = serde_json::json!({ "spec": { "caBundle": bundle } });
    services
        .patch(API_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(ServingError::CaBundle)
}

/// Publishes `identity` under `pod`, and removes the entries of controller Pods that are gone.
pub async fn publish_identity(
    client: &Client,
    namespace: &str,
    pod: &str,
    identity: &Identity,
) -> Result<(), ServingError> {
    let failed = |source| ServingError::Identity {
        namespace: namespace.to_string(),
        source,
    };
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let current = maps.get_opt(CONTROLLER_IDENTITIES).await.map_err(failed)?;
    let live: Vec<String> = Api::<Pod>::namespaced(client.clone(), namespace)
        .list_metadata(&ListParams::default().labels(CONTROLLER_POD_SELECTOR))
        .await
        .map_err(failed)?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let mut data = serde_json::Map::new();
    for gone in current
        .iter()
        .flat_map(|map| map.data.iter().flatten())
        .map(|(name, _)| name)
        .filter(|name| name.as_str() != pod && !live.contains(name))
    {
        data.insert(gone.clone(), serde_json::Value::Null);
    }
    data.insert(pod.to_string(), identity.fingerprint().into());
    if current.is_none() {
        let new = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(CONTROLLER_IDENTITIES.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(pod.to_string(), identity.fingerprint())])),
            ..Default::default()
        };
        match maps.create(&PostParams::default(), &new).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(failed(e)),
        }
    }
    let patch = serde_json::json!({ "data": data });
    maps.patch(
        CONTROLLER_IDENTITIES,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
    .map_err(failed)
}
