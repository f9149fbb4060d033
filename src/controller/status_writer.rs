//! The one place the controller writes status: a merge patch of the whole status with the
//! object's UID as a precondition (a namesake created meanwhile is never written), sent
//! untyped so that a VM nodevirt's types cannot read is written too and the answer is never
//! decoded. What to write comes from `super::status`.

use kube::Resource;
use serde::Serialize;

use crate::k8s;

#[derive(Debug, thiserror::Error)]
#[error("writing the status of {kind} {object}")]
pub struct StatusWriteError {
    kind: String,
    object: String,
    #[source]
    source: kube::Error,
}

/// Writes `status` as the status of `object`; the resourceVersion the write made.
pub async fn write<K, S>(
    client: &kube::Client,
    object: &K,
    status: &S,
) -> Result<Option<String>, StatusWriteError>
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    k8s::patch_status_untyped(client, object, status)
        .await
        .map_err(|source| StatusWriteError {
            kind: K::kind(&()).into_owned(),
            object: k8s::object_key(object),
            source,
        })
}
