//! VMs placed by kube-scheduler through their holder pods, on the two real nodes of
//! hack/deploy.sh's cluster: cordon, taints, drain with a PodDisruptionBudget, node memory shared
//! with plain pods, a namespace's ResourceQuota, and restarts that create no second pod.
//! Each test puts back what it changed on the nodes (cordon, taints), also when it fails.
//!

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, Namespace, wait_for_explained};
use support::deployed::{cluster, domain_ids, in_nodevirt};
use support::node::Node;
use support::vm::{BOOT, Vm};

/// An idle VM (no guest OS: SeaBIOS finds nothing to boot and waits) that the controller and
/// kube-scheduler place: no node label. `spec` lines are added under `spec:`.
fn idle_vm(ns: &str, name: &str, labels: &str, memory: &str, spec: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
{spec}  terminationGracePeriodSeconds: 5
  domain:
    resources: {{requests: {{memory: {memory}}}}}
"#
    )
}

/// Undoes a node change (`kubectl ARGS`) when dropped, so a failing test leaves the nodes as
/// the next test expects them.
struct Undo(Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        Cluster::get().kubectl(&args);
    }
}

fn kubectl_changing(node_change: &[&str], undo: &[&str]) -> Undo {
    Cluster::get().kubectl_ok(node_change);
    Undo(undo.iter().map(|s| s.to_string()).collect())
}

fn create_running(ns: &Namespace, names: &[String], spec: &str) -> Vec<String> {
    let yaml: Vec<String> = names
        .iter()
        .map(|n| idle_vm(&ns.name, n, "app: sched", "32Mi", spec))
        .collect();
    cluster().apply(&yaml.join("---\n"));
    names
        .iter()
        .map(|name| {
            let vm = Vm { ns: &ns.name, name };
            vm.wait_phase("Running", BOOT);
            vm.get("{.status.nodeName}")
        })
        .collect()
}

/// Every holder pod of the namespace: (pod name, VM it holds, node, phase).
fn holder_pods(ns: &str) -> Vec<(String, String, String, String)> {
    let out = cluster().kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        "kubevirt.io=virt-launcher",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.labels.kubevirt\\.io/vm} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let at = |i: usize| f.get(i).unwrap_or(&"").to_string();
            (at(0), at(1), at(2), at(3))
        })
        .collect()
}

/// Waits until `vm`'s conditions say `words` (the scheduler's or the API server's), and checks
/// it is Pending.
fn stays_pending_saying(vm: &Vm, words: &str) {
    wait_for_explained(
        Duration::from_secs(60),
        &format!("{words:?} in the conditions of VM {}", vm.name),
        || conditions(vm).contains(words).then_some(()),
        || vm.describe(),
    );
    assert_eq!(vm.phase(), "Pending", "{}", vm.describe());
}

fn conditions(vm: &Vm) -> String {
    vm.get("{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}")
}

/// The kubelet sandbox image every node of the local cluster has (hack/lib.sh PAUSE_IMAGE):
/// a plain pod that needs no registry.
const PAUSE_IMAGE: &str = "localhost/nodevirt-pause:1";

fn allocatable_bytes(node: &str) -> u64 {
    let q = cluster().kubectl_ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.allocatable.memory}",
    ]);
    nodevirt::api::quantity::parse_bytes(q.trim(), "allocatable.memory").unwrap()
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn cordon_and_a_no_schedule_taint_keep_new_vms_off_a_node() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let (one, two) = (&nodes[0].name, &nodes[1].name);
    let ns = cluster.namespace("e2e-sched-cordon");

    let cordoned = kubectl_changing(&["cordon", one], &["uncordon", one]);
    let names: Vec<String> = (0..3).map(|i| format!("cordoned{i}")).collect();
    let placed = create_running(&ns, &names, "");
    assert!(
        placed.iter().all(|n| n == two),
        "{one} is cordoned, yet VMs landed on {placed:?}"
    );
    drop(cordoned);

    let _tainted = kubectl_changing(
        &["taint", "node", two, "nodevirt-e2e=x:NoSchedule"],
        &["taint", "node", two, "nodevirt-e2e=x:NoSchedule-"],
    );
    let names: Vec<String> = (0..3).map(|i| format!("tainted{i}")).collect();
    let placed = create_running(&ns, &names, "");
    assert!(
        placed.iter().all(|n| n == one),
        "{two} has a NoSchedule taint, yet VMs landed on {placed:?}"
    );
    // A VM that tolerates nothing and may go only to the tainted node waits, with the
    // scheduler's reason.
    cluster.apply(&idle_vm(
        &ns.name,
        "only-tainted",
        "app: sched",
        "32Mi",
        &format!("  nodeSelector: {{kubernetes.io/hostname: {two}}}\n"),
    ));
    let vm = Vm {
        ns: &ns.name,
        name: "only-tainted",
    };
    stays_pending_saying(&vm, "untolerated taint");
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn drain_evicts_holder_pods_and_a_replica_set_comes_back_on_the_other_node_as_its_pdb_allows() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let (one, two) = (&nodes[0].name, &nodes[1].name);
    let ns = cluster.namespace("e2e-sched-drain");

    // Both replicas start on node one: node two is cordoned until they run.
    let cordoned = kubectl_changing(&["cordon", two], &["uncordon", two]);
    cluster.apply(&format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachineReplicaSet
metadata: {{name: drained, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: drained}}}}
  template:
    metadata: {{labels: {{app: drained}}}}
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        resources: {{requests: {{memory: 32Mi}}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: drained, namespace: {ns}}}
spec:
  minAvailable: 1
  selector: {{matchLabels: {{app: drained}}}}
"#,
        ns = ns.name
    ));
    let running_on = |node: &str| -> Vec<String> {
        let out = cluster.kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "vms",
            "-l",
            "app=drained",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase}@{.status.nodeName}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter(|l| l.ends_with(&format!("=Running@{node}")))
            .map(|l| l.split('=').next().unwrap().to_string())
            .collect()
    };
    let first = wait_for_explained(
        BOOT,
        "two replicas Running on the first node",
        || Some(running_on(one)).filter(|r| r.len() == 2),
        || cluster.kubectl_ok(&["-n", &ns.name, "get", "vms,pods", "-o", "wide"]),
    );
    drop(cordoned);
    // A budget protects healthy pods only: an eviction API call lets a pod that is not yet
    // Running go whatever the budget says. The VMs run as soon as their pods are bound; the
    // holders' containers start a moment later.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "wait",
        "pods",
        "-l",
        "app=drained",
        "--for=condition=Ready",
        "--timeout=120s",
    ]);

    let _uncordon = Undo(vec!["uncordon".into(), one.clone()]);
    let started = Instant::now();
    let drain = cluster.kubectl(&[
        "drain",
        one,
        "--ignore-daemonsets",
        "--pod-selector=kubevirt.io=virt-launcher",
        "--timeout=240s",
    ]);
    let drained_in = started.elapsed();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );
    assert!(drain.status.success(), "kubectl drain failed:\n{said}");
    assert!(
        said.contains("disruption budget"),
        "the PDB (minAvailable 1 of 2) must make drain wait for the first replacement:\n{said}"
    );
    println!("drain of {one} with 2 replicas and minAvailable 1: {drained_in:?}");

    // The evicted VMs ended Failed, naming the eviction, or were replaced and deleted by the
    // replica set; either way two replicas run on node two.
    wait_for_explained(
        BOOT,
        "two replicas Running on the second node",
        || Some(running_on(two)).filter(|r| r.len() == 2),
        || cluster.kubectl_ok(&["-n", &ns.name, "get", "vms,pods", "-o", "wide"]),
    );
    let events = cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.name} {.reason}{\"\\n\"}{end}",
    ]);
    for vm in &first {
        assert!(
            events.contains(&format!("{vm} Evicted")),
            "{vm} was drained: an Evicted event on it expected, events:\n{events}"
        );
    }
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn vms_and_pods_book_the_same_node_memory() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let (one, two) = (&nodes[0].name, &nodes[1].name);
    let ns = cluster.namespace("e2e-sched-memory");
    let _cordoned = kubectl_changing(&["cordon", two], &["uncordon", two]);
    // Three VMs of 30% each fill the node's allocatable memory (the guests touch little of it
    // under SeaBIOS: the reservation is what counts here, not the use).
    let share = allocatable_bytes(one) * 3 / 10;
    let memory = format!("{}Mi", share >> 20);
    let yaml: Vec<String> = (0..3)
        .map(|i| idle_vm(&ns.name, &format!("big{i}"), "app: big", &memory, ""))
        .collect();
    cluster.apply(&yaml.join("---\n"));
    for i in 0..3 {
        let name = format!("big{i}");
        Vm {
            ns: &ns.name,
            name: &name,
        }
        .wait_phase("Running", BOOT);
    }
    // A plain pod asking as much does not fit beside them.
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: plain, namespace: {ns}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {one}}}
  containers:
  - name: c
    image: {pause}
    imagePullPolicy: Never
    resources: {{requests: {{memory: {memory}}}}}
"#,
        ns = ns.name,
        pause = PAUSE_IMAGE,
    ));
    let scheduled = || {
        cluster.kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "pod",
            "plain",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ])
    };
    wait_for_explained(
        Duration::from_secs(60),
        "the plain pod refused for memory",
        || scheduled().contains("Insufficient memory").then_some(()),
        || cluster.kubectl_ok(&["-n", &ns.name, "describe", "pod", "plain"]),
    );

    // The reverse: with the VMs gone, the pod runs, and a VM asking as much waits.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "delete",
        "vms",
        "-l",
        "app=big",
        "--wait=true",
    ]);
    wait_for_explained(
        BOOT,
        "the plain pod Running once the VMs are gone",
        || {
            let phase = cluster.kubectl_ok(&[
                "-n",
                &ns.name,
                "get",
                "pod",
                "plain",
                "-o",
                "jsonpath={.status.phase}",
            ]);
            (phase == "Running").then_some(())
        },
        || cluster.kubectl_ok(&["-n", &ns.name, "describe", "pod", "plain"]),
    );
    let filler: Vec<String> = (0..2)
        .map(|i| idle_vm(&ns.name, &format!("fill{i}"), "app: fill", &memory, ""))
        .collect();
    cluster.apply(&filler.join("---\n"));
    for i in 0..2 {
        let name = format!("fill{i}");
        Vm {
            ns: &ns.name,
            name: &name,
        }
        .wait_phase("Running", BOOT);
    }
    cluster.apply(&idle_vm(&ns.name, "no-room", "app: fill", &memory, ""));
    let vm = Vm {
        ns: &ns.name,
        name: "no-room",
    };
    stays_pending_saying(&vm, "Insufficient memory");
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn a_namespace_s_memory_quota_limits_its_vms_and_a_waiting_vm_starts_when_room_is_freed() {
    let cluster = cluster();
    let ns = cluster.namespace("e2e-sched-quota");
    cluster.apply(&format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: memory, namespace: {}}}\nspec:\n  hard: {{requests.memory: 1Gi}}\n",
        ns.name
    ));
    // The quota controller fills in status.used; until it has, admission lets nothing in.
    wait_for_explained(
        Duration::from_secs(60),
        "the quota's status",
        || {
            let used = cluster.kubectl_ok(&[
                "-n",
                &ns.name,
                "get",
                "resourcequota",
                "memory",
                "-o",
                "jsonpath={.status.hard.requests\\.memory}",
            ]);
            (!used.is_empty()).then_some(())
        },
        String::new,
    );
    // Each asks 500Mi + QEMU's overhead (~97Mi): one fits in 1Gi, two do not.
    cluster.apply(&idle_vm(&ns.name, "first", "app: quota", "500Mi", ""));
    let first = Vm {
        ns: &ns.name,
        name: "first",
    };
    first.wait_phase("Running", BOOT);
    cluster.apply(&idle_vm(&ns.name, "second", "app: quota", "500Mi", ""));
    let second = Vm {
        ns: &ns.name,
        name: "second",
    };
    stays_pending_saying(&second, "exceeded quota");
    assert!(
        holder_pods(&ns.name).iter().all(|p| p.1 == "first"),
        "no pod for the second VM: {:?}",
        holder_pods(&ns.name)
    );

    cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", "first", "--wait=true"]);
    let started = Instant::now();
    second.wait_phase("Running", BOOT);
    println!("quota freed -> second VM Running: {:?}", started.elapsed());
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn agent_and_controller_restarts_create_no_second_pod_and_stop_no_vm() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let ns = cluster.namespace("e2e-sched-restart");
    let names: Vec<String> = (0..4).map(|i| format!("steady{i}")).collect();
    let placed = create_running(&ns, &names, "");
    let vms: Vec<(String, usize)> = names
        .iter()
        .zip(&placed)
        .map(|(name, node)| {
            let index = nodes.iter().position(|n| &n.name == node).unwrap();
            (name.clone(), index)
        })
        .collect();
    let before = domain_ids(&ns, &nodes, &vms);
    let pods_before = holder_pods(&ns.name);
    assert_eq!(pods_before.len(), names.len(), "{pods_before:?}");

    // Every agent and controller pod at once: the DaemonSet and Deployment bring them back.
    in_nodevirt(&["delete", "pods", "--all", "--wait=true"]);
    wait_for_explained(
        Duration::from_secs(180),
        "the agents and a controller back and Ready",
        || {
            let ready = in_nodevirt(&[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            (ready.lines().count() > nodes.len() && ready.lines().all(|l| l == "True"))
                .then_some(())
        },
        || in_nodevirt(&["get", "pods", "-o", "wide"]),
    );
    // A while for a wrong decision to show: two heartbeats of the restarted agents' reconciles.
    std::thread::sleep(Duration::from_secs(20));
    // Names, VMs and nodes: a pod still starting before the restarts is Running by now.
    let placed = |pods: Vec<(String, String, String, String)>| -> Vec<(String, String, String)> {
        pods.into_iter()
            .map(|(pod, vm, node, _)| (pod, vm, node))
            .collect()
    };
    assert_eq!(
        placed(holder_pods(&ns.name)),
        placed(pods_before),
        "the same pods, none added"
    );
    assert_eq!(domain_ids(&ns, &nodes, &vms), before, "no domain restarted");
    for name in &names {
        assert_eq!(Vm { ns: &ns.name, name }.phase(), "Running", "{name}");
    }
}
