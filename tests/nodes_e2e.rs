//! nodevirt as its users run it: on a cluster with two real nodes (kubelet, containerd,
//! kube-proxy and libvirtd each, hack/cluster-up.sh NAME --nodes 2), deployed from its image
//! with `kubectl apply -k` (hack/deploy.sh): the agent DaemonSet's pods and the controller
//! Deployment's, placing and booting guests. Its agents being replaced, killed or cut off are
//! in tests/nodes_recovery_e2e.rs. hack/test.sh starts that cluster after the other suites and
//! runs both files alone, one test at a time (`cargo test --test nodes_e2e -- --ignored
//! --test-threads=1`): they replace and kill the agent pods every other test would use.

mod support;

use std::time::Duration;

use support::cluster::{wait_for, wait_for_explained};
use support::deployed::{agents_ready, cluster, idle_vms, in_nodevirt, node_vm_dir};
use support::node::Node;
use support::vm::{BOOT, Vm, user_data, vm_yaml};
#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn every_node_runs_a_ready_agent_pod_and_the_controller_elects_a_leader() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    assert_eq!(nodes.len(), 2, "the suite expects two nodes");
    assert_eq!(agents_ready(), "2/2/2");
    for node in &nodes {
        let (pod, _) = node.agent_pod();
        // The pod's projected token is bound to the node: the admission policy let the
        // agent label its own Node (the heartbeat), and only with such a token.
        let label = cluster.kubectl_ok(&[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.metadata.labels.kubevirt\\.io/schedulable}",
        ]);
        assert_eq!(
            label, "true",
            "{}'s agent {pod} did not label its Node",
            node.name
        );
        // Logs are JSON lines on stdout, read through the API server from the kubelet.
        let logs = in_nodevirt(&["logs", &pod]);
        let first = logs.lines().next().expect("the agent logged nothing");
        let line: serde_json::Value = serde_json::from_str(first)
            .unwrap_or_else(|e| panic!("agent log line is not JSON ({e}): {first}"));
        assert!(line.get("level").is_some(), "{line}");
    }
    // Ready and not terminating: a replica of an earlier rollout may still be shutting down.
    let ready_pods = || {
        in_nodevirt(&[
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=nodevirt-controller",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} \
             {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
        .lines()
        .filter(|l| l.split_whitespace().collect::<Vec<_>>().len() == 2 && l.ends_with("True"))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect::<Vec<String>>()
    };
    let pods = wait_for(
        Duration::from_secs(120),
        "two Ready controller pods",
        || Some(ready_pods()).filter(|p| p.len() == 2),
    );
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    // A Lease left by a replaced replica lapses within its duration (15 s); then one of these
    // holds it.
    let holder = || {
        in_nodevirt(&[
            "get",
            "lease",
            "nodevirt-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    wait_for_explained(
        Duration::from_secs(60),
        "the Lease held by one of the controller pods",
        || pods.contains(&holder().as_str()).then_some(()),
        || format!("held by {:?}, pods {pods:?}", holder()),
    );
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn guests_boot_on_both_nodes_placed_by_the_controller_pod() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let ns = cluster.namespace("e2e-nodes");
    let mut started = Vec::new();
    for node in &nodes {
        let name = format!("on-{}", node.name);
        // A claim each: a VM writes its claim's image, and QEMU locks it.
        let claim = format!("guest-{}", node.name);
        cluster.guest_claim(&ns.name, &claim);
        // No kubevirt.io/nodeName label: the controller (a pod) places it by nodeSelector.
        let yaml = vm_yaml(
            &ns.name,
            &name,
            &node.name,
            &format!("persistentVolumeClaim: {{claimName: {claim}}}"),
            &user_data("echo up"),
        )
        .replace(
            &format!("  labels: {{kubevirt.io/nodeName: {}}}\n", node.name),
            "",
        )
        .replace(
            "spec:\n",
            &format!(
                "spec:\n  nodeSelector: {{kubernetes.io/hostname: {}}}\n",
                node.name
            ),
        );
        cluster.apply(&yaml);
        started.push((name, node));
    }
    for (name, node) in &started {
        let vm = Vm { ns: &ns.name, name };
        vm.wait_phase("Running", BOOT);
        assert_eq!(vm.get("{.status.nodeName}"), node.name);
        let ip = vm.wait_ip(BOOT);
        assert!(
            ip.starts_with("10.213."),
            "{name}: an address of {}'s libvirt network, got {ip}",
            node.name
        );
        // On the node, `nodevirt admin` reaches the agent pod through the hostPath socket.
        let admin = node.exec_ok(&[env!("CARGO_BIN_EXE_nodevirt"), "admin", "vms"]);
        assert!(
            admin.contains(name.as_str()),
            "{}: admin vms:\n{admin}",
            node.name
        );
        assert!(node.domains().contains(&vm.domain()), "{}", node.name);
    }
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn the_agent_in_its_pod_chooses_the_hypervisor_the_host_would_and_writes_only_its_host_paths() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let ns = cluster.namespace("e2e-hostpaths");
    let vms = idle_vms(&ns, &nodes, 2);
    for node in &nodes {
        let on_host = node.exec_ok(&[env!("CARGO_BIN_EXE_nodevirt"), "hypervisor"]);
        let on_host = on_host.trim();
        assert!(on_host == "kvm" || on_host == "qemu", "{on_host:?}");
        let metrics = node.metrics();
        let in_pod = format!("nodevirt_agent_hypervisor{{type=\"{on_host}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == in_pod),
            "{}: the host's agent chooses {on_host}; the pod's metrics say:\n{}",
            node.name,
            metrics
                .lines()
                .filter(|l| l.starts_with("nodevirt_agent_hypervisor"))
                .collect::<Vec<_>>()
                .join("\n")
        );

        // Writable to the agent: its hostPaths, and the files kubelet gives every container.
        let pid = node.agent_pid();
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let writable_allowed = [
            "/run/libvirt",
            "/var/lib/nodevirt",
            "/run/nodevirt",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/dev/termination-log",
        ];
        let mut root_read_only = false;
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (target, options) = (fields[4], fields[5]);
            let writable = options.split(',').any(|o| o == "rw");
            if target == "/" {
                root_read_only = !writable;
            } else if writable
                && !["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|p| target == *p || target.starts_with(&format!("{p}/")))
            {
                assert!(
                    writable_allowed.contains(&target),
                    "{}: the agent can write at {target}, which is not one of its hostPaths:\n{line}",
                    node.name
                );
            }
        }
        assert!(
            root_read_only,
            "{}: the agent's root filesystem is writable",
            node.name
        );
    }
    // What it wrote for its VMs is on the node, in the node's state folder.
    for (name, n) in &vms {
        let uid = Vm { ns: &ns.name, name }.uid();
        let listing = nodes[*n].exec_ok(&["ls", &node_vm_dir(&uid)]);
        assert!(listing.contains("console.log"), "{name}: {listing}");
    }
}
