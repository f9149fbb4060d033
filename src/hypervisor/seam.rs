//! What the agent's reconcile asks of a hypervisor, as a trait: [`Libvirt`] is the one the
//! agent runs, and the unit tests drive the same plan and executor with a fake.
//!
//! The calls are blocking, like libvirt's: async callers go through [`call`], which runs them
//! on tokio's blocking pool.

use std::path::PathBuf;
use std::sync::Arc;

use crate::domain::ResolvedVolume;

use super::runs::RunSeen;
use super::{DomainStatus, GuestAddress, HypervisorError, Libvirt, Result};

pub trait Hypervisor: Send + Sync + 'static {
    /// The connection's URI (messages, and whether guests can have addresses at all).
    fn uri(&self) -> &str;
    /// The domain's state, or `None` if no domain has this name.
    fn status(&self, domain: &str) -> Result<Option<DomainStatus>>;
    fn define(&self, domain: &str, xml: &str) -> Result<()>;
    fn start(&self, domain: &str) -> Result<()>;
    /// The ACPI power button: the guest may ignore it.
    fn shutdown(&self, domain: &str) -> Result<()>;
    /// Stops the domain at once; a domain that is not running is left as it is.
    fn destroy(&self, domain: &str) -> Result<()>;
    /// Removes the definition; a missing domain is not an error.
    fn undefine(&self, domain: &str) -> Result<()>;
    fn addresses(&self, domain: &str) -> Result<Vec<GuestAddress>>;
    /// The virtual size of an image only the node can open (a claim's), read through the
    /// probe domain `probe`.
    fn backing_capacity(&self, probe: &str, volume: &ResolvedVolume) -> Result<u64>;
    /// Where the node keeps the domain's QEMU log, when there is one to point at.
    fn qemu_log(&self, domain: &str) -> Option<PathBuf>;
    /// What libvirt's events told of the domain's current run, as it was just read `off` or
    /// not (memory, no call).
    fn run(&self, domain: &str, off: bool) -> RunSeen;
    /// The watchdog's firing was reported as one the guest survived.
    fn acknowledge_watchdog(&self, domain: &str);
}

/// Runs blocking hypervisor calls off the async runtime. A panic in one becomes an error: it
/// must not take the agent down with it.
pub async fn call<H, T, F>(hypervisor: &Arc<H>, f: F) -> Result<T>
where
    H: Hypervisor + ?Sized,
    T: Send + 'static,
    F: FnOnce(&H) -> Result<T> + Send + 'static,
{
    let this = Arc::clone(hypervisor);
    match tokio::task::spawn_blocking(move || f(&this)).await {
        Ok(result) => result,
        Err(join) => Err(HypervisorError::Panicked {
            uri: hypervisor.uri().to_string(),
            message: join.to_string(),
        }),
    }
}

impl Hypervisor for Libvirt {
    fn uri(&self) -> &str {
        Libvirt::uri(self)
    }
    fn status(&self, domain: &str) -> Result<Option<DomainStatus>> {
        Libvirt::status(self, domain)
    }
    fn define(&self, domain: &str, xml: &str) -> Result<()> {
        Libvirt::define(self, domain, xml)
    }
    fn start(&self, domain: &str) -> Result<()> {
        Libvirt::start(self, domain)
    }
    fn shutdown(&self, domain: &str) -> Result<()> {
        Libvirt::shutdown(self, domain)
    }
    fn destroy(&self, domain: &str) -> Result<()> {
        Libvirt::destroy(self, domain)
    }
    fn undefine(&self, domain: &str) -> Result<()> {
        Libvirt::undefine(self, domain)
    }
    fn addresses(&self, domain: &str) -> Result<Vec<GuestAddress>> {
        Libvirt::addresses(self, domain)
    }
    fn backing_capacity(&self, probe: &str, volume: &ResolvedVolume) -> Result<u64> {
        Libvirt::backing_capacity(self, probe, volume)
    }
    fn qemu_log(&self, domain: &str) -> Option<PathBuf> {
        Libvirt::qemu_log(self, domain)
    }
    fn run(&self, domain: &str, off: bool) -> RunSeen {
        self.runs().seen(domain, off)
    }
    fn acknowledge_watchdog(&self, domain: &str) {
        self.runs().acknowledge(domain);
    }
}
