//! Deletion driven through the reconcile: the grace period waited out by requeueing, a
//! guest that powers off, forced stops, and deletion steps that fail and are retried.

use super::*;

#[tokio::test]
async fn a_deletion_waits_for_the_guest_without_holding_the_reconcile() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    h.cluster.take_events();
    h.hypervisor.ignores_acpi.store(true, Ordering::SeqCst);
    delete(&h, 1, 30);
    h.hypervisor.take_calls();
    let started = std::time::Instant::now();
    reconcile(&h).await.unwrap();
    let next = reconcile(&h).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no waiting inside"
    );
    // One ACPI shutdown, whatever the number of reconciles, then a requeue at the deadline.
    let shutdowns = h
        .hypervisor
        .take_calls()
        .iter()
        .filter(|c| c.starts_with("shutdown"))
        .count();
    assert_eq!(shutdowns, 1);
    let Next::RequeueAfter(left) = next else {
        panic!("{next:?}")
    };
    assert!(
        left <= Duration::from_secs(29) && left >= Duration::from_secs(27),
        "{left:?}"
    );
    assert_eq!(
        reasons_of(&h.cluster.take_events()),
        [reasons::EVENT_SHUTTING_DOWN]
    );
    assert!(finalized(&h));

    // Past the deadline: destroyed, undefined, folder and finalizer gone.
    delete(&h, 31, 30);
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    assert_eq!(h.hypervisor.state(DOMAIN_NAME), None);
    assert!(!VmLayout::new(h.state_dir.path(), UID).dir().exists());
    assert!(!finalized(&h));
    assert_eq!(
        reasons_of(&h.cluster.take_events()),
        [reasons::EVENT_DELETED]
    );
}

#[tokio::test]
async fn a_guest_that_powers_off_is_removed_at_once_and_a_forced_stop_does_not_wait() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    delete(&h, 0, 30);
    reconcile(&h).await.unwrap();
    // The fake guest obeyed: its domain is off, the next reconcile (libvirt's event) removes it.
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    assert!(!finalized(&h));

    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    h.cluster.take_events();
    h.hypervisor.ignores_acpi.store(true, Ordering::SeqCst);
    delete(&h, 0, 3600);
    let mut vm = h.cluster.get("testvm").unwrap();
    vm.metadata.annotations =
        Some([(FORCE_STOP_ANNOTATION.to_string(), "true".to_string())].into());
    h.cluster.put(&vm);
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    assert_eq!(h.hypervisor.state(DOMAIN_NAME), None);
    let events = h.cluster.take_events();
    assert!(events[0].2.contains("forced"), "{events:?}");
}

#[tokio::test]
async fn a_deletion_step_that_fails_is_retried_and_keeps_the_finalizer() {
    for op in ["shutdown", "destroy", "undefine"] {
        let h = harness();
        new_vm(&h, DOMAIN, "[]");
        reconcile(&h).await.unwrap();
        h.hypervisor.ignores_acpi.store(true, Ordering::SeqCst);
        delete(&h, if op == "shutdown" { 0 } else { 60 }, 30);
        h.hypervisor.fail(op, Fault::Lost);
        let err = reconcile(&h).await.unwrap_err();
        assert!(err.libvirt_lost(), "{op}: {err}");
        assert_eq!(step_errors(&h, op), 1);
        assert!(finalized(&h), "{op}");
        h.hypervisor.heal();
        h.hypervisor.take_calls();
        reconcile(&h).await.unwrap();
        if op == "shutdown" {
            // Not recorded as sent: sent now.
            assert!(called(&h, "shutdown"));
        } else {
            assert!(!finalized(&h), "{op}");
        }
    }
}

#[tokio::test]
async fn a_vm_deleted_before_it_was_created_only_loses_its_finalizer() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    h.cluster.fail("status", Fault::Lost);
    // The finalizer went on, the status did not.
    assert!(reconcile(&h).await.unwrap_err().api_unreachable());
    assert_eq!(step_errors(&h, "write_status"), 1);
    h.hypervisor.undefine(DOMAIN_NAME).unwrap();
    delete(&h, 0, 30);
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    assert!(!finalized(&h));
}

#[tokio::test]
async fn the_last_deletion_steps_that_fail_are_retried_and_keep_the_finalizer() {
    // The folder cannot be removed.
    let h = harness();
    let dir = deleted_with_an_unremovable_folder(&h).await;
    let err = reconcile(&h).await.unwrap_err();
    assert_eq!(step_errors(&h, "remove_dir"), 1, "{err}");
    assert!(err.to_string().contains("testvm"), "{err}");
    assert!(finalized(&h));
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    assert!(!finalized(&h));

    // The finalizer cannot be removed: the API server is away.
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    delete(&h, 60, 30);
    h.cluster.fail("finalizer", Fault::Lost);
    let err = reconcile(&h).await.unwrap_err();
    assert!(err.api_unreachable(), "{err}");
    assert_eq!(step_errors(&h, "remove_finalizer"), 1);
    assert!(finalized(&h));
}

#[tokio::test]
async fn a_paused_guest_is_stopped_at_once_as_libvirt_cannot_send_it_the_button() {
    let h = harness();
    new_vm(&h, DOMAIN, "[]");
    reconcile(&h).await.unwrap();
    h.cluster.take_events();
    h.hypervisor.set_state(
        DOMAIN_NAME,
        UID,
        DomainState::Paused(crate::hypervisor::PauseReason::User),
    );
    delete(&h, 0, 3600);
    h.hypervisor.take_calls();
    assert_eq!(reconcile(&h).await.unwrap(), Next::AwaitChange);
    let calls = h.hypervisor.take_calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("shutdown")),
        "{calls:?}"
    );
    assert_eq!(h.hypervisor.state(DOMAIN_NAME), None);
    assert!(!finalized(&h));
    let events = h.cluster.take_events();
    assert_eq!(reasons_of(&events), [reasons::EVENT_DELETED]);
    assert!(events[0].2.contains("paused"), "{events:?}");
}
