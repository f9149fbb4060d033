//! What the agent serves on its metrics port (`crate::metrics_port`): `/metrics` (its own
//! metrics and the node's VMs'), `/healthz` (the process answers) and `/readyz` (libvirt
//! answers and the VM watch has listed once), for the DaemonSet's probes.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::VirtualMachine;
use crate::domain::names::domain_name;
use crate::hypervisor::Libvirt;
use crate::metrics::{AgentMetrics, VmUsage};
use crate::metrics_port::{Exposition, Probe};

pub struct Endpoint {
    pub metrics: Arc<AgentMetrics>,
    pub libvirt: Arc<Libvirt>,
    pub vms: Store<VirtualMachine>,
    pub node: String,
    /// True once the VM watch has listed every VM of the node.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Exposition for Endpoint {
    async fn metrics(&self) -> Result<String, std::fmt::Error> {
        let stats = match self.libvirt.run(|lv| lv.running_stats()).await {
            Ok(stats) => stats,
            Err(e) => {
                self.metrics.libvirt_errors.inc();
                tracing::warn!(error = %crate::k8s::error_chain(&e), "metrics: cannot read domain stats");
                Default::default()
            }
        };
        // The node's VMs come from the watch cache; libvirt only adds the stats of those
        // whose domain runs (its name is `<namespace>_<name>`).
        let vms = self.vms.state();
        let usage: Vec<VmUsage> = vms
            .iter()
            .filter_map(|vm| {
                let (namespace, name) = (vm.namespace()?, vm.name_any());
                let stats = stats.get(&domain_name(&namespace, &name))?.clone();
                Some(VmUsage {
                    namespace,
                    name,
                    stats,
                })
            })
            .collect();
        let phases: Vec<_> = vms.iter().map(|vm| vm.phase()).collect();
        self.metrics.render(&self.node, &usage, &phases)
    }

    async fn health(&self) -> Probe {
        Probe {
            ok: true,
            body: "ok\n".into(),
        }
    }

    async fn readiness(&self) -> Probe {
        let alive = self
            .libvirt
            .run(|lv| Ok(lv.is_alive()))
            .await
            .unwrap_or(false);
        let synced = *self.synced.borrow();
        Probe {
            ok: alive && synced,
            body: format!("libvirt: {alive}\nwatch synced: {synced}\n"),
        }
    }
}
