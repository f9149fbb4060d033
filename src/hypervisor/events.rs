//! libvirt domain lifecycle events (started, stopped, crashed, undefined, ...).
//!
//! The `virt` crate has no safe wrapper for them, so this module is the one place with
//! `unsafe` code: it registers libvirt's default event loop, runs it on a thread of its own,
//! and subscribes a connection with `virConnectDomainEventRegisterAny`. Each event is reduced
//! to the domain's name and sent on a channel; the agent reconciles that domain's VM.
#![allow(unsafe_code)] // FFI to libvirt's event API; each block has a SAFETY comment.

use std::ffi::{CStr, c_int, c_void};
use std::sync::Once;

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::sys;

/// A lifecycle event of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub domain: String,
    /// virDomainEventType: defined, undefined, started, suspended, resumed, stopped, ...
    pub event: i32,
    pub detail: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("registering libvirt's default event loop")]
    Loop(#[source] virt::error::Error),
    #[error("subscribing to domain lifecycle events")]
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

/// Subscribes `conn` to lifecycle events of all its domains, sending each on `tx`. The
/// subscription lives as long as the connection.
pub fn subscribe(conn: &Connect, tx: UnboundedSender<LifecycleEvent>) -> Result<(), EventError> {
    let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
    // SAFETY: libvirt calls C functions with this ABI. The lifecycle callback has more
    // arguments than the generic type names; libvirt casts it back by event ID (this is what
    // the VIR_DOMAIN_EVENT_CALLBACK macro does in C).
    let callback: sys::virConnectDomainEventGenericCallback = unsafe {
        Some(std::mem::transmute::<
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void),
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(on_lifecycle))
    };
    // SAFETY: `conn` is a live connection for the duration of this call; `opaque` is a leaked
    // Box that libvirt owns from here on and hands back to `free_sender` exactly once.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            callback,
            opaque,
            Some(free_sender),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<LifecycleEvent>) });
        return Err(EventError::Subscribe(virt::error::Error::last_error()));
    }
    Ok(())
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the sender registered in `subscribe`, alive until `free_sender`.
    let tx = unsafe { &*(opaque as *const UnboundedSender<LifecycleEvent>) };
    // SAFETY: `dom` is valid for the duration of the callback; the name it returns is owned by
    // the domain object and copied before we return.
    let name = unsafe {
        let ptr = sys::virDomainGetName(dom);
        if ptr.is_null() {
            return;
        }
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    };
    // A closed channel means the agent is shutting down; nothing to do.
    let _ = tx.send(LifecycleEvent {
        domain: name,
        event,
        detail,
    });
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: called once by libvirt when the callback is deregistered; `opaque` came from
    // Box::into_raw in `subscribe`.
    drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<LifecycleEvent>) });
}
