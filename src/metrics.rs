//! Prometheus metrics of the agent, in the text format on `--metrics-addr`.
//!
//! Two kinds:
//! - the agent's own (`nodevirt_*`): counters and histograms updated where work completes;
//! - per VM (`kubevirt_vmi_*`, with KubeVirt's names, meanings, units and labels, so its
//!   dashboards and alerts carry over; `docs/kubevirt_vmi_metrics.txt` lists them): built fresh
//!   at each scrape from one bulk-stats call to libvirt for every running domain
//!   (`hypervisor::stats`) and the watch cache, so a deleted VM's series are simply gone. A
//!   scrape never holds anything a reconcile needs.

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
use crate::hypervisor::PauseReason;
use crate::hypervisor::stats::{
    BALLOON_FIELDS, BLOCK_COUNTERS, CPU_FIELDS, Device, DomainStats, NET_COUNTERS,
};
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
struct VcpuLabels {
    namespace: String,
    name: String,
    node: String,
    id: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VcpuIdLabels {
    namespace: String,
    name: String,
    node: String,
    id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    namespace: String,
    name: String,
    node: String,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriveLabels {
    namespace: String,
    name: String,
    node: String,
    drive: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PausedLabels {
    namespace: String,
    name: String,
    node: String,
    reason: &'static str,
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

/// The stats of one VM's running domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmUsage {
    pub namespace: String,
    pub name: String,
    pub stats: DomainStats,
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

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

const NANOS_PER_SECOND: f64 = 1e9;
const NANOS_PER_MILLI: f64 = 1e6;
const KIB: f64 = 1024.0;

/// A per-VM family fed by one field of the bulk stats: KubeVirt's name (a counter's without
/// `_total`, which the encoder appends), its help, and the factor to its unit.
struct Series {
    name: &'static str,
    help: &'static str,
    field: &'static str,
    scale: f64,
}

const fn series(name: &'static str, help: &'static str, field: &'static str, scale: f64) -> Series {
    Series {
        name,
        help,
        field,
        scale,
    }
}

/// `cpu.*`: counters, seconds.
const CPU_SERIES: [Series; 3] = [
    series(
        "kubevirt_vmi_cpu_usage_seconds",
        "Total CPU time spent in all modes (vCPUs and hypervisor)",
        "time",
        1.0 / NANOS_PER_SECOND,
    ),
    series(
        "kubevirt_vmi_cpu_user_usage_seconds",
        "Total CPU time spent in user mode",
        "user",
        1.0 / NANOS_PER_SECOND,
    ),
    series(
        "kubevirt_vmi_cpu_system_usage_seconds",
        "Total CPU time spent in system mode",
        "system",
        1.0 / NANOS_PER_SECOND,
    ),
];

/// `balloon.*` read as gauges (bytes).
const MEMORY_GAUGES: [Series; 9] = [
    series(
        "kubevirt_vmi_memory_resident_bytes",
        "Resident set size of the process running the domain",
        "rss",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_actual_balloon_bytes",
        "Current balloon size in bytes",
        "current",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_domain_bytes_total",
        "The amount of memory in bytes allocated to the domain",
        "maximum",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_available_bytes",
        "Amount of usable memory as seen by the domain (balloon driver's view)",
        "available",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_unused_bytes",
        "The amount of memory left completely unused by the guest",
        "unused",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_usable_bytes",
        "Memory the balloon can reclaim without pushing the guest to swap",
        "usable",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_cached_bytes",
        "Memory used to cache I/O and available to be reclaimed",
        "disk_caches",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_swap_in_traffic_bytes_total",
        "The total amount of data read from swap space of the guest in bytes",
        "swap_in",
        KIB,
    ),
    series(
        "kubevirt_vmi_memory_swap_out_traffic_bytes_total",
        "The total amount of memory written out to swap space of the guest in bytes",
        "swap_out",
        KIB,
    ),
];

/// `balloon.*` page faults: counters.
const FAULT_COUNTERS: [Series; 2] = [
    series(
        "kubevirt_vmi_memory_pgmajfault",
        "The number of page faults when disk IO was required",
        "major_fault",
        1.0,
    ),
    series(
        "kubevirt_vmi_memory_pgminfault",
        "The number of page faults when disk IO was not required",
        "minor_fault",
        1.0,
    ),
];

/// `net.<n>.*`: counters per interface (libvirt's tap name).
const NET_SERIES: [Series; 8] = [
    series(
        "kubevirt_vmi_network_receive_bytes",
        "Total network traffic received in bytes",
        "rx.bytes",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_receive_packets",
        "Total network traffic received packets",
        "rx.pkts",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_receive_errors",
        "Total network received error packets",
        "rx.errs",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_receive_packets_dropped",
        "The total number of rx packets dropped on vNIC interfaces",
        "rx.drop",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_transmit_bytes",
        "Total network traffic transmitted in bytes",
        "tx.bytes",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_transmit_packets",
        "Total network traffic transmitted packets",
        "tx.pkts",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_transmit_errors",
        "Total network transmitted error packets",
        "tx.errs",
        1.0,
    ),
    series(
        "kubevirt_vmi_network_transmit_packets_dropped",
        "The total number of tx packets dropped on vNIC interfaces",
        "tx.drop",
        1.0,
    ),
];

/// `block.<n>.*`: counters per drive (its target, e.g. vda).
const BLOCK_SERIES: [Series; 8] = [
    series(
        "kubevirt_vmi_storage_read_traffic_bytes",
        "Total number of bytes read from storage",
        "rd.bytes",
        1.0,
    ),
    series(
        "kubevirt_vmi_storage_write_traffic_bytes",
        "Total number of written bytes",
        "wr.bytes",
        1.0,
    ),
    series(
        "kubevirt_vmi_storage_iops_read",
        "Total number of I/O read operations",
        "rd.reqs",
        1.0,
    ),
    series(
        "kubevirt_vmi_storage_iops_write",
        "Total number of I/O write operations",
        "wr.reqs",
        1.0,
    ),
    series(
        "kubevirt_vmi_storage_read_times_ms",
        "Total time (ms) spent on read operations",
        "rd.times",
        1.0 / NANOS_PER_MILLI,
    ),
    series(
        "kubevirt_vmi_storage_write_times_ms",
        "Total time (ms) spent on write operations",
        "wr.times",
        1.0 / NANOS_PER_MILLI,
    ),
    series(
        "kubevirt_vmi_storage_flush_requests",
        "Total storage flush requests",
        "fl.reqs",
        1.0,
    ),
    series(
        "kubevirt_vmi_storage_flush_times_ms",
        "Total time (ms) spent on cache flushing",
        "fl.times",
        1.0 / NANOS_PER_MILLI,
    ),
];

/// libvirt's vCPU state number as KubeVirt names it.
fn vcpu_state(state: Option<u64>) -> &'static str {
    match state {
        Some(1) => "RUNNING",
        Some(2) => "BLOCKED",
        _ => "OFFLINE",
    }
}

fn index_of(fields: &[&str], field: &str) -> usize {
    fields
        .iter()
        .position(|f| *f == field)
        .unwrap_or(usize::MAX)
}

/// One empty family per series of `table`, in its order.
fn families<L, M>(table: &[Series]) -> Vec<Family<L, M>>
where
    L: Clone + std::hash::Hash + Eq,
    M: Default,
{
    table.iter().map(|_| Family::default()).collect()
}

fn register<L, M>(registry: &mut Registry, table: &[Series], families: Vec<Family<L, M>>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    for (series, family) in table.iter().zip(families) {
        registry.register(series.name, series.help, family);
    }
}

/// Counters of each device of `devices` (interfaces or drives) into `families`.
fn device_counters<L: Clone + std::hash::Hash + Eq>(
    families: &[Family<L, FloatCounter>],
    table: &[Series],
    names: &[&str],
    devices: &[Device],
    labels: impl Fn(&Device) -> L,
) {
    for device in devices.iter().filter(|d| !d.name.is_empty()) {
        let labels = labels(device);
        for (family, series) in families.iter().zip(table) {
            if let Some(v) = device
                .values
                .get(index_of(names, series.field))
                .copied()
                .flatten()
            {
                family
                    .get_or_create(&labels)
                    .inc_by(v as f64 * series.scale);
            }
        }
    }
}

fn per_vm_registry(node: &str, usage: &[VmUsage], phases: &[Phase]) -> Registry {
    let mut registry = Registry::default();
    let cpu: Vec<Family<VmLabels, FloatCounter>> = families(&CPU_SERIES);
    let memory: Vec<Family<VmLabels, FloatGauge>> = families(&MEMORY_GAUGES);
    let faults: Vec<Family<VmLabels, FloatCounter>> = families(&FAULT_COUNTERS);
    let net: Vec<Family<InterfaceLabels, FloatCounter>> = families(&NET_SERIES);
    let block: Vec<Family<DriveLabels, FloatCounter>> = families(&BLOCK_SERIES);
    let memory_used = Family::<VmLabels, FloatGauge>::default();
    let vcpu_seconds = Family::<VcpuLabels, FloatCounter>::default();
    let vcpu_wait = Family::<VcpuIdLabels, FloatCounter>::default();
    let paused = Family::<PausedLabels, Gauge>::default();
    for u in usage {
        let vm = VmLabels {
            namespace: u.namespace.clone(),
            name: u.name.clone(),
            node: node.to_string(),
        };
        let s = &u.stats;
        for (family, series) in cpu.iter().zip(&CPU_SERIES) {
            if let Some(v) = s
                .cpu
                .get(index_of(&CPU_FIELDS, series.field))
                .copied()
                .flatten()
            {
                family.get_or_create(&vm).inc_by(v as f64 * series.scale);
            }
        }
        let balloon = |field: &str| {
            s.balloon
                .get(index_of(&BALLOON_FIELDS, field))
                .copied()
                .flatten()
        };
        for (family, series) in memory.iter().zip(&MEMORY_GAUGES) {
            if let Some(v) = balloon(series.field) {
                family.get_or_create(&vm).set(v as f64 * series.scale);
            }
        }
        // KubeVirt's "used": what the guest has, less what it leaves unused.
        if let (Some(available), Some(unused)) = (balloon("available"), balloon("unused")) {
            memory_used
                .get_or_create(&vm)
                .set(available.saturating_sub(unused) as f64 * KIB);
        }
        for (family, series) in faults.iter().zip(&FAULT_COUNTERS) {
            if let Some(v) = balloon(series.field) {
                family.get_or_create(&vm).inc_by(v as f64);
            }
        }
        for (id, vcpu) in s.vcpus.iter().enumerate() {
            let Some(time) = vcpu.time else { continue };
            vcpu_seconds
                .get_or_create(&VcpuLabels {
                    namespace: vm.namespace.clone(),
                    name: vm.name.clone(),
                    node: vm.node.clone(),
                    id: id.to_string(),
                    state: vcpu_state(vcpu.state),
                })
                .inc_by(time as f64 / NANOS_PER_SECOND);
            if let Some(wait) = vcpu.wait {
                vcpu_wait
                    .get_or_create(&VcpuIdLabels {
                        namespace: vm.namespace.clone(),
                        name: vm.name.clone(),
                        node: vm.node.clone(),
                        id: id.to_string(),
                    })
                    .inc_by(wait as f64 / NANOS_PER_SECOND);
            }
        }
        device_counters(&net, &NET_SERIES, &NET_COUNTERS, &s.interfaces, |d| {
            InterfaceLabels {
                namespace: vm.namespace.clone(),
                name: vm.name.clone(),
                node: vm.node.clone(),
                interface: d.name.clone(),
            }
        });
        device_counters(&block, &BLOCK_SERIES, &BLOCK_COUNTERS, &s.drives, |d| {
            DriveLabels {
                namespace: vm.namespace.clone(),
                name: vm.name.clone(),
                node: vm.node.clone(),
                drive: d.name.clone(),
            }
        });
        if let Some((state, reason)) = s.state
            && state == PauseReason::LIBVIRT_STATE
        {
            paused
                .get_or_create(&PausedLabels {
                    namespace: vm.namespace.clone(),
                    name: vm.name.clone(),
                    node: vm.node.clone(),
                    reason: PauseReason::from_libvirt(reason).name(),
                })
                .set(1);
        }
    }
    let phase_count = Family::<PhaseLabels, Gauge>::default();
    for phase in phases {
        let labels = PhaseLabels {
            node: node.to_string(),
            phase: format!("{phase:?}").to_lowercase(),
        };
        phase_count.get_or_create(&labels).inc();
    }
    register(&mut registry, &CPU_SERIES, cpu);
    registry.register(
        "kubevirt_vmi_vcpu_seconds",
        "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time)",
        vcpu_seconds,
    );
    registry.register(
        "kubevirt_vmi_vcpu_wait_seconds",
        "Amount of time spent by each vcpu while waiting on I/O",
        vcpu_wait,
    );
    register(&mut registry, &MEMORY_GAUGES, memory);
    registry.register(
        "kubevirt_vmi_memory_used_bytes",
        "Amount of used memory as seen by the domain",
        memory_used,
    );
    register(&mut registry, &FAULT_COUNTERS, faults);
    register(&mut registry, &NET_SERIES, net);
    register(&mut registry, &BLOCK_SERIES, block);
    registry.register(
        "kubevirt_vmi_phase_count",
        "Sum of VMs per phase and node",
        phase_count,
    );
    registry.register(
        "nodevirt_vmi_paused",
        "1 while libvirt holds the VM's vCPUs, with the reason of its Paused condition",
        paused,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paused VM with every field libvirt can give: one vCPU running, one blocked, a NIC
    /// and two drives.
    fn full_usage() -> VmUsage {
        let mut stats = DomainStats {
            state: Some((PauseReason::LIBVIRT_STATE, 1)),
            cpu: [Some(2_500_000_000), Some(1_000_000_000), Some(500_000_000)],
            balloon: std::array::from_fn(|i| Some(1024 * (i as u64 + 1))),
            vcpus: vec![
                crate::hypervisor::stats::Vcpu {
                    state: Some(1),
                    time: Some(1_500_000_000),
                    wait: Some(1_000),
                },
                crate::hypervisor::stats::Vcpu {
                    state: Some(2),
                    time: Some(500_000_000),
                    wait: None,
                },
            ],
            ..Default::default()
        };
        stats.interfaces.push(Device {
            name: "vnet0".into(),
            values: std::array::from_fn(|i| Some(10 * (i as u64 + 1))),
        });
        for drive in ["vda", "vdb"] {
            stats.drives.push(Device {
                name: drive.into(),
                values: std::array::from_fn(|i| Some(3_000_000 * (i as u64 + 1))),
            });
        }
        VmUsage {
            namespace: "ns".into(),
            name: "vm".into(),
            stats,
        }
    }

    /// (sample name, type, label names) of every `kubevirt_vmi_*` family in `text`.
    fn exported(text: &str) -> std::collections::BTreeSet<(String, String, String)> {
        let mut types = std::collections::HashMap::new();
        let mut out = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest.split_once(' ').unwrap();
                types.insert(family.to_string(), kind.to_string());
                continue;
            }
            if !line.starts_with("kubevirt_vmi_") {
                continue;
            }
            let (sample, rest) = line.split_once('{').unwrap();
            let family = sample
                .strip_suffix("_total")
                .filter(|f| types.get(*f).is_some_and(|k| k == "counter"))
                .unwrap_or(sample);
            let labels: Vec<&str> = rest
                .split_once('}')
                .unwrap()
                .0
                .split(',')
                .map(|kv| kv.split_once('=').unwrap().0)
                .collect();
            out.insert((sample.to_string(), types[family].clone(), labels.join(",")));
        }
        out
    }

    #[test]
    fn per_vm_series_match_kubevirts_list() {
        let list = include_str!("../docs/kubevirt_vmi_metrics.txt");
        let wanted: std::collections::BTreeSet<(String, String, String)> = list
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let name = if fields[1] == "counter" && !fields[0].ends_with("_total") {
                    format!("{}_total", fields[0])
                } else {
                    fields[0].to_string()
                };
                (name, fields[1].to_string(), fields[2].to_string())
            })
            .collect();
        let text = AgentMetrics::new()
            .render("n1", &[full_usage()], &[Phase::Running])
            .unwrap();
        assert_eq!(exported(&text), wanted, "{text}");
    }

    #[test]
    fn per_vm_series_carry_kubevirts_units_and_labels() {
        let metrics = AgentMetrics::new();
        metrics
            .reconciles
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        let usage = full_usage();
        let text = metrics
            .render("n1", &[usage], &[Phase::Running, Phase::Running])
            .unwrap();
        for line in [
            r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="ns",name="vm",node="n1"} 2.5"#,
            r#"kubevirt_vmi_vcpu_seconds_total{namespace="ns",name="vm",node="n1",id="0",state="RUNNING"} 1.5"#,
            r#"kubevirt_vmi_vcpu_seconds_total{namespace="ns",name="vm",node="n1",id="1",state="BLOCKED"} 0.5"#,
            r#"kubevirt_vmi_memory_resident_bytes{namespace="ns",name="vm",node="n1"} 1048576.0"#,
            // available (4 MiB) less unused (5 MiB) saturates at 0.
            r#"kubevirt_vmi_memory_used_bytes{namespace="ns",name="vm",node="n1"} 0.0"#,
            r#"kubevirt_vmi_network_receive_bytes_total{namespace="ns",name="vm",node="n1",interface="vnet0"} 10"#,
            r#"kubevirt_vmi_network_transmit_bytes_total{namespace="ns",name="vm",node="n1",interface="vnet0"} 50"#,
            r#"kubevirt_vmi_storage_read_traffic_bytes_total{namespace="ns",name="vm",node="n1",drive="vdb"} 3000000"#,
            r#"kubevirt_vmi_storage_read_times_ms_total{namespace="ns",name="vm",node="n1",drive="vda"} 15"#,
            r#"nodevirt_vmi_paused{namespace="ns",name="vm",node="n1",reason="PausedByUser"} 1"#,
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
