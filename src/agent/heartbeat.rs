//! The agent's heartbeat on its Node: label `kubevirt.io/schedulable=true` and annotation
//! `kubevirt.io/heartbeat=<RFC 3339 time>` every minute by default (jittered), so the controller places
//! VMs only on nodes whose agent is alive; `schedulable=false` on a clean exit. With it, the
//! console port's certificate fingerprint (`nodevirt.io/console-tls-sha256`), so that a new
//! agent's certificate replaces the last one's at its first beat.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tracing::warn;

use crate::api::{HEARTBEAT_ANNOTATION, SCHEDULABLE_LABEL};
use crate::tunnel::pin::AGENT_FINGERPRINT_ANNOTATION;

pub async fn beat(
    client: &Client,
    node: &str,
    schedulable: bool,
    fingerprint: Option<&str>,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut annotations = serde_json::json!({ HEARTBEAT_ANNOTATION: Timestamp::now().to_string() });
    if let Some(fingerprint) = fingerprint {
        annotations[AGENT_FINGERPRINT_ANNOTATION] = fingerprint.into();
    }
    let patch = serde_json::json!({
        "metadata": {
            "labels": { SCHEDULABLE_LABEL: schedulable.to_string() },
            "annotations": annotations,
        }
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Beats every `interval` until the task is dropped. A missing Node (no kubelet yet) is
/// logged and retried.
pub async fn run(client: Client, node: String, interval: Duration, fingerprint: Option<String>) {
    loop {
        if let Err(e) = beat(&client, &node, true, fingerprint.as_deref()).await {
            warn!(node, error = %e, "cannot update the node's heartbeat");
        }
        // Up to 10% jitter, so many agents do not write in step.
        let spread = (interval.as_millis() as u64 / 10).max(1);
        let jitter_ms = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs()) % spread;
        tokio::time::sleep(interval + Duration::from_millis(jitter_ms)).await;
    }
}
