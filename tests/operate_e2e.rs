//! Operating the agent: its Prometheus metrics for a running VM (KubeVirt's names, non-zero,
//! gone after deletion) and its health endpoints.

mod support;

use std::time::Duration;

use support::agent::Agent;
use support::cluster::{Cluster, wait_for};
use support::vm::{BOOT, Vm, console_log, user_data, vm_yaml};

/// The value of the series `name{...namespace="ns",name="vm"...}` in a scrape.
fn sample(text: &str, metric: &str, vm: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&format!("name=\"{vm}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_show_a_running_vm_and_forget_it_when_deleted() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-ops");
    let agent = Agent::start(cluster, "ops");
    assert_eq!(agent.get("/healthz").0, 200);
    wait_for(Duration::from_secs(30), "/readyz", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    cluster.guest_claim(&ns.name, "guest");
    let vm = Vm {
        ns: &ns.name,
        name: "watched",
    };
    cluster.apply(&vm_yaml(
        vm.ns,
        vm.name,
        &agent.node,
        "ephemeral: {persistentVolumeClaim: {claimName: guest}}",
        &user_data("dd if=/dev/zero of=/dev/vdc bs=64k count=16 2>/dev/null; sync; echo io-done"),
    ));
    vm.wait_phase("Running", BOOT);
    let uid = vm.uid();
    wait_for(BOOT, "the guest's disk writes and lease", || {
        (console_log(&agent, &uid).contains("io-done") && !vm.ip().is_empty()).then_some(())
    });
    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200);
    for metric in [
        "kubevirt_vmi_vcpu_seconds_total",
        "kubevirt_vmi_memory_resident_bytes",
        "kubevirt_vmi_network_receive_bytes_total",
        "kubevirt_vmi_network_transmit_bytes_total",
        "kubevirt_vmi_storage_read_traffic_bytes_total",
        "kubevirt_vmi_storage_write_traffic_bytes_total",
    ] {
        let value = sample(&text, metric, vm.name)
            .unwrap_or_else(|| panic!("no {metric} for the VM:\n{text}"));
        assert!(value > 0.0, "{metric} is {value}");
    }
    assert!(
        text.contains(&format!(
            "kubevirt_vmi_phase_count{{node=\"{}\",phase=\"running\"}} 1",
            agent.node
        )),
        "{text}"
    );
    assert!(
        text.contains("nodevirt_reconciles_total{result=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("nodevirt_vm_creation_to_running_seconds_count 1"),
        "{text}"
    );

    cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name, "--wait=true"]);
    let (_, text) = agent.get("/metrics");
    assert!(
        sample(&text, "kubevirt_vmi_vcpu_seconds_total", vm.name).is_none(),
        "series of a deleted VM:\n{text}"
    );
}
