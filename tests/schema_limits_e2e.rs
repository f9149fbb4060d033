//! The CRD schemas on a real kube-apiserver accept what they must: every value at its limit
//! (formatted from `domain::limits`) and every example in examples/. The refusals are
//! tests/schema_e2e.rs.

mod support;

use nodevirt::api::replica_set::GENERATED_NAME_SUFFIX_LEN;
use nodevirt::domain::limits::{
    DNS_LABEL_MAX_LEN, MAX_CLOCK_OFFSET_SECONDS, MAX_CORES, MAX_DISKS, MAX_IDE_DISKS,
    MAX_IMAGE_REFERENCE_LEN, MAX_TERMINATION_GRACE_PERIOD_SECONDS, MAX_TIMEZONE_LEN,
    MAX_USER_DATA_BYTES,
};
use serde_json::{Value, json};
use support::cluster::{Cluster, repo_root};
use support::schema::{
    accepted, base64, disks, first_disk, first_volume, replica_set_with, vm_with,
};

#[test]
fn values_at_their_limits_are_accepted() {
    let cluster = Cluster::get();
    let cases = [
        (
            "cores at the limit",
            vm_with(|v| v["spec"]["domain"]["cpu"]["cores"] = json!(MAX_CORES)),
        ),
        (
            "the most disks and volumes",
            vm_with(|v| {
                disks(
                    &mut v["spec"],
                    MAX_DISKS,
                    json!({"disk": {"bus": "virtio"}}),
                )
            }),
        ),
        (
            "userData of 64 KiB",
            vm_with(
                |v| *first_volume(v) = json!({"name": "root", "cloudInitNoCloud": {"userData": "x".repeat(MAX_USER_DATA_BYTES)}}),
            ),
        ),
        (
            "userDataBase64 of 64 KiB, with a YAML block scalar's newline",
            vm_with(|v| {
                let encoded = format!("{}\n", base64(&vec![7u8; MAX_USER_DATA_BYTES]));
                *first_volume(v) =
                    json!({"name": "root", "cloudInitNoCloud": {"userDataBase64": encoded}})
            }),
        ),
        (
            "an image reference at the limit",
            vm_with(|v| {
                let image = format!("reg.example/{}", "a".repeat(MAX_IMAGE_REFERENCE_LEN - 12));
                *first_volume(v) = json!({"name": "root", "registryDisk": {"image": image}})
            }),
        ),
        (
            "the longest grace period",
            vm_with(|v| {
                v["spec"]["terminationGracePeriodSeconds"] =
                    json!(MAX_TERMINATION_GRACE_PERIOD_SECONDS)
            }),
        ),
        (
            "the clock furthest off UTC",
            vm_with(|v| {
                v["spec"]["domain"]["clock"] =
                    json!({"utc": {"offsetSeconds": MAX_CLOCK_OFFSET_SECONDS}})
            }),
        ),
        (
            "a timezone at the limit",
            vm_with(|v| {
                let timezone = format!("Europe/{}", "x".repeat(MAX_TIMEZONE_LEN - 7));
                v["spec"]["domain"]["clock"] = json!({"timezone": timezone})
            }),
        ),
        (
            "memory at both ends",
            vm_with(
                |v| v["spec"]["domain"]["resources"] = json!({"requests": {"memory": "1Mi", "cpu": "500m"}, "limits": {"memory": "16Ti"}}),
            ),
        ),
        (
            "the most ide disks, on pc",
            vm_with(|v| {
                v["spec"]["domain"]["machine"] = json!({"type": "pc"});
                disks(
                    &mut v["spec"],
                    MAX_IDE_DISKS,
                    json!({"cdrom": {"bus": "ide", "tray": "open"}}),
                );
            }),
        ),
        (
            "explicit nulls where fields are optional",
            vm_with(|v| {
                v["spec"]["domain"]["cpu"] = Value::Null;
                v["spec"]["domain"]["clock"] =
                    json!({"utc": null, "timer": {"rtc": {"tickPolicy": null}}});
                first_disk(v)["disk"]["bus"] = Value::Null;
            }),
        ),
        (
            "a VM name of 63 characters",
            vm_with(|v| v["metadata"]["name"] = json!("v".repeat(DNS_LABEL_MAX_LEN))),
        ),
        ("a ReplicaSet name of 58 characters", {
            let mut rs = replica_set_with(|_| {});
            rs["metadata"]["name"] =
                json!("r".repeat(DNS_LABEL_MAX_LEN - GENERATED_NAME_SUFFIX_LEN));
            rs
        }),
    ];
    for (what, object) in cases {
        accepted(cluster, what, &object);
    }
}

#[test]
fn every_example_is_accepted() {
    let cluster = Cluster::get();
    let mut examples: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 4,
        "examples/ lost its files: {examples:?}"
    );
    for example in examples {
        let out = cluster.kubectl(&[
            "apply",
            "--dry-run=server",
            "-n",
            "default",
            "-f",
            example.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
