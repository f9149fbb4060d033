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
use std::fmt::Write as _;

use crate::api::Phase;
use crate::hypervisor::PauseReason;
use crate::hypervisor::stats::{
    BALLOON_FIELDS, BLOCK_COUNTERS, CPU_FIELDS, DomainStats, NET_COUNTERS,
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
        encode_per_vm(&mut out, node, usage, phases)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

const NANOS_PER_SECOND: f64 = 1e9;
const NANOS_PER_MILLI: f64 = 1e6;
const KIB: f64 = 1024.0;

/// A per-VM family fed by one field of the bulk stats: KubeVirt's name (a counter's without
/// `_total`, which its samples carry), its help, and the factor to its unit.
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

/// A label value in the exposition format: `\`, `"` and newlines escaped.
fn escaped(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// One family being written: its `# HELP` and `# TYPE` lines when started, then its samples,
/// a counter's named `<name>_total`.
struct FamilyWriter<'o> {
    out: &'o mut String,
    name: &'o str,
    suffix: &'static str,
}

impl<'o> FamilyWriter<'o> {
    fn start(
        out: &'o mut String,
        name: &'o str,
        help: &str,
        counter: bool,
    ) -> Result<Self, std::fmt::Error> {
        let kind = if counter { "counter" } else { "gauge" };
        writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}")?;
        let suffix = if counter { "_total" } else { "" };
        Ok(Self { out, name, suffix })
    }

    /// A sample with `labels` and then `extra` ones (each of those starting with a comma).
    fn sample(
        &mut self,
        labels: &str,
        extra: std::fmt::Arguments,
        value: impl std::fmt::Display,
    ) -> std::fmt::Result {
        let (name, suffix) = (self.name, self.suffix);
        writeln!(self.out, "{name}{suffix}{{{labels}{extra}}} {value}")
    }
}

/// The per-VM series, written straight into the exposition: 1100 VMs make ~45,000 samples,
/// and going through prometheus-client's label maps cost 39 ms a scrape (a copy of every
/// label value per sample); this writes each VM's labels once.
fn encode_per_vm(
    out: &mut String,
    node: &str,
    usage: &[VmUsage],
    phases: &[Phase],
) -> std::fmt::Result {
    let node = escaped(node);
    let labels: Vec<String> = usage
        .iter()
        .map(|u| {
            format!(
                "namespace=\"{}\",name=\"{}\",node=\"{node}\"",
                escaped(&u.namespace),
                escaped(&u.name)
            )
        })
        .collect();
    let vms = || usage.iter().zip(&labels);
    let none = format_args!("");
    for series in &CPU_SERIES {
        let mut family = FamilyWriter::start(out, series.name, series.help, true)?;
        let i = index_of(&CPU_FIELDS, series.field);
        for (u, l) in vms() {
            if let Some(v) = u.stats.cpu.get(i).copied().flatten() {
                family.sample(l, none, v as f64 * series.scale)?;
            }
        }
    }
    let mut family = FamilyWriter::start(
        out,
        "kubevirt_vmi_vcpu_seconds",
        "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time)",
        true,
    )?;
    for (u, l) in vms() {
        for (id, vcpu) in u.stats.vcpus.iter().enumerate() {
            if let Some(time) = vcpu.time {
                let state = vcpu_state(vcpu.state);
                let extra = format_args!(",id=\"{id}\",state=\"{state}\"");
                family.sample(l, extra, time as f64 / NANOS_PER_SECOND)?;
            }
        }
    }
    let mut family = FamilyWriter::start(
        out,
        "kubevirt_vmi_vcpu_wait_seconds",
        "Amount of time spent by each vcpu while waiting on I/O",
        true,
    )?;
    for (u, l) in vms() {
        for (id, vcpu) in u.stats.vcpus.iter().enumerate() {
            if let Some(wait) = vcpu.wait {
                family.sample(
                    l,
                    format_args!(",id=\"{id}\""),
                    wait as f64 / NANOS_PER_SECOND,
                )?;
            }
        }
    }
    let balloon = |u: &VmUsage, i: usize| u.stats.balloon.get(i).copied().flatten();
    for (series, counter) in MEMORY_GAUGES
        .iter()
        .map(|s| (s, false))
        .chain(FAULT_COUNTERS.iter().map(|s| (s, true)))
    {
        let mut family = FamilyWriter::start(out, series.name, series.help, counter)?;
        let i = index_of(&BALLOON_FIELDS, series.field);
        for (u, l) in vms() {
            if let Some(v) = balloon(u, i) {
                family.sample(l, none, v as f64 * series.scale)?;
            }
        }
    }
    let mut family = FamilyWriter::start(
        out,
        "kubevirt_vmi_memory_used_bytes",
        "Amount of used memory as seen by the domain",
        false,
    )?;
    let (available, unused) = (
        index_of(&BALLOON_FIELDS, "available"),
        index_of(&BALLOON_FIELDS, "unused"),
    );
    for (u, l) in vms() {
        // KubeVirt's "used": what the guest has, less what it leaves unused.
        if let (Some(available), Some(unused)) = (balloon(u, available), balloon(u, unused)) {
            family.sample(l, none, available.saturating_sub(unused) as f64 * KIB)?;
        }
    }
    let devices = [
        (&NET_SERIES, &NET_COUNTERS, "interface", false),
        (&BLOCK_SERIES, &BLOCK_COUNTERS, "drive", true),
    ];
    for (table, names, label, drives) in devices {
        for series in table {
            let mut family = FamilyWriter::start(out, series.name, series.help, true)?;
            let i = index_of(names, series.field);
            for (u, l) in vms() {
                let list = if drives {
                    &u.stats.drives
                } else {
                    &u.stats.interfaces
                };
                for device in list.iter().filter(|d| !d.name.is_empty()) {
                    if let Some(v) = device.values.get(i).copied().flatten() {
                        let extra = format_args!(",{label}=\"{}\"", escaped(&device.name));
                        family.sample(l, extra, v as f64 * series.scale)?;
                    }
                }
            }
        }
    }
    let mut counts: Vec<(String, u32)> = Vec::new();
    for phase in phases {
        let phase = format!("{phase:?}").to_lowercase();
        match counts.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, n)) => *n += 1,
            None => counts.push((phase, 1)),
        }
    }
    let mut family = FamilyWriter::start(
        out,
        "kubevirt_vmi_phase_count",
        "Sum of VMs per phase and node",
        false,
    )?;
    let node_label = format!("node=\"{node}\"");
    for (phase, n) in counts {
        family.sample(&node_label, format_args!(",phase=\"{phase}\""), n)?;
    }
    let mut family = FamilyWriter::start(
        out,
        "nodevirt_vmi_paused",
        "1 while libvirt holds the VM's vCPUs, with the reason of its Paused condition",
        false,
    )?;
    for (u, l) in vms() {
        if let Some((state, reason)) = u.stats.state
            && state == PauseReason::LIBVIRT_STATE
        {
            let reason = PauseReason::from_libvirt(reason).name();
            family.sample(l, format_args!(",reason=\"{reason}\""), 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::stats::Device;

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
    fn label_values_are_escaped() {
        assert_eq!(escaped("vnet0"), "vnet0");
        assert_eq!(escaped("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
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
            r#"kubevirt_vmi_memory_resident_bytes{namespace="ns",name="vm",node="n1"} 1048576"#,
            // available (4 MiB) less unused (5 MiB) saturates at 0.
            r#"kubevirt_vmi_memory_used_bytes{namespace="ns",name="vm",node="n1"} 0"#,
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
