//! The nodevirt binary: CLI parsing and wiring only.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nodevirt::agent::{self, AgentArgs};
use nodevirt::cli::admin::{self as admin_cli, AdminArgs};
use nodevirt::cli::power::{PowerArgs, set_running};
use nodevirt::cli::render::{self, RenderArgs};
use nodevirt::controller::{self, ControllerArgs};
use nodevirt::hypervisor::choice::{self, LibvirtArgs};
use nodevirt::k8s::error_chain;

/// Runs KubeVirt v1alpha1 VirtualMachines on libvirt.
#[derive(Debug, Parser)]
#[command(name = "nodevirt", version, about)]
struct Cli {
    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, global = true, value_enum, env = "NODEVIRT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Whatever RUST_LOG says: kube's client logs a whole response body when it cannot decode
/// it (at warn) and bodies of other answers (at debug and trace), and a body is an object:
/// a VM's inline user-data, a Secret. Errors it returns still reach our own log lines.
const NO_BODIES: &str = "kube_client::client=error";
/// rustls' certificate verifier logs each failed verification at ERROR, twice per attempt,
/// with what our own line about the failed request already says.
const NO_VERIFIER_NOISE: &str = "rustls_platform_verifier=off";

/// For the long-running commands (agent, controller) only: their logs go to stdout, as any
/// container's do (`kubectl logs`, journald); RUST_LOG filters them (default info). The
/// one-shot commands log nothing and print their errors on stderr.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(NO_BODIES.parse().expect("a valid directive"))
        .add_directive(NO_VERIFIER_NOISE.parse().expect("a valid directive"));
    // Colours only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the libvirt domain XML of a VirtualMachine manifest, offline.
    Render(RenderArgs),
    /// Print the CustomResourceDefinitions of the kubevirt.io/v1alpha1 API.
    Crds,
    /// Run the node agent: watch this node's VMs and run them on libvirt.
    Agent(AgentArgs),
    /// Run the cluster-wide controller: holder pods for kube-scheduler, presets, OfflineVirtualMachines, ReplicaSets.
    Controller(ControllerArgs),
    /// Print the domain type the agent would use with these flags (kvm or qemu), decided as
    /// the agent decides it.
    Hypervisor(LibvirtArgs),
    /// Ask a local agent through its admin socket (debugging a node).
    Admin(AdminArgs),
    /// Start an OfflineVirtualMachine (set spec.running to true).
    Start(PowerArgs),
    /// Stop an OfflineVirtualMachine (set spec.running to false).
    Stop(PowerArgs),
    /// A VM's serial console through the Kubernetes API (Ctrl-] leaves).
    Console(nodevirt::cli::console::ConsoleArgs),
    /// A VM's VNC server through the Kubernetes API, on a local port for any VNC viewer.
    Vnc(nodevirt::cli::console::VncArgs),
}

/// Exit code for input the user must fix (a bad manifest or flag).
const EXIT_INVALID_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto stack for the whole process (kube and the registry client): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Agent(args) => {
            init_tracing(cli.log_format);
            run_async(agent::run(args))
        }
        Command::Controller(args) => {
            init_tracing(cli.log_format);
            run_async(controller::run(args))
        }
        Command::Hypervisor(args) => match choice::decide_for(&args) {
            Ok(decision) => {
                println!("{}", decision.domain_type);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: choosing the hypervisor: {}", error_chain(&err));
                ExitCode::FAILURE
            }
        },
        Command::Admin(args) => run_async(admin_cli::run(args)),
        // virtctl's words: "Error: VirtualMachine 'x' is already running".
        Command::Start(args) => run_async_saying("Error", set_running(args, true)),
        Command::Stop(args) => run_async_saying("Error", set_running(args, false)),
        Command::Console(args) => run_async_saying("Error", nodevirt::cli::console::console(args)),
        Command::Vnc(args) => run_async_saying("Error", nodevirt::cli::console::vnc(args)),
        Command::Render(args) => match render::run(&args) {
            Ok(xml) => {
                print!("{xml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {}", error_chain(&err));
                ExitCode::from(EXIT_INVALID_INPUT)
            }
        },
        Command::Crds => match nodevirt::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: printing the CRDs: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_async<E: std::error::Error>(
    future: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    run_async_saying("error", future)
}

/// Runs `future`; an error is printed as "<prefix>: <what failed, and why>", exit status 1.
fn run_async_saying<E: std::error::Error>(
    prefix: &str,
    future: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", error_chain(&err));
            eprintln!("{prefix}: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
