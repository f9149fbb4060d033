//! The admin socket's server, in the agent: HTTP/JSON over a Unix socket. Each request is
//! parsed into a `route::Route` and handled by one match over it ([`handle`]). It reads the agent's own state (watch cache, libvirt, files), never the API server,
//! so it answers while the API server is unreachable.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::VirtualMachine;
use crate::domain::names::domain_name;
use crate::event_log::EventLog;
use crate::hypervisor::choice::HypervisorChoice;
use crate::hypervisor::{DomainState, DomainStatus, Libvirt};
use crate::storage::layout::VmLayout;

use super::api::{
    Accepted, ConsoleTail, DomainXml, ErrorBody, Health, MAX_CONSOLE_LINES, VmDetail, VmSummary,
};
use super::attach;
use super::peer::{self, Access};
use super::route::{Route, RouteError, VmRef};

pub struct AdminState {
    pub node: String,
    pub libvirt: Arc<Libvirt>,
    pub vms: Store<VirtualMachine>,
    pub synced: tokio::sync::watch::Receiver<bool>,
    pub state_dir: PathBuf,
    pub resync: UnboundedSender<ObjectRef<VirtualMachine>>,
    pub events: Arc<EventLog>,
    pub hypervisor: Arc<HypervisorChoice>,
    /// The ping interval of console and VNC websockets.
    pub keepalive: crate::tunnel::Keepalive,
    pub sessions: super::attach::SessionLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("refusing to use {0}: it exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("refusing to replace {0}: another process answers on it (a second agent?)")]
    InUse(PathBuf),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AdminError {
    let path = path.to_path_buf();
    move |source| AdminError::Io {
        action,
        path,
        source,
    }
}

/// Binds the socket ([`bind`]) and serves until the task is dropped, with the limits of
/// `crate::server` (connection cap, head and write timeouts); every connection's peer
/// credentials are read when it is accepted and checked on each request (`peer`).
pub async fn serve(
    path: &Path,
    state: Arc<AdminState>,
    access: Access,
    connections: crate::server::ConnectionMetrics,
) -> Result<(), AdminError> {
    let listener = bind(path, &access)?;
    let app = router(state).layer(axum::middleware::from_fn_with_state(
        Arc::new(access),
        peer::require_access,
    ));
    let endpoint = crate::server::Endpoint {
        name: "admin",
        limits: crate::server::Limits::STANDARD,
        tls: None,
        metrics: connections,
    };
    crate::server::serve(listener, app, endpoint, peer::Peer::of).await;
    Ok(())
}

/// Binds the socket: mode 0600, or 0660 owned by `access.group` when one is given.
///
/// 1. A missing folder is created, mode 0755 (the folder may also be a hostPath that exists).
/// 2. A socket left by an agent that is gone (a previous Pod, a crash) is removed and bound
///    again; one that still answers is another agent's and is refused, as is any other file
///    at the path, which is left alone.
fn bind(path: &Path, access: &Access) -> Result<tokio::net::UnixListener, AdminError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("removing the stale socket", path))?;
        }
        Ok(_) => return Err(AdminError::NotASocket(path.to_path_buf())),
        Err(_) => {
            if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
                // 0755 whatever the umask: the socket's own mode and the peer check guard
                // access, and the admin group must be able to reach the socket.
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("setting permissions of", dir))?;
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io("binding", path))?;
    let mode = match access.group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(io("giving the admin group", path))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting permissions of", path))?;
    Ok(listener)
}

/// Every request, answered from `state`; the transport (the socket, or a test's in-memory
/// stream) is the caller's.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new().fallback(answer).with_state(state)
}

/// The agent's console port: only the console and VNC sessions, to the controller.
pub fn console_router(state: Arc<AdminState>) -> Router {
    Router::new().fallback(answer_console).with_state(state)
}

async fn answer_console(State(state): State<Arc<AdminState>>, request: Request) -> Response {
    let uri = request.uri();
    match Route::parse(request.method(), uri.path(), uri.query()) {
        Ok(route @ (Route::Attach { .. } | Route::Vnc(_))) => handle(&state, route, request).await,
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            "the console port serves only /v1/vms/{namespace}/{name}/console/attach and /vnc",
        ),
        Err(e) => refused(&e),
    }
}

async fn answer(State(state): State<Arc<AdminState>>, request: Request) -> Response {
    let uri = request.uri();
    match Route::parse(request.method(), uri.path(), uri.query()) {
        Ok(route) => handle(&state, route, request).await,
        Err(e) => refused(&e),
    }
}

/// Each route to the code that answers it.
async fn handle(state: &AdminState, route: Route, request: Request) -> Response {
    match route {
        Route::ListVms => Json(list(state).await).into_response(),
        Route::ShowVm(vm) => show(state, &vm).await,
        Route::DomainXml(vm) => xml(state, &vm).await,
        Route::Console { vm, lines } => console(state, &vm, lines).await,
        // Keeps the connection, after its answer.
        Route::Attach { vm, force } => attach::attach(state, &vm, force, request).await,
        Route::Vnc(vm) => attach::vnc(state, &vm, request).await,
        Route::Resync(vm) => resync(state, &vm),
        Route::Health => Json(health(state).await).into_response(),
    }
}

fn refused(e: &RouteError) -> Response {
    let mut response = error(e.status(), crate::k8s::error_chain(e));
    if let RouteError::WrongMethod { allowed, .. } = e
        && let Ok(allow) = allowed.as_str().parse()
    {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

fn describe(status: Option<&DomainStatus>) -> String {
    match status.map(|s| s.state) {
        None => "no domain".into(),
        Some(DomainState::Running) => "running".into(),
        Some(DomainState::Paused(reason)) => format!("paused ({reason:?})"),
        Some(DomainState::Crashed) => "crashed".into(),
        Some(DomainState::Transient) => "changing".into(),
        Some(DomainState::ShutOff(reason)) => format!("shut off ({reason:?})").to_lowercase(),
    }
}

async fn summary(state: &AdminState, vm: &VirtualMachine) -> VmSummary {
    let domain = domain_name(&vm.namespace().unwrap_or_default(), &vm.name_any());
    let status = state
        .libvirt
        .run(move |lv| lv.status(&domain))
        .await
        .ok()
        .flatten();
    VmSummary {
        namespace: vm.namespace().unwrap_or_default(),
        name: vm.name_any(),
        uid: vm.uid().unwrap_or_default(),
        phase: format!("{:?}", vm.phase()),
        domain_state: describe(status.as_ref()),
        ip: vm
            .status
            .as_ref()
            .and_then(|s| s.interfaces.first())
            .and_then(|i| i.ip_address.clone()),
    }
}

pub(super) fn find(state: &AdminState, vm: &VmRef) -> Option<Arc<VirtualMachine>> {
    state
        .vms
        .get(&ObjectRef::new(&vm.name).within(&vm.namespace))
}

pub(super) fn not_found(state: &AdminState, vm: &VmRef) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no VM {vm} on node {}", state.node),
    )
}

async fn list(state: &AdminState) -> Vec<VmSummary> {
    let mut out = Vec::new();
    for vm in state.vms.state() {
        out.push(summary(state, &vm).await);
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

async fn show(state: &AdminState, vm_ref: &VmRef) -> Response {
    let Some(vm) = find(state, vm_ref) else {
        return not_found(state, vm_ref);
    };
    let detail = VmDetail {
        vm: summary(state, &vm).await,
        node: state.node.clone(),
        domain: domain_name(&vm_ref.namespace, &vm_ref.name),
        events: state.events.of(&vm.uid().unwrap_or_default()),
    };
    Json(detail).into_response()
}

async fn xml(state: &AdminState, vm: &VmRef) -> Response {
    if find(state, vm).is_none() {
        return not_found(state, vm);
    }
    let domain = domain_name(&vm.namespace, &vm.name);
    let lookup = domain.clone();
    match state.libvirt.run(move |lv| lv.xml(&lookup)).await {
        Ok(Some(xml)) => Json(DomainXml { domain, xml }).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("VM {vm} has no domain")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, crate::k8s::error_chain(&e)),
    }
}

async fn console(state: &AdminState, vm_ref: &VmRef, lines: usize) -> Response {
    let Some(vm) = find(state, vm_ref) else {
        return not_found(state, vm_ref);
    };
    let uid = vm.uid().unwrap_or_default();
    if crate::domain::names::check_uid(&uid, "uid").is_err() {
        return error(StatusCode::NOT_FOUND, "the VM has no valid UID");
    }
    let path = VmLayout::new(&state.state_dir, &uid).console_log();
    let wanted = lines.min(MAX_CONSOLE_LINES);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let lines = all[all.len().saturating_sub(wanted)..]
                .iter()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect();
            Json(ConsoleTail {
                path: path.display().to_string(),
                lines,
            })
            .into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display())),
    }
}

fn resync(state: &AdminState, vm: &VmRef) -> Response {
    if find(state, vm).is_none() {
        return not_found(state, vm);
    }
    match state
        .resync
        .send(ObjectRef::new(&vm.name).within(&vm.namespace))
    {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                accepted: format!("resync of {vm}"),
            }),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

async fn health(state: &AdminState) -> Health {
    let connected = state
        .libvirt
        .run(|lv| Ok(lv.is_alive()))
        .await
        .unwrap_or(false);
    Health {
        version: env!("CARGO_PKG_VERSION").into(),
        node: state.node.clone(),
        hypervisor: state.hypervisor.label().into(),
        libvirt_connected: connected,
        watch_synced: *state.synced.borrow(),
        vms: state.vms.state().len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::AdminHarness;

    fn exchange(harness: &AdminHarness, request: &str) -> String {
        let answer = harness.exchange(request.as_bytes()).unwrap();
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn route_errors_answer_with_their_status_and_why() {
        let harness = AdminHarness::new().unwrap();
        let answer = exchange(&harness, "DELETE /v1/health HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(answer.contains("allow: GET\r\n"), "{answer}");
        assert!(answer.contains("method not allowed; use GET"), "{answer}");
        let answer = exchange(&harness, "GET /v1/vm HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        assert!(
            answer.contains("GET /v1/vm: no such path; the admin socket serves /v1/vms"),
            "{answer}"
        );
        let answer = exchange(
            &harness,
            "GET /v1/vms/default/Testvm HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            answer.contains("naming a VM: name: \\\"Testvm\\\" is not a valid name"),
            "{answer}"
        );
    }

    #[test]
    fn an_attach_or_vnc_names_a_vm_of_the_node_its_protocol_and_a_clear_force() {
        let harness = AdminHarness::new().unwrap();
        let get = |path: &str| {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
            );
            exchange(&harness, &request)
        };
        for (what, protocol) in [
            ("console/attach", "nodevirt-console"),
            ("vnc", "nodevirt-vnc"),
        ] {
            let answer = get(&format!("/v1/vms/default/nope/{what}"));
            assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
            assert!(answer.contains("no VM default/nope on node"), "{answer}");
            let answer = get(&format!("/v1/vms/default/testvm/{what}"));
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
            assert!(
                answer.contains(&format!("Connection: upgrade and Upgrade: {protocol}")),
                "{answer}"
            );
        }
        let answer = get("/v1/vms/default/testvm/console/attach?force=maybe");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            answer.contains("force=\\\"maybe\\\" is not true or false"),
            "{answer}"
        );
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_missing_folder_is_made_and_a_stale_socket_replaced() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("run/nodevirt/admin.sock");
        let access = Access { group: None };
        let first = bind(&path, &access).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        assert_eq!(mode(&path), 0o600);
        // The previous Pod's agent is gone; its socket file stays behind.
        drop(first);
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        let again = bind(&path, &access).unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::UnixStream::connect(&path), again.accept());
        client.unwrap();
        accepted.unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn a_live_socket_or_another_file_is_refused_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("admin.sock");
        let access = Access { group: None };
        let _live = bind(&path, &access).unwrap();
        let err = bind(&path, &access).unwrap_err();
        assert!(matches!(err, AdminError::InUse(_)), "{err}");
        assert!(
            tokio::net::UnixStream::connect(&path).await.is_ok(),
            "still served"
        );
        let file = root.path().join("not-a-socket");
        std::fs::write(&file, "x").unwrap();
        let err = bind(&file, &access).unwrap_err();
        assert!(matches!(err, AdminError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
