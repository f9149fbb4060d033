//! `GET /v1/vms/{namespace}/{name}/console/attach`: a VM's serial console, both ways, on the
//! admin socket (`nodevirt admin attach`).
//!
//! 1. The request asks to switch protocols (`Upgrade: nodevirt-console`), or 400.
//! 2. The console is opened through libvirt ([`Libvirt::open_console`]): one session at a
//!    time, as `virsh console`; a second is refused with 409 unless it forces, which ends the
//!    first. A VM whose domain is not running is 409 too.
//! 3. 101, then the last [`REPLAY_BYTES`] of the console log (so the user sees the prompt),
//!    then the guest's output as it comes, while what the client sends goes to the guest.
//!    Either side closing ends the session; so does the guest stopping.

use std::path::Path;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::domain::names::{check_uid, domain_name};
use crate::hypervisor::Libvirt;
use crate::hypervisor::console::{ConsoleError, ConsoleSession};
use crate::storage::layout::VmLayout;

use super::route::VmRef;
use super::server::{AdminState, error, find, not_found};

/// The protocol named in `Upgrade`: raw bytes of the serial console.
pub const PROTOCOL: &str = "nodevirt-console";
/// How much of the console log is replayed on attach.
pub const REPLAY_BYTES: u64 = 4096;

pub async fn attach(state: &AdminState, vm_ref: &VmRef, force: bool, request: Request) -> Response {
    let Some(vm) = find(state, vm_ref) else {
        return not_found(state, vm_ref);
    };
    let upgrade = request.headers().get(header::UPGRADE);
    if !upgrade.is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(PROTOCOL.as_bytes())) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "attaching to a console needs the headers Connection: upgrade and Upgrade: {PROTOCOL}"
            ),
        );
    }
    let domain = domain_name(&vm_ref.namespace, &vm_ref.name);
    let session = match open(&state.libvirt, domain, force).await {
        Ok(session) => session,
        Err(e @ ConsoleError::NotRunning(_)) => {
            let message = format!("VM {vm_ref} is {:?}: {e}", vm.phase());
            return error(StatusCode::CONFLICT, message);
        }
        Err(e @ ConsoleError::Busy(_)) => {
            let message = format!("{e}: nodevirt admin attach --force {vm_ref}");
            return error(StatusCode::CONFLICT, message);
        }
        Err(ConsoleError::Libvirt(e)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, crate::k8s::error_chain(&e));
        }
    };
    let uid = vm.uid().unwrap_or_default();
    let replay = if check_uid(&uid, "uid").is_ok() {
        tail(&VmLayout::new(&state.state_dir, &uid).console_log()).await
    } else {
        Vec::new()
    };
    let vm_name = vm_ref.to_string();
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(io) => {
                tracing::info!(vm = %vm_name, force, "console session attached on the admin socket");
                bridge(TokioIo::new(io), &replay, session).await;
                tracing::info!(vm = %vm_name, "console session ended");
            }
            Err(e) => tracing::debug!(vm = %vm_name, error = %e, "console upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, PROTOCOL)],
    )
        .into_response()
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
    let input = session.input.clone();
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
