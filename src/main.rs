//! The nodevirt binary: CLI parsing and wiring only.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nodevirt::cli::render::{self, RenderArgs};

/// Runs KubeVirt v1alpha1 VirtualMachines on libvirt.
#[derive(Debug, Parser)]
#[command(name = "nodevirt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the libvirt domain XML of a VirtualMachine manifest, offline.
    Render(RenderArgs),
    /// Print the CustomResourceDefinitions of the kubevirt.io/v1alpha1 API.
    Crds,
}

/// Exit code for input the user must fix (a bad manifest or flag).
const EXIT_INVALID_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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

/// "outer: inner: innermost", skipping sources already quoted by their parent.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}
