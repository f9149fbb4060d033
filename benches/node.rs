//! hack/bench.sh's driver: how fast and how lean the agent is, beside libvirt itself, on the
//! real local cluster. Prints one table and writes the same figures as JSON to
//! target/bench/latest.json. Every figure comes from this run:
//!
//! 1. the limit: the `virt` crate defining+starting and destroying+undefining domains on the
//!    test driver (in-process and through libvirtd), and `virsh start` -> lease of the tiny
//!    guest under TCG;
//! 2. the agent on libvirtd's test driver: 100 VMs created 100 ms apart (creation -> Running,
//!    seen by a client-side watch), then 1000 at once; API requests, CPU and memory;
//! 3. the agent on QEMU (TCG): 5 tiny guests, apply -> Running and apply -> IP;
//! 4. restart: kill -9 with 100 VMs running, time to ready and to every VM re-adopted;
//! 5. RSS idle and with 1000 VMs, the cost of one /metrics scrape with 1000 VMs;
//! 6. render throughput, from the criterion bench `render` run just before;
//! 7. deletions that wait: a new VM's creation -> Running while 32 VMs whose guests ignore
//!    ACPI are being deleted (150 s grace period), beside the same on the idle node
//!    (`node/deaf_deletions.rs`);
//! 8. placement by kube-scheduler: 100 VMs that name no node, 100 ms apart, on two test-driver
//!    agents and a controller, through their holder pods (`node/placed.rs`).
//!
//! NODEVIRT_BENCH_STEPS=tcg,agent,deletions,placed runs only some of them: tcg is step 3 and
//! the TCG limit, agent steps 1, 2, 4 and 5, deletions step 7, placed step 8.

#[path = "node/deaf_deletions.rs"]
mod deaf_deletions;
#[path = "node/placed.rs"]
mod placed;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "node/table.rs"]
mod table;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use nodevirt::api::{Phase, VirtualMachine};
use nodevirt::domain::{DomainType, RenderOptions, render};
use nodevirt::storage::layout::{VmLayout, resolve_volumes};
use serde_json::json;
use support::agent::{Agent, NodeOptions};
use support::cluster::{Cluster, wait_for};
use support::direct::DirectGuest;
use support::vm::{BOOT, Vm, user_data, vm_yaml};
use table::{Table, Target, median, percentile};

const TEST_DRIVER: &str = "test+unix:///default";
const RAW_DOMAINS: usize = 1000;

/// A VM with memory only: what the agent itself costs, without disk tools.
fn light_vm(ns: &str, name: &str, node: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubevirt.io/nodeName": node}},
        "spec": {"domain": {"resources": {"requests": {"memory": "64Mi"}}}},
    }))
    .unwrap()
}

/// The agent's own XML for a light VM (domain `bench_raw-<index>`), for the raw libvirt runs.
fn light_xml(index: usize) -> String {
    let uid = format!("00000000-0000-4000-8000-{index:012}");
    let mut vm = light_vm("bench", &format!("raw-{index}"), "n");
    vm.metadata.uid = Some(uid.clone());
    let layout = VmLayout::new(std::path::Path::new("/tmp/nodevirt-bench"), &uid);
    let volumes = resolve_volumes(&vm.spec, &layout, |_| None);
    let options = RenderOptions {
        domain_type: DomainType::Qemu,
        cpu_model: Default::default(),
        network: None,
        console_log: layout.console_log().display().to_string(),
        node: Some("n".into()),
    };
    render(&vm, &volumes, &options).unwrap().to_xml().unwrap()
}

/// Seconds per domain for define+start, then for destroy+undefine, through the virt crate.
fn raw_limit(uri: &str) -> (f64, f64) {
    use virt::connect::Connect;
    use virt::domain::Domain;
    let conn = Connect::open(Some(uri)).unwrap();
    let xmls: Vec<String> = (0..RAW_DOMAINS).map(light_xml).collect();
    let started = Instant::now();
    let domains: Vec<Domain> = xmls
        .iter()
        .map(|xml| {
            let domain = conn.define_domain_xml(xml).unwrap();
            domain.create().unwrap();
            domain
        })
        .collect();
    let up = started.elapsed().as_secs_f64() / RAW_DOMAINS as f64;
    let started = Instant::now();
    for domain in &domains {
        domain.destroy().unwrap();
        domain.undefine().unwrap();
    }
    let down = started.elapsed().as_secs_f64() / RAW_DOMAINS as f64;
    (up, down)
}

/// Memory of a process, MiB.
struct Memory {
    rss: f64,
    /// The part of `rss` that is the process's own heap and stacks (the rest is mapped files:
    /// its binary and shared libraries such as libvirt's).
    anonymous: f64,
    peak: f64,
}

/// (CPU seconds, memory) of a process.
fn process_usage(pid: u32) -> (f64, Memory) {
    let ticks: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at index 2 (state).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let cpu = fields
        .get(11)
        .zip(fields.get(12))
        .map(|(u, s)| (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / ticks)
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let memory = Memory {
        rss: kib("VmRSS:") / 1024.0,
        anonymous: kib("RssAnon:") / 1024.0,
        peak: kib("VmHWM:") / 1024.0,
    };
    (cpu, memory)
}

/// The sum of every sample of `metric` (any labels) in a scrape.
fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            (l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_ready(agent: &Agent, timeout: Duration) -> Duration {
    let started = Instant::now();
    while agent.get("/readyz").0 != 200 {
        assert!(started.elapsed() < timeout, "the agent is not ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

/// Records when each VM of `ns` is first seen Running.
fn watch_running(client: kube::Client, ns: &str) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<VirtualMachine> = Api::namespaced(client, ns);
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Ok(Some(vm)) = stream.try_next().await {
            if vm.phase() == Phase::Running
                && let Some(name) = vm.metadata.name
            {
                record
                    .lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    seen
}

async fn wait_all_running(seen: &Arc<Mutex<HashMap<String, Instant>>>, count: usize) {
    let started = Instant::now();
    while seen.lock().unwrap().len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {count} VMs Running after 10 minutes",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds from each VM's creation to the watch seeing it Running, sorted.
fn latencies(
    created: &HashMap<String, Instant>,
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
) -> Vec<f64> {
    let seen = seen.lock().unwrap();
    let mut latencies: Vec<f64> = created
        .iter()
        .map(|(name, at)| seen[name].duration_since(*at).as_secs_f64())
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// Running test-driver domains of namespace `ns`: name -> ID.
fn domain_ids(ns: &str) -> BTreeMap<String, String> {
    let out = std::process::Command::new("virsh")
        .args(["-c", TEST_DRIVER, "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let (id, name) = (cols.next()?, cols.next()?);
            name.starts_with(&format!("{ns}_"))
                .then(|| (name.to_string(), id.to_string()))
        })
        .collect()
}

/// Step 3 and the TCG limit: the tiny guest through the agent and straight through libvirt.
async fn real_guests(cluster: &'static Cluster, table: &mut Table) {
    eprintln!("step 3: tiny guests under TCG");
    let mut direct = Vec::new();
    for i in 0..3 {
        let guest = DirectGuest::define(cluster, &format!("bench-direct-{i}"), "#!/bin/sh\n").await;
        direct.push(guest.start_to_lease(BOOT).0.as_secs_f64());
        guest.remove().await;
    }
    let lease_limit = median(&mut direct);
    table.add(
        "limit: virsh start -> DHCP lease, tiny guest, TCG (median of 3)",
        lease_limit,
        "s",
    );

    let ns = cluster.namespace("bench-qemu");
    let agent = Agent::start(cluster, "bench-qemu");
    let (mut to_running, mut to_ip) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let name = format!("guest-{i}");
        cluster.guest_claim(&ns.name, &name);
        let vm = Vm {
            ns: &ns.name,
            name: &name,
        };
        let applied = Instant::now();
        cluster.apply(&vm_yaml(
            vm.ns,
            vm.name,
            &agent.node,
            &format!("persistentVolumeClaim: {{claimName: {name}}}"),
            &user_data("true"),
        ));
        vm.wait_phase("Running", BOOT);
        to_running.push(applied.elapsed().as_secs_f64());
        vm.wait_ip(BOOT);
        to_ip.push(applied.elapsed().as_secs_f64());
        cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name, "--wait=true"]);
    }
    table.add(
        "agent, TCG: apply -> Running (median of 5)",
        median(&mut to_running),
        "s",
    );
    table
        .add(
            "agent, TCG: apply -> IP in status (median of 5)",
            median(&mut to_ip),
            "s",
        )
        .vs(lease_limit);
}

/// Renders/second of the XML translation, from criterion's estimate of the `render` bench.
fn render_rate() -> Option<f64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion/render_seed_like_vm/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
    let nanos = estimates["mean"]["point_estimate"].as_f64()?;
    Some(1e9 / nanos)
}

/// Whether to run `step` (tcg, agent, deletions): all of them, or those named in
/// NODEVIRT_BENCH_STEPS (comma-separated), to measure one change without the whole run.
fn selected(step: &str) -> bool {
    std::env::var("NODEVIRT_BENCH_STEPS")
        .map(|steps| steps.split(',').any(|s| s.trim() == step))
        .unwrap_or(true)
}

/// Steps 1, 2, 4 and 5: the limit through the virt crate, then the agent on libvirtd's test
/// driver (100 VMs, a restart, 1000 VMs, RSS and a scrape).
async fn agent_on_test_driver(cluster: &'static Cluster, admin: &kube::Client, table: &mut Table) {
    eprintln!("step 1: the limit, {RAW_DOMAINS} domains through the virt crate");
    let (up, down) = raw_limit("test:///default");
    table.add(
        "limit: virt define+start per domain, test:///default",
        up * 1e3,
        "ms",
    );
    table.add(
        "limit: virt destroy+undefine per domain, test:///default",
        down * 1e3,
        "ms",
    );
    let (up_daemon, down_daemon) = raw_limit(TEST_DRIVER);
    table.add(
        "limit: virt define+start per domain, via libvirtd",
        up_daemon * 1e3,
        "ms",
    );
    table.add(
        "limit: virt destroy+undefine per domain, via libvirtd",
        down_daemon * 1e3,
        "ms",
    );

    eprintln!("step 2: the agent on libvirtd's test driver");
    // libvirtd frees the test driver's domains when its last client disconnects: hold one
    // connection so that they outlive the agent in the restart step.
    let _holder = virt::connect::Connect::open(Some(TEST_DRIVER)).unwrap();
    let mut agent = Agent::start_with(
        cluster,
        "bench",
        NodeOptions {
            libvirt_uri: TEST_DRIVER,
            heartbeat_seconds: 600,
            ..Default::default()
        },
    );
    agent.kill();
    let restarted = Instant::now();
    agent.restart();
    wait_ready(&agent, Duration::from_secs(30));
    table
        .add(
            "agent: ready after start (no VMs)",
            restarted.elapsed().as_secs_f64(),
            "s",
        )
        .target(Target::Below(1.0));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = agent.pid().unwrap();
    let (_, idle) = process_usage(pid);
    table.add_rss("idle", &idle, 15.0);

    // 100 VMs, 100 ms apart.
    let ns100 = cluster.namespace("bench-100");
    let seen = watch_running(admin.clone(), &ns100.name);
    let api: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns100.name);
    let mut created = HashMap::new();
    let start = tokio::time::Instant::now();
    for i in 0..100 {
        tokio::time::sleep_until(start + Duration::from_millis(100 * i as u64)).await;
        let name = format!("vm-{i}");
        created.insert(name.clone(), Instant::now());
        api.create(
            &PostParams::default(),
            &light_vm(&ns100.name, &name, &agent.node),
        )
        .await
        .unwrap();
    }
    wait_all_running(&seen, 100).await;
    let latencies = latencies(&created, &seen);
    for (p, target) in [(50.0, Some(0.5)), (95.0, Some(1.0)), (99.0, None)] {
        let row = table
            .add(
                format!("agent: 100 VMs 100 ms apart, creation -> Running P{p}"),
                percentile(&latencies, p),
                "s",
            )
            .vs(up_daemon);
        if let Some(t) = target {
            row.target(Target::Below(t));
        }
    }

    // Restart with 100 VMs running.
    let before = domain_ids(&ns100.name);
    assert_eq!(before.len(), 100, "100 running domains before the restart");
    agent.kill();
    let killed = Instant::now();
    agent.restart();
    wait_ready(&agent, Duration::from_secs(30));
    let ready = killed.elapsed().as_secs_f64();
    let adopted = wait_for(Duration::from_secs(60), "every VM re-adopted", || {
        let (_, text) = agent.get("/metrics");
        (metric_sum(&text, "nodevirt_reconciles_total", "result=\"ok\"") >= 100.0)
            .then(|| killed.elapsed().as_secs_f64())
    });
    let after = domain_ids(&ns100.name);
    let restarted_domains = before
        .iter()
        .filter(|(n, id)| after.get(*n) != Some(id))
        .count();
    table
        .add("restart with 100 VMs: kill -9 -> ready", ready, "s")
        .target(Target::Below(1.0));
    table
        .add(
            "restart with 100 VMs: kill -9 -> all re-adopted",
            adopted,
            "s",
        )
        .target(Target::Below(2.0));
    table
        .add(
            "restart with 100 VMs: domains restarted",
            restarted_domains as f64,
            "",
        )
        .target(Target::Exactly(0.0));

    // 1000 VMs at once.
    let ns1000 = cluster.namespace("bench-1000");
    let seen = watch_running(admin.clone(), &ns1000.name);
    let api: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns1000.name);
    let pid = agent.pid().unwrap();
    let (cpu_before, _) = process_usage(pid);
    let (_, text) = agent.get("/metrics");
    let requests_before = metric_sum(&text, "nodevirt_api_requests_total", "");
    let reconciles_before = metric_sum(&text, "nodevirt_reconciles_total", "");
    let started = Instant::now();
    let node = agent.node.clone();
    futures::stream::iter(0..1000)
        .map(|i| {
            let (api, ns, node) = (api.clone(), ns1000.name.clone(), node.clone());
            async move {
                api.create(
                    &PostParams::default(),
                    &light_vm(&ns, &format!("vm-{i}"), &node),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
    wait_all_running(&seen, 1000).await;
    let all_running = started.elapsed().as_secs_f64();
    table
        .add(
            "agent: 1000 VMs applied at once -> all Running",
            all_running,
            "s",
        )
        .target(Target::Below(30.0))
        .vs(up_daemon * 1000.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu_after, loaded) = process_usage(pid);
    let (_, text) = agent.get("/metrics");
    let requests = metric_sum(&text, "nodevirt_api_requests_total", "") - requests_before;
    let reconciles = metric_sum(&text, "nodevirt_reconciles_total", "") - reconciles_before;
    table.add(
        "agent: API requests per VM (1000 VMs)",
        requests / 1000.0,
        "",
    );
    table.add("agent: CPU for 1000 VMs", cpu_after - cpu_before, "s");
    table
        .add(
            "agent: CPU per reconcile",
            (cpu_after - cpu_before) / reconciles.max(1.0) * 1e3,
            "ms",
        )
        .target(Target::Below(2.0));
    table.add_rss("with 1100 VMs", &loaded, 40.0);
    table.add("agent: peak RSS (whole run)", loaded.peak, "MiB");

    let mut scrapes = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let (status, body) = agent.get("/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("nodevirt_reconciles_total"));
        scrapes.push(started.elapsed().as_secs_f64() * 1e3);
    }
    table.add(
        "agent: one /metrics scrape with 1100 VMs (median of 10)",
        median(&mut scrapes),
        "ms",
    );

    eprintln!("cleaning up: deleting 1100 VMs");
    let names = [ns100.name.clone(), ns1000.name.clone()];
    drop(ns100);
    drop(ns1000);
    wait_for(Duration::from_secs(300), "the bench VMs to be gone", || {
        names
            .iter()
            .all(|ns| domain_ids(ns).is_empty())
            .then_some(())
    });
    drop(agent);
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::get();
    let admin = cluster.admin_client().await;
    let mut table = Table::default();

    if selected("tcg") {
        real_guests(cluster, &mut table).await;
    }
    if selected("agent") {
        agent_on_test_driver(cluster, &admin, &mut table).await;
    }
    if selected("deletions") {
        deaf_deletions::run(cluster, &admin, &mut table).await;
    }
    if selected("placed") {
        placed::run(cluster, &admin, &mut table).await;
    }
    if let Some(rate) = render_rate() {
        table.add("render: seed-like VM -> XML (criterion)", rate, "VMs/s");
    }

    table.print();
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()
            .lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "memory_kib": std::fs::read_to_string("/proc/meminfo").unwrap_or_default()
            .lines().next().unwrap_or_default().split_whitespace().nth(1),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let report = json!({"machine": machine, "results": table.json()});
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(out.join("latest.json"), &text).unwrap();
    println!("\nwritten: {}", out.join("latest.json").display());
}
