//! Events on the real API server: a repeat counts up the first event's series, a changed
//! note is a new event.

mod support;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use nodevirt::api::VirtualMachine;
use nodevirt::events::{EventRecorder, EventType};
use support::cluster::Cluster;

#[tokio::test]
async fn a_repeated_event_is_one_object_with_a_count_and_a_new_note_is_another() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-events");
    let client = cluster.admin_client().await;
    let recorder = EventRecorder::new(client.clone(), "nodevirt-test", "node-a");
    let regarding = ObjectReference {
        api_version: Some("kubevirt.io/v1alpha1".into()),
        kind: Some("VirtualMachine".into()),
        namespace: Some(ns.name.clone()),
        name: Some("vm".into()),
        uid: Some("0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into()),
        ..Default::default()
    };
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": "vm",
            "namespace": ns.name,
            "uid": "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        },
        "spec": {"domain": {}},
    }))
    .unwrap();
    for _ in 0..3 {
        recorder
            .publish(&vm, EventType::Warning, "SyncFailed", "disk full")
            .await;
    }
    recorder
        .publish(&vm, EventType::Warning, "SyncFailed", "claim not bound")
        .await;

    let events: Api<Event> = Api::namespaced(client, &ns.name);
    let mut listed = events.list(&ListParams::default()).await.unwrap().items;
    listed.sort_by_key(|e| e.note.clone());
    let summary: Vec<(Option<String>, Option<i32>)> = listed
        .iter()
        .map(|e| (e.note.clone(), e.series.as_ref().map(|s| s.count)))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("claim not bound".into()), None),
            (Some("disk full".into()), Some(3)),
        ],
        "{listed:#?}"
    );
    let first = &listed[1];
    assert_eq!(first.reason.as_deref(), Some("SyncFailed"));
    assert_eq!(first.type_.as_deref(), Some("Warning"));
    assert_eq!(first.reporting_controller.as_deref(), Some("nodevirt-test"));
    assert_eq!(first.reporting_instance.as_deref(), Some("node-a"));
    assert_eq!(first.regarding.as_ref(), Some(&regarding));
}

/// The attack: a VM named with the 253 characters Kubernetes allows got its condition but no
/// event ("metadata.name: must be no more than 253 characters"), as the event's name was the
/// VM's plus a suffix. The API server must now take the event, whose name is cut to fit.
#[tokio::test]
async fn an_object_with_the_longest_valid_name_still_gets_its_event() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-events-long");
    let client = cluster.admin_client().await;
    let recorder = EventRecorder::new(client.clone(), "nodevirt-test", "node-a");
    let name = format!("{}-{}", "a".repeat(200), "b".repeat(52));
    assert_eq!(name.len(), 253);
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns.name, "uid": "1f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"},
        "spec": {"domain": {}},
    }))
    .unwrap();
    recorder
        .publish(
            &vm,
            EventType::Warning,
            "Failed",
            "metadata.name: too long for a domain",
        )
        .await;
    let events: Api<Event> = Api::namespaced(client, &ns.name);
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let event = &listed[0];
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some(name.as_str())
    );
    let event_name = event.metadata.name.as_deref().unwrap();
    assert!(
        event_name.len() <= 253 && event_name.starts_with("aaaa"),
        "{event_name}"
    );
}
