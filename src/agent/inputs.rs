//! What a VM's volumes need from the cluster: the image path behind each claim, and the
//! user-data of each cloud-init volume (inline, base64, or from a Secret).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use kube::{Api, Client};

use crate::api::VirtualMachine;
use crate::api::volume::VolumeSource;
use crate::domain::{ImageFormat, ResolvedVolume};
use crate::k8s::{error_chain, is_not_found};
use crate::storage::layout::claim_image;
use crate::storage::registry::{
    Credentials, Fetch, PullFailure, Puller, RegistryError, UNTRUSTED_TRIES,
};

/// Keys of a Secret that may hold user-data, in the order they are tried.
const SECRET_KEYS: [&str; 2] = ["userdata", "userData"];

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The VM can never start as it is: fix it and create it again.
    #[error("{0}")]
    Invalid(String),
    /// The spec itself is wrong (a malformed image reference, a registry not allowed):
    /// failed with reason InvalidSpec rather than MissingInput.
    #[error("{0}")]
    InvalidSpec(String),
    /// Not there yet (a claim not bound): the VM waits and is looked at again.
    #[error("{0}")]
    Waiting(String),
    /// The state folder's filesystem is full: the VM fails with that message.
    #[error("{0}")]
    DiskFull(String),
    #[error("reading {what} from the API server")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

#[derive(Debug, Default)]
pub struct Inputs {
    /// claimName -> the image on this node.
    pub claims: BTreeMap<String, ResolvedVolume>,
    /// Volume index -> user-data bytes.
    pub user_data: BTreeMap<usize, Vec<u8>>,
    /// Volume index -> the cached image of a registryDisk.
    pub images: BTreeMap<usize, ResolvedVolume>,
    /// How each image was had: pulled or from the cache.
    pub fetches: Vec<Fetch>,
}

pub async fn gather(
    client: &Client,
    puller: &Puller,
    vm: &VirtualMachine,
) -> Result<Inputs, InputError> {
    let namespace = vm.metadata.namespace.clone().unwrap_or_default();
    let mut inputs = Inputs::default();
    for (index, volume) in vm.spec.volumes.iter().enumerate() {
        let Some(source) = volume.source() else {
            continue;
        };
        if let Some(claim) = source.claim()
            && !inputs.claims.contains_key(&claim.claim_name)
        {
            let source = claim_source(client, &namespace, &claim.claim_name).await?;
            inputs.claims.insert(claim.claim_name.clone(), source);
        }
        match source {
            VolumeSource::CloudInitNoCloud(cloud_init) => {
                let field = format!("spec.volumes[{index}].cloudInitNoCloud");
                let data = if let Some(text) = &cloud_init.user_data {
                    text.clone().into_bytes()
                } else if let Some(decoded) = cloud_init.decoded_user_data_base64() {
                    decoded.map_err(|e| {
                        InputError::Invalid(format!("{field}.userDataBase64: not base64: {e}"))
                    })?
                } else if let Some(secret) = &cloud_init.secret_ref {
                    secret_user_data(client, &namespace, &secret.name, &field).await?
                } else {
                    Vec::new()
                };
                inputs.user_data.insert(index, data);
            }
            VolumeSource::RegistryDisk(registry) => {
                let field = format!("spec.volumes[{index}].registryDisk");
                let credentials = match &registry.image_pull_secret {
                    Some(secret) => Some(
                        pull_credentials(client, &namespace, secret, &registry.image, &field)
                            .await?,
                    ),
                    None => None,
                };
                let (image, fetch) = puller
                    .fetch(&registry.image, credentials.as_ref())
                    .await
                    .map_err(|e| pull_failed(puller, &e, &registry.image, &field))?;
                tracing::info!(image = %registry.image, cached = (fetch == Fetch::Cached), "registry disk ready");
                inputs.images.insert(index, image);
                inputs.fetches.push(fetch);
            }
            // Claims were looked up above; an emptyDisk needs nothing from the cluster.
            VolumeSource::EmptyDisk(_)
            | VolumeSource::Ephemeral(_)
            | VolumeSource::PersistentVolumeClaim(_) => {}
        }
    }
    Ok(inputs)
}

/// A failed pull as the VM sees it: the status names the field and what its owner can act on;
/// the whole error, with what the node saw of the network, goes to the agent's log only.
fn pull_failed(puller: &Puller, e: &RegistryError, image: &str, field: &str) -> InputError {
    tracing::warn!(image, error = %error_chain(e), "pulling a registry disk failed");
    let message = format!("{field}.image: {}", e.user_message());
    match e.failure() {
        PullFailure::Transient => InputError::Waiting(message),
        PullFailure::Untrusted if puller.count_untrusted(image) < UNTRUSTED_TRIES => {
            InputError::Waiting(message)
        }
        PullFailure::Untrusted => InputError::InvalidSpec(message),
        PullFailure::Invalid
            if matches!(
                e,
                RegistryError::Reference { .. } | RegistryError::NotAllowed { .. }
            ) =>
        {
            InputError::InvalidSpec(message)
        }
        PullFailure::Invalid => InputError::Invalid(message),
        PullFailure::DiskFull => InputError::DiskFull(message),
    }
}

async fn get_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<Secret, InputError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.get(name).await {
        Ok(s) => Ok(s),
        Err(e) if is_not_found(&e) => Err(InputError::Invalid(format!(
            "{field}: Secret {namespace}/{name} does not exist"
        ))),
        Err(source) => Err(InputError::Api {
            what: format!("Secret {namespace}/{name}"),
            source,
        }),
    }
}

/// The credentials for `image`'s registry in a kubernetes.io/dockerconfigjson Secret.
async fn pull_credentials(
    client: &Client,
    namespace: &str,
    name: &str,
    image: &str,
    field: &str,
) -> Result<Credentials, InputError> {
    let field = format!("{field}.imagePullSecret");
    let secret = get_secret(client, namespace, name, &field).await?;
    let registry =
        Puller::registry_of(image).map_err(|e| InputError::Invalid(format!("{field}: {e}")))?;
    let data = secret.data.unwrap_or_default();
    let config = data.get(".dockerconfigjson").ok_or_else(|| {
        InputError::Invalid(format!(
            "{field}: Secret {namespace}/{name} has no .dockerconfigjson (expected type kubernetes.io/dockerconfigjson)"
        ))
    })?;
    docker_config_credentials(&config.0, &registry).ok_or_else(|| {
        InputError::Invalid(format!(
            "{field}: Secret {namespace}/{name} has no credentials for registry {registry}"
        ))
    })
}

/// Looks up `registry` in a Docker config JSON: `auths.<registry>` with `username` and
/// `password`, or `auth` = base64("user:password").
fn docker_config_credentials(json: &[u8], registry: &str) -> Option<Credentials> {
    let config: serde_json::Value = serde_json::from_slice(json).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(key, value)| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        (host == registry).then_some(value)
    })?;
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).map(String::from);
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Some(Credentials { username, password });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(field("auth")?)
        .ok()?;
    let (username, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(Credentials {
        username: username.into(),
        password: password.into(),
    })
}

async fn secret_user_data(
    client: &Client,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<Vec<u8>, InputError> {
    let secret = get_secret(client, namespace, name, &format!("{field}.secretRef")).await?;
    let data = secret.data.unwrap_or_default();
    SECRET_KEYS
        .iter()
        .find_map(|k| data.get(*k))
        .map(|b| b.0.clone())
        .ok_or_else(|| {
            InputError::Invalid(format!(
                "{field}.secretRef: Secret {namespace}/{name} has no key {}",
                SECRET_KEYS.join(" or ")
            ))
        })
}

/// The claim's image on this node: `layout::claim_image` of its hostPath or local volume, or the
/// device itself for volumeMode Block.
async fn claim_source(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<ResolvedVolume, InputError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = match claims.get(name).await {
        Ok(c) => c,
        Err(e) if is_not_found(&e) => {
            return Err(InputError::Waiting(format!(
                "PersistentVolumeClaim {namespace}/{name} does not exist yet"
            )));
        }
        Err(source) => {
            return Err(InputError::Api {
                what: format!("PersistentVolumeClaim {namespace}/{name}"),
                source,
            });
        }
    };
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .ok_or_else(|| {
            InputError::Waiting(format!(
                "PersistentVolumeClaim {namespace}/{name} is not bound yet"
            ))
        })?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume = volumes
        .get(&volume_name)
        .await
        .map_err(|source| InputError::Api {
            what: format!("PersistentVolume {volume_name}"),
            source,
        })?;
    let spec = volume.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| {
            InputError::Invalid(format!(
                "PersistentVolume {volume_name} (claim {namespace}/{name}) has no hostPath or local path on this node"
            ))
        })?;
    Ok(if spec.volume_mode.as_deref() == Some("Block") {
        ResolvedVolume::Block { path }
    } else {
        ResolvedVolume::File {
            path: claim_image(Path::new(&path)).display().to_string(),
            format: ImageFormat::Raw,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials_in_both_forms() {
        let plain = br#"{"auths":{"127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
        assert_eq!(
            docker_config_credentials(plain, "127.0.0.1:5000"),
            Some(Credentials {
                username: "u".into(),
                password: "p".into()
            })
        );
        let encoded = br#"{"auths":{"https://reg.example":{"auth":"dTpwOnE="}}}"#;
        assert_eq!(
            docker_config_credentials(encoded, "reg.example"),
            Some(Credentials {
                username: "u".into(),
                password: "p:q".into()
            })
        );
        assert_eq!(docker_config_credentials(plain, "other:5000"), None);
        assert_eq!(docker_config_credentials(b"not json", "x"), None);
    }
}
