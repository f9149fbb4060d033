//! Outages of the parts the agent depends on, on the real cluster: libvirtd restarting and the
//! API server (with etcd) going away for a minute. Both stop a component every other test
//! uses, so they are `#[ignore]`d in the parallel run and hack/test.sh runs them alone,
//! one at a time, after it (`cargo test --test outage_e2e -- --ignored --test-threads=1`).

mod support;

use std::time::{Duration, Instant};

use support::agent::Agent;
use support::cluster::{Cluster, virsh, wait_for};
use support::vm::{BOOT, Vm, user_data, vm_yaml};

/// The PID of the QEMU process of a running domain, from libvirt's pid file.
fn qemu_pid(domain: &str) -> String {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// (domain ID, QEMU PID): both change if the domain was restarted.
fn identity(vm: &Vm) -> (String, String) {
    let id = virsh(&["domid", &vm.domain()]).trim().to_string();
    (id, qemu_pid(&vm.domain()))
}

fn start_guest(cluster: &Cluster, agent: &Agent, vm: &Vm, claim: &str) {
    cluster.apply(&vm_yaml(
        vm.ns,
        vm.name,
        &agent.node,
        &format!("persistentVolumeClaim: {{claimName: {claim}}}"),
        &user_data("echo up"),
    ));
}

fn ready(agent: &Agent) -> u16 {
    agent.get("/readyz").0
}

#[test]
#[ignore = "restarts the shared libvirtd: hack/test.sh runs it alone, after the other tests"]
fn a_libvirtd_restart_leaves_vms_running_and_the_agent_reconnects() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-libvirtd");
    let agent = Agent::start(cluster, "lvrestart");
    cluster.guest_claim(&ns.name, "guest");
    let running = Vm {
        ns: &ns.name,
        name: "running",
    };
    start_guest(cluster, &agent, &running, "guest");
    running.wait_phase("Running", BOOT);
    running.wait_ip(BOOT);
    let before = identity(&running);
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{before:?}");
    wait_for(Duration::from_secs(10), "/readyz 200", || {
        (ready(&agent) == 200).then_some(())
    });

    cluster.ctl("stop", "libvirtd");
    let stopped = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "/readyz 503 without libvirt",
        || (ready(&agent) == 503).then_some(()),
    );
    eprintln!(
        "timing: libvirtd stopped -> not ready {:.2}s",
        stopped.elapsed().as_secs_f64()
    );
    let (status, body) = agent.get("/readyz");
    assert!(body.contains("libvirt: false"), "{status} {body}");
    // A VM created meanwhile waits for libvirt; it is not failed for libvirt's absence.
    let waiting = Vm {
        ns: &ns.name,
        name: "created-meanwhile",
    };
    cluster.guest_claim(&ns.name, "guest2");
    start_guest(cluster, &agent, &waiting, "guest2");
    std::thread::sleep(Duration::from_secs(5)); // the window in which nothing may happen
    assert_ne!(waiting.phase(), "Failed", "{}", waiting.condition_message());
    assert_eq!(running.phase(), "Running");

    cluster.ctl("start", "libvirtd");
    let restarted = Instant::now();
    wait_for(Duration::from_secs(30), "/readyz 200 again", || {
        (ready(&agent) == 200).then_some(())
    });
    eprintln!(
        "timing: libvirtd answering -> agent ready {:.2}s",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        identity(&running),
        before,
        "the running domain was restarted"
    );
    waiting.wait_phase("Running", BOOT);
    assert_eq!(running.phase(), "Running");

    // The new connection delivers lifecycle events: a destroy is reported within seconds
    // (the periodic resync alone would take a minute).
    virsh(&["destroy", &running.domain()]);
    running.wait_phase("Failed", Duration::from_secs(10));
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("nodevirt_libvirt_reconnects_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nodevirt_libvirt_connected 1"),
        "{metrics}"
    );
}

#[test]
#[ignore = "stops the shared API server: hack/test.sh runs it alone, after the other tests"]
fn an_api_outage_touches_no_vm_and_status_catches_up() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-outage");
    let agent = Agent::start(cluster, "outage");
    cluster.guest_claim(&ns.name, "guest");
    let stays = Vm {
        ns: &ns.name,
        name: "stays",
    };
    let powers_off = Vm {
        ns: &ns.name,
        name: "powers-off",
    };
    cluster.guest_claim(&ns.name, "guest2");
    start_guest(cluster, &agent, &stays, "guest");
    start_guest(cluster, &agent, &powers_off, "guest2");
    for vm in [&stays, &powers_off] {
        vm.wait_phase("Running", BOOT);
        vm.wait_ip(BOOT);
    }
    let before = identity(&stays);

    cluster.ctl("stop", "kube-apiserver");
    cluster.ctl("stop", "etcd");
    let down = Instant::now();
    // The guest powers off (ACPI, as from inside) while nobody can record it.
    virsh(&["shutdown", &powers_off.domain()]);
    wait_for(Duration::from_secs(30), "the guest to power off", || {
        virsh(&["domstate", &powers_off.domain()])
            .contains("shut off")
            .then_some(())
    });
    let (ok, out, err) = agent.admin(&["vms"]);
    assert!(
        ok && out.contains("stays"),
        "admin socket during the outage: {err}"
    );
    let (ok, out, err) = agent.admin(&["health"]);
    assert!(ok, "admin health during the outage: {out} {err}");
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    assert_eq!(
        identity(&stays),
        before,
        "a VM was touched during the outage"
    );
    let (ok, _, err) = agent.admin(&["show", &format!("{}/stays", ns.name)]);
    assert!(ok, "admin show after a minute without the API: {err}");

    cluster.ctl("start", "etcd");
    cluster.ctl("start", "kube-apiserver");
    let back = Instant::now();
    powers_off.wait_phase("Succeeded", Duration::from_secs(90));
    eprintln!(
        "timing: API back -> status caught up {:.2}s",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(stays.phase(), "Running");
    assert_eq!(
        identity(&stays),
        before,
        "a VM was touched after the outage"
    );
    let describe = cluster.kubectl_ok(&["-n", &ns.name, "describe", "vm", powers_off.name]);
    assert!(describe.contains("Stopped"), "{describe}");
}
