//! The local cluster itself: the apiserver serves the CRDs, and libvirt boots the tiny guest
//! under TCG to a DHCP lease with its user-data run.

mod support;

use std::time::Duration;

use support::cluster::{Cluster, wait_for};
use support::direct::DirectGuest;

#[test]
fn apiserver_serves_the_four_crds_and_kubectl_uses_them() {
    let cluster = Cluster::get();
    let resources = cluster.kubectl_ok(&["api-resources", "--api-group=kubevirt.io", "-o", "wide"]);
    for (plural, short) in [
        ("virtualmachines", "vm"),
        ("offlinevirtualmachines", "ovm"),
        ("virtualmachinereplicasets", "vmrs"),
        ("virtualmachinepresets", "vmpreset"),
    ] {
        assert!(
            resources.contains(plural) && resources.contains(short),
            "{plural}:\n{resources}"
        );
    }
    let ns = cluster.namespace("e2e-kubectl");
    for kind in ["vms", "ovms", "vmrs", "vmpreset"] {
        let out = cluster.kubectl(&["-n", &ns.name, "get", kind]);
        assert!(
            out.status.success(),
            "kubectl get {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.kubectl_ok(&["-n", &ns.name, "apply", "-f", "examples/preset.yaml"]);
    let listed = cluster.kubectl_ok(&["-n", &ns.name, "get", "vmpreset"]);
    assert!(listed.contains("m1.small"), "{listed}");
}

#[test]
fn the_deployment_manifest_passes_a_server_side_dry_run() {
    let cluster = Cluster::get();
    let out = cluster.kubectl_ok(&["apply", "--dry-run=server", "-f", "daemonset.yaml"]);
    for object in [
        "daemonset.apps/nodevirt-agent",
        "deployment.apps/nodevirt-controller",
    ] {
        assert!(out.contains(object), "{out}");
    }
}

#[tokio::test]
async fn libvirt_boots_the_tiny_guest_to_a_lease_under_tcg() {
    let cluster = Cluster::get();
    let guest = DirectGuest::define(
        cluster,
        "guestboot",
        "#!/bin/sh\necho direct-boot-user-data\n",
    )
    .await;
    let (to_lease, lease) = guest.start_to_lease(Duration::from_secs(60));
    eprintln!(
        "timing: virsh start -> lease {:.2}s",
        to_lease.as_secs_f64()
    );
    assert!(lease.contains("10.213.0."), "{lease}");
    wait_for(
        Duration::from_secs(60),
        "the user-data's output in the serial log",
        || {
            let log = std::fs::read_to_string(guest.layout.console_log()).unwrap_or_default();
            log.contains("direct-boot-user-data").then_some(())
        },
    );
    guest.remove().await;
}
