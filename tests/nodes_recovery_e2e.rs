//! nodevirt's agents on the two-node cluster of tests/nodes_e2e.rs (hack/deploy.sh) being
//! replaced, killed or cut off: a rollout one node at a time, a deleted or killed agent pod,
//! a lost node whose replicas come back on the other. Run as nodes_e2e is, alone and one test
//! at a time (`cargo test --test nodes_recovery_e2e -- --ignored --test-threads=1`).

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, wait_for, wait_for_explained};
use support::deployed::{
    agents_ready, cluster, domain_ids, idle_vm_yaml, idle_vms, in_nodevirt, in_nodevirt_unchecked,
    node_vm_dir, not_running,
};
use support::node::Node;
use support::vm::{BOOT, Vm};
#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn a_rollout_replaces_every_agent_one_node_at_a_time_and_restarts_no_vm() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let ns = cluster.namespace("e2e-rollout");
    let vms = idle_vms(&ns, &nodes, 10);
    let before = domain_ids(&ns, &nodes, &vms);
    let old_pods: Vec<String> = nodes.iter().map(|n| n.agent_pod().1).collect();

    // A new image: the archive hack/deploy.sh imported carries the version's tag too.
    let image = in_nodevirt(&[
        "get",
        "daemonset",
        "nodevirt-agent",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    let version_tag = format!("nodevirt:{}", env!("CARGO_PKG_VERSION"));
    let commit_tag = image.trim().to_string();
    assert_ne!(
        commit_tag, version_tag,
        "hack/deploy.sh deploys the commit's tag"
    );
    let restore = Restore(commit_tag.clone());
    let started = Instant::now();
    in_nodevirt(&[
        "set",
        "image",
        "daemonset/nodevirt-agent",
        &format!("agent={version_tag}"),
    ]);
    // While it rolls: at most one node without an agent, and every VM Running throughout.
    let mut seen_phases = Vec::new();
    wait_for_explained(
        Duration::from_secs(300),
        "the rollout to replace both agents",
        || {
            seen_phases.extend(not_running(&ns));
            (agents_ready() == "2/2/2"
                && nodes
                    .iter()
                    .zip(&old_pods)
                    .all(|(n, old)| n.agent_pod().1 != *old))
            .then_some(())
        },
        agents_ready,
    );
    let rollout = started.elapsed();
    println!(
        "rollout of 2 agents with 10 VMs running: {:.1} s",
        rollout.as_secs_f64()
    );
    assert!(
        seen_phases.is_empty(),
        "VMs left Running during the rollout: {seen_phases:?}"
    );
    assert_eq!(
        domain_ids(&ns, &nodes, &vms),
        before,
        "a domain was restarted"
    );
    // The new agents adopted the VMs: they still report them, and delete them when asked.
    let (first, n) = &vms[0];
    cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", first, "--timeout=60s"]);
    let domain = Vm {
        ns: &ns.name,
        name: first,
    }
    .domain();
    wait_for(
        Duration::from_secs(30),
        "the deleted VM's domain to go",
        || (!nodes[*n].domains().contains(&domain)).then_some(()),
    );
    drop(restore);
}

/// Puts the DaemonSet's image back, so a failed assertion leaves the cluster as deployed.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        in_nodevirt_unchecked(&[
            "set",
            "image",
            "daemonset/nodevirt-agent",
            &format!("agent={}", self.0),
        ]);
        in_nodevirt_unchecked(&[
            "rollout",
            "status",
            "daemonset/nodevirt-agent",
            "--timeout=300s",
        ]);
    }
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn a_deleted_or_killed_agent_comes_back_and_adopts_its_vms() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let ns = cluster.namespace("e2e-agentpod");
    let vms = idle_vms(&ns, &nodes, 4);
    let before = domain_ids(&ns, &nodes, &vms);
    let node = &nodes[0];

    // Deleted: the DaemonSet makes a new pod.
    let (pod, uid) = node.agent_pod();
    in_nodevirt(&["delete", "pod", &pod, "--wait=false"]);
    wait_for(Duration::from_secs(120), "a new agent pod on node1", || {
        (node.agent_pod().1 != uid).then_some(())
    });
    // Killed as the OOM killer would: the container is restarted in the same pod.
    let (pod, _) = node.agent_pod();
    let restarts = |pod: &str| {
        in_nodevirt(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
    };
    let count = restarts(&pod);
    let pid = node.agent_pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    wait_for(
        Duration::from_secs(120),
        "the killed agent's container to restart",
        || (restarts(&pod) != count && node.agent_pod().0 == pod).then_some(()),
    );

    assert!(not_running(&ns).is_empty(), "{:?}", not_running(&ns));
    assert_eq!(
        domain_ids(&ns, &nodes, &vms),
        before,
        "a domain was restarted"
    );
    // Adopted, not just left alone: the agent acts on a VM it did not start.
    let (name, _) = vms.iter().find(|(_, n)| *n == 0).unwrap();
    cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", name, "--timeout=60s"]);
    let domain = Vm { ns: &ns.name, name }.domain();
    assert!(
        !node.domains().contains(&domain),
        "{domain} outlived its VM"
    );
    // And it runs new ones.
    cluster.apply(&idle_vm_yaml(&ns.name, "after", &node.name));
    Vm {
        ns: &ns.name,
        name: "after",
    }
    .wait_phase("Running", BOOT);
}

/// Starts a node's stopped kubelet again (`NODE/kubelet`), also when the test fails first.
struct NodeBack(String);

impl Drop for NodeBack {
    fn drop(&mut self) {
        Cluster::get().ctl("start", &self.0);
    }
}

/// Sets `args` on the container of a nodevirt workload (`daemonset/...` or `deployment/...`)
/// and waits for its rollout; the guard puts the old ones back.
struct Tuned {
    workload: &'static str,
    old: String,
}

fn container_args(workload: &str) -> String {
    in_nodevirt(&[
        "get",
        workload,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ])
}

fn set_args(workload: &str, args_json: &str) {
    in_nodevirt(&[
        "patch",
        workload,
        "--type=json",
        "-p",
        &format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/args","value":{args_json}}}]"#
        ),
    ]);
    in_nodevirt(&["rollout", "status", workload, "--timeout=300s"]);
}

impl Tuned {
    fn with(workload: &'static str, extra: &[&str]) -> Tuned {
        let old = container_args(workload);
        let mut args: Vec<String> = serde_json::from_str(&old).unwrap();
        args.extend(extra.iter().map(|a| a.to_string()));
        set_args(workload, &serde_json::to_string(&args).unwrap());
        Tuned { workload, old }
    }
}

impl Drop for Tuned {
    fn drop(&mut self) {
        set_args(self.workload, &self.old);
    }
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn a_lost_node_s_replicas_come_back_on_the_other_and_never_run_twice() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let (node1, node2) = (&nodes[0], &nodes[1]);
    // An operator's tuning for a quick test: a heartbeat every 5 s, a node lost after 30 s
    // without one (defaults: 60 s and 300 s).
    let _agents = Tuned::with("daemonset/nodevirt-agent", &["--heartbeat-interval=5"]);
    let _controller = Tuned::with(
        "deployment/nodevirt-controller",
        &["--node-heartbeat-timeout=30"],
    );
    let ns = cluster.namespace("e2e-nodeloss");
    // Preferred on node2, so the replicas start there and can only come back on node1.
    cluster.apply(&format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachineReplicaSet
metadata: {{name: lost, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: lost}}}}
  template:
    metadata: {{labels: {{app: lost}}}}
    spec:
      terminationGracePeriodSeconds: 0
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]
      domain:
        resources: {{requests: {{memory: 32Mi}}}}
        devices:
          disks: [{{name: scratch, volumeName: scratch, disk: {{bus: virtio}}}}]
      volumes: [{{name: scratch, emptyDisk: {{capacity: 16Mi}}}}]
"#,
        ns = ns.name,
        node = node2.name
    ));
    let replicas = |node: &str| -> Vec<(String, String)> {
        let out = cluster.kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "vms",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.nodeName} {.status.phase}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() == 4 && f[2] == node && f[3] == "Running")
                    .then(|| (f[0].to_string(), f[1].to_string()))
            })
            .collect()
    };
    let lost = wait_for(
        Duration::from_secs(120),
        "2 replicas Running on node2",
        || Some(replicas(&node2.name)).filter(|r| r.len() == 2),
    );

    // node2 is lost: its kubelet and its agent die; libvirtd and the guests keep running, as
    // behind a network partition.
    let kubelet = format!("{}/kubelet", node2.name);
    cluster.ctl("stop", &kubelet);
    let node_back = NodeBack(kubelet.clone());
    let pid = node2.agent_pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let lost_at = Instant::now();
    for (name, _) in &lost {
        // Up to the timeout, plus a controller failover if the leader's Lease was renewed by
        // a replica the tuning rollout replaced (15 s), plus the marking period.
        Vm { ns: &ns.name, name }.wait_phase("Unknown", Duration::from_secs(240));
    }
    let unknown_after = lost_at.elapsed();
    wait_for(
        Duration::from_secs(180),
        "2 replacement replicas Running on node1",
        || (replicas(&node1.name).len() == 2).then_some(()),
    );
    let replaced_after = lost_at.elapsed();
    println!(
        "node lost: its VMs Unknown after {:.1} s, replicas Running on {} after {:.1} s",
        unknown_after.as_secs_f64(),
        node1.name,
        replaced_after.as_secs_f64()
    );

    // node2 returns: its agent finds the replaced VMs deleted, destroys their domains and
    // removes their folders, and only then are they gone.
    drop(node_back);
    let back = Instant::now();
    for (name, uid) in &lost {
        let vm = Vm { ns: &ns.name, name };
        wait_for_explained(
            Duration::from_secs(180),
            &format!("the replaced VM {name} to be gone"),
            || (!vm.exists()).then_some(()),
            || vm.describe(),
        );
        assert!(
            !node2.domains().contains(&vm.domain()),
            "{name} still runs on node2"
        );
        let folder = node2.exec(&["test", "-e", &node_vm_dir(uid)]);
        assert!(
            !folder.status.success(),
            "{name}'s folder is still on node2"
        );
    }
    println!(
        "node back: replaced VMs' domains destroyed after {:.1} s",
        back.elapsed().as_secs_f64()
    );
    node2.agent_pod();
    assert_eq!(replicas(&node1.name).len(), 2);
}
