//! What a VM's volumes need from the cluster: the image path behind each claim, and the
//! user-data of each cloud-init volume (inline, base64, or from a Secret).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use kube::{Api, Client};

use crate::api::VirtualMachine;
use crate::domain::{ImageFormat, ResolvedVolume};

/// Keys of a Secret that may hold user-data, in the order they are tried.
const SECRET_KEYS: [&str; 2] = ["userdata", "userData"];

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The VM can never start as it is: fix it and create it again.
    #[error("{0}")]
    Invalid(String),
    /// Not there yet (a claim not bound): the VM waits and is looked at again.
    #[error("{0}")]
    Waiting(String),
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
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub async fn gather(client: &Client, vm: &VirtualMachine) -> Result<Inputs, InputError> {
    let namespace = vm.metadata.namespace.clone().unwrap_or_default();
    let mut inputs = Inputs::default();
    for (index, volume) in vm.spec.volumes.iter().enumerate() {
        let claim = volume.persistent_volume_claim.as_ref().or_else(|| {
            volume
                .ephemeral
                .as_ref()
                .and_then(|e| e.persistent_volume_claim.as_ref())
        });
        if let Some(claim) = claim
            && !inputs.claims.contains_key(&claim.claim_name)
        {
            let source = claim_source(client, &namespace, &claim.claim_name).await?;
            inputs.claims.insert(claim.claim_name.clone(), source);
        }
        if let Some(cloud_init) = &volume.cloud_init_no_cloud {
            let field = format!("spec.volumes[{index}].cloudInitNoCloud");
            let data = if let Some(text) = &cloud_init.user_data {
                text.clone().into_bytes()
            } else if let Some(encoded) = &cloud_init.user_data_base64 {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| {
                        InputError::Invalid(format!("{field}.userDataBase64: not base64: {e}"))
                    })?
            } else if let Some(secret) = &cloud_init.secret_ref {
                secret_user_data(client, &namespace, &secret.name, &field).await?
            } else {
                Vec::new()
            };
            inputs.user_data.insert(index, data);
        }
    }
    Ok(inputs)
}

async fn secret_user_data(
    client: &Client,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<Vec<u8>, InputError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get(name).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => {
            return Err(InputError::Invalid(format!(
                "{field}.secretRef: Secret {namespace}/{name} does not exist"
            )));
        }
        Err(source) => {
            return Err(InputError::Api {
                what: format!("Secret {namespace}/{name}"),
                source,
            });
        }
    };
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

/// The claim's image on this node: `<path>/disk.img` of its hostPath or local volume, or the
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
            path: format!("{}/disk.img", path.trim_end_matches('/')),
            format: ImageFormat::Raw,
        }
    })
}
