//! Least privilege on the real API server: what the node agent's ServiceAccount is refused by
//! RBAC (daemonset.yaml's ClusterRole) and by the admission policy that scopes it to its own
//! node's VMs and Node (daemonset.yaml's ValidatingAdmissionPolicy), with tokens bound to a
//! Node as a DaemonSet Pod's are.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, WatchParams};
use nodevirt::api::{VirtualMachine, VirtualMachineSpec};
use serde_json::json;
use support::cluster::{Cluster, unique_suffix};

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
    refused(
        vms.patch(
            "mine",
            &pp,
            &merge(json!({"metadata": {"labels": {"kubevirt.io/nodeName": theirs}}})),
        )
        .await,
        "moving a VM to another node",
        "and not their labels",
    );

    // Nodes: its own, not another.
    let nodes: Api<Node> = Api::all(agent.clone());
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
    // The finalizer added above would keep the namespace; the admin removes it.
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "patch",
        "vm",
        "mine",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}
