//! The reconcile (plan + executor) driven with the in-memory hypervisor and cluster.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::virtual_machine::FORCE_STOP_ANNOTATION;
use crate::api::{Phase, VirtualMachine};
use crate::domain::DomainType;
use crate::domain::fixtures::{DOMAIN, vm};
use crate::event_log::EventLog;
use crate::hypervisor::choice::{HypervisorChoice, HypervisorFlag};
use crate::hypervisor::seam::Hypervisor;
use crate::hypervisor::{DomainState, GuestAddress, ShutoffReason};
use crate::metrics::{AgentMetrics, StepLabel};
use crate::storage::layout::VmLayout;

use super::execute::Error;
use super::fake::{FakeCluster, FakeHypervisor, Fault, Gathering};
use super::finalizer::FINALIZER;
use super::inputs::InputError;
use super::plan::{ADDRESS_POLL, Next, Node, RESYNC, WAITING_RETRY};
use super::reasons;
use super::reconcile::{Context, Settings, step};

mod deletion;

const UID: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const DOMAIN_NAME: &str = "default_testvm";

struct Harness {
    ctx: Context,
    hypervisor: Arc<FakeHypervisor>,
    cluster: Arc<FakeCluster>,
    state_dir: tempfile::TempDir,
}

fn harness_with(choice: HypervisorChoice) -> Harness {
    let hypervisor = Arc::new(FakeHypervisor::default());
    let cluster = Arc::new(FakeCluster::default());
    let state_dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        node: Node {
            name: "node1".into(),
            state_dir: state_dir.path().to_path_buf(),
            network: Some("default".into()),
            addresses_possible: true,
            cpu_model: Default::default(),
        },
        hypervisor: Arc::new(choice),
    };
    let ctx = Context::new(
        cluster.clone(),
        hypervisor.clone(),
        settings,
        Arc::new(AgentMetrics::new()),
        Arc::new(EventLog::default()),
    );
    Harness {
        ctx,
        hypervisor,
        cluster,
        state_dir,
    }
}

fn harness() -> Harness {
    harness_with(HypervisorChoice::decided(DomainType::Qemu))
}

/// A new VM `testvm` assigned to node1, stored in the fake API server.
fn new_vm(h: &Harness, domain: &str, volumes: &str) -> VirtualMachine {
    let mut vm = vm(domain, volumes);
    vm.metadata.namespace = Some("default".into());
    vm.metadata.uid = Some(UID.into());
    vm.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    h.cluster.put(&vm);
    vm
}

/// Reconciles the API server's current copy, as the watch would deliver it.
async fn reconcile(h: &Harness) -> Result<Next, Error> {
    let vm = h.cluster.get("testvm").expect("the VM exists");
    step(&vm, &h.ctx).await
}

fn phase(h: &Harness) -> Phase {
    h.cluster.get("testvm").unwrap().phase()
}

/// The Ready condition's reason and message.
fn ready(h: &Harness) -> (String, String) {
    let vm = h.cluster.get("testvm").unwrap();
    let status = vm.status.unwrap();
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    (
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    )
}

/// Whether `op` ("define", "start", ...) was asked of the hypervisor since the last look;
/// forgets the calls.
fn called(h: &Harness, op: &str) -> bool {
    h.hypervisor
        .take_calls()
        .iter()
        .any(|c| c.split(' ').next() == Some(op))
}

fn step_errors(h: &Harness, step: &'static str) -> u64 {
    h.ctx
        .metrics
        .reconcile_errors
        .get_or_create(&StepLabel { step })
        .get()
}

fn reasons_of(events: &[(crate::events::EventType, String, String)]) -> Vec<&str> {
    events
        .iter()
        .map(|(_, reason, _)| reason.as_str())
        .collect()
}

/// Marks the stored VM deleted `ago` seconds ago, with a grace period of `grace` seconds.
fn delete(h: &Harness, ago: i64, grace: i64) {
    let mut vm = h.cluster.get("testvm").unwrap();
    vm.spec.termination_grace_period_seconds = Some(grace);
    vm.metadata.deletion_timestamp = Some(Time(Timestamp::now() - SignedDuration::from_secs(ago)));
    h.cluster.put(&vm);
}

fn finalized(h: &Harness) -> bool {
    h.cluster
        .get("testvm")
        .unwrap()
        .metadata
        .finalizers
        .unwrap_or_default()
        .iter()
        .any(|f| f == FINALIZER)
}

/// A running VM deleted past its grace period whose folder cannot be removed: a file stands
/// where it was. Returns that file's path.
async fn deleted_with_an_unremovable_folder(h: &Harness) -> std::path::PathBuf {
    new_vm(h, DOMAIN, "[]");
    reconcile(h).await.unwrap();
    let dir = VmLayout::new(h.state_dir.path(), UID).dir().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"").unwrap();
    delete(h, 60, 30);
    dir
}

#[tokio::test]
async fn a_new_vm_is_finalized_defined_started_and_reported_running() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    let next = reconcile(&h).await.unwrap();
    assert_eq!(next, Next::RequeueAfter(ADDRESS_POLL));
    assert!(finalized(&h));
    assert_eq!(phase(&h), Phase::Running);
    assert_eq!(h.hypervisor.state(DOMAIN_NAME), Some(DomainState::Running));
    let calls = h.hypervisor.take_calls();
    assert!(
        calls.contains(&format!("define {DOMAIN_NAME}")),
        "{calls:?}"
    );
    assert_eq!(
        reasons_of(&h.cluster.take_events()),
        [reasons::EVENT_CREATED, reasons::EVENT_STARTED]
    );
    assert_eq!(*h.cluster.gathers.lock().unwrap(), 1);
    // Its folder was made under the state dir, named by UID.
    assert!(VmLayout::new(h.state_dir.path(), UID).dir().is_dir());

    // Running, without an address yet: polled; with one, reported and resynced slowly.
    assert_eq!(
        reconcile(&h).await.unwrap(),
        Next::RequeueAfter(ADDRESS_POLL)
    );
    h.hypervisor.set_addresses(vec![GuestAddress {
        mac: "52:54:00:00:00:01".into(),
        ip: "10.213.0.9".into(),
    }]);
    assert_eq!(reconcile(&h).await.unwrap(), Next::RequeueAfter(RESYNC));
    let status = h.cluster.get("testvm").unwrap().status.unwrap();
    assert_eq!(
        status.interfaces[0].ip_address.as_deref(),
        Some("10.213.0.9")
    );
    // Nothing changed: nothing is written.
    let writes = *h.cluster.status_writes.lock().unwrap();
    reconcile(&h).await.unwrap();
    assert_eq!(*h.cluster.status_writes.lock().unwrap(), writes);
}

#[tokio::test]
async fn nothing_is_defined_before_the_hypervisor_is_chosen() {
    let h = harness_with(HypervisorChoice::new(HypervisorFlag::Auto));
    new_vm(&h, DOMAIN, "[]");
    assert_eq!(
        reconcile(&h).await.unwrap(),
        Next::RequeueAfter(WAITING_RETRY)
    );
    assert!(!called(&h, "define"));
}

#[tokio::test]
async fn a_refused_define_or_start_fails_the_vm_naming_the_step() {
    for (op, reason) in [
        ("define", reasons::DEFINE_FAILED),
        ("start", reasons::START_FAILED),
    ] {
        let h = harness();
        new_vm(&h, DOMAIN, "[]");
        h.hypervisor.fail(op, Fault::Refused);
        assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
        assert_eq!(phase(&h), Phase::Failed, "{op}");
        let (got, message) = ready(&h);
        assert_eq!(got, reason);
        assert!(message.contains("refused"), "{message}");
        if op == "start" {
            assert!(message.contains("QEMU's log on node node1"), "{message}");
        }
        let events = h.cluster.take_events();
        assert_eq!(events.last().unwrap().1, reasons::EVENT_FAILED);
        assert_eq!(step_errors(&h, op), 1);
        assert_eq!(h.ctx.metrics.libvirt_errors.get(), 1);
        // Ended: never started again.
        h.hypervisor.heal();
        h.hypervisor.take_calls();
        assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
        assert!(!called(&h, "start"));
    }
}

#[tokio::test]
async fn libvirtd_away_is_retried_not_blamed_on_the_vm() {
    for op in ["status", "define", "start"] {
        let h = harness();
        new_vm(&h, DOMAIN, "[]");
        h.hypervisor.fail(op, Fault::Lost);
        let err = reconcile(&h).await.unwrap_err();
        assert!(err.libvirt_lost(), "{op}: {err}");
        assert_eq!(
            step_errors(&h, if op == "status" { "observe" } else { op }),
            1
        );
        assert_ne!(phase(&h), Phase::Failed, "{op}");
        h.hypervisor.heal();
        reconcile(&h).await.unwrap();
        assert_eq!(phase(&h), Phase::Running, "{op}");
    }
}

#[tokio::test]
async fn inputs_decide_wait_fail_or_retry() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    h.cluster
        .gather_gives(|| Err(InputError::Waiting("claim c is not bound".into())));
    assert_eq!(
        reconcile(&h).await.unwrap(),
        Next::RequeueAfter(WAITING_RETRY)
    );
    assert_eq!(ready(&h).0, reasons::MISSING_INPUT);
    assert_ne!(phase(&h), Phase::Failed);
    assert!(!called(&h, "define"));

    h.cluster.gather_gives(|| {
        Err(InputError::Api {
            what: "claim c".into(),
            source: kube::Error::Service("connection refused".into()),
        })
    });
    let err = reconcile(&h).await.unwrap_err();
    assert!(err.api_unreachable(), "{err}");
    assert_eq!(step_errors(&h, "inputs"), 1);

    let refusals: [(Gathering, &str); 3] = [
        (
            || Err(InputError::Invalid("no Secret s".into())),
            reasons::MISSING_INPUT,
        ),
        (
            || Err(InputError::InvalidSpec("bad image".into())),
            reasons::INVALID_SPEC,
        ),
        (
            || Err(InputError::DiskFull("full".into())),
            reasons::STORAGE_FAILED,
        ),
    ];
    for (gives, reason) in refusals {
        let h = harness();
        new_vm(&h, DOMAIN, "[]");
        h.cluster.gather_gives(gives);
        assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
        assert_eq!((phase(&h), ready(&h).0.as_str()), (Phase::Failed, reason));
    }
}

#[tokio::test]
async fn an_invalid_spec_fails_before_anything_it_names_is_read() {
    let h = harness();
    // A disk on a volume that does not exist.
    new_vm(
        &h,
        "{resources: {requests: {memory: 64Mi}}, devices: {disks: [{name: d, volumeName: nope, disk: {}}]}}",
        "[]",
    );
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    assert_eq!(
        (phase(&h), ready(&h).0.as_str()),
        (Phase::Failed, reasons::INVALID_SPEC)
    );
    assert_eq!(*h.cluster.gathers.lock().unwrap(), 0);
}

#[tokio::test]
async fn an_end_already_recorded_is_not_overwritten_from_a_stale_cache() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    let stale = h.cluster.get("testvm").unwrap();
    // The API server already says Failed (an earlier reconcile's write); the cache lags.
    let mut failed = stale.clone();
    failed.status.as_mut().unwrap().phase = Some(Phase::Failed);
    h.cluster.put(&failed);
    h.hypervisor
        .set_state(DOMAIN_NAME, UID, DomainState::Crashed);
    let writes = *h.cluster.status_writes.lock().unwrap();
    assert_eq!(step(&stale, &h.ctx).await.unwrap(), Next::AwaitChange);
    assert_eq!(*h.cluster.status_writes.lock().unwrap(), writes);
}

#[tokio::test]
async fn a_domain_that_stops_ends_the_vm_by_how_it_stopped() {
    let cases = [
        (
            DomainState::ShutOff(ShutoffReason::Shutdown),
            Phase::Succeeded,
            reasons::SHUT_DOWN,
        ),
        (DomainState::Crashed, Phase::Failed, reasons::CRASHED),
        (
            DomainState::ShutOff(ShutoffReason::Crashed),
            Phase::Failed,
            reasons::CRASHED,
        ),
        (
            DomainState::ShutOff(ShutoffReason::Failed),
            Phase::Failed,
            reasons::START_FAILED,
        ),
        (
            DomainState::ShutOff(ShutoffReason::Destroyed),
            Phase::Failed,
            reasons::DESTROYED,
        ),
    ];
    for (state, expected, reason) in cases {
        let h = harness();
        new_vm(&h, DOMAIN, "[]");
        reconcile(&h).await.unwrap();
        h.cluster.take_events();
        h.hypervisor.set_state(DOMAIN_NAME, UID, state);
        reconcile(&h).await.unwrap();
        assert_eq!((phase(&h), ready(&h).0.as_str()), (expected, reason));
        assert_eq!(
            reasons_of(&h.cluster.take_events()),
            [reasons::EVENT_STOPPED]
        );
    }
    // A running VM whose domain vanished.
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    h.hypervisor.take_calls();
    h.hypervisor.undefine(DOMAIN_NAME).unwrap();
    reconcile(&h).await.unwrap();
    assert_eq!(ready(&h).0, reasons::DOMAIN_LOST);
}

#[tokio::test]
async fn a_stale_domain_of_an_earlier_vm_is_removed_first() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    let old = "11111111-2222-3333-4444-555555555555";
    h.hypervisor
        .set_state(DOMAIN_NAME, old, DomainState::Running);
    let old_dir = VmLayout::new(h.state_dir.path(), old).dir().to_path_buf();
    std::fs::create_dir_all(&old_dir).unwrap();
    assert_eq!(
        reconcile(&h).await.unwrap(),
        Next::RequeueAfter(Duration::ZERO)
    );
    assert_eq!(h.hypervisor.state(DOMAIN_NAME), None);
    assert!(!old_dir.exists());
    reconcile(&h).await.unwrap();
    assert_eq!(phase(&h), Phase::Running);
}

#[tokio::test]
async fn a_finalizer_conflict_stops_the_reconcile_and_comes_back_soon() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    h.cluster.fail("finalizer", Fault::Refused);
    assert_eq!(
        reconcile(&h).await.unwrap(),
        Next::RequeueAfter(Duration::from_secs(1))
    );
    assert!(!called(&h, "define"));
    h.cluster.fail("finalizer", Fault::Lost);
    let err = reconcile(&h).await.unwrap_err();
    assert!(err.api_unreachable());
    assert_eq!(step_errors(&h, "add_finalizer"), 1);
}

#[tokio::test]
async fn reading_the_api_servers_copy_can_fail_and_is_retried() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    h.hypervisor
        .set_state(DOMAIN_NAME, UID, DomainState::Crashed);
    h.cluster.fail("latest", Fault::Lost);
    assert!(reconcile(&h).await.unwrap_err().api_unreachable());
    assert_eq!(step_errors(&h, "latest"), 1);
}

#[tokio::test]
async fn a_vm_nodevirt_cannot_read_fails_with_the_field_and_is_still_deleted() {
    let h = harness();
    let vm = new_vm(&h, DOMAIN, "[]");
    let vm = crate::api::virtual_machine::unreadable(
        vm.metadata,
        None,
        "spec.domain.cpu.cores: invalid value".into(),
    );
    h.cluster.put(&vm);
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    let (reason, message) = ready(&h);
    assert_eq!(
        (phase(&h), reason.as_str()),
        (Phase::Failed, reasons::INVALID_SPEC)
    );
    assert!(message.contains("spec.domain.cpu.cores"), "{message}");
    delete(&h, 0, 30);
    reconcile(&h).await.unwrap();
    assert!(!finalized(&h));
}

#[tokio::test]
async fn a_vm_folder_that_cannot_be_made_fails_the_vm_as_storage() {
    let h = harness();
    new_vm(&h, DOMAIN, "[{name: scratch, emptyDisk: {capacity: 64Mi}}]");
    // A file where the VM's folder goes: nothing can be created below it.
    let dir = VmLayout::new(h.state_dir.path(), UID).dir().to_path_buf();
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::write(&dir, b"").unwrap();
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    let (reason, message) = ready(&h);
    assert_eq!(
        (phase(&h), reason.as_str()),
        (Phase::Failed, reasons::STORAGE_FAILED)
    );
    assert!(message.contains(UID), "names the folder: {message}");
    assert_eq!(step_errors(&h, "prepare_disks"), 1);
    assert!(!called(&h, "define"));
}

#[tokio::test]
async fn a_failed_reconcile_is_counted_published_and_backed_off_until_one_succeeds() {
    use kube::runtime::controller::Action as Requeue;

    use super::reconcile::{error_policy, reconcile as run};
    use crate::metrics::ResultLabel;

    let h = harness();
    let dir = deleted_with_an_unremovable_folder(&h).await;
    h.cluster.take_events();
    let Harness { ctx, cluster, .. } = h;
    let ctx = Arc::new(ctx);
    let vm = || Arc::new(cluster.get("testvm").unwrap());
    let results = |result| {
        ctx.metrics
            .reconciles
            .get_or_create(&ResultLabel { result })
            .get()
    };

    // A failure of the VM's own (not libvirtd or the API server away) is told to its owner.
    let err = run(vm(), ctx.clone()).await.unwrap_err();
    assert_eq!(results("error"), 1);
    let events = cluster.take_events();
    // The domain went first ("Deleted"); the folder's removal failed after it.
    assert_eq!(
        reasons_of(&events),
        [reasons::EVENT_DELETED, reasons::EVENT_SYNC_FAILED]
    );
    assert!(events[1].2.contains("removing"), "{events:?}");
    let backoffs: Vec<Requeue> = (0..7)
        .map(|_| error_policy(vm(), &err, ctx.clone()))
        .collect();
    let expected: Vec<Requeue> = [2, 4, 8, 16, 32, 60, 60]
        .map(|s| Requeue::requeue(Duration::from_secs(s)))
        .into();
    assert_eq!(backoffs, expected);

    // Once it succeeds, the next failure starts the backoff again from the shortest wait.
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(
        run(vm(), ctx.clone()).await.unwrap(),
        Requeue::await_change()
    );
    assert_eq!(results("ok"), 1);
    assert_eq!(
        error_policy(vm(), &err, ctx.clone()),
        Requeue::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn a_vm_starts_only_once_its_holder_pod_is_bound_here() {
    use super::cluster::HolderLookup;
    let h = harness();
    let vm = new_vm(&h, DOMAIN, "[]");
    h.cluster.holder_is(HolderLookup::Cached(None));
    reconcile(&h).await.unwrap();
    assert!(!called(&h, "define"), "no pod, no domain");
    assert_eq!(ready(&h).0, reasons::WAITING_FOR_POD);
    let mut pod =
        crate::api::holder::spec::holder_pod(&vm, &crate::api::holder::spec::test_config())
            .unwrap();
    pod.spec.as_mut().unwrap().node_name = Some("node1".into());
    h.cluster
        .holder_is(HolderLookup::Cached(Some(Arc::new(pod))));
    reconcile(&h).await.unwrap();
    assert!(called(&h, "define"));
    assert_eq!(phase(&h), Phase::Running);
}
