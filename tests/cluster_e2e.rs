//! The local cluster itself: the apiserver serves the CRDs, and libvirt boots the tiny guest under TCG to a DHCP lease with its user-data run.

mod support;

use std::time::Duration;

use nodevirt::api::VirtualMachine;
use nodevirt::domain::{DomainType, ImageFormat, RenderOptions, ResolvedVolume, render};
use nodevirt::hypervisor::Libvirt;
use nodevirt::storage::files;
use nodevirt::storage::layout::{VmLayout, resolve_volumes};
use support::cluster::{Cluster, virsh, wait_for};

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
    let uid = "7e57b007-0000-4000-8000-000000000001";
    let name = "guestboot";
    let state = cluster.dir.join("state").join("direct-boot");
    let layout = VmLayout::new(&state, uid);
    let image = cluster.guest_claim("default", "direct-boot");
    let mut vm: VirtualMachine = serde_yaml::from_str(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: default, uid: {uid}}}\n\
         spec:\n  domain:\n    resources: {{requests: {{memory: 128Mi}}}}\n    devices:\n      disks:\n\
         \x20     - {{name: root, volumeName: root}}\n      - {{name: ci, volumeName: ci}}\n  volumes:\n\
         \x20 - {{name: root, persistentVolumeClaim: {{claimName: direct-boot}}}}\n\
         \x20 - {{name: ci, cloudInitNoCloud: {{userData: x}}}}\n"
    ))
    .unwrap();
    vm.metadata.uid = Some(uid.into());
    let claim = ResolvedVolume::File {
        path: image.display().to_string(),
        format: ImageFormat::Raw,
    };
    let volumes = resolve_volumes(&vm.spec, &layout, |_| Some(claim.clone()));
    let options = RenderOptions {
        domain_type: DomainType::Qemu,
        network: Some("nodevirt".into()),
        console_log: layout.console_log().display().to_string(),
        node: None,
    };
    let xml = render(&vm, &volumes, &options).unwrap().to_xml().unwrap();
    files::ensure_vm_dir(&layout).await.unwrap();
    let iso = layout.volume_file(1, nodevirt::api::volume::VolumeKind::CloudInitNoCloud);
    files::ensure_cloud_init_iso(&iso, uid, name, b"#!/bin/sh\necho direct-boot-user-data\n")
        .await
        .unwrap();

    let libvirt = Libvirt::open("qemu:///system").unwrap();
    let domain = format!("default_{name}");
    let _ = libvirt
        .destroy(&domain)
        .and_then(|_| libvirt.undefine(&domain));
    libvirt.define(&domain, &xml).unwrap();
    libvirt.start(&domain).unwrap();
    let started = std::time::Instant::now();
    let lease = wait_for(Duration::from_secs(60), "a DHCP lease within 60 s", || {
        let out = virsh(&["domifaddr", &domain, "--source", "lease"]);
        out.contains("ipv4").then_some(out)
    });
    eprintln!(
        "timing: virsh start -> lease {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(lease.contains("10.213.0."), "{lease}");
    wait_for(
        Duration::from_secs(60),
        "the user-data's output in the serial log",
        || {
            let log = std::fs::read_to_string(layout.console_log()).unwrap_or_default();
            log.contains("direct-boot-user-data").then_some(())
        },
    );
    libvirt.destroy(&domain).unwrap();
    libvirt.undefine(&domain).unwrap();
    files::remove_vm_dir(layout.dir()).await.unwrap();
}
