//! `nodevirt admin`: the client of a local agent's admin socket. Tables for people,
//! `--output json` for scripts (the same types the agent serves).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::terminal;

use crate::admin::api::{
    Accepted, ConsoleTail, DEFAULT_CONSOLE_LINES, DEFAULT_SOCKET, DomainXml, Health, VmDetail,
    VmSummary,
};
use crate::admin::attach;
use crate::admin::client::{ClientError, call, upgrade};
use crate::admin::route::{Route, RouteError, VmRef};

/// Flags go before or after the subcommand; the socket's carries the agent's own name.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[arg(
        long = "admin-socket",
        visible_alias = "socket",
        global = true,
        env = "NODEVIRT_ADMIN_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub admin_socket: PathBuf,
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// The node's VMs: phase, domain state, IP.
    Vms,
    /// One VM (NAMESPACE/NAME) with its last events.
    Show { vm: String },
    /// One VM's live domain XML.
    Xml { vm: String },
    /// The tail of one VM's serial console log.
    Console {
        vm: String,
        #[arg(long, default_value_t = DEFAULT_CONSOLE_LINES)]
        lines: usize,
    },
    /// One VM's serial console, interactive (Ctrl-] leaves); the last 4 KiB of its output
    /// first. One session at a time, as `virsh console`.
    Attach {
        vm: String,
        /// Take the console over from another session (which ends).
        #[arg(long)]
        force: bool,
    },
    /// One VM's screen for any VNC viewer: listens on 127.0.0.1 (the port printed) until
    /// interrupted, each viewer a new connection to the guest's VNC server.
    Vnc {
        vm: String,
        /// The local port; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Reconcile one VM now.
    Resync { vm: String },
    /// libvirt connection, hypervisor, watch state, version.
    Health,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("reading the VM argument")]
    VmName(#[source] RouteError),
    #[error("listening on 127.0.0.1:{port} for VNC viewers")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the console session of {vm}")]
    Console {
        vm: String,
        #[source]
        source: std::io::Error,
    },
}

/// The request of a command.
fn route(command: &AdminCommand) -> Result<Route, AdminCliError> {
    let vm = |arg: &str| VmRef::parse(arg).map_err(AdminCliError::VmName);
    Ok(match command {
        AdminCommand::Vms => Route::ListVms,
        AdminCommand::Show { vm: arg } => Route::ShowVm(vm(arg)?),
        AdminCommand::Xml { vm: arg } => Route::DomainXml(vm(arg)?),
        AdminCommand::Console { vm: arg, lines } => Route::Console {
            vm: vm(arg)?,
            lines: *lines,
        },
        AdminCommand::Attach { vm: arg, force } => Route::Attach {
            vm: vm(arg)?,
            force: *force,
        },
        AdminCommand::Vnc { vm: arg, .. } => Route::Vnc(vm(arg)?),
        AdminCommand::Resync { vm: arg } => Route::Resync(vm(arg)?),
        AdminCommand::Health => Route::Health,
    })
}

fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => print!("{}", table(value)),
    }
}

fn vms_table(vms: &Vec<VmSummary>) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<10} {:<22} {}\n",
        "NAMESPACE", "NAME", "PHASE", "DOMAIN", "IP"
    );
    for vm in vms {
        out.push_str(&format!(
            "{:<16} {:<24} {:<10} {:<22} {}\n",
            vm.namespace,
            vm.name,
            vm.phase,
            vm.domain_state,
            vm.ip.as_deref().unwrap_or("-")
        ));
    }
    out
}

pub async fn run(args: AdminArgs) -> Result<(), AdminCliError> {
    let socket = &args.admin_socket;
    let route = route(&args.command)?;
    match &args.command {
        AdminCommand::Vms => {
            let vms: Vec<VmSummary> = call(socket, &route).await?;
            print(args.output, &vms, vms_table);
        }
        AdminCommand::Show { .. } => {
            let detail: VmDetail = call(socket, &route).await?;
            print(args.output, &detail, |d| {
                let mut out = vms_table(&vec![d.vm.clone()]);
                out.push_str(&format!(
                    "uid: {}\nnode: {}\ndomain: {}\nevents:\n",
                    d.vm.uid, d.node, d.domain
                ));
                for e in &d.events {
                    out.push_str(&format!(
                        "  {}  {:<8} {:<14} {}\n",
                        e.time, e.kind, e.reason, e.message
                    ));
                }
                out
            });
        }
        AdminCommand::Xml { .. } => {
            let xml: DomainXml = call(socket, &route).await?;
            print(args.output, &xml, |x| x.xml.clone());
        }
        AdminCommand::Console { .. } => {
            let tail: ConsoleTail = call(socket, &route).await?;
            print(args.output, &tail, |t| {
                t.lines.iter().map(|l| format!("{l}\n")).collect()
            });
        }
        AdminCommand::Attach { vm, .. } => {
            let io = upgrade(socket, &route, attach::CONSOLE_PROTOCOL).await?;
            eprintln!("Connected to {vm}'s serial console (Ctrl-] leaves).\r");
            let console = |source| AdminCliError::Console {
                vm: vm.clone(),
                source,
            };
            let mut keyboard = terminal::Keyboard::open().map_err(console)?;
            let ended = terminal::session(io, &mut keyboard)
                .await
                .map_err(console)?;
            drop(keyboard);
            if ended == terminal::Ended::Closed {
                eprintln!(
                    "\r\nThe console session of {vm} ended: the guest stopped, or another session took it over (--force)."
                );
            }
        }
        AdminCommand::Vnc { vm, port } => vnc(socket, &route, vm, *port).await?,
        AdminCommand::Resync { .. } => {
            let accepted: Accepted = call(socket, &route).await?;
            print(args.output, &accepted, |a| {
                format!("{} requested\n", a.accepted)
            });
        }
        AdminCommand::Health => {
            let health: Health = call(socket, &route).await?;
            print(args.output, &health, |h| {
                format!(
                    "version: {}\nnode: {}\nhypervisor: {}\nlibvirt connected: {}\nwatch synced: {}\nvms: {}\n",
                    h.version, h.node, h.hypervisor, h.libvirt_connected, h.watch_synced, h.vms
                )
            });
        }
    }
    Ok(())
}

/// `nodevirt admin vnc`: every viewer that connects to the local port gets a connection of
/// its own to the guest's VNC server, through the admin socket.
async fn vnc(socket: &Path, route: &Route, vm: &str, port: u16) -> Result<(), AdminCliError> {
    let listen = |source| AdminCliError::Listen { port, source };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    // Checked once before the port is printed, so a VM that is not running fails at once.
    drop(upgrade(socket, route, attach::VNC_PROTOCOL).await?);
    println!("VNC of {vm} on {local} (vncviewer {local}); Ctrl-C stops");
    loop {
        let (mut viewer, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, mostly: wait for some to close rather than spin.
                eprintln!("accepting a VNC viewer on {local}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let (socket, route, vm) = (socket.to_path_buf(), route.clone(), vm.to_string());
        tokio::spawn(async move {
            match upgrade(&socket, &route, attach::VNC_PROTOCOL).await {
                Ok(mut server) => {
                    let _ = tokio::io::copy_bidirectional(&mut viewer, &mut server).await;
                }
                Err(e) => eprintln!("VNC viewer {peer} of {vm}: {}", crate::k8s::error_chain(&e)),
            }
        });
    }
}
