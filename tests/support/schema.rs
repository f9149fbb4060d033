//! Objects for the CRD schema tests (tests/schema_e2e.rs, tests/schema_limits_e2e.rs): a valid
//! VM and its OfflineVirtualMachine, ReplicaSet and preset forms, each changed by a closure,
//! and `kubectl apply --dry-run=server` of them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use super::cluster::Cluster;

/// `kubectl apply --dry-run=server -f -` of `object` (JSON), as the cluster's admin.
pub fn dry_run(cluster: &Cluster, object: &Value) -> Output {
    let mut child = Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-f", "-"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl must be on PATH (hack/install-deps.sh builds it)");
    let text = serde_json::to_vec(object).unwrap();
    child.stdin.take().unwrap().write_all(&text).unwrap();
    child.wait_with_output().unwrap()
}

/// Panics with kubectl's error unless the apiserver accepts `object` (`what` names it).
pub fn accepted(cluster: &Cluster, what: &str, object: &Value) {
    let out = dry_run(cluster, object);
    assert!(
        out.status.success(),
        "{what} must be accepted; kubectl said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A valid VM: memory, one disk on one volume.
pub fn vm() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "attack", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "cpu": {"cores": 1},
                "devices": {"disks": [{"name": "root", "volumeName": "root", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [{"name": "root", "emptyDisk": {"capacity": "1Gi"}}],
        },
    })
}

/// `vm()` changed by `change`.
pub fn vm_with(change: impl FnOnce(&mut Value)) -> Value {
    let mut vm = vm();
    change(&mut vm);
    vm
}

/// The spec of `vm_with(change)`, as the template of an OfflineVirtualMachine.
pub fn offline_vm_with(change: impl FnOnce(&mut Value)) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "OfflineVirtualMachine",
        "metadata": {"name": "attack", "namespace": "default"},
        "spec": {"running": false, "template": {"spec": vm_with(change)["spec"].clone()}},
    })
}

/// The spec of `vm_with(change)`, as the template of a VirtualMachineReplicaSet.
pub fn replica_set_with(change: impl FnOnce(&mut Value)) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachineReplicaSet",
        "metadata": {"name": "attack", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"guest": "attack"}},
            "template": {
                "metadata": {"labels": {"guest": "attack"}},
                "spec": vm_with(change)["spec"].clone(),
            },
        },
    })
}

/// A valid preset (cores and memory) whose domain is changed by `change`.
pub fn preset_with(change: impl FnOnce(&mut Value)) -> Value {
    let mut domain = json!({"resources": {"requests": {"memory": "128Mi"}}, "cpu": {"cores": 1}});
    change(&mut domain);
    json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachinePreset",
        "metadata": {"name": "m1.attack", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"kubevirt.io/size": "attack"}}, "domain": domain},
    })
}

/// `count` disks d<i>, each on an emptyDisk volume v<i> of its own, on `target` (`{"disk":
/// {"bus": "virtio"}}` and the like).
pub fn disks(spec: &mut Value, count: usize, target: Value) {
    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    for i in 0..count {
        let mut disk = json!({"name": format!("d{i}"), "volumeName": format!("v{i}")});
        disk.as_object_mut()
            .unwrap()
            .extend(target.as_object().unwrap().clone());
        disks.push(disk);
        volumes.push(json!({"name": format!("v{i}"), "emptyDisk": {"capacity": "1Gi"}}));
    }
    spec["domain"]["devices"]["disks"] = Value::Array(disks);
    spec["volumes"] = Value::Array(volumes);
}

/// The VM's first disk.
pub fn first_disk(vm: &mut Value) -> &mut Value {
    &mut vm["spec"]["domain"]["devices"]["disks"][0]
}

/// The VM's first volume.
pub fn first_volume(vm: &mut Value) -> &mut Value {
    &mut vm["spec"]["volumes"][0]
}

/// Standard base64, as `userDataBase64` holds it.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
