//! The aggregated API `subresources.kubevirt.io/v1alpha1`, served by every controller replica
//! (`--api-addr`, behind the APIService of that name and the Service `nodevirt-subresources`):
//!
//!   GET /apis/subresources.kubevirt.io/v1alpha1                       discovery
//!   GET .../namespaces/{ns}/virtualmachines/{name}/console[?force=true]  websocket: serial console
//!   GET .../namespaces/{ns}/virtualmachines/{name}/vnc                   websocket: VNC
//!
//! 1. TLS with the serving certificate of `serving`; a client certificate of the API server's
//!    front proxy is required ([`front_proxy`]), so the identity headers can be trusted.
//! 2. A SubjectAccessReview of that user for `get` on `virtualmachines/console` (or `/vnc`) in
//!    the group subresources.kubevirt.io: 403 naming the subresource unless allowed.
//! 3. The VM must be Running on a node; the controller opens the same path on that node's agent
//!    ([`agent_link`], mutual TLS) and answers with the agent's refusal if it refuses (409 for a
//!    console someone else holds), else switches to a websocket and carries bytes between
//!    the two websockets, each kept alive by pings ([`crate::tunnel`]).

pub mod agent_link;
pub mod front_proxy;
pub mod serving;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::api::VirtualMachine;
use crate::tunnel::pin::Identity;
use crate::tunnel::{self, Keepalive};

use self::agent_link::{AgentLink, DialError};
use self::front_proxy::{FrontProxy, User};

pub const GROUP: &str = "subresources.kubevirt.io";
pub const VERSION: &str = "v1alpha1";

#[derive(Debug, Clone, clap::Args)]
pub struct SubresourceArgs {
    /// Where the aggregated API subresources.kubevirt.io is served (HTTPS, front-proxy client
    /// certificates only); "off" serves none.
    #[arg(long, env = "NODEVIRT_API_ADDR", default_value = "0.0.0.0:8443")]
    pub api_addr: String,
    /// The Service in front of --api-addr (in --lease-namespace), for the serving certificate.
    #[arg(long, default_value = "nodevirt-subresources")]
    pub api_service: String,
    /// The agents' console port (their --console-addr).
    #[arg(long, default_value_t = 9187)]
    pub agent_console_port: u16,
    /// Seconds between websocket pings on each console or VNC session's two websockets.
    #[arg(long, env = "NODEVIRT_KEEPALIVE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubresourceError {
    #[error("--api-addr {0:?}: expected host:port, e.g. 0.0.0.0:8443, or off")]
    Addr(String),
    #[error(transparent)]
    FrontProxy(#[from] front_proxy::FrontProxyError),
    #[error(transparent)]
    Serving(#[from] serving::ServingError),
    #[error("generating this controller's client certificate")]
    Identity(#[source] rcgen::Error),
    #[error("setting up the aggregated API's TLS")]
    Tls(#[source] rustls::Error),
    #[error("binding the aggregated API's port {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a connection needs: the caches the controller keeps anyway.
pub struct Subresources {
    pub client: Client,
    pub vms: Store<VirtualMachine>,
    pub nodes: Store<Node>,
    pub front_proxy: FrontProxy,
    pub agents: AgentLink,
    pub keepalive: Keepalive,
}

/// Sets up (serving certificate, caBundle, client identity) and serves until dropped.
pub async fn run(
    args: SubresourceArgs,
    client: Client,
    namespace: String,
    pod: String,
    vms: Store<VirtualMachine>,
    nodes: Store<Node>,
    connections: crate::server::ConnectionMetrics,
) -> Result<(), SubresourceError> {
    if args.api_addr == "off" {
        return Ok(());
    }
    let addr: SocketAddr = args
        .api_addr
        .parse()
        .map_err(|_| SubresourceError::Addr(args.api_addr.clone()))?;
    let front_proxy = FrontProxy::read(&client).await?;
    let (chain, key, cert_pem) =
        serving::serving_certificate(&client, &namespace, &args.api_service).await?;
    let identity = Identity::generate(&format!("nodevirt-controller@{pod}"))
        .map_err(SubresourceError::Identity)?;
    serving::publish_identity(&client, &namespace, &pod, &identity).await?;
    if let Err(e) = serving::publish_ca_bundle(&client, &cert_pem).await {
        // Without the APIService (an install without it) the port is still of use to a
        // client that trusts the Secret; say so, and serve.
        warn!(error = %crate::k8s::error_chain(&e), "the API server may not reach this port");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SubresourceError::Tls)?
        .with_client_cert_verifier(front_proxy.verifier()?)
        .with_single_cert(chain, key)
        .map_err(SubresourceError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SubresourceError::Bind { addr, source })?;
    info!(%addr, fingerprint = identity.fingerprint(), "serving {GROUP}/{VERSION}");
    let state = Arc::new(Subresources {
        client,
        vms,
        nodes,
        front_proxy,
        agents: AgentLink {
            identity: Arc::new(identity),
            port: args.agent_console_port,
        },
        keepalive: Keepalive {
            interval: Duration::from_secs(args.keepalive_seconds),
        },
    });
    let endpoint = crate::server::Endpoint {
        name: "subresources",
        limits: crate::server::Limits::STANDARD,
        tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        metrics: connections,
    };
    let app = Router::new().fallback(answer).with_state(state);
    crate::server::serve(listener, app, endpoint, |_| ()).await;
    Ok(())
}

/// The two subresources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Console,
    Vnc,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Console => "console",
            Subresource::Vnc => "vnc",
        }
    }
}

/// One request's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    Discovery,
    Connect {
        namespace: String,
        name: String,
        subresource: Subresource,
        force: bool,
    },
}

/// Pure: the path (and query) to a route; None is 404.
pub fn route(path: &str, query: Option<&str>) -> Option<ApiRoute> {
    let rest = path.strip_prefix(&format!("/apis/{GROUP}/{VERSION}"))?;
    if rest.is_empty() || rest == "/" {
        return Some(ApiRoute::Discovery);
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let [
        "namespaces",
        namespace,
        "virtualmachines",
        name,
        subresource,
    ] = parts[..]
    else {
        return None;
    };
    let subresource = match subresource {
        "console" => Subresource::Console,
        "vnc" => Subresource::Vnc,
        _ => return None,
    };
    crate::domain::names::check_dns_label(namespace, "namespace").ok()?;
    crate::domain::names::check_dns_label(name, "name").ok()?;
    let force = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|pair| pair == "force=true" || pair == "force");
    Some(ApiRoute::Connect {
        namespace: namespace.into(),
        name: name.into(),
        subresource,
        force,
    })
}

/// Pure: the SubjectAccessReview that decides whether `user` may use `subresource` of the VM.
pub fn access_review(
    user: &User,
    namespace: &str,
    name: &str,
    subresource: Subresource,
) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some("virtualmachines".into()),
                subresource: Some(subresource.name().into()),
                verb: Some("get".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A Kubernetes Status answer, which kubectl and kube-rs clients print.
fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn discovery() -> Response {
    let resource = |sub: &str| {
        serde_json::json!({
            "name": format!("virtualmachines/{sub}"), "singularName": "", "namespaced": true,
            "kind": "VirtualMachine", "verbs": ["get"],
        })
    };
    axum::Json(serde_json::json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [resource("console"), resource("vnc")],
    }))
    .into_response()
}

async fn answer(State(state): State<Arc<Subresources>>, request: Request) -> Response {
    match route(request.uri().path(), request.uri().query()) {
        Some(ApiRoute::Discovery) => discovery(),
        Some(ApiRoute::Connect {
            namespace,
            name,
            subresource,
            force,
        }) => connect(&state, &namespace, &name, subresource, force, request).await,
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

async fn connect(
    state: &Subresources,
    namespace: &str,
    name: &str,
    subresource: Subresource,
    force: bool,
    request: Request,
) -> Response {
    let Some(user) = state.front_proxy.user(request.headers()) else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "no user in the front proxy's headers",
        );
    };
    let vm_ref = format!("{namespace}/{name}");
    let review = access_review(&user, namespace, name, subresource);
    let reviews: Api<SubjectAccessReview> = Api::all(state.client.clone());
    match reviews.create(&PostParams::default(), &review).await {
        Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
        Ok(_) => {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "virtualmachines.{GROUP} \"{name}\" is forbidden: User \"{}\" cannot get resource \"virtualmachines/{}\" in API group \"{GROUP}\" in the namespace \"{namespace}\"",
                    user.name,
                    subresource.name()
                ),
            );
        }
        Err(e) => {
            warn!(vm = vm_ref, error = %e, "cannot review access");
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("cannot review the access of {}: {e}", user.name),
            );
        }
    }
    if !tunnel::is_websocket_upgrade(request.headers()) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "this subresource is a websocket: connect with Upgrade: websocket",
        );
    }
    let Some(vm) = state.vms.get(&ObjectRef::new(name).within(namespace)) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("virtualmachines.kubevirt.io \"{name}\" not found"),
        );
    };
    let node_name = vm
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if vm.phase() != crate::api::Phase::Running || node_name.is_empty() {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VM {vm_ref} is not Running (phase {:?})", vm.phase()),
        );
    }
    let Some(node) = state.nodes.get(&ObjectRef::new(&node_name)) else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("node {node_name} of VM {vm_ref} is not known"),
        );
    };
    let path = match subresource {
        Subresource::Console => format!("/v1/vms/{namespace}/{name}/console/attach?force={force}"),
        Subresource::Vnc => format!("/v1/vms/{namespace}/{name}/vnc"),
    };
    let agent = match state.agents.open(&node, &path).await {
        Ok(agent) => agent,
        Err(DialError::Refused {
            status: code,
            message,
        }) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let reason = if code == StatusCode::CONFLICT {
                "Conflict"
            } else {
                "ServiceUnavailable"
            };
            return status(code, reason, message);
        }
        Err(e) => {
            warn!(vm = vm_ref, node = node_name, error = %crate::k8s::error_chain(&e), "cannot reach the agent");
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                crate::k8s::error_chain(&e),
            );
        }
    };
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    *response.headers_mut() = tunnel::accept_headers(request.headers());
    let keepalive = state.keepalive;
    let what = subresource.name();
    let who = user.name;
    tokio::spawn(async move {
        let user_side = match hyper::upgrade::on(request).await {
            Ok(io) => tunnel::websocket(TokioIo::new(io), tunnel::Role::Server).await,
            Err(e) => return warn!(vm = vm_ref, error = %e, "{what} upgrade failed"),
        };
        info!(
            vm = vm_ref,
            user = who,
            node = node_name,
            "{what} session opened"
        );
        let (mut user_io, user_ended) = tunnel::pipe(user_side, keepalive);
        let (mut agent_io, agent_ended) = tunnel::pipe(agent, keepalive);
        let _ = tokio::io::copy_bidirectional(&mut user_io, &mut agent_io).await;
        drop((user_io, agent_io));
        let (user_end, agent_end) = (user_ended.await, agent_ended.await);
        info!(
            vm = vm_ref,
            user = who,
            user_side = user_end.map(|e| e.to_string()).unwrap_or_default(),
            agent_side = agent_end.map(|e| e.to_string()).unwrap_or_default(),
            "{what} session ended"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_two_subresources_of_a_named_vm_and_discovery() {
        let base = "/apis/subresources.kubevirt.io/v1alpha1";
        assert_eq!(route(base, None), Some(ApiRoute::Discovery));
        assert_eq!(
            route(
                &format!("{base}/namespaces/dev/virtualmachines/web/console"),
                Some("force=true")
            ),
            Some(ApiRoute::Connect {
                namespace: "dev".into(),
                name: "web".into(),
                subresource: Subresource::Console,
                force: true
            })
        );
        assert!(matches!(
            route(
                &format!("{base}/namespaces/dev/virtualmachines/web/vnc"),
                None
            ),
            Some(ApiRoute::Connect {
                subresource: Subresource::Vnc,
                force: false,
                ..
            })
        ));
        for wrong in [
            format!("{base}/namespaces/dev/virtualmachines/web/exec"),
            format!("{base}/namespaces/dev/virtualmachines/Web/console"),
            format!("{base}/namespaces/dev/pods/web/console"),
            "/apis/kubevirt.io/v1alpha1".to_string(),
        ] {
            assert_eq!(route(&wrong, None), None, "{wrong}");
        }
    }

    #[test]
    fn the_review_asks_for_get_on_the_subresource_for_the_users_identity() {
        let user = User {
            name: "alice".into(),
            groups: vec!["dev".into()],
            extra: Default::default(),
        };
        let review = access_review(&user, "dev", "web", Subresource::Vnc);
        let attributes = review.spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some(GROUP));
        assert_eq!(attributes.resource.as_deref(), Some("virtualmachines"));
        assert_eq!(attributes.subresource.as_deref(), Some("vnc"));
        assert_eq!(attributes.verb.as_deref(), Some("get"));
        assert_eq!(attributes.name.as_deref(), Some("web"));
        assert_eq!(review.spec.user.as_deref(), Some("alice"));
        assert_eq!(review.spec.groups, Some(vec!["dev".to_string()]));
        assert_eq!(review.spec.extra, None);
    }
}
