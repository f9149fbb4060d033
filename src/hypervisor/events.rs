//! libvirt domain events: lifecycle (started, stopped, crashed, undefined, ...) and watchdog.
//!
//! The `virt` crate has no safe wrapper for them, so this module is unsafe code (as is
//! `console`, for its stream): it registers libvirt's default event loop, runs it on a thread of its own,
//! and subscribes a connection with `virConnectDomainEventRegisterAny`. Each event is sent on a
//! channel with the domain's name; the agent reconciles that domain's VM. A watchdog's firing
//! and the lifecycle events of a run's start, stop and end are also recorded in [`DomainRuns`],
//! which is all that tells a watchdog's stop from a plain one.
#![allow(unsafe_code)] // FFI to libvirt's event API; each block has a SAFETY comment.

use std::ffi::{CStr, c_int, c_void};
use std::sync::{Arc, Once};

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::sys;

use super::runs::DomainRuns;
use super::watchdog::WatchdogAction;

/// An event of one domain; each brings its VM's reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub domain: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// virDomainEventType (defined, undefined, started, suspended, resumed, stopped, ...) and
    /// its detail.
    Lifecycle {
        event: i32,
        detail: i32,
    },
    Watchdog(WatchdogAction),
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("registering libvirt's default event loop")]
    Loop(#[source] virt::error::Error),
    #[error("subscribing to domain events")]
    Subscribe(#[source] virt::error::Error),
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop and runs it on a thread. Must be called before the
/// connection that subscribes is opened. Idempotent.
pub fn start_event_loop() -> Result<(), EventError> {
    let mut result = Ok(());
    EVENT_LOOP.call_once(|| {
        result = virt::event::event_register_default_impl().map_err(EventError::Loop);
        if result.is_ok() {
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        if let Err(e) = virt::event::event_run_default_impl() {
                            tracing::warn!(error = %e, "libvirt event loop iteration failed");
                        }
                    }
                })
                .map(drop)
                .unwrap_or_else(
                    |e| tracing::error!(error = %e, "cannot start libvirt event thread"),
                );
        }
    });
    result
}

/// Where a connection's callbacks deliver: the reconcile trigger, and the record of domain
/// runs.
#[derive(Clone)]
pub struct Sink {
    pub tx: UnboundedSender<DomainEvent>,
    pub runs: Arc<DomainRuns>,
}

/// Subscribes `conn` to lifecycle and watchdog events of all its domains; the IDs are for
/// [`unsubscribe`]. Each subscription holds a reference to the connection, so a connection
/// given up must be unsubscribed to be closed. Nothing stays subscribed when one fails.
pub fn subscribe(conn: &Connect, sink: &Sink) -> Result<Vec<c_int>, EventError> {
    // SAFETY (both transmutes): libvirt calls C functions with this ABI. Each callback has more
    // arguments than the generic type names; libvirt casts it back by event ID (this is what
    // the VIR_DOMAIN_EVENT_CALLBACK macro does in C).
    let lifecycle: sys::virConnectDomainEventGenericCallback = unsafe {
        Some(std::mem::transmute::<
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void),
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(on_lifecycle))
    };
    let watchdog: sys::virConnectDomainEventGenericCallback = unsafe {
        Some(std::mem::transmute::<
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, *mut c_void),
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(on_watchdog))
    };
    let mut ids = Vec::new();
    for (event_id, callback) in [
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
        (sys::VIR_DOMAIN_EVENT_ID_WATCHDOG, watchdog),
    ] {
        match register(conn, event_id, callback, sink) {
            Ok(id) => ids.push(id),
            Err(e) => {
                unsubscribe(conn, &ids);
                return Err(e);
            }
        }
    }
    Ok(ids)
}

/// Ends the subscriptions `ids` of `conn`. libvirt drops them locally even when the
/// connection is dead and telling libvirtd fails, which is all that matters then.
pub fn unsubscribe(conn: &Connect, ids: &[c_int]) {
    for &id in ids {
        // SAFETY: `conn` is a live handle (the caller holds a reference); an ID that is no
        // longer registered is refused with an error, which is ignored.
        unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
    }
}

fn register(
    conn: &Connect,
    event_id: u32,
    callback: sys::virConnectDomainEventGenericCallback,
    sink: &Sink,
) -> Result<c_int, EventError> {
    let opaque = Box::into_raw(Box::new(sink.clone())) as *mut c_void;
    // SAFETY: `conn` is a live connection for the duration of this call; `opaque` is a leaked
    // Box that libvirt owns from here on and hands back to `free_sink` exactly once.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            event_id as c_int,
            callback,
            opaque,
            Some(free_sink),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        drop(unsafe { Box::from_raw(opaque as *mut Sink) });
        return Err(EventError::Subscribe(virt::error::Error::last_error()));
    }
    Ok(id)
}

/// The domain's name, copied.
///
/// # Safety
/// `dom` must be valid for the duration of the call (it is, inside a callback).
unsafe fn name_of(dom: sys::virDomainPtr) -> Option<String> {
    // SAFETY: the name is owned by the domain object and copied before returning.
    unsafe {
        let ptr = sys::virDomainGetName(dom);
        (!ptr.is_null()).then(|| CStr::from_ptr(ptr).to_string_lossy().into_owned())
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the sink registered in `register`, alive until `free_sink`; `dom`
    // is valid for the duration of the callback.
    let (sink, name) = unsafe { (&*(opaque as *const Sink), name_of(dom)) };
    let Some(domain) = name else { return };
    // Recorded here, in libvirtd's order, so a watchdog's firing is known before its stop.
    match u32::try_from(event).unwrap_or(u32::MAX) {
        sys::VIR_DOMAIN_EVENT_STOPPED | sys::VIR_DOMAIN_EVENT_CRASHED => sink.runs.stopped(&domain),
        // Started or undefined by anyone (also outside the agent): an earlier run has nothing to
        // say about the next.
        sys::VIR_DOMAIN_EVENT_STARTED | sys::VIR_DOMAIN_EVENT_UNDEFINED => {
            sink.runs.forget(&domain)
        }
        _ => {}
    }
    // A closed channel means the agent is shutting down; nothing to do.
    let _ = sink.tx.send(DomainEvent {
        domain,
        kind: EventKind::Lifecycle { event, detail },
    });
}

unsafe extern "C" fn on_watchdog(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    action: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: as in `on_lifecycle`.
    let (sink, name) = unsafe { (&*(opaque as *const Sink), name_of(dom)) };
    let Some(domain) = name else { return };
    let action = WatchdogAction::from_libvirt(action);
    tracing::warn!(domain, action = action.name(), "the guest's watchdog fired");
    sink.runs.fired(&domain, action);
    let _ = sink.tx.send(DomainEvent {
        domain,
        kind: EventKind::Watchdog(action),
    });
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: called once by libvirt when the callback is deregistered; `opaque` came from
    // Box::into_raw in `register`.
    drop(unsafe { Box::from_raw(opaque as *mut Sink) });
}
