//! `GET /v1/vms/{namespace}/{name}/console/attach`: a VM's serial console, both ways, on the
//! admin socket (`nodevirt admin attach`); `GET .../vnc`: a connection to its VNC server
//! (`nodevirt admin vnc`), as a viewer on the node would have.
//!
//! 1. The request asks to switch protocols: to a websocket (the agent's console port, which
//!    the controller reaches for `nodevirt console` and `nodevirt vnc`; bytes in binary
//!    messages, kept alive by pings, [`crate::tunnel`]), or to the raw byte stream
//!    `Upgrade: nodevirt-console` or `nodevirt-vnc` (the admin socket's clients); else 400.
//! 2. The console is opened through libvirt ([`Libvirt::open_console`]): one session at a
//!    time, as `virsh console`; a second is refused with 409 unless it forces, which ends the
//!    first. A VM whose domain is not running is 409 too.
//!    VNC: libvirt hands over a new socket to QEMU's VNC server; QEMU shares the screen
//!    between viewers.
//!    At most [`SessionLimit`] sessions at once (console and VNC, admin socket and console
//!    port together); one more is refused with 503 before anything is opened.
//! 3. 101, then for the console the last [`REPLAY_BYTES`] of the console log (so the user sees the prompt),
//!    then the guest's output as it comes, while what the client sends goes to the guest.
//!    Either side closing ends the session; so does the guest stopping.

use std::path::Path;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::VirtualMachine;
use crate::domain::names::{check_uid, domain_name};
use crate::hypervisor::Libvirt;
use crate::hypervisor::console::{ConsoleError, ConsoleSession};
use crate::storage::layout::VmLayout;
use crate::tunnel;

use super::route::VmRef;
use super::server::{AdminState, error, find, not_found};

/// The protocols named in `Upgrade`: raw bytes of the serial console, or of the VNC server.
pub const CONSOLE_PROTOCOL: &str = "nodevirt-console";
pub const VNC_PROTOCOL: &str = "nodevirt-vnc";
/// How much of the console log is replayed on attach.
pub const REPLAY_BYTES: u64 = 4096;

/// How many console and VNC sessions the agent serves at once (`--max-sessions`): each holds
/// a libvirt stream or a socket to QEMU and two tasks for as long as it is open, which the
/// HTTP server's connection limit no longer counts once the connection has switched.
#[derive(Debug, Clone)]
pub struct SessionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl SessionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A place for one more session, held until it ends; or the 503 that refuses it.
    fn take(&self, vm_ref: &VmRef) -> Result<OwnedSemaphorePermit, Box<Response>> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            tracing::warn!(vm = %vm_ref, limit = self.max, "refused a console or VNC session: at the limit");
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the agent already serves its limit of {} console and VNC sessions (--max-sessions); try again when one ends",
                    self.max
                ),
            ))
        })
    }
}

pub async fn attach(state: &AdminState, vm_ref: &VmRef, force: bool, request: Request) -> Response {
    let (vm, place) = match upgradable(state, vm_ref, &request, CONSOLE_PROTOCOL) {
        Ok(allowed) => allowed,
        Err(refused) => return *refused,
    };
    let domain = domain_name(&vm_ref.namespace, &vm_ref.name);
    let session = match open(&state.libvirt, domain, force).await {
        Ok(session) => session,
        Err(e) => return open_refused(&vm, vm_ref, &e),
    };
    let uid = vm.uid().unwrap_or_default();
    let replay = if check_uid(&uid, "uid").is_ok() {
        tail(&VmLayout::new(&state.state_dir, &uid).console_log()).await
    } else {
        Vec::new()
    };
    switch(
        state,
        request,
        vm_ref,
        "console",
        place,
        move |io| async move {
            bridge(io, &replay, session).await;
        },
    )
}

pub async fn vnc(state: &AdminState, vm_ref: &VmRef, request: Request) -> Response {
    let (vm, place) = match upgradable(state, vm_ref, &request, VNC_PROTOCOL) {
        Ok(allowed) => allowed,
        Err(refused) => return *refused,
    };
    let domain = domain_name(&vm_ref.namespace, &vm_ref.name);
    let opened = state
        .libvirt
        .run(move |lv| Ok(lv.open_vnc(&domain)))
        .await
        .map_err(ConsoleError::from)
        .and_then(|opened| opened)
        .and_then(|fd| {
            let socket = std::os::unix::net::UnixStream::from(fd);
            socket.set_nonblocking(true)?;
            Ok(tokio::net::UnixStream::from_std(socket)?)
        });
    let mut server = match opened {
        Ok(server) => server,
        Err(e) => return open_refused(&vm, vm_ref, &e),
    };
    switch(
        state,
        request,
        vm_ref,
        "VNC",
        place,
        move |mut io| async move {
            let _ = tokio::io::copy_bidirectional(&mut io, &mut server).await;
        },
    )
}

/// The VM and a session's place, if the request may switch to `protocol` for it.
fn upgradable(
    state: &AdminState,
    vm_ref: &VmRef,
    request: &Request,
    protocol: &str,
) -> Result<(Arc<VirtualMachine>, OwnedSemaphorePermit), Box<Response>> {
    let Some(vm) = find(state, vm_ref) else {
        return Err(Box::new(not_found(state, vm_ref)));
    };
    let upgrade = request.headers().get(header::UPGRADE);
    let raw = upgrade.is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(protocol.as_bytes()));
    if !raw && !tunnel::is_websocket_upgrade(request.headers()) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!(
                "this path needs a websocket request, or the headers Connection: upgrade and Upgrade: {protocol}"
            ),
        )));
    }
    Ok((vm, state.sessions.take(vm_ref)?))
}

fn open_refused(vm: &VirtualMachine, vm_ref: &VmRef, e: &ConsoleError) -> Response {
    match e {
        ConsoleError::NotRunning(_) => error(
            StatusCode::CONFLICT,
            format!("VM {vm_ref} is {:?}: {e}", vm.phase()),
        ),
        // The same refusal reaches `nodevirt console` through the console port.
        ConsoleError::Busy(_) => error(
            StatusCode::CONFLICT,
            format!(
                "another session holds the serial console of VM {vm_ref}: `nodevirt console --force` (or `nodevirt admin attach --force` on its node) takes it over"
            ),
        ),
        ConsoleError::Libvirt(_) | ConsoleError::Socket(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, crate::k8s::error_chain(e))
        }
    }
}

/// A switched connection, whichever the transport.
pub trait Session: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Session for T {}

/// Answers 101 and hands the connection to `serve` once hyper has switched it: as it is for
/// the raw protocols, through [`tunnel::pipe`] for a websocket.
fn switch<F, Fut>(
    state: &AdminState,
    request: Request,
    vm_ref: &VmRef,
    what: &'static str,
    place: OwnedSemaphorePermit,
    serve: F,
) -> Response
where
    F: FnOnce(Box<dyn Session>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let websocket = tunnel::is_websocket_upgrade(request.headers());
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    if websocket {
        *response.headers_mut() = tunnel::accept_headers(request.headers());
    } else {
        let headers = response.headers_mut();
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        if let Some(protocol) = request.headers().get(header::UPGRADE).cloned() {
            headers.insert(header::UPGRADE, protocol);
        }
    }
    let vm = vm_ref.to_string();
    let keepalive = state.keepalive;
    tokio::spawn(async move {
        let _place = place;
        let io = match hyper::upgrade::on(request).await {
            Ok(io) => TokioIo::new(io),
            Err(e) => return tracing::debug!(%vm, error = %e, "{what} upgrade failed"),
        };
        if websocket {
            let ws = tunnel::websocket(io, tunnel::Role::Server).await;
            let (io, ended) = tunnel::pipe(ws, keepalive);
            tracing::info!(%vm, "{what} session opened by websocket");
            serve(Box::new(io)).await;
            if let Ok(why) = ended.await {
                tracing::info!(%vm, "{what} session ended: {why}");
            }
        } else {
            tracing::info!(%vm, "{what} session opened on the admin socket");
            serve(Box::new(io)).await;
            tracing::info!(%vm, "{what} session ended");
        }
    });
    response
}

async fn open(
    libvirt: &Arc<Libvirt>,
    domain: String,
    force: bool,
) -> Result<ConsoleSession, ConsoleError> {
    libvirt
        .run(move |lv| Ok(lv.open_console(&domain, force)))
        .await?
}

/// The last [`REPLAY_BYTES`] of the console log; nothing if it cannot be read.
async fn tail(path: &Path) -> Vec<u8> {
    let mut replay = Vec::new();
    if let Ok(mut file) = tokio::fs::File::open(path).await {
        let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let from = length.saturating_sub(REPLAY_BYTES);
        if file.seek(std::io::SeekFrom::Start(from)).await.is_ok() {
            let _ = file.take(REPLAY_BYTES).read_to_end(&mut replay).await;
        }
    }
    replay
}

/// Copies both ways until either side ends.
async fn bridge<Io>(io: Io, replay: &[u8], mut session: ConsoleSession)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut from_user, mut to_user) = tokio::io::split(io);
    let input = session.input();
    let keystrokes = async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = from_user.read(&mut buf).await {
            if input.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    };
    let output = async {
        if to_user.write_all(replay).await.is_err() {
            return;
        }
        while let Some(chunk) = session.output.recv().await {
            if to_user.write_all(&chunk).await.is_err() || to_user.flush().await.is_err() {
                return;
            }
        }
        let _ = to_user.shutdown().await;
    };
    tokio::select! {
        () = keystrokes => {}
        () = output => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_past_the_limit_are_refused_with_503_until_one_ends() {
        let limit = SessionLimit::new(2);
        let vm = VmRef {
            namespace: "dev".into(),
            name: "web".into(),
        };
        let first = limit.take(&vm).unwrap();
        let _second = limit.take(&vm).unwrap();
        let refused = limit.take(&vm).unwrap_err();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(first);
        assert!(limit.take(&vm).is_ok(), "a session that ended leaves room");
    }
}
