//! Small helpers shared by the agent and the controller: clients, status patches, error text.

use std::path::Path;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Resource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::MethodLabel;

/// Replaces the whole status of `object` through the status subresource (a JSON patch, so a
/// condition or an interface no longer wanted goes; a merge patch would keep every list the
/// new status leaves out). The object's UID rides along as a `test`: if the object was deleted
/// and re-created under the same name, the API server refuses the patch (422) instead of
/// giving the new object the old one's status.
pub async fn patch_status<K, S>(api: &Api<K>, object: &K, status: &S) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": "/metadata/uid", "value": object.meta().uid },
        { "op": "add", "path": "/status", "value": status },
    ]))
    .map_err(kube::Error::SerdeError)?;
    let name = object.meta().name.as_deref().unwrap_or_default();
    api.patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
}

/// An untyped client for kind `K` in `namespace`, for objects nodevirt's types may not read
/// (see `crate::watch`): a typed request would decode the answer, fail, and log the whole
/// object.
pub fn untyped_api<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    namespace: &str,
) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &ApiResource::erase::<K>(&()))
}

/// [`patch_status`] through [`untyped_api`]; the resourceVersion it made.
pub async fn patch_status_untyped<K, S>(
    client: &kube::Client,
    object: &K,
    status: &S,
) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    let namespace = object.meta().namespace.as_deref().unwrap_or_default();
    let api = untyped_api::<K>(client, namespace);
    let name = object.meta().name.as_deref().unwrap_or_default();
    let mut untyped = DynamicObject::new(name, &ApiResource::erase::<K>(&())).within(namespace);
    untyped.metadata.uid = object.meta().uid.clone();
    let written = patch_status(&api, &untyped, status).await?;
    Ok(written.metadata.resource_version)
}

/// How each controller runs: at most 16 reconciles at once. Unbounded, 1000 VMs created
/// together ran ~1000 reconciles side by side; each API request that found no idle connection
/// opened one (98 stayed open, a TLS session and buffers each) and each libvirt call a blocking
/// thread (up to 54), for no gain: the API server and libvirtd are the bottleneck, not us.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(16)
}

/// `<namespace>/<name>` of `object`, as messages name it.
pub fn object_key(object: &impl kube::ResourceExt) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The API server answered 404: the object is not (or no longer) there.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// "outer: inner: innermost", skipping a source whose text its parent already quotes.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("loading the Kubernetes client configuration")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig`, or else $KUBECONFIG, ~/.kube/config or the in-cluster config.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    client_observed(kubeconfig, |_| {}).await
}

/// A client for a user's command, as kubectl makes one: `kubeconfig` (else $KUBECONFIG or
/// ~/.kube/config, else in-cluster) and its `context` (else the current one).
pub async fn user_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, ClientError> {
    let Some(context) = context else {
        return client(kubeconfig).await;
    };
    let boxed = |e: &dyn std::fmt::Display| ClientError::Config(e.to_string().into());
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| boxed(&e))?;
            kube::Config::from_custom_kubeconfig(file, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| boxed(&e))?;
    kube::Client::try_from(config).map_err(ClientError::Client)
}

/// The same, counting every request it sends in `requests` by HTTP method.
pub async fn client_counted(
    kubeconfig: Option<&Path>,
    requests: Family<MethodLabel, Counter>,
) -> Result<kube::Client, ClientError> {
    client_observed(kubeconfig, move |method| {
        let label = MethodLabel {
            method: method.as_str().to_string(),
        };
        requests.get_or_create(&label).inc();
    })
    .await
}

/// The same, calling `on_request` with the method of every request it sends.
async fn client_observed(
    kubeconfig: Option<&Path>,
    on_request: impl Fn(&http::Method) + Clone + Send + Sync + 'static,
) -> Result<kube::Client, ClientError> {
    let boxed = |e: &dyn std::fmt::Display| ClientError::Config(e.to_string().into());
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| boxed(&e))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| boxed(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| boxed(&e))?,
    };
    let count = tower::util::MapRequestLayer::new(move |request: http::Request<_>| {
        on_request(request.method());
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ClientError::Client)?
        .with_layer(&count)
        .build())
}

/// This machine's host name, for identities in events and Leases.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Resolves on SIGTERM (a Pod being stopped) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
