//! `nodevirt admin`: the client of a local agent's admin socket. Tables for people,
//! `--output json` for scripts (the same types the agent serves).

use std::path::PathBuf;

use hyper::Method;
use serde::Serialize;

use crate::admin::api::{
    Accepted, ConsoleTail, DEFAULT_CONSOLE_LINES, DEFAULT_SOCKET, DomainXml, Health, VmDetail,
    VmSummary,
};
use crate::admin::client::{ClientError, call};

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[arg(long, env = "NODEVIRT_ADMIN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
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
    /// Reconcile one VM now.
    Resync { vm: String },
    /// libvirt connection, hypervisor, watch state, version.
    Health,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0:?} is not NAMESPACE/NAME")]
    VmName(String),
}

fn vm_path(vm: &str, suffix: &str) -> Result<String, AdminCliError> {
    let (namespace, name) = vm
        .split_once('/')
        .ok_or_else(|| AdminCliError::VmName(vm.into()))?;
    let valid = |s: &str| crate::domain::names::check_dns_label(s, "vm").is_ok();
    if !valid(namespace) || !valid(name) {
        return Err(AdminCliError::VmName(vm.into()));
    }
    Ok(format!("/v1/vms/{namespace}/{name}{suffix}"))
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
    let socket = &args.socket;
    match &args.command {
        AdminCommand::Vms => {
            let vms: Vec<VmSummary> = call(socket, Method::GET, "/v1/vms").await?;
            print(args.output, &vms, vms_table);
        }
        AdminCommand::Show { vm } => {
            let detail: VmDetail = call(socket, Method::GET, &vm_path(vm, "")?).await?;
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
        AdminCommand::Xml { vm } => {
            let xml: DomainXml = call(socket, Method::GET, &vm_path(vm, "/xml")?).await?;
            print(args.output, &xml, |x| x.xml.clone());
        }
        AdminCommand::Console { vm, lines } => {
            let path = format!("{}?lines={lines}", vm_path(vm, "/console")?);
            let tail: ConsoleTail = call(socket, Method::GET, &path).await?;
            print(args.output, &tail, |t| {
                t.lines.iter().map(|l| format!("{l}\n")).collect()
            });
        }
        AdminCommand::Resync { vm } => {
            let accepted: Accepted = call(socket, Method::POST, &vm_path(vm, "/resync")?).await?;
            print(args.output, &accepted, |a| {
                format!("{} requested\n", a.accepted)
            });
        }
        AdminCommand::Health => {
            let health: Health = call(socket, Method::GET, "/v1/health").await?;
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
