//! Who may use the admin socket. The socket's file mode (0600, or 0660 with a group) is the
//! first gate; the peer's credentials, read from the connection itself (SO_PEERCRED), are the
//! second: root, or a member of the configured group. A refused peer gets 403 naming why.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::UnixStream;

/// The credentials of the process at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// The credentials of the process at the other end of `stream`, read once when the
    /// connection is accepted.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            // Unknown peers are nobody, and nobody is refused.
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Who is let in besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// Members of this group (primary or supplementary) may use the socket.
    pub group: Option<u32>,
}

impl Access {
    /// `Err` says why the peer is refused.
    pub fn check(&self, peer: &Peer, supplementary: &[u32]) -> Result<(), String> {
        if peer.uid == 0 {
            return Ok(());
        }
        match self.group {
            Some(gid) if peer.gid == gid || supplementary.contains(&gid) => Ok(()),
            Some(gid) => Err(format!(
                "uid {} is neither root nor in group {gid}, the admin socket's group",
                peer.uid
            )),
            None => Err(format!(
                "uid {} is not root, and no --admin-group lets others in",
                peer.uid
            )),
        }
    }
}

/// The supplementary groups in a `/proc/<pid>/status` text ("Groups:\t4 27 1000").
pub fn groups_from_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn supplementary_groups(pid: Option<i32>) -> Vec<u32> {
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .map(|status| groups_from_status(&status))
        .unwrap_or_default()
}

/// Middleware: lets the request through only if the connection's peer passes `access`.
pub async fn require_access(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    // Supplementary groups only matter for non-root peers when a group is configured.
    let groups = if peer.uid != 0 && access.group.is_some() {
        supplementary_groups(peer.pid)
    } else {
        Vec::new()
    };
    match access.check(&peer, &groups) {
        Ok(()) => next.run(request).await,
        Err(why) => {
            tracing::warn!(uid = peer.uid, pid = ?peer.pid, "admin socket: refused: {why}");
            let body = super::api::ErrorBody { error: why };
            (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
        }
    }

    #[test]
    fn root_always_and_others_only_through_the_group() {
        let closed = Access::default();
        assert!(closed.check(&peer(0, 0), &[]).is_ok());
        let err = closed.check(&peer(1000, 1000), &[]).unwrap_err();
        assert!(
            err.contains("uid 1000") && err.contains("--admin-group"),
            "{err}"
        );
        let group = Access { group: Some(990) };
        assert!(group.check(&peer(1000, 990), &[]).is_ok());
        assert!(group.check(&peer(1000, 1000), &[4, 990]).is_ok());
        let err = group.check(&peer(1000, 1000), &[4]).unwrap_err();
        assert!(err.contains("group 990"), "{err}");
        assert!(group.check(&peer(u32::MAX, u32::MAX), &[]).is_err());
    }

    #[test]
    fn supplementary_groups_are_read_from_proc_status() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 990 \nNgid:\t0\n";
        assert_eq!(groups_from_status(status), vec![4, 27, 990]);
        assert_eq!(
            groups_from_status("Name:\tsh\nGroups:\t\n"),
            Vec::<u32>::new()
        );
        assert_eq!(groups_from_status(""), Vec::<u32>::new());
    }
}
