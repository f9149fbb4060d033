//! Prometheus metrics of the agent, in the text format on `--metrics-addr`.
//!
//! Two kinds:
//! - the agent's own (`nodevirt_*`): counters and histograms updated where work completes;
//! - per VM (`kubevirt_vmi_*`, KubeVirt's names so dashboards carry over): built fresh at each
//!   scrape from libvirt's counters of the running domains and the watch cache, so a deleted
//!   VM's series are simply gone. A scrape costs O(VMs) libvirt calls on the blocking pool and
//!   never holds anything a reconcile needs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::api::Phase;
use crate::hypervisor::stats::DomainCounters;
use crate::server::HttpMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    namespace: String,
    name: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    node: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HypervisorLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The counters of one VM's running domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmUsage {
    pub namespace: String,
    pub name: String,
    pub counters: DomainCounters,
}

/// The agent's own metrics; cheap to update from any task.
pub struct AgentMetrics {
    registry: Registry,
    /// Reconciles by result: ok, error.
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_seconds: Histogram,
    /// Failed reconcile steps, by step (define, start, write_status, ...).
    pub reconcile_errors: Family<StepLabel, Counter>,
    /// From a VM's creation to its domain running.
    pub creation_to_running_seconds: Histogram,
    pub libvirt_errors: Counter,
    /// 1 while connected to libvirtd.
    pub libvirt_connected: Gauge,
    /// Connections opened to libvirtd after the first one.
    pub libvirt_reconnects: Counter,
    /// Errors of the VM watch (each is followed by a re-list with backoff).
    pub watch_errors: Counter,
    /// Requests sent to the API server, by HTTP method.
    pub api_requests: Family<MethodLabel, Counter>,
    /// registryDisk fetches by result: pulled, cached.
    pub registry_fetches: Family<ResultLabel, Counter>,
    /// 1 for the domain type in use (kvm, qemu), or for "unknown" before it is decided.
    hypervisor: Family<HypervisorLabel, Gauge>,
    /// The metrics port's and the admin socket's connections, and /metrics' token reviews.
    pub http: HttpMetrics,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconcile_errors: Family::default(),
            creation_to_running_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            libvirt_errors: Counter::default(),
            libvirt_connected: Gauge::default(),
            libvirt_reconnects: Counter::default(),
            watch_errors: Counter::default(),
            registry_fetches: Family::default(),
            api_requests: Family::default(),
            hypervisor: Family::default(),
            http: HttpMetrics::default(),
        };
        metrics.set_hypervisor("unknown");
        registry.register(
            "nodevirt_reconciles",
            "VM reconciles by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "nodevirt_reconcile_duration_seconds",
            "Time one VM reconcile took",
            metrics.reconcile_seconds.clone(),
        );
        registry.register(
            "nodevirt_reconcile_errors",
            "Failed steps of VM reconciles, by step",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "nodevirt_vm_creation_to_running_seconds",
            "Seconds from a VM's creation to its domain running",
            metrics.creation_to_running_seconds.clone(),
        );
        registry.register(
            "nodevirt_libvirt_errors",
            "Failed libvirt calls",
            metrics.libvirt_errors.clone(),
        );
        registry.register(
            "nodevirt_libvirt_connected",
            "1 while the agent is connected to libvirtd",
            metrics.libvirt_connected.clone(),
        );
        registry.register(
            "nodevirt_libvirt_reconnects",
            "Connections to libvirtd opened after the first one",
            metrics.libvirt_reconnects.clone(),
        );
        registry.register(
            "nodevirt_watch_errors",
            "Errors of the VM watch",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "nodevirt_registry_disk_fetches",
            "registryDisk images by result: pulled or cached",
            metrics.registry_fetches.clone(),
        );
        registry.register(
            "nodevirt_api_requests",
            "Requests the agent sent to the Kubernetes API server, by HTTP method",
            metrics.api_requests.clone(),
        );
        registry.register(
            "nodevirt_agent_hypervisor",
            "The domain type the agent defines domains with (kvm, qemu; unknown until decided)",
            metrics.hypervisor.clone(),
        );
        metrics.http.register(&mut registry);
        registry.register(
            "nodevirt_build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Makes `name` the one hypervisor series with value 1.
    pub fn set_hypervisor(&self, name: &'static str) {
        self.hypervisor.clear();
        self.hypervisor
            .get_or_create(&HypervisorLabel { r#type: name })
            .set(1);
    }

    /// The whole exposition: the agent's metrics, then the per-VM ones of this scrape.
    pub fn render(
        &self,
        node: &str,
        usage: &[VmUsage],
        phases: &[Phase],
    ) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &per_vm_registry(node, usage, phases))?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

fn per_vm_registry(node: &str, usage: &[VmUsage], phases: &[Phase]) -> Registry {
    type FloatCounter = Counter<f64, AtomicU64>;
    let mut registry = Registry::default();
    let vcpu = Family::<VmLabels, FloatCounter>::default();
    let resident = Family::<VmLabels, Gauge>::default();
    let rx = Family::<VmLabels, Counter>::default();
    let tx = Family::<VmLabels, Counter>::default();
    let read = Family::<VmLabels, Counter>::default();
    let write = Family::<VmLabels, Counter>::default();
    for u in usage {
        let labels = VmLabels {
            namespace: u.namespace.clone(),
            name: u.name.clone(),
            node: node.to_string(),
        };
        let c = &u.counters;
        vcpu.get_or_create(&labels).inc_by(c.cpu_nanos as f64 / 1e9);
        resident.get_or_create(&labels).set(c.resident_bytes as i64);
        rx.get_or_create(&labels).inc_by(c.network_rx_bytes);
        tx.get_or_create(&labels).inc_by(c.network_tx_bytes);
        read.get_or_create(&labels).inc_by(c.storage_read_bytes);
        write.get_or_create(&labels).inc_by(c.storage_write_bytes);
    }
    let phase_count = Family::<PhaseLabels, Gauge>::default();
    for phase in phases {
        let labels = PhaseLabels {
            node: node.to_string(),
            phase: format!("{phase:?}").to_lowercase(),
        };
        phase_count.get_or_create(&labels).inc();
    }
    registry.register(
        "kubevirt_vmi_vcpu_seconds",
        "CPU time the VM's vCPUs used",
        vcpu,
    );
    registry.register(
        "kubevirt_vmi_memory_resident_bytes",
        "Resident memory of the VM's QEMU",
        resident,
    );
    registry.register(
        "kubevirt_vmi_network_receive_bytes",
        "Bytes the VM received",
        rx,
    );
    registry.register(
        "kubevirt_vmi_network_transmit_bytes",
        "Bytes the VM sent",
        tx,
    );
    registry.register(
        "kubevirt_vmi_storage_read_traffic_bytes",
        "Bytes the VM read from its disks",
        read,
    );
    registry.register(
        "kubevirt_vmi_storage_write_traffic_bytes",
        "Bytes the VM wrote to its disks",
        write,
    );
    registry.register(
        "kubevirt_vmi_phase_count",
        "VMs of this node by phase",
        phase_count,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_vm_series_use_kubevirt_names_and_labels() {
        let metrics = AgentMetrics::new();
        metrics
            .reconciles
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        let usage = VmUsage {
            namespace: "ns".into(),
            name: "vm".into(),
            counters: DomainCounters {
                cpu_nanos: 2_500_000_000,
                resident_bytes: 1 << 20,
                network_rx_bytes: 10,
                network_tx_bytes: 20,
                storage_read_bytes: 30,
                storage_write_bytes: 40,
            },
        };
        let text = metrics
            .render("n1", &[usage], &[Phase::Running, Phase::Running])
            .unwrap();
        for line in [
            r#"kubevirt_vmi_vcpu_seconds_total{namespace="ns",name="vm",node="n1"} 2.5"#,
            r#"kubevirt_vmi_memory_resident_bytes{namespace="ns",name="vm",node="n1"} 1048576"#,
            r#"kubevirt_vmi_network_receive_bytes_total{namespace="ns",name="vm",node="n1"} 10"#,
            r#"kubevirt_vmi_network_transmit_bytes_total{namespace="ns",name="vm",node="n1"} 20"#,
            r#"kubevirt_vmi_storage_read_traffic_bytes_total{namespace="ns",name="vm",node="n1"} 30"#,
            r#"kubevirt_vmi_storage_write_traffic_bytes_total{namespace="ns",name="vm",node="n1"} 40"#,
            r#"kubevirt_vmi_phase_count{node="n1",phase="running"} 2"#,
            r#"nodevirt_reconciles_total{result="ok"} 1"#,
            "nodevirt_build_info{version=",
            r#"nodevirt_agent_hypervisor{type="unknown"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let empty = metrics.render("n1", &[], &[]).unwrap();
        assert!(!empty.contains("name=\"vm\""), "a gone VM leaves no series");
        metrics.set_hypervisor("kvm");
        let decided = metrics.render("n1", &[], &[]).unwrap();
        let series: Vec<&str> = decided
            .lines()
            .filter(|l| l.starts_with("nodevirt_agent_hypervisor{"))
            .collect();
        assert_eq!(series, [r#"nodevirt_agent_hypervisor{type="kvm"} 1"#]);
    }
}
