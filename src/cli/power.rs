//! `nodevirt start|stop NAME [-n NS]`: virtctl's verbs, patching an OfflineVirtualMachine's
//! spec.running as the API text's `kubectl patch ... --type merge` does.

use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::api::OfflineVirtualMachine;
use crate::k8s::{ClientError, client};

#[derive(Debug, clap::Args)]
pub struct PowerArgs {
    /// The OfflineVirtualMachine.
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("setting spec.running of OfflineVirtualMachine {namespace}/{name}")]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub async fn set_running(args: PowerArgs, running: bool) -> Result<(), PowerError> {
    let api: Api<OfflineVirtualMachine> = Api::namespaced(client(None).await?, &args.namespace);
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
