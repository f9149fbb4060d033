//! Deleting VMs whose guests ignore ACPI, on the real cluster: the grace period is honoured
//! without holding the agent, and an operator can end the wait at once.
//!
//! The guests ignore ACPI ([`support::vm::deaf_vm_yaml`]: QEMU domains with no disk).

mod support;

use std::time::{Duration, Instant};

use support::agent::Agent;
use support::cluster::{Cluster, virsh, wait_for};
use support::vm::{Vm, deaf_vm_yaml};

/// The agent's reconcile workers (src/k8s.rs): one deletion more than it has.
const DELETED: usize = 17;

/// The attack: 15 VMs with a 150 s grace period and one with a huge one, deleted, held every
/// reconcile worker: a new VM waited 149 s to start, and the huge one never finished.
#[test]
fn deleting_vms_whose_guests_ignore_acpi_holds_no_worker_and_a_forced_stop_ends_them() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-slow-delete");
    let agent = Agent::start(cluster, "slow-delete");
    let names: Vec<String> = (0..DELETED).map(|i| format!("deaf-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        // The last one asks for the longest grace period the schema allows.
        let grace = if i + 1 == DELETED { 3600 } else { 150 };
        cluster.apply(&deaf_vm_yaml(&ns.name, name, &agent.node, grace));
    }
    for name in &names {
        Vm { ns: &ns.name, name }.wait_phase("Running", Duration::from_secs(120));
    }
    for name in &names {
        cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", name, "--wait=false"]);
    }

    // A new VM starts as on an idle node, while every deletion waits for its guest.
    let created = Instant::now();
    cluster.apply(&deaf_vm_yaml(&ns.name, "fresh", &agent.node, 0));
    let fresh = Vm {
        ns: &ns.name,
        name: "fresh",
    };
    fresh.wait_phase("Running", Duration::from_secs(30));
    let started = created.elapsed();
    eprintln!(
        "timing: {DELETED} deletions waiting on their guests -> a new VM Running {:.2}s",
        started.as_secs_f64()
    );
    assert!(started < Duration::from_secs(30), "{started:?}");
    std::thread::sleep(Duration::from_secs(5));
    for name in &names {
        let vm = Vm { ns: &ns.name, name };
        assert!(
            !vm.get("{.metadata.deletionTimestamp}").is_empty(),
            "{name} was deleted before its grace period ended"
        );
        assert!(
            virsh(&["domstate", &vm.domain()]).contains("running"),
            "{name}: its guest must still run (it ignores ACPI; the grace period is not over)"
        );
        assert!(
            vm.describe().contains("Signaled Graceful Shutdown"),
            "{name} got no ACPI shutdown"
        );
    }

    // The operator ends the wait: every one is stopped and gone at once.
    let forced = Instant::now();
    for name in &names {
        cluster.kubectl_ok(&[
            "-n",
            &ns.name,
            "annotate",
            "vm",
            name,
            "nodevirt.io/force-stop=true",
        ]);
    }
    wait_for(Duration::from_secs(30), "the forced VMs to be gone", || {
        let left = cluster.kubectl_ok(&["-n", &ns.name, "get", "vms", "-o", "name"]);
        (left.trim() == "virtualmachine.kubevirt.io/fresh").then_some(())
    });
    eprintln!(
        "timing: force-stop of {DELETED} VMs -> all gone {:.2}s",
        forced.elapsed().as_secs_f64()
    );
    let domains = virsh(&["list", "--all", "--name"]);
    for name in &names {
        let domain = Vm { ns: &ns.name, name }.domain();
        assert!(!domains.contains(&domain), "{domain} is still defined");
    }
    assert_eq!(fresh.phase(), "Running");
}
