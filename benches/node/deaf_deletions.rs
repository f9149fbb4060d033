//! Step 7: a new VM on a node busy deleting VMs whose guests ignore ACPI (QEMU domains with
//! no disk, [`deaf_vm_yaml`]). Each deletion sends the ACPI shutdown and then waits out its
//! grace period; the wait must hold none of the reconcile workers a new VM needs.
//!
//! 1. On a fresh agent (qemu:///system), [`PROBES`] VMs of the same kind are created one at a
//!    time on the idle node: creation -> Running, seen by a client-side watch.
//! 2. [`DEAF`] VMs with a [`GRACE_SECONDS`] grace period run; [`PROBES`] VMs are timed beside
//!    them (what their QEMUs alone cost the node). Then their QEMUs are moved into one cgroup
//!    capped at [`DEAF_CPU_PERCENT`]% of a CPU ([`Throttle`]): 32 emulated guests would take the
//!    2 cores of this machine, and the step measures the agent's workers, not TCG. They are
//!    timed beside again, then deleted, and the agent has sent each its ACPI shutdown (its
//!    `ShuttingDown` event).
//! 3. [`PROBES`] more are created one at a time, timed the same way, while every deletion
//!    still waits; the target is the idle figure plus 1 s.
//! 4. The deletions are forced (`nodevirt.io/force-stop`), and every VM is deleted while the
//!    agent still runs, so that no domain outlives the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use nodevirt::api::VirtualMachine;
use nodevirt::domain::names::domain_name;

use super::support::agent::Agent;
use super::support::cluster::{Cluster, wait_for};
use super::support::vm::deaf_vm_yaml;
use super::table::{Table, Target, median};
use super::{wait_all_running, watch_running};

/// VMs deleted at once: twice the agent's 16 reconcile workers.
const DEAF: usize = 32;
/// Their grace period: far longer than the measurement, so every deletion still waits.
const GRACE_SECONDS: u32 = 150;
/// New VMs timed on the idle node, beside the running deaf VMs, and while they are deleted.
const PROBES: usize = 3;

pub async fn run(cluster: &'static Cluster, admin: &kube::Client, table: &mut Table) {
    eprintln!("step 7: a new VM while {DEAF} deletions wait on guests that ignore ACPI");
    let ns = cluster.namespace("bench-deaf");
    let agent = Agent::start(cluster, "bench-deaf");
    let seen = watch_running(admin.clone(), &ns.name);
    let probe = Probe {
        api: Api::namespaced(admin.clone(), &ns.name),
        ns: &ns.name,
        node: &agent.node,
        seen: &seen,
    };

    let mut idle = Vec::new();
    for i in 0..PROBES {
        idle.push(probe.creation_to_running(&format!("idle-{i}")).await);
    }
    let idle = median(&mut idle);

    let deaf: Vec<String> = (0..DEAF).map(|i| format!("deaf-{i}")).collect();
    let manifests: Vec<String> = deaf
        .iter()
        .map(|name| deaf_vm_yaml(&ns.name, name, &agent.node, GRACE_SECONDS))
        .collect();
    cluster.apply(&manifests.join("---\n"));
    wait_all_running(&seen, PROBES + DEAF).await;
    // The same with 32 guests running and none deleted: what their QEMUs alone cost.
    let mut loaded = Vec::new();
    for i in 0..PROBES {
        loaded.push(probe.creation_to_running(&format!("loaded-{i}")).await);
    }
    let loaded = median(&mut loaded);
    let domains: Vec<String> = deaf.iter().map(|vm| domain_name(&ns.name, vm)).collect();
    let _throttle = Throttle::deaf_guests(&domains);
    let mut throttled = Vec::new();
    for i in 0..PROBES {
        throttled.push(probe.creation_to_running(&format!("throttled-{i}")).await);
    }
    let throttled = median(&mut throttled);
    let mut delete = vec!["-n", &ns.name, "delete", "vm", "--wait=false"];
    delete.extend(deaf.iter().map(String::as_str));
    cluster.kubectl_ok(&delete);
    wait_for(
        Duration::from_secs(120),
        "an ACPI shutdown sent to every deleted VM",
        || (shutdowns_sent(cluster, &ns.name) >= DEAF).then_some(()),
    );

    let mut busy = Vec::new();
    for i in 0..PROBES {
        busy.push(probe.creation_to_running(&format!("busy-{i}")).await);
    }
    let busy = median(&mut busy);
    let waiting = cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "vms",
        "-o",
        "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}x{end}",
    ]);
    assert_eq!(
        waiting.len(),
        DEAF,
        "every deletion must still wait while the new VMs are timed"
    );
    table.add(
        format!("new VM -> Running, idle node (median of {PROBES})"),
        idle,
        "s",
    );
    table.add(
        format!("new VM -> Running, {DEAF} deaf VMs running (median of {PROBES})"),
        loaded,
        "s",
    );
    table.add(
        format!(
            "new VM -> Running, {DEAF} deaf VMs running at {DEAF_CPU_PERCENT}% CPU (median of {PROBES})"
        ),
        throttled,
        "s",
    );
    table
        .add(
            format!(
                "new VM -> Running, {DEAF} deaf VMs deleting at {DEAF_CPU_PERCENT}% CPU (median of {PROBES})"
            ),
            busy,
            "s",
        )
        .target(Target::Below(idle + 1.0));

    eprintln!("cleaning up: forcing the {DEAF} deletions");
    let mut force = vec!["-n", &ns.name, "annotate", "vm"];
    force.extend(deaf.iter().map(String::as_str));
    force.push("nodevirt.io/force-stop=true");
    cluster.kubectl_ok(&force);
    // While the agent runs: it removes the domains and then the finalizers.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "delete",
        "vms",
        "--all",
        "--wait=true",
        "--timeout=120s",
    ]);
}

/// The CPU the deaf guests' QEMUs may use together, in percent of one CPU.
const DEAF_CPU_PERCENT: u64 = 10;
const THROTTLE_CGROUP: &str = "/sys/fs/cgroup/cpu/nodevirt-bench-deaf";

/// The deaf guests' QEMUs in one CPU-capped cgroup (cgroup v1, as on this machine) while it
/// lives. They still run and still ignore ACPI; they only stop taking the CPU the new VMs need.
struct Throttle;

impl Throttle {
    fn deaf_guests(domains: &[String]) -> Throttle {
        let dir = std::path::Path::new(THROTTLE_CGROUP);
        std::fs::create_dir_all(dir).expect("create the bench's CPU cgroup");
        let period = 100_000;
        std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string()).unwrap();
        std::fs::write(
            dir.join("cpu.cfs_quota_us"),
            (period * DEAF_CPU_PERCENT / 100).to_string(),
        )
        .unwrap();
        for domain in domains {
            // libvirt's pid file of the domain's QEMU; cgroup.procs moves all its threads.
            let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
                .unwrap_or_else(|e| panic!("QEMU pid of {domain}: {e}"));
            std::fs::write(dir.join("cgroup.procs"), pid.trim())
                .unwrap_or_else(|e| panic!("moving {domain}'s QEMU into {THROTTLE_CGROUP}: {e}"));
        }
        Throttle
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // The QEMUs are gone by now (every VM is deleted first); an empty cgroup can go.
        let _ = std::fs::remove_dir(THROTTLE_CGROUP);
    }
}

/// Creates diskless VMs (grace period 0) and times them to Running.
struct Probe<'a> {
    api: Api<VirtualMachine>,
    ns: &'a str,
    node: &'a str,
    seen: &'a Arc<Mutex<HashMap<String, Instant>>>,
}

impl Probe<'_> {
    /// Seconds from the create request to the watch seeing the VM Running.
    async fn creation_to_running(&self, name: &str) -> f64 {
        let vm: VirtualMachine =
            serde_yaml::from_str(&deaf_vm_yaml(self.ns, name, self.node, 0)).unwrap();
        let created = Instant::now();
        self.api.create(&PostParams::default(), &vm).await.unwrap();
        loop {
            if let Some(running) = self.seen.lock().unwrap().get(name) {
                return running.duration_since(created).as_secs_f64();
            }
            assert!(
                created.elapsed() < Duration::from_secs(120),
                "{name} not Running after 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How many `ShuttingDown` events (an ACPI shutdown sent) the namespace has.
fn shutdowns_sent(cluster: &Cluster, ns: &str) -> usize {
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            "reason=ShuttingDown",
            "-o",
            "name",
        ])
        .lines()
        .count()
}
