//! `nodevirt console NAME` and `nodevirt vnc NAME`: a VM's serial console and screen through
//! the Kubernetes API (the aggregated API `subresources.kubevirt.io`, served by the
//! controller), with the user's own credentials and RBAC, as `virtctl console|vnc`.
//!
//! Each session is a websocket to the API server, kept alive by pings every
//! `--keepalive-seconds` ([`crate::tunnel`]). A refusal (RBAC, a VM not Running, a console
//! held by another session) is the API server's Status message, in one line; a connection
//! that drops is reported, and with `--reconnect` opened again.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;

use crate::cli::power::PowerArgs;
use crate::cli::terminal;
use crate::k8s::{ClientError, user_client};
use crate::tunnel::{self, Ended, Keepalive};

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub target: PowerArgs,
    /// Take the console over from another session instead of being refused.
    #[arg(long)]
    pub force: bool,
    /// When the connection drops, connect again (the guest's output meanwhile is replayed).
    #[arg(long)]
    pub reconnect: bool,
    /// Seconds between websocket pings.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_seconds: u64,
}

#[derive(Debug, clap::Args)]
pub struct VncArgs {
    #[command(flatten)]
    pub target: PowerArgs,
    /// The local port viewers connect to (127.0.0.1); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Only print the address and wait for viewers (no viewer is started).
    #[arg(long)]
    pub proxy_only: bool,
    /// Seconds between websocket pings.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The API server's (or the controller's) answer, which names what is wrong.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("connecting to the {what} of VM {vm}")]
    Connect {
        what: &'static str,
        vm: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server did not switch the {what} of VM {vm} to a websocket")]
    NotUpgraded { what: &'static str, vm: String },
    #[error("the connection to the console of VM {vm} dropped: {why}")]
    Dropped { vm: String, why: Ended },
    #[error("the console of VM {vm}")]
    Terminal {
        vm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on 127.0.0.1:{port} for VNC viewers")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// The path of `subresource` of the VM, with its query.
pub fn path(namespace: &str, name: &str, subresource: &str, force: bool) -> String {
    let query = if force { "?force=true" } else { "" };
    format!(
        "/apis/subresources.kubevirt.io/v1alpha1/namespaces/{namespace}/virtualmachines/{name}/{subresource}{query}"
    )
}

/// The message of a Kubernetes Status body, or the status line.
fn refusal(status: http::StatusCode, body: &[u8]) -> ConsoleCliError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {text}")
            }
        });
    ConsoleCliError::Refused {
        status: status.as_u16(),
        message,
    }
}

/// One websocket session to `subresource`, as a byte stream.
async fn open(
    client: &kube::Client,
    target: &PowerArgs,
    subresource: &'static str,
    force: bool,
    keepalive: Keepalive,
) -> Result<(DuplexStream, tokio::sync::oneshot::Receiver<Ended>), ConsoleCliError> {
    let vm = format!("{}/{}", target.namespace, target.name);
    let key = tunnel::generate_key();
    let mut request = http::Request::get(path(&target.namespace, &target.name, subresource, force))
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| ConsoleCliError::Connect {
            what: subresource,
            vm: vm.clone(),
            source: kube::Error::HttpError(e),
        })?;
    tunnel::request_headers(request.headers_mut(), &key);
    let response = client
        .send(request)
        .await
        .map_err(|source| ConsoleCliError::Connect {
            what: subresource,
            vm: vm.clone(),
            source,
        })?;
    let status = response.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        return Err(refusal(status, &body));
    }
    if !tunnel::accepts(response.headers(), &key) {
        return Err(ConsoleCliError::NotUpgraded {
            what: subresource,
            vm,
        });
    }
    let upgraded =
        hyper::upgrade::on(response)
            .await
            .map_err(|_| ConsoleCliError::NotUpgraded {
                what: subresource,
                vm: vm.clone(),
            })?;
    let ws = tunnel::websocket(TokioIo::new(upgraded), tunnel::Role::Client).await;
    Ok(tunnel::pipe(ws, keepalive))
}

pub async fn console(args: ConsoleArgs) -> Result<(), ConsoleCliError> {
    let target = &args.target;
    let vm = format!("{}/{}", target.namespace, target.name);
    let client = user_client(target.kubeconfig.as_deref(), target.context.as_deref()).await?;
    let keepalive = Keepalive {
        interval: Duration::from_secs(args.keepalive_seconds),
    };
    let (mut io, mut ended) = open(&client, target, "console", args.force, keepalive).await?;
    let terminal_error = |source| ConsoleCliError::Terminal {
        vm: vm.clone(),
        source,
    };
    let mut keyboard = terminal::Keyboard::open().map_err(terminal_error)?;
    eprintln!("Connected to {vm}'s serial console (Ctrl-] leaves).\r");
    loop {
        let how = terminal::session(io, &mut keyboard)
            .await
            .map_err(terminal_error)?;
        if how == terminal::Ended::Detached {
            return Ok(());
        }
        match ended.await.unwrap_or(Ended::Closed) {
            Ended::Closed | Ended::Local => {
                eprintln!(
                    "\r\nThe console session of {vm} ended: the guest stopped, or another session took it over (--force).\r"
                );
                return Ok(());
            }
            why if args.reconnect => {
                eprintln!("\r\nThe connection to {vm} dropped ({why}); reconnecting.\r");
                (io, ended) = reconnect(&client, target, keepalive).await;
            }
            why => return Err(ConsoleCliError::Dropped { vm, why }),
        }
    }
}

/// Tries again every second until a session opens (the user leaves with Ctrl-C).
async fn reconnect(
    client: &kube::Client,
    target: &PowerArgs,
    keepalive: Keepalive,
) -> (DuplexStream, tokio::sync::oneshot::Receiver<Ended>) {
    loop {
        match open(client, target, "console", false, keepalive).await {
            Ok(session) => {
                eprintln!("Reconnected.\r");
                return session;
            }
            Err(e) => {
                eprintln!("Still not connected: {}\r", crate::k8s::error_chain(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

pub async fn vnc(args: VncArgs) -> Result<(), ConsoleCliError> {
    let target = args.target;
    let vm = format!("{}/{}", target.namespace, target.name);
    let client = user_client(target.kubeconfig.as_deref(), target.context.as_deref()).await?;
    let keepalive = Keepalive {
        interval: Duration::from_secs(args.keepalive_seconds),
    };
    let listen = |source| ConsoleCliError::Listen {
        port: args.port,
        source,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    // Once before the address is printed, so that a refusal is said at once.
    drop(open(&client, &target, "vnc", false, keepalive).await?);
    println!("VNC of {vm} on {local}");
    if !args.proxy_only {
        start_viewer(local);
    }
    let target = std::sync::Arc::new(target);
    loop {
        let (mut viewer, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accepting a VNC viewer on {local}: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (client, target, vm) = (client.clone(), std::sync::Arc::clone(&target), vm.clone());
        tokio::spawn(async move {
            match open(&client, &target, "vnc", false, keepalive).await {
                Ok((mut server, ended)) => {
                    let _ = tokio::io::copy_bidirectional(&mut viewer, &mut server).await;
                    if let Ok(why @ (Ended::Silent(_) | Ended::Broken(_))) = ended.await {
                        eprintln!("VNC viewer {peer} of {vm}: the connection dropped: {why}");
                    }
                }
                Err(e) => eprintln!("VNC viewer {peer} of {vm}: {}", crate::k8s::error_chain(&e)),
            }
        });
    }
}

/// A VNC viewer on PATH (remote-viewer or vncviewer), started on `local`; else a hint.
fn start_viewer(local: std::net::SocketAddr) {
    let candidates = [
        ("remote-viewer", format!("vnc://{local}")),
        ("vncviewer", format!("{}::{}", local.ip(), local.port())),
    ];
    for (viewer, target) in candidates {
        if std::process::Command::new(viewer)
            .arg(&target)
            .spawn()
            .is_ok()
        {
            eprintln!("started {viewer} {target}");
            return;
        }
    }
    eprintln!("no remote-viewer or vncviewer found: point any VNC viewer at {local}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_are_the_aggregated_apis() {
        assert_eq!(
            path("dev", "web", "console", true),
            "/apis/subresources.kubevirt.io/v1alpha1/namespaces/dev/virtualmachines/web/console?force=true"
        );
        assert!(path("dev", "web", "vnc", false).ends_with("/virtualmachines/web/vnc"));
    }

    #[test]
    fn a_refusal_is_the_status_message_in_one_line() {
        let body = br#"{"kind":"Status","message":"virtualmachines.subresources.kubevirt.io \"web\" is forbidden: User \"bob\" cannot get resource \"virtualmachines/console\"","code":403}"#;
        let e = refusal(http::StatusCode::FORBIDDEN, body);
        assert!(e.to_string().contains("virtualmachines/console"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = refusal(http::StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(e.to_string(), "503 Service Unavailable");
    }
}
