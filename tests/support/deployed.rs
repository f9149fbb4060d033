//! nodevirt as hack/deploy.sh deployed it on a cluster with real nodes: the cluster itself,
//! kubectl in the `nodevirt` namespace, and idle VMs spread over the nodes. Shared by
//! tests/nodes_e2e.rs and tests/nodes_recovery_e2e.rs.

use std::collections::BTreeMap;

use nodevirt::storage::layout::{DEFAULT_STATE_DIR, VmLayout};

use super::cluster::{Cluster, Namespace};
use super::node::Node;
use super::vm::{BOOT, Vm};

/// A VM's folder on a node whose agent runs with the DaemonSet's (default) state folder.
pub fn node_vm_dir(uid: &str) -> String {
    VmLayout::new(std::path::Path::new(DEFAULT_STATE_DIR), uid)
        .dir()
        .display()
        .to_string()
}

/// The test cluster, which must have real nodes.
pub fn cluster() -> &'static Cluster {
    let cluster = Cluster::get();
    assert!(
        cluster.has_nodes(),
        "{} has no real nodes: start it with hack/cluster-up.sh NAME --nodes 2 and hack/deploy.sh NAME",
        cluster.dir.display()
    );
    cluster
}

/// A VM that costs little under TCG: no guest OS (SeaBIOS finds no bootable disk and waits),
/// assigned to `node` directly.
pub fn idle_vm_yaml(ns: &str, name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {ns}
  labels: {{kubevirt.io/nodeName: {node}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    resources: {{requests: {{memory: 32Mi}}}}
    devices:
      disks:
      - {{name: scratch, volumeName: scratch, disk: {{bus: virtio}}}}
  volumes:
  - {{name: scratch, emptyDisk: {{capacity: 16Mi}}}}
"#
    )
}

/// `count` idle VMs spread over `nodes`, Running; returns (vm name, node index).
pub fn idle_vms(ns: &Namespace, nodes: &[Node], count: usize) -> Vec<(String, usize)> {
    let cluster = cluster();
    let vms: Vec<(String, usize)> = (0..count)
        .map(|i| (format!("idle{i}"), i % nodes.len()))
        .collect();
    let yaml: Vec<String> = vms
        .iter()
        .map(|(name, n)| idle_vm_yaml(&ns.name, name, &nodes[*n].name))
        .collect();
    cluster.apply(&yaml.join("---\n"));
    for (name, _) in &vms {
        Vm { ns: &ns.name, name }.wait_phase("Running", BOOT);
    }
    vms
}

/// Every VM's libvirt domain ID on its node: a restarted domain gets a new one.
pub fn domain_ids(
    ns: &Namespace,
    nodes: &[Node],
    vms: &[(String, usize)],
) -> BTreeMap<String, String> {
    vms.iter()
        .map(|(name, n)| {
            let vm = Vm { ns: &ns.name, name };
            (name.clone(), nodes[*n].domain_id(&vm.domain()))
        })
        .collect()
}

/// Phases of every VM of the namespace that is not Running, as "name=phase".
pub fn not_running(ns: &Namespace) -> Vec<String> {
    let out = cluster().kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "vms",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter(|l| !l.ends_with("=Running"))
        .map(str::to_string)
        .collect()
}

/// `kubectl -n nodevirt ARGS`: its stdout; panics if it fails.
pub fn in_nodevirt(args: &[&str]) -> String {
    let mut all = vec!["-n", "nodevirt"];
    all.extend_from_slice(args);
    Cluster::get().kubectl_ok(&all)
}

/// `kubectl -n nodevirt ARGS`, for clean-up that must not panic while a test unwinds.
pub fn in_nodevirt_unchecked(args: &[&str]) {
    let mut all = vec!["-n", "nodevirt"];
    all.extend_from_slice(args);
    Cluster::get().kubectl(&all);
}

/// The agent DaemonSet's "ready/desired/updated" pod counts.
pub fn agents_ready() -> String {
    in_nodevirt(&[
        "get",
        "daemonset",
        "nodevirt-agent",
        "-o",
        "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}/{.status.updatedNumberScheduled}",
    ])
}
