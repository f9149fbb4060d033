//! The controller's metrics port end to end: a real controller process against the test
//! cluster, scraped as Prometheus would be (HTTPS, a ServiceAccount's bearer token reviewed by
//! the API server), its probes, and its counters moved by the reconcile of an
//! OfflineVirtualMachine.
//!
//! The controller takes part in the real election (Lease nodevirt/nodevirt-controller): while
//! another test's controller leads, this one is a standby and the test waits for its turn
//! rather than acting beside it. Once it leads, a second replica shows what a standby
//! reports.

mod support;

use std::time::Duration;

use support::agent::{controller, sample};
use support::cluster::{Cluster, unique_suffix, wait_for, wait_for_explained};

/// Long enough for another test's controller (lease 6 s) to finish its scenario.
const LEAD_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_controller_serves_metrics_to_readers_probes_to_all_and_counts_its_reconciles() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-ctlm");
    let ctl = controller(cluster, &format!("metrics-{}", unique_suffix()), 3600);

    // Probes: open to all; ready once its caches have listed, leading or not.
    let last = std::cell::RefCell::new(None);
    let ready = wait_for_explained(
        Duration::from_secs(60),
        "the controller's /readyz",
        || {
            let answer = ctl.get_as("/readyz", None);
            let ok = (answer.status == 200).then(|| answer.body.clone());
            *last.borrow_mut() = Some(answer);
            ok
        },
        || format!("the last answer: {:?}", last.borrow()),
    );
    assert!(ready.contains("caches synced: true"), "{ready}");
    let health = ctl.get_as("/healthz", None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(
        health.body.contains("leader election loop: ok"),
        "{}",
        health.body
    );

    // /metrics: 401 without a token or with one the API server does not know, 403 for a
    // ServiceAccount without nodevirt-metrics-reader, 200 for a reader.
    assert_eq!(ctl.get_as("/metrics", None).status, 401);
    assert_eq!(ctl.get_as("/metrics", Some("not-a-token")).status, 401);
    let stranger = "nodevirt-test-no-metrics";
    cluster.metrics_scraper(stranger, false);
    let refused = ctl.get_as("/metrics", Some(&cluster.token("nodevirt", stranger, None)));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains(stranger), "{}", refused.body);
    let (status, text) = ctl.get("/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("nodevirt_controller_leader "), "{text}");
    assert!(text.ends_with("# EOF\n"));

    // It leads once the Lease is free, and says so.
    let before = wait_for_explained(
        LEAD_TIMEOUT,
        "the controller to lead",
        || {
            let (_, text) = ctl.get("/metrics");
            (sample(&text, "nodevirt_controller_leader ") == 1.0).then_some(text)
        },
        || {
            cluster.kubectl_ok(&[
                "-n",
                "nodevirt",
                "get",
                "lease",
                "nodevirt-controller",
                "-o",
                "wide",
            ])
        },
    );
    let ready = ctl.get_as("/readyz", None);
    assert_eq!(ready.status, 200);
    assert!(ready.body.contains("leading: true"), "{}", ready.body);

    // A second replica is a standby: healthy and ready (warm caches), not leading.
    let standby = controller(
        cluster,
        &format!("metrics-standby-{}", unique_suffix()),
        3600,
    );
    let standby_ready = wait_for(Duration::from_secs(60), "the standby's /readyz", || {
        let answer = standby.get_as("/readyz", None);
        (answer.status == 200).then_some(answer.body)
    });
    assert!(standby_ready.contains("leading: false"), "{standby_ready}");
    assert_eq!(standby.get_as("/healthz", None).status, 200);
    let (_, standby_text) = standby.get("/metrics");
    assert!(
        standby_text.contains("\nnodevirt_controller_leader 0\n"),
        "{standby_text}"
    );
    drop(standby);

    // An OfflineVirtualMachine that runs: its VM is created (and, on no node of this test,
    // left Pending by the scheduling reconcile); stopped, its VM is deleted.
    let ovm_ok = r#"nodevirt_controller_reconciles_total{controller="ovm",result="ok"}"#;
    let created = r#"nodevirt_controller_vms_created_total{controller="ovm"}"#;
    let deleted = r#"nodevirt_controller_vms_deleted_total{controller="ovm"}"#;
    let scheduling = r#"nodevirt_controller_reconciles_total{controller="scheduling""#;
    let durations = r#"nodevirt_controller_reconcile_duration_seconds_count{controller="ovm"}"#;
    cluster.apply(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: OfflineVirtualMachine\nmetadata: {{name: counted, namespace: {ns}}}\n\
         spec:\n  running: true\n  template:\n    metadata: {{labels: {{guest: counted}}}}\n    spec:\n\
         \x20     nodeSelector: {{e2e-group: none-{ns}}}\n      domain: {{resources: {{requests: {{memory: 16Mi}}}}}}\n",
        ns = ns.name
    ));
    let moved = |text: &str, series: &str| sample(text, series) > sample(&before, series);
    let after_start = wait_for(
        Duration::from_secs(60),
        "the OVM's VM to be created and counted",
        || {
            let (_, text) = ctl.get("/metrics");
            (moved(&text, created) && moved(&text, ovm_ok) && moved(&text, scheduling))
                .then_some(text)
        },
    );
    assert!(moved(&after_start, durations), "{after_start}");
    assert_eq!(
        cluster.kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "vm",
            "counted",
            "-o",
            "jsonpath={.metadata.name}"
        ]),
        "counted"
    );
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "patch",
        "offlinevirtualmachine",
        "counted",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"running":false}}"#,
    ]);
    wait_for(
        Duration::from_secs(60),
        "the OVM's VM to be deleted and counted",
        || {
            let (_, text) = ctl.get("/metrics");
            moved(&text, deleted).then_some(())
        },
    );
    let (_, text) = ctl.get("/metrics");
    assert!(sample(&text, "nodevirt_controller_api_requests_total") > 0.0);
    assert!(
        sample(
            &text,
            r#"nodevirt_metrics_auth_reviews_total{result="forbidden"}"#
        ) >= 1.0
    );
    let mut ctl = ctl;
    assert!(!ctl.exited(), "the controller is still running");
}
