//! The cluster-wide controller end to end, with two real agents (one on QEMU, one on libvirt's
//! test driver): placement, presets, OfflineVirtualMachines, ReplicaSets, Unknown for a silent
//! node, and leader election. Every kubectl command of the API text is run as written there.
//!
//! One controller may lead a cluster, so the scenarios run in order inside one test. All VMs
//! select the nodes of this run (label `e2e-group`), so nodes left by other tests never count.

mod support;

use std::time::{Duration, Instant};

use support::agent::{Agent, NodeOptions, controller};
use support::cluster::{Cluster, unique_suffix, wait_for};

const HEARTBEAT_TIMEOUT: u32 = 10;

struct Scenario {
    cluster: &'static Cluster,
    ns: String,
    group: String,
}

impl Scenario {
    fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        self.cluster.kubectl_ok(&full)
    }

    fn get(&self, kind: &str, name: &str, jsonpath: &str) -> String {
        let out = self.cluster.kubectl(&[
            "-n",
            &self.ns,
            "get",
            kind,
            name,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        wait_for(Duration::from_secs(90), what, || check().then_some(()));
    }

    /// A VM of this run's node group, with `extra` spec lines (YAML, indented two spaces).
    fn vm(&self, name: &str, labels: &str, domain: &str, extra: &str) {
        self.cluster.apply(&format!(
            "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\n\
             spec:\n  terminationGracePeriodSeconds: 0\n  nodeSelector: {{e2e-group: {group}}}\n{extra}  domain: {domain}\n",
            ns = self.ns,
            group = self.group
        ));
    }

    fn node_of(&self, vm: &str) -> String {
        let mut node = String::new();
        self.wait(&format!("VM {vm} to be placed"), || {
            node = self.get("vm", vm, "{.metadata.labels.kubevirt\\.io/nodeName}");
            !node.is_empty()
        });
        assert_eq!(self.get("vm", vm, "{.status.nodeName}"), node);
        node
    }

    /// The events with `reason` about the object `kind`/`name`.
    fn events(&self, kind: &str, name: &str, reason: &str) -> Vec<serde_json::Value> {
        let events: serde_json::Value =
            serde_json::from_str(&self.kubectl(&["get", "events.events.k8s.io", "-o", "json"]))
                .unwrap();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["regarding"]["kind"] == kind
                    && e["regarding"]["name"] == name
                    && e["reason"] == reason
            })
            .cloned()
            .collect()
    }

    /// Their messages.
    fn event_messages(&self, kind: &str, name: &str, reason: &str) -> Vec<String> {
        self.events(kind, name, reason)
            .iter()
            .map(|e| e["note"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn vm_names(&self) -> Vec<String> {
        self.kubectl(&["get", "vms", "-o", "jsonpath={.items[*].metadata.name}"])
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

/// Who holds the controllers' leader Lease (`nodevirt/nodevirt-controller`).
fn lease_holder(cluster: &Cluster) -> String {
    cluster.kubectl_ok(&[
        "-n",
        "nodevirt",
        "get",
        "lease",
        "nodevirt-controller",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

const SMALL: &str = "{resources: {requests: {memory: 64Mi}}}";

#[test]
fn controller_places_presets_offline_vms_replica_sets_and_fails_over() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-ctl");
    let group = format!("g{}", unique_suffix());
    let s = Scenario {
        cluster,
        ns: ns.name.clone(),
        group: group.clone(),
    };
    let real = Agent::start_with(
        cluster,
        "ctl-real",
        NodeOptions {
            labels: &[("e2e-group", &group), ("zone", "z1"), ("disk", "ssd")],
            memory: "8Gi",
            heartbeat_seconds: 2,
            holder_pods: true,
            ..Default::default()
        },
    );
    let mut fake = Agent::start_with(
        cluster,
        "ctl-fake",
        NodeOptions {
            libvirt_uri: "test:///default",
            labels: &[("e2e-group", &group), ("zone", "z2"), ("disk", "hdd")],
            memory: "1536Mi",
            heartbeat_seconds: 2,
            holder_pods: true,
            ..Default::default()
        },
    );
    let mut leader = controller(cluster, "replica-a", HEARTBEAT_TIMEOUT);
    cluster.guest_claim(&s.ns, "guest");

    // Placement: nodeSelector, required affinity, preferred affinity, memory requests.
    let guest =
        "  volumes: [{name: root, ephemeral: {persistentVolumeClaim: {claimName: guest}}}]\n";
    let boots = "{resources: {requests: {memory: 128Mi}}, devices: {disks: [{name: root, volumeName: root}]}}";
    s.vm(
        "by-selector",
        "",
        boots,
        &format!("  nodeSelector: {{e2e-group: {group}, disk: ssd}}\n{guest}"),
    );
    s.vm(
        "by-required",
        "",
        SMALL,
        "  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [z2]}]}]}}}\n",
    );
    s.vm(
        "by-preferred",
        "",
        SMALL,
        "  affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 50, preference: {matchExpressions: [{key: disk, operator: In, values: [hdd]}]}}]}}\n",
    );
    s.vm(
        "by-memory",
        "",
        "{resources: {requests: {memory: 1536Mi}}}",
        "",
    );
    s.vm("too-big", "", "{resources: {requests: {memory: 64Gi}}}", "");
    assert_eq!(s.node_of("by-selector"), real.node);
    assert_eq!(s.node_of("by-required"), fake.node);
    assert_eq!(
        s.node_of("by-preferred"),
        fake.node,
        "the preferred weight beats free memory"
    );
    assert_eq!(
        s.node_of("by-memory"),
        real.node,
        "only the 8Gi node fits 1536Mi"
    );
    s.wait("the oversized VM to say why it is Pending", || {
        s.get("vm", "too-big", "{.status.conditions[0].message}")
            .contains("Insufficient memory")
    });
    assert_eq!(s.get("vm", "too-big", "{.status.phase}"), "Pending");
    let message = s.get("vm", "too-big", "{.status.conditions[0].message}");
    assert!(
        message.starts_with("0/") && message.contains("nodes are available"),
        "{message}"
    );
    s.wait("by-selector to run on QEMU", || {
        s.get("vm", "by-selector", "{.status.phase}") == "Running"
    });
    s.wait("by-required to run on the test driver", || {
        s.get("vm", "by-required", "{.status.phase}") == "Running"
    });
    assert_eq!(
        s.kubectl(&[
            "get",
            "pods",
            "-l",
            "kubevirt.io/vm=by-required",
            "-o",
            "jsonpath={.items[0].spec.nodeName}"
        ]),
        fake.node,
        "the VM runs where kube-scheduler bound its holder pod"
    );

    // Its holder pod evicted, as kubectl drain does: the guest is shut down and the VM fails,
    // saying why.
    cluster.apply(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: evicted, namespace: {ns}}}\n\
         spec:\n  terminationGracePeriodSeconds: 20\n  nodeSelector: {{e2e-group: {group}, zone: z2}}\n  domain: {SMALL}\n",
        ns = s.ns
    ));
    s.wait("the VM to be evicted to run", || {
        s.get("vm", "evicted", "{.status.phase}") == "Running"
    });
    let pod = s.kubectl(&[
        "get",
        "pods",
        "-l",
        "kubevirt.io/vm=evicted",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let eviction = cluster.dir.join(format!("eviction-{}.json", s.ns));
    std::fs::write(
        &eviction,
        format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"{}"}}}}"#, s.ns),
    )
    .unwrap();
    s.kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{}/pods/{pod}/eviction", s.ns),
        "-f",
        eviction.to_str().unwrap(),
    ]);
    let evicted_at = Instant::now();
    s.wait("the VM whose pod was evicted to fail", || {
        s.get("vm", "evicted", "{.status.phase}") == "Failed"
    });
    eprintln!(
        "timing: holder pod evicted -> guest down, VM Failed {:.1}s",
        evicted_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        s.get("vm", "evicted", "{.status.conditions[0].reason}"),
        "Evicted"
    );
    let message = s.get("vm", "evicted", "{.status.conditions[0].message}");
    assert!(
        message.contains(&format!("holder pod {pod} was evicted")),
        "{message}"
    );

    // Presets: m1.small applies to matching VMs only, once, recorded in an annotation.
    s.kubectl(&["apply", "-f", "examples/preset.yaml"]);
    assert!(s.kubectl(&["get", "vmpreset"]).contains("m1.small"));
    s.vm("small", "kubevirt.io/size: small", "{cpu: {cores: 2}}", "");
    s.vm("plain", "", "{resources: {requests: {memory: 96Mi}}}", "");
    s.node_of("small");
    s.node_of("plain");
    assert_eq!(
        s.get("vm", "small", "{.spec.domain.resources.requests.memory}"),
        "128Mi"
    );
    assert_eq!(
        s.get("vm", "small", "{.spec.domain.cpu.cores}"),
        "2",
        "the VM's own value wins"
    );
    assert_eq!(
        s.get(
            "vm",
            "small",
            "{.metadata.annotations.virtualmachinepreset\\.kubevirt\\.io/m1\\.small}"
        ),
        "kubevirt.io/v1alpha1"
    );
    assert_eq!(
        s.get("vm", "plain", "{.spec.domain.resources.requests.memory}"),
        "96Mi"
    );
    let annotations = s.get("vm", "plain", "{.metadata.annotations}");
    assert!(
        !annotations.contains("virtualmachinepreset.kubevirt.io/"),
        "{annotations}"
    );
    assert_eq!(
        s.get(
            "vm",
            "plain",
            "{.metadata.annotations.presets\\.virtualmachines\\.kubevirt\\.io/presets-applied}"
        ),
        "kubevirt.io/v1alpha1",
        "every VM looked at is marked, so presets apply once"
    );
    s.wait("the Override event of VM small", || {
        s.event_messages("VirtualMachine", "small", "Override")
            == [
                "Some settings were not applied for VirtualMachinePreset 'm1.small': \
                 spec.domain.cpu.cores: 1 != 2",
            ]
    });
    // Excluded from presets by its annotation: it keeps its own spec only.
    s.cluster.apply(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: excluded\n  namespace: {ns}\n\
         \x20 labels: {{kubevirt.io/size: small}}\n\
         \x20 annotations: {{virtualmachinepresets.admission.kubevirt.io/exclude: \"true\"}}\n\
         spec:\n  terminationGracePeriodSeconds: 0\n  nodeSelector: {{e2e-group: {group}}}\n  domain: {SMALL}\n",
        ns = s.ns,
        group = s.group
    ));
    s.node_of("excluded");
    assert_eq!(
        s.get("vm", "excluded", "{.spec.domain.resources.requests.memory}"),
        "64Mi"
    );
    assert_eq!(s.get("vm", "excluded", "{.spec.domain.cpu}"), "");
    // A second preset setting another value for the same field: a VM both match fails,
    // even though it sets that field itself; the VMs placed before are left as they are.
    s.cluster.apply(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachinePreset\nmetadata: {{name: m1.tiny, namespace: {}}}\n\
         spec:\n  selector: {{matchLabels: {{kubevirt.io/size: small}}}}\n  domain: {{resources: {{requests: {{memory: 64Mi}}}}}}\n",
        s.ns
    ));
    s.vm(
        "clash",
        "kubevirt.io/size: small",
        "{resources: {requests: {memory: 96Mi}}}",
        "",
    );
    s.wait("VM clash to fail on its presets", || {
        s.get("vm", "clash", "{.status.phase}") == "Failed"
    });
    assert_eq!(
        s.get("vm", "clash", "{.status.conditions[0].reason}"),
        "PresetFailed"
    );
    let conflict = "VirtualMachinePresets cannot be applied due to conflicts: presets 'm1.tiny' \
                    and 'm1.small' conflict: spec.domain.resources.requests.memory: 64Mi != 128Mi";
    s.wait("the PresetFailed event of VM clash", || {
        s.event_messages("VirtualMachine", "clash", "PresetFailed") == [conflict]
    });
    let annotations = s.get("vm", "clash", "{.metadata.annotations}");
    assert!(
        !annotations.contains("virtualmachinepreset.kubevirt.io/"),
        "no preset applied: {annotations}"
    );
    assert_eq!(
        s.get("vm", "small", "{.spec.domain.resources.requests.memory}"),
        "128Mi"
    );
    s.kubectl(&["delete", "vmpreset", "m1.tiny"]);
    s.kubectl(&["delete", "vm", "clash", "excluded"]);

    // OfflineVirtualMachine: the API text's kubectl patch, and nodevirt start/stop.
    let ovm = format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: OfflineVirtualMachine\nmetadata: {{name: mongodb, namespace: {}}}\n\
         spec:\n  running: false\n  template:\n    metadata: {{labels: {{guest: mongodb}}}}\n    spec:\n\
         \x20     nodeSelector: {{e2e-group: {group}, zone: z2}}\n      domain: {SMALL}\n",
        s.ns
    );
    cluster.apply(&ovm);
    assert!(s.kubectl(&["get", "ovms"]).contains("mongodb"));
    s.kubectl(&[
        "patch",
        "offlinevirtualmachine",
        "mongodb",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"running":true }}"#,
    ]);
    s.wait("the OVM's VM to appear and run", || {
        s.get("vm", "mongodb", "{.status.phase}") == "Running"
    });
    s.wait("status.ready", || {
        s.kubectl(&["get", "ovm", "mongodb", "--template", "{{.status.ready}}"]) == "true"
    });
    assert!(
        s.kubectl(&["-o", "yaml", "get", "ovms", "mongodb"])
            .contains("created: true")
    );
    s.kubectl(&[
        "patch",
        "offlinevirtualmachine",
        "mongodb",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"running":false }}"#,
    ]);
    s.wait("the OVM's VM to disappear", || {
        !s.vm_names().contains(&"mongodb".to_string())
    });
    s.wait("status.created false", || {
        s.get("ovm", "mongodb", "{.status.created}") == "false"
    });
    let start = std::process::Command::new(env!("CARGO_BIN_EXE_nodevirt"))
        .args(["start", "mongodb", "-n", &s.ns])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    s.wait("nodevirt start to create the VM", || {
        s.get("vm", "mongodb", "{.status.phase}") == "Running"
    });
    // As virtctl: starting it again is an error, exit 1; the kubeconfig given as kubectl's flag.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_nodevirt"))
        .args(["start", "mongodb", "-n", &s.ns, "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        "Error: VirtualMachine 'mongodb' is already running"
    );
    // Deleted by accident: created again while running is true.
    s.kubectl(&["delete", "vm", "mongodb", "--wait=true"]);
    s.wait("the OVM to re-create its VM", || {
        s.get("vm", "mongodb", "{.status.phase}") == "Running"
    });

    // ReplicaSet: 2 -> 5 -> 1, replaces a deleted VM, holds still while paused.
    let vmrs = format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachineReplicaSet\nmetadata: {{name: replica, namespace: {}}}\n\
         spec:\n  replicas: 2\n  selector: {{matchLabels: {{guest: replica}}}}\n  template:\n    metadata: {{labels: {{guest: replica}}}}\n\
         \x20   spec:\n      nodeSelector: {{e2e-group: {group}, zone: z2}}\n      domain: {{resources: {{requests: {{memory: 16Mi}}}}}}\n",
        s.ns
    );
    cluster.apply(&vmrs);
    let replicas = |s: &Scenario| {
        s.vm_names()
            .into_iter()
            .filter(|n| n.starts_with("replica"))
            .collect::<Vec<_>>()
    };
    let ready = |s: &Scenario, n: &str| {
        s.kubectl(&[
            "get",
            "vmrs",
            "replica",
            "--template",
            "{{.status.readyReplicas}}",
        ]) == n
            && s.kubectl(&[
                "get",
                "vmrs",
                "replica",
                "--template",
                "{{.status.replicas}}",
            ]) == n
    };
    s.wait("2 replicas ready", || ready(&s, "2"));
    for name in replicas(&s) {
        let suffix = &name["replica".len()..];
        assert!(
            suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_lowercase()),
            "{name}"
        );
    }
    assert!(s.kubectl(&["get", "vmrs"]).contains("replica"));
    s.kubectl(&["scale", "vmrs", "replica", "--replicas=5"]);
    s.wait("5 replicas ready", || ready(&s, "5"));
    let victim = replicas(&s)[0].clone();
    s.kubectl(&["delete", "vm", &victim, "--wait=true"]);
    s.wait("the deleted replica to be replaced", || {
        ready(&s, "5") && !replicas(&s).contains(&victim)
    });
    s.kubectl(&[
        "patch",
        "vmrs",
        "replica",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"paused":true,"replicas":1}}"#,
    ]);
    let condition = |type_: &str, field: &str| {
        s.get(
            "vmrs",
            "replica",
            &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
        )
    };
    s.wait("the ReplicaPaused condition", || {
        condition("ReplicaPaused", "status") == "True"
    });
    assert_eq!(condition("ReplicaPaused", "reason"), "SuccessfulPaused");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replicas(&s).len(), 5, "a paused ReplicaSet must not delete");
    assert_eq!(
        s.event_messages("VirtualMachineReplicaSet", "replica", "SuccessfulPaused"),
        ["Paused"]
    );
    s.kubectl(&[
        "patch",
        "vmrs",
        "replica",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"paused":false}}"#,
    ]);
    s.wait("1 replica left", || {
        ready(&s, "1") && replicas(&s).len() == 1
    });
    assert_eq!(
        condition("ReplicaPaused", "status"),
        "",
        "removed on resume"
    );
    s.wait("the SuccessfulResumed event", || {
        s.event_messages("VirtualMachineReplicaSet", "replica", "SuccessfulResumed") == ["Resumed"]
    });
    // A quota that allows no more VMs: ReplicaFailure (FailedCreate) with the API's words,
    // gone once the replicas can be created again.
    let vms_now = s.vm_names().len();
    cluster.apply(&format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: vms, namespace: {}}}\n\
         spec: {{hard: {{count/virtualmachines.kubevirt.io: \"{vms_now}\"}}}}\n",
        s.ns
    ));
    s.wait("the quota to count the VMs", || {
        s.get(
            "resourcequota",
            "vms",
            "{.status.used.count/virtualmachines\\.kubevirt\\.io}",
        ) == vms_now.to_string()
    });
    s.kubectl(&["scale", "vmrs", "replica", "--replicas=2"]);
    s.wait("the ReplicaFailure condition", || {
        condition("ReplicaFailure", "reason") == "FailedCreate"
    });
    let message = condition("ReplicaFailure", "message");
    assert!(message.contains("exceeded quota: vms"), "{message}");
    assert!(
        s.event_messages("VirtualMachineReplicaSet", "replica", "FailedCreate")
            .iter()
            .any(|m| m.contains("exceeded quota: vms")),
        "a Warning event says it too"
    );
    s.kubectl(&["delete", "resourcequota", "vms"]);
    s.wait("2 replicas once the quota is gone", || ready(&s, "2"));
    s.wait("the ReplicaFailure condition to go", || {
        condition("ReplicaFailure", "status").is_empty()
    });
    let bad = vmrs.replace("name: replica,", "name: mismatch,").replace(
        "matchLabels: {guest: replica}",
        "matchLabels: {guest: other}",
    );
    cluster.apply(&bad);
    s.wait("a mismatched selector to be reported", || {
        s.get("vmrs", "mismatch", "{.status.conditions[0].reason}") == "InvalidSelector"
    });

    // Templates the agent refuses (user-data from a Secret that does not exist): the ReplicaSet and the
    // OfflineVirtualMachine back off (10 s, 20 s, 40 s, ...) instead of creating and deleting
    // VMs as fast as the agent fails them (~1,550 in 100 s before). And a VM assigned by hand
    // to a node that does not exist goes Unknown, saying so.
    let failing = "{resources: {requests: {memory: 16Mi}}, devices: {disks: [{name: root, volumeName: root}]}}";
    let missing_claim =
        "      volumes: [{name: root, cloudInitNoCloud: {secretRef: {name: does-not-exist}}}]\n";
    cluster.apply(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachineReplicaSet\nmetadata: {{name: failing, namespace: {ns}}}\n\
         spec:\n  replicas: 2\n  selector: {{matchLabels: {{guest: failing}}}}\n  template:\n    metadata: {{labels: {{guest: failing}}}}\n\
         \x20   spec:\n      nodeSelector: {{e2e-group: {group}, zone: z2}}\n      domain: {failing}\n{missing_claim}\
         ---\napiVersion: kubevirt.io/v1alpha1\nkind: OfflineVirtualMachine\nmetadata: {{name: failing-ovm, namespace: {ns}}}\n\
         spec:\n  running: true\n  template:\n    metadata: {{labels: {{guest: failing-ovm}}}}\n    spec:\n\
         \x20     nodeSelector: {{e2e-group: {group}, zone: z2}}\n      domain: {failing}\n{missing_claim}",
        ns = s.ns
    ));
    let ghost = format!("ghost-{}", unique_suffix());
    s.vm(
        "on-a-ghost-node",
        &format!("kubevirt.io/nodeName: {ghost}"),
        SMALL,
        "",
    );
    let watched = Instant::now();
    s.wait("the VM of a node that does not exist to be Unknown", || {
        s.get("vm", "on-a-ghost-node", "{.status.phase}") == "Unknown"
    });
    eprintln!(
        "timing: VM on a node that does not exist -> Unknown {:.1}s",
        watched.elapsed().as_secs_f64()
    );
    assert_eq!(
        s.get("vm", "on-a-ghost-node", "{.status.conditions[0].reason}"),
        "NodeNotFound"
    );
    assert!(
        s.kubectl(&["describe", "vm", "on-a-ghost-node"])
            .contains(&format!("\"{ghost}\", which does not exist"))
    );
    let window = Duration::from_secs(45);
    std::thread::sleep(window.saturating_sub(watched.elapsed()));
    // By kind too: the OVM's VM has its name, and its own SuccessfulCreate (its holder pod).
    let creates = |kind: &str, owner: &str| -> i64 {
        s.events(kind, owner, "SuccessfulCreate")
            .iter()
            .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
            .sum()
    };
    let (rs_creates, ovm_creates) = (
        creates("VirtualMachineReplicaSet", "failing"),
        creates("OfflineVirtualMachine", "failing-ovm"),
    );
    eprintln!(
        "measure: failing templates in {}s: ReplicaSet (2 replicas) created {rs_creates} VMs, OfflineVirtualMachine {ovm_creates}",
        window.as_secs()
    );
    // 2 at once, then after 10 s and 20 s (the next after 40 s more): at most 2 + 2 + 2.
    assert!(
        (2..=6).contains(&rs_creates),
        "{rs_creates} VMs created by the ReplicaSet"
    );
    assert!(
        (1..=4).contains(&ovm_creates),
        "{ovm_creates} VMs created by the OVM"
    );
    for (kind, owner) in [("vmrs", "failing"), ("ovm", "failing-ovm")] {
        assert_eq!(
            s.get(
                kind,
                owner,
                "{.status.conditions[?(@.type==\"ReplicaFailure\")].reason}"
            ),
            "BackOff",
            "{kind} {owner}"
        );
        let message = s.get(
            kind,
            owner,
            "{.status.conditions[?(@.type==\"ReplicaFailure\")].message}",
        );
        assert!(
            message.contains("does-not-exist") && message.contains("failed in a row"),
            "{message}"
        );
    }
    let describe = s.kubectl(&["describe", "vmrs", "failing"]);
    assert!(describe.contains("BackOff"), "{describe}");
    s.kubectl(&["delete", "vmrs", "failing"]);
    s.kubectl(&["delete", "ovm", "failing-ovm"]);

    // Leader election: a second replica waits; when the leader dies it takes over.
    let mut standby = controller(cluster, "replica-b", HEARTBEAT_TIMEOUT);
    wait_for(
        Duration::from_secs(30),
        "the standby to wait to lead",
        || standby.log_text().contains("waiting to lead").then_some(()),
    );
    // Its first tries at the Lease (every 2 s) are the moment a second leader would appear.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !standby.exited(),
        "the standby died:\n{}",
        standby.log_text()
    );
    let log = standby.log_text();
    assert!(!log.contains("controller running"), "two leaders:\n{log}");
    assert!(
        !log.contains("cannot read or take the leader Lease"),
        "the standby cannot even read the Lease:\n{log}"
    );
    assert_eq!(
        lease_holder(cluster),
        "replica-a",
        "the Lease while standing by"
    );
    leader.kill();
    let killed = Instant::now();
    s.vm("after-failover", "", SMALL, "");
    s.node_of("after-failover");
    let takeover = killed.elapsed();
    eprintln!(
        "timing: failover, leader killed -> next VM placed {:.1}s",
        takeover.as_secs_f64()
    );
    assert!(takeover < Duration::from_secs(30), "{takeover:?}");

    // A silent node: its VMs go Unknown after the heartbeat timeout.
    fake.kill();
    let silent = Instant::now();
    s.wait("the silent node's VM to be Unknown", || {
        s.get("vm", "by-required", "{.status.phase}") == "Unknown"
    });
    eprintln!(
        "timing: agent killed -> Unknown {:.1}s",
        silent.elapsed().as_secs_f64()
    );
    assert_eq!(
        s.get("vm", "by-selector", "{.status.phase}"),
        "Running",
        "the live node's VM is untouched"
    );
    assert!(
        !standby.exited(),
        "the new leader died:\n{}",
        standby.log_text()
    );
    assert_eq!(
        lease_holder(cluster),
        "replica-b",
        "the Lease after the failover"
    );
    standby.kill();
    for log in [leader.log_text(), standby.log_text(), real.log_text()] {
        assert!(!log.contains("panicked"), "{log}");
    }
}
