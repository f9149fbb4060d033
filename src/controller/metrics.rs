//! The controller's Prometheus metrics (`nodevirt_controller_*`, docs/metrics.md), served on
//! its metrics port. Labels name a controller, a step, a kind or a result, never an object, so
//! the series stay a few dozen however many VMs there are.
//!
//! Each reconcile is counted once, where it returns ([`instrumented`]): its result, its
//! duration and, when it failed, the step that failed (the error's [`Step`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::MethodLabel;
use crate::server::HttpMetrics;

/// The `controller` label of each reconciler.
pub mod controllers {
    /// Presets and holder pods (placement by kube-scheduler) of new VirtualMachines.
    pub const SCHEDULING: &str = "scheduling";
    pub const OFFLINE_VIRTUAL_MACHINE: &str = "ovm";
    pub const REPLICA_SET: &str = "replicaset";
}

/// An error that knows which step of a reconcile failed, as a metric label.
pub trait Step {
    fn step(&self) -> &'static str;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type HistogramFamily = Family<ControllerLabel, Histogram, fn() -> Histogram>;

/// From 1 ms to about 65 s: a reconcile is a few API calls.
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct ControllerMetrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_seconds: HistogramFamily,
    reconcile_errors: Family<ErrorLabels, Counter>,
    /// 1 while this replica holds the leader Lease, 0 on a standby.
    pub leader: Gauge,
    /// VirtualMachines created for an OfflineVirtualMachine or a ReplicaSet, by controller.
    pub vms_created: Family<ControllerLabel, Counter>,
    /// VirtualMachines deleted by the controller (ended, not wanted, in excess), by controller.
    pub vms_deleted: Family<ControllerLabel, Counter>,
    /// VMs marked Unknown because their node went silent or does not exist, by reason.
    pub vms_unknown: Family<ReasonLabel, Counter>,
    /// Errors of the controller's watches, by kind (each is followed by a re-list).
    pub watch_errors: Family<KindLabel, Counter>,
    /// Requests sent to the API server, by HTTP method.
    pub api_requests: Family<MethodLabel, Counter>,
    /// The metrics port's connections and token reviews (shared names with the agent).
    pub http: HttpMetrics,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let metrics = ControllerMetrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_seconds: HistogramFamily::new_with_constructor(reconcile_histogram),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            vms_created: Family::default(),
            vms_deleted: Family::default(),
            vms_unknown: Family::default(),
            watch_errors: Family::default(),
            api_requests: Family::default(),
            http: HttpMetrics::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "nodevirt_controller_reconciles",
            "Reconciles by controller (scheduling, ovm, replicaset) and result (ok, error)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "nodevirt_controller_reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            metrics.reconcile_seconds.clone(),
        );
        registry.register(
            "nodevirt_controller_reconcile_errors",
            "Failed reconciles by controller and the step that failed",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "nodevirt_controller_leader",
            "1 while this replica holds the leader Lease and acts, 0 on a standby",
            metrics.leader.clone(),
        );
        registry.register(
            "nodevirt_controller_vms_created",
            "VirtualMachines created for OfflineVirtualMachines and ReplicaSets, by controller",
            metrics.vms_created.clone(),
        );
        registry.register(
            "nodevirt_controller_vms_deleted",
            "VirtualMachines the controller deleted, by controller",
            metrics.vms_deleted.clone(),
        );
        registry.register(
            "nodevirt_controller_vms_marked_unknown",
            "VMs marked Unknown, by reason (NodeUnresponsive, NodeNotFound)",
            metrics.vms_unknown.clone(),
        );
        registry.register(
            "nodevirt_controller_watch_errors",
            "Errors of the controller's watches, by kind",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "nodevirt_controller_api_requests",
            "Requests the controller sent to the Kubernetes API server, by HTTP method",
            metrics.api_requests.clone(),
        );
        metrics.http.register(&mut registry);
        ControllerMetrics {
            registry,
            ..metrics
        }
    }

    /// Counts one reconcile of `controller` that took `elapsed`, and its failed step if any.
    pub fn record(
        &self,
        controller: &'static str,
        elapsed: Duration,
        failed: Option<&'static str>,
    ) {
        let result = if failed.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_seconds
            .get_or_create(&ControllerLabel { controller })
            .observe(elapsed.as_secs_f64());
        if let Some(step) = failed {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { controller, step })
                .inc();
        }
    }

    /// Counts a watch error of `kind`.
    pub fn watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// The whole exposition, OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// `reconcile`, counted in `metrics` as a reconcile of `controller` (see the module).
pub fn instrumented<K, C, E, F, Fut>(
    metrics: Arc<ControllerMetrics>,
    controller: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>>
where
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Step + Send + 'static,
{
    move |object, ctx| {
        let metrics = Arc::clone(&metrics);
        let reconciled = reconcile(object, ctx);
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let result = reconciled.await;
            let failed = result.as_ref().err().map(Step::step);
            metrics.record(controller, started.elapsed(), failed);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failed;
    impl Step for Failed {
        fn step(&self) -> &'static str {
            "create_vm"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_is_counted_once_with_its_result_duration_and_step() {
        let metrics = Arc::new(ControllerMetrics::new());
        let mut ok = instrumented(
            Arc::clone(&metrics),
            controllers::OFFLINE_VIRTUAL_MACHINE,
            |_: Arc<()>, _: Arc<()>| async {
                tokio::time::sleep(Duration::from_millis(3)).await;
                Ok::<_, Failed>(Action::await_change())
            },
        );
        let mut failing = instrumented(
            Arc::clone(&metrics),
            controllers::REPLICA_SET,
            |_: Arc<()>, _: Arc<()>| async { Err::<Action, _>(Failed) },
        );
        ok(Arc::new(()), Arc::new(())).await.ok().unwrap();
        ok(Arc::new(()), Arc::new(())).await.ok().unwrap();
        assert!(failing(Arc::new(()), Arc::new(())).await.is_err());
        metrics.leader.set(1);
        metrics.watch_error("Node");
        let text = metrics.render().unwrap();
        for line in [
            r#"nodevirt_controller_reconciles_total{controller="ovm",result="ok"} 2"#,
            r#"nodevirt_controller_reconciles_total{controller="replicaset",result="error"} 1"#,
            r#"nodevirt_controller_reconcile_errors_total{controller="replicaset",step="create_vm"} 1"#,
            r#"nodevirt_controller_reconcile_duration_seconds_count{controller="ovm"} 2"#,
            r#"nodevirt_controller_reconcile_duration_seconds_sum{controller="ovm"} 0.006"#,
            r#"nodevirt_controller_reconcile_duration_seconds_bucket{le="0.004",controller="ovm"} 2"#,
            "nodevirt_controller_leader 1",
            r#"nodevirt_controller_watch_errors_total{kind="Node"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains(r#"step="create_vm",controller="ovm""#)
                && !text.contains(r#"{controller="ovm",step="#),
            "a successful reconcile counts no error"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
