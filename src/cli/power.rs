//! `nodevirt start|stop NAME [-n NS] [--kubeconfig F] [--context C]`: virtctl's verbs,
//! patching an OfflineVirtualMachine's spec.running as the API text's
//! `kubectl patch ... --type merge` does. As virtctl, starting a running one or stopping a
//! stopped one is an error ("VirtualMachine 'NAME' is already running"), exit status 1.

use std::path::PathBuf;

use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::api::OfflineVirtualMachine;
use crate::k8s::{ClientError, user_client};

#[derive(Debug, clap::Args)]
pub struct PowerArgs {
    /// The OfflineVirtualMachine (for start and stop) or VirtualMachine (console, vnc).
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// A kubeconfig file, as kubectl's; without it $KUBECONFIG, ~/.kube/config or in-cluster.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use, as kubectl's; without it the current one.
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("VirtualMachine '{name}' is already {state}")]
    Already { name: String, state: &'static str },
    #[error("reading OfflineVirtualMachine {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting spec.running of OfflineVirtualMachine {namespace}/{name}")]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub async fn set_running(args: PowerArgs, running: bool) -> Result<(), PowerError> {
    let client = user_client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let api: Api<OfflineVirtualMachine> = Api::namespaced(client, &args.namespace);
    let ovm = api
        .get(&args.name)
        .await
        .map_err(|source| PowerError::Read {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            source,
        })?;
    if ovm.spec.running == running {
        return Err(PowerError::Already {
            name: args.name,
            state: if running { "running" } else { "stopped" },
        });
    }
    let patch = serde_json::json!({ "spec": { "running": running } });
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| PowerError::Patch {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            source,
        })?;
    println!(
        "offlinevirtualmachine.kubevirt.io/{} {}",
        args.name,
        if running { "started" } else { "stopped" }
    );
    Ok(())
}
