//! Step 8: VMs placed by kube-scheduler through their holder pods. Two agents on libvirtd's
//! test driver (no guest boot to count), each on a Node object of the bench cluster, and a
//! controller; 100 VMs that name no node are created 100 ms apart. Creation -> Running covers
//! the holder pod's create, kube-scheduler's binding, the hand-over label and the agent's start;
//! the API requests it costs per VM are counted from the API server's own metrics.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use nodevirt::api::VirtualMachine;
use serde_json::json;

use super::support::agent::{Agent, NodeOptions, controller};
use super::support::cluster::{Cluster, unique_suffix, wait_for};
use super::table::{Table, Target, percentile};
use super::{TEST_DRIVER, latencies, metric_sum, wait_all_running, watch_running};

const VMS: usize = 100;

fn placed_vm(ns: &str, name: &str, group: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeSelector": {"bench-group": group},
            "domain": {"resources": {"requests": {"memory": "64Mi"}}},
        },
    }))
    .unwrap()
}

/// Requests the API server has answered so far, all clients and verbs.
async fn api_requests(admin: &kube::Client) -> f64 {
    let text = admin
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    metric_sum(&text, "apiserver_request_total", "")
}

pub async fn run(cluster: &'static Cluster, admin: &kube::Client, table: &mut Table) {
    eprintln!("step 8: {VMS} VMs placed by kube-scheduler through holder pods, on 2 agents");
    // libvirtd frees the test driver's domains when its last client disconnects.
    let _connection = virt::connect::Connect::open(Some(TEST_DRIVER)).unwrap();
    let group = format!("placed-{}", unique_suffix());
    let agents: Vec<Agent> = (0..2)
        .map(|_| {
            Agent::start_with(
                cluster,
                "bench-placed",
                NodeOptions {
                    libvirt_uri: TEST_DRIVER,
                    labels: &[("bench-group", &group)],
                    // 100 VMs of 64Mi ask 160Mi each with QEMU's overhead.
                    memory: "32Gi",
                    heartbeat_seconds: 600,
                    holder_pods: true,
                    ..Default::default()
                },
            )
        })
        .collect();
    let leader = controller(cluster, "bench-placed", 600);
    wait_for(Duration::from_secs(60), "the controller ready", || {
        (leader.get("/readyz").0 == 200).then_some(())
    });

    let ns = cluster.namespace("bench-placed");
    let seen = watch_running(admin.clone(), &ns.name);
    let api: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns.name);
    let requests_before = api_requests(admin).await;
    let mut created = HashMap::new();
    let start = tokio::time::Instant::now();
    for i in 0..VMS {
        tokio::time::sleep_until(start + Duration::from_millis(100 * i as u64)).await;
        let name = format!("vm-{i}");
        created.insert(name.clone(), Instant::now());
        api.create(&PostParams::default(), &placed_vm(&ns.name, &name, &group))
            .await
            .unwrap();
    }
    wait_all_running(&seen, VMS).await;
    let requests = api_requests(admin).await - requests_before;
    let latencies = latencies(&created, &seen);
    for (p, target) in [(50.0, Some(2.0)), (95.0, Some(4.0)), (99.0, None)] {
        let row = table.add(
            format!("placed: {VMS} VMs 100 ms apart via holder pods, creation -> Running P{p}"),
            percentile(&latencies, p),
            "s",
        );
        if let Some(t) = target {
            row.target(Target::Below(t));
        }
    }
    table.add(
        "placed: API requests per VM (all clients, while they start)",
        requests / VMS as f64,
        "requests",
    );
    let per_node = cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "vms",
        "-o",
        "jsonpath={range .items[*]}{.status.nodeName}{\"\\n\"}{end}",
    ]);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for node in per_node.lines() {
        *counts.entry(node).or_default() += 1;
    }
    let spread: Vec<usize> = agents
        .iter()
        .map(|a| counts.get(a.node.as_str()).copied().unwrap_or(0))
        .collect();
    eprintln!("placed: VMs per node {spread:?}");
    table.add(
        "placed: VMs on the fuller of the 2 nodes",
        *spread.iter().max().unwrap() as f64,
        "VMs",
    );

    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "delete",
        "vms",
        "--all",
        "--wait=true",
        "--timeout=300s",
    ]);
    drop(leader);
    drop(agents);
}
