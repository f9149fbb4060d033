//! Least privilege on the real API server: what the node agent's ServiceAccount is refused by
//! RBAC (daemonset.yaml's ClusterRole) and by the admission policy that scopes it to its own
//! node's VMs and Node (daemonset.yaml's ValidatingAdmissionPolicy), with tokens bound to a
//! Node as a DaemonSet Pod's are; and who may read the agent's metrics port (TokenReview and
//! SubjectAccessReview, as kubelet's).

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, WatchParams};
use nodevirt::api::{VirtualMachine, VirtualMachineSpec};
use serde_json::json;
use std::time::{Duration, Instant};
use support::agent::{Agent, NodeOptions};
use support::cluster::{Cluster, unique_suffix, wait_for};

fn vm_on(ns: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubevirt.io/nodeName: {node}}}}}\n\
         spec: {{domain: {{resources: {{requests: {{memory: 64Mi}}}}}}}}\n"
    )
}

/// Asserts that `result` is a 403 whose message contains `why`.
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str, why: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => assert!(
            status.message.contains(why),
            "{what}: refused, but not because {why:?}: {}",
            status.message
        ),
        other => panic!("{what} must be refused (403, {why:?}); got {other:?}"),
    }
}

fn merge(value: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(value)
}

#[tokio::test]
async fn the_node_agent_may_touch_only_its_own_node_and_what_its_vms_name() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-privilege");
    let (mine, theirs) = (
        format!("priv-a-{}", unique_suffix()),
        format!("priv-b-{}", unique_suffix()),
    );
    cluster.node_with(&mine, &[], "8Gi");
    cluster.node_with(&theirs, &[], "8Gi");
    cluster.apply(&vm_on(&ns.name, "mine", &mine));
    cluster.apply(&vm_on(&ns.name, "theirs", &theirs));
    cluster.user_data_secret(&ns.name, "userdata", "#!/bin/sh");
    let agent = cluster
        .service_account_client("nodevirt", "nodevirt-agent", Some(&mine))
        .await;
    let pp = PatchParams::default();

    // Secrets: only `get` of one a VM names; never list or watch.
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), &ns.name);
    secrets
        .get("userdata")
        .await
        .expect("the agent may get a Secret");
    refused(
        secrets.list(&ListParams::default()).await,
        "listing Secrets",
        "cannot list",
    );
    refused(
        secrets.watch(&WatchParams::default(), "0").await.map(drop),
        "watching Secrets",
        "cannot watch",
    );
    let all_secrets: Api<Secret> = Api::all(agent.clone());
    refused(
        all_secrets.list(&ListParams::default()).await,
        "listing Secrets cluster-wide",
        "cannot list",
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(agent.clone(), &ns.name);
    refused(
        configmaps.get("kube-root-ca.crt").await,
        "reading a ConfigMap",
        "cannot get",
    );

    // Pods: its node's holder pods are read (list/watch), never written: a stolen token
    // cannot book a node for a VM nor free one.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(agent.clone(), &ns.name);
    pods.list(&ListParams::default().fields(&format!("spec.nodeName={mine}")))
        .await
        .expect("the agent may list its node's pods");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "booked"},
        "spec": {"nodeName": mine, "containers": [{"name": "c", "image": "nodevirt:test"}]}
    }))
    .unwrap();
    refused(
        pods.create(&Default::default(), &pod).await,
        "creating a pod",
        "cannot create",
    );
    refused(
        pods.delete("any", &DeleteParams::default()).await.map(drop),
        "deleting a pod",
        "cannot delete",
    );

    // VMs: no create or delete (RBAC); its own VMs' status and finalizer only (policy).
    let vms: Api<VirtualMachine> = Api::namespaced(agent.clone(), &ns.name);
    refused(
        vms.create(
            &Default::default(),
            &VirtualMachine::new("new", VirtualMachineSpec::default()),
        )
        .await,
        "creating a VM",
        "cannot create",
    );
    refused(
        vms.delete("mine", &DeleteParams::default()).await.map(drop),
        "deleting a VM",
        "cannot delete",
    );
    vms.patch_status(
        "mine",
        &pp,
        &merge(json!({"status": {"phase": "Scheduled"}})),
    )
    .await
    .expect("the agent may write the status of its own node's VM");
    vms.patch(
        "mine",
        &pp,
        &merge(json!({"metadata": {"finalizers": ["nodevirt.io/agent"]}})),
    )
    .await
    .expect("the agent may add its finalizer to its own node's VM");
    refused(
        vms.patch_status(
            "theirs",
            &pp,
            &merge(json!({"status": {"phase": "Failed"}})),
        )
        .await,
        "writing the status of another node's VM",
        "may only change VMs labelled",
    );
    refused(
        vms.patch(
            "mine",
            &pp,
            &merge(json!({"spec": {"terminationGracePeriodSeconds": 0}})),
        )
        .await,
        "changing a VM's spec",
        "may not change a VM's spec",
    );
    // Two policies refuse this (the agent's, and the assignment's for everyone); which one the
    // API server reports first is its choice.
    match vms
        .patch(
            "mine",
            &pp,
            &merge(json!({"metadata": {"labels": {"kubevirt.io/nodeName": theirs}}})),
        )
        .await
    {
        Err(kube::Error::Api(status))
            if (status.code == 403 && status.message.contains("and not their labels"))
                || (status.code == 422
                    && status.message.contains("the assignment cannot change")) => {}
        other => panic!("moving a VM to another node must be refused; got {other:?}"),
    }

    // What a stolen agent token did before the policy was tightened: an ownerReference to a
    // UID that does not exist (the garbage collector then deleted the VM), a foreign
    // finalizer (the VM could never be deleted), an annotation.
    refused(
        vms.patch(
            "mine",
            &pp,
            &merge(json!({"metadata": {"ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
                "uid": "00000000-0000-0000-0000-000000000000"
            }]}})),
        )
        .await,
        "giving a VM an owner that does not exist",
        "may not change ownerReferences",
    );
    refused(
        vms.patch(
            "mine",
            &pp,
            &merge(json!({"metadata": {"finalizers": ["nodevirt.io/agent", "evil.io/hold"]}})),
        )
        .await,
        "adding a foreign finalizer",
        "nor finalizers other than nodevirt.io/agent",
    );
    refused(
        vms.patch(
            "mine",
            &pp,
            &merge(json!({"metadata": {"annotations": {"nodevirt.io/force-stop": "true"}}})),
        )
        .await,
        "annotating a VM",
        "may not change a VM's annotations",
    );

    // Nodes: its own, not another; on its own only the schedulable label and heartbeat.
    let nodes: Api<Node> = Api::all(agent.clone());
    nodes
        .patch(
            &mine,
            &pp,
            &merge(json!({"metadata": {"annotations": {"kubevirt.io/heartbeat": "2026-12-02T00:00:00Z"}}})),
        )
        .await
        .expect("the agent may write its heartbeat on its own Node");
    refused(
        nodes
            .patch(
                &mine,
                &pp,
                &merge(json!({"spec": {"taints": [{"key": "evil", "effect": "NoExecute"}]}})),
            )
            .await,
        "tainting its own Node",
        "may not change its Node's spec",
    );
    refused(
        nodes
            .patch(
                &mine,
                &pp,
                &merge(
                    json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
                ),
            )
            .await,
        "labelling its own Node with a label it does not own",
        "may only change the label kubevirt.io/schedulable",
    );
    nodes
        .patch(
            &mine,
            &pp,
            &merge(json!({"metadata": {"labels": {"kubevirt.io/schedulable": "true"}}})),
        )
        .await
        .expect("the agent may label its own Node");
    refused(
        nodes
            .patch(
                &theirs,
                &pp,
                &merge(json!({"metadata": {"labels": {"kubevirt.io/schedulable": "false"}}})),
            )
            .await,
        "labelling another Node",
        "may only change its own Node",
    );

    // A token not bound to a node is refused every write.
    let unbound = cluster
        .service_account_client("nodevirt", "nodevirt-agent", None)
        .await;
    let vms: Api<VirtualMachine> = Api::namespaced(unbound, &ns.name);
    refused(
        vms.patch_status("mine", &pp, &merge(json!({"status": {"phase": "Running"}})))
            .await,
        "a write with a token bound to no node",
        "not bound to a node",
    );
    let phase = cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "vm",
        "theirs",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase, "", "another node's VM was changed");
    let owners = cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "vm",
        "mine",
        "-o",
        "jsonpath={.metadata.ownerReferences}{.metadata.finalizers}",
    ]);
    assert_eq!(
        owners, r#"["nodevirt.io/agent"]"#,
        "only the agent's own finalizer got through"
    );
    // Removing its own finalizer is allowed.
    vms_of(&agent, &ns.name)
        .patch(
            "mine",
            &pp,
            &merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("the agent may remove its finalizer");
}

fn vms_of(client: &kube::Client, ns: &str) -> Api<VirtualMachine> {
    Api::namespaced(client.clone(), ns)
}

/// The attack: a user changed a running VM's `kubevirt.io/nodeName` from node1 to node2; node1's
/// agent destroyed the domain as orphaned and the deletion then hung on its finalizer. The
/// assignment is now immutable for everyone (cluster admins included), and only the controller
/// (or a cluster admin, at creation) makes it.
#[test]
fn a_vms_node_assignment_is_made_once_by_the_controller_and_never_changes() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-assignment");
    let (node1, node2) = (
        format!("assign-a-{}", unique_suffix()),
        format!("assign-b-{}", unique_suffix()),
    );
    cluster.apply(&vm_on(&ns.name, "pinned", &node1));
    let refused_with = |args: &[&str], kubeconfig: Option<&std::path::Path>, why: &str| {
        let mut command = std::process::Command::new("kubectl");
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig.unwrap_or(&cluster.kubeconfig));
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "kubectl {}: must be refused because {why:?}; stderr: {stderr}",
            args.join(" ")
        );
    };
    let label = |value: &str| format!("kubevirt.io/nodeName={value}");
    refused_with(
        &[
            "-n",
            &ns.name,
            "label",
            "vm",
            "pinned",
            "--overwrite",
            &label(&node2),
        ],
        None,
        "the assignment cannot change",
    );
    refused_with(
        &[
            "-n",
            &ns.name,
            "label",
            "vm",
            "pinned",
            "kubevirt.io/nodeName-",
        ],
        None,
        "the assignment cannot change",
    );
    // A namespace user who may edit VMs may neither assign one when creating it nor later.
    let user = "vm-editor";
    cluster.kubectl_ok(&["-n", &ns.name, "create", "serviceaccount", user]);
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "role",
        "vm-editor",
        "--verb=*",
        "--resource=virtualmachines.kubevirt.io",
    ]);
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "rolebinding",
        "vm-editor",
        "--role=vm-editor",
        &format!("--serviceaccount={}:{user}", ns.name),
    ]);
    let editor = cluster.service_account_kubeconfig(&ns.name, user, None);
    let manifest = cluster.dir.join(format!("{}-assigned.yaml", ns.name));
    std::fs::write(&manifest, vm_on(&ns.name, "self-assigned", &node2)).unwrap();
    refused_with(
        &["apply", "-f", manifest.to_str().unwrap()],
        Some(&editor),
        "only the nodevirt controller assigns a VM to a node",
    );
    let unassigned = cluster.dir.join(format!("{}-unassigned.yaml", ns.name));
    std::fs::write(
        &unassigned,
        format!(
            "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: free, namespace: {}}}\n\
             spec: {{domain: {{resources: {{requests: {{memory: 64Mi}}}}}}}}\n",
            ns.name
        ),
    )
    .unwrap();
    let out = std::process::Command::new("kubectl")
        .args(["apply", "-f", unassigned.to_str().unwrap()])
        .env("KUBECONFIG", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused_with(
        &["-n", &ns.name, "label", "vm", "free", &label(&node2)],
        Some(&editor),
        "only the nodevirt controller assigns a VM to a node",
    );
    // The controller's ServiceAccount assigns, with an update as placement does.
    let controller = cluster.service_account_kubeconfig("nodevirt", "nodevirt-controller", None);
    let mut free: serde_json::Value = serde_json::from_str(
        &cluster.kubectl_ok(&["-n", &ns.name, "get", "vm", "free", "-o", "json"]),
    )
    .unwrap();
    free["metadata"]["labels"] = json!({"kubevirt.io/nodeName": node2});
    let placed = cluster.dir.join(format!("{}-placed.json", ns.name));
    std::fs::write(&placed, free.to_string()).unwrap();
    let out = std::process::Command::new("kubectl")
        .args(["replace", "-f", placed.to_str().unwrap()])
        .env("KUBECONFIG", &controller)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the controller assigns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "vm",
        "pinned",
        "-o",
        "jsonpath={.metadata.labels.kubevirt\\.io/nodeName}",
    ]);
    assert_eq!(node, node1, "the pinned VM stayed where it was");
}

/// The value of `series` (a metric name with its labels) in a scrape, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_metrics_port_serves_metrics_only_to_a_token_allowed_to_get_them() {
    let cluster = Cluster::get();
    let agent = Agent::start_with(
        cluster,
        "metrics-auth",
        NodeOptions {
            libvirt_uri: "test+unix:///default",
            ..Default::default()
        },
    );
    // The first scrape with the reader's token: a TokenReview and a SubjectAccessReview.
    let started = Instant::now();
    let (status, text) = agent.get("/metrics");
    let cold = started.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("nodevirt_build_info{version=") && text.ends_with("# EOF\n"),
        "Prometheus text:\n{text}"
    );
    let mut warm = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(agent.get("/metrics").0, 200);
        warm.push(started.elapsed());
    }
    warm.sort();
    eprintln!(
        "timing: /metrics over HTTPS, review cache cold {:.1} ms, warm {:.1} ms (median of 10)",
        cold.as_secs_f64() * 1e3,
        warm[5].as_secs_f64() * 1e3
    );

    let none = agent.get_as("/metrics", None);
    assert_eq!(none.status, 401, "no token: {none:?}");
    assert!(none.body.contains("no Authorization header"), "{none:?}");
    let garbage = agent.get_as("/metrics", Some("not-a-token"));
    assert_eq!(garbage.status, 401, "a garbage token: {garbage:?}");
    let outsider = format!("nodevirt-test-no-role-{}", unique_suffix());
    cluster.metrics_scraper(&outsider, false);
    let token = cluster.token("nodevirt", &outsider, None);
    let forbidden = agent.get_as("/metrics", Some(&token));
    assert_eq!(
        forbidden.status, 403,
        "a token without the role: {forbidden:?}"
    );
    assert!(
        forbidden
            .body
            .contains(&format!("system:serviceaccount:nodevirt:{outsider}"))
            && forbidden.body.contains("nodevirt-metrics-reader"),
        "{forbidden:?}"
    );
    // Again, from the cache.
    assert_eq!(agent.get_as("/metrics", Some(&token)).status, 403);
    assert_eq!(agent.get_as("/metrics", Some("not-a-token")).status, 401);

    // kubelet's probes carry no token.
    let healthz = agent.get_as("/healthz", None);
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    wait_for(Duration::from_secs(30), "/readyz without a token", || {
        (agent.get_as("/readyz", None).status == 200).then_some(())
    });

    // Eleven scrapes and two refused tokens asked twice each: one review per token.
    let (_, text) = agent.get("/metrics");
    for (result, expected) in [
        ("allowed", 1.0),
        ("forbidden", 1.0),
        ("unauthenticated", 1.0),
    ] {
        let reviews = sample(
            &text,
            &format!("nodevirt_metrics_auth_reviews_total{{result=\"{result}\"}}"),
        );
        assert_eq!(reviews, expected, "{result} reviews\n{text}");
    }
}
