//! A hypervisor and a cluster in memory, for the unit tests of the reconcile: they record what
//! was asked of them and fail on request.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use kube::ResourceExt;
use kube::core::Status;

use super::cluster::HolderLookup;
use crate::api::{VirtualMachine, VirtualMachineStatus};
use crate::domain::ResolvedVolume;
use crate::events::EventType;
use crate::hypervisor::runs::{DomainRuns, RunSeen};
use crate::hypervisor::seam::Hypervisor;
use crate::hypervisor::{DomainState, DomainStatus, GuestAddress, HypervisorError, Result};

use super::finalizer::FINALIZER;
use super::inputs::{InputError, Inputs};

/// How a call the test asked to fail fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// libvirtd or the API server is away.
    Lost,
    /// Refused for a reason of the VM's own (QEMU refused it; 409 from the API server).
    Refused,
}

#[derive(Default)]
pub struct FakeHypervisor {
    domains: Mutex<BTreeMap<String, DomainStatus>>,
    calls: Mutex<Vec<String>>,
    faults: Mutex<HashMap<&'static str, Fault>>,
    addresses: Mutex<Vec<GuestAddress>>,
    /// Guests that ignore the ACPI power button.
    pub ignores_acpi: AtomicBool,
    /// Watchdogs fired by the test, and the stops this fake does, as libvirt's events would.
    pub runs: DomainRuns,
}

impl FakeHypervisor {
    /// Makes every later call `op` ("define", "start", ...) fail as `fault`.
    pub fn fail(&self, op: &'static str, fault: Fault) {
        self.faults.lock().unwrap().insert(op, fault);
    }

    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
    }

    /// The calls made so far, as "op domain", and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }

    pub fn set_state(&self, domain: &str, vm_uid: &str, state: DomainState) {
        self.domains.lock().unwrap().insert(
            domain.into(),
            DomainStatus {
                vm_uid: Some(vm_uid.into()),
                id: None,
                state,
            },
        );
        self.tell_if_off(domain, state);
    }

    pub fn state(&self, domain: &str) -> Option<DomainState> {
        self.domains.lock().unwrap().get(domain).map(|d| d.state)
    }

    pub fn set_addresses(&self, addresses: Vec<GuestAddress>) {
        *self.addresses.lock().unwrap() = addresses;
    }

    fn enter(&self, op: &'static str, domain: &str) -> Result<()> {
        self.calls.lock().unwrap().push(format!("{op} {domain}"));
        match self.faults.lock().unwrap().get(op) {
            None => Ok(()),
            Some(Fault::Lost) => Err(HypervisorError::Disconnected {
                op,
                target: domain.into(),
                uri: self.uri().into(),
            }),
            Some(Fault::Refused) => Err(HypervisorError::Panicked {
                uri: self.uri().into(),
                message: format!("{op} {domain} refused"),
            }),
        }
    }

    fn change(&self, domain: &str, change: impl FnOnce(&mut DomainState)) {
        let changed = self.domains.lock().unwrap().get_mut(domain).map(|d| {
            change(&mut d.state);
            d.state
        });
        if let Some(state) = changed {
            self.tell_if_off(domain, state);
        }
    }

    /// As libvirt's lifecycle event tells a stop.
    fn tell_if_off(&self, domain: &str, state: DomainState) {
        if state.is_off() {
            self.runs.stopped(domain);
        }
    }
}

impl Hypervisor for FakeHypervisor {
    fn uri(&self) -> &str {
        "fake:///"
    }

    fn status(&self, domain: &str) -> Result<Option<DomainStatus>> {
        self.enter("status", domain)?;
        Ok(self.domains.lock().unwrap().get(domain).cloned())
    }

    fn define(&self, domain: &str, xml: &str) -> Result<()> {
        self.enter("define", domain)?;
        // As libvirt's metadata would give it back.
        let vm_uid = xml
            .split_once("<nodevirt:uid>")
            .and_then(|(_, rest)| rest.split_once("</nodevirt:uid>"))
            .map(|(uid, _)| uid.to_string())
            .unwrap_or_default();
        let off = DomainState::ShutOff(crate::hypervisor::ShutoffReason::Unknown);
        self.set_state(domain, &vm_uid, off);
        Ok(())
    }

    fn start(&self, domain: &str) -> Result<()> {
        self.enter("start", domain)?;
        self.runs.forget(domain);
        self.change(domain, |s| *s = DomainState::Running);
        Ok(())
    }

    fn shutdown(&self, domain: &str) -> Result<()> {
        self.enter("shutdown", domain)?;
        // As libvirt: only a running guest is sent the button.
        if self.state(domain) != Some(DomainState::Running) {
            return Err(HypervisorError::Panicked {
                uri: self.uri().into(),
                message: format!("shutdown {domain}: domain is not running"),
            });
        }
        if !self.ignores_acpi.load(Ordering::SeqCst) {
            let off = DomainState::ShutOff(crate::hypervisor::ShutoffReason::Shutdown);
            self.change(domain, |s| *s = off);
        }
        Ok(())
    }

    fn destroy(&self, domain: &str) -> Result<()> {
        self.enter("destroy", domain)?;
        let off = DomainState::ShutOff(crate::hypervisor::ShutoffReason::Destroyed);
        self.change(domain, |s| {
            if !matches!(s, DomainState::ShutOff(_)) {
                *s = off;
            }
        });
        Ok(())
    }

    fn undefine(&self, domain: &str) -> Result<()> {
        self.enter("undefine", domain)?;
        self.domains.lock().unwrap().remove(domain);
        Ok(())
    }

    fn addresses(&self, domain: &str) -> Result<Vec<GuestAddress>> {
        self.enter("addresses", domain)?;
        Ok(self.addresses.lock().unwrap().clone())
    }

    fn backing_capacity(&self, probe: &str, _volume: &ResolvedVolume) -> Result<u64> {
        self.enter("backing_capacity", probe)?;
        Ok(1 << 30)
    }

    fn qemu_log(&self, domain: &str) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/var/log/libvirt/qemu/{domain}.log")))
    }

    fn run(&self, domain: &str, off: bool) -> RunSeen {
        self.runs.seen(domain, off)
    }

    fn acknowledge_watchdog(&self, domain: &str) {
        self.runs.acknowledge(domain);
    }
}

/// What gathering a VM's inputs gives.
pub type Gathering = fn() -> std::result::Result<Inputs, InputError>;

/// The API server's copy of each VM, by name, and what was recorded.
#[derive(Default)]
pub struct FakeCluster {
    vms: Mutex<BTreeMap<String, VirtualMachine>>,
    events: Mutex<Vec<(EventType, String, String)>>,
    faults: Mutex<HashMap<&'static str, Fault>>,
    /// What gathering inputs gives; `Inputs::default()` when unset.
    gathered: Mutex<Option<Gathering>>,
    pub status_writes: Mutex<usize>,
    pub gathers: Mutex<usize>,
    /// What the holder pod lookup gives; not required when unset.
    holder: Mutex<Option<HolderLookup>>,
}

impl FakeCluster {
    pub fn put(&self, vm: &VirtualMachine) {
        self.vms.lock().unwrap().insert(vm.name_any(), vm.clone());
    }

    /// The API server's copy of the VM.
    pub fn get(&self, name: &str) -> Option<VirtualMachine> {
        self.vms.lock().unwrap().get(name).cloned()
    }

    /// Makes every later request `op` ("latest", "finalizer", "status") fail as `fault`.
    pub fn fail(&self, op: &'static str, fault: Fault) {
        self.faults.lock().unwrap().insert(op, fault);
    }

    pub fn holder_is(&self, lookup: HolderLookup) {
        *self.holder.lock().unwrap() = Some(lookup);
    }

    pub fn gather_gives(&self, result: Gathering) {
        *self.gathered.lock().unwrap() = Some(result);
    }

    /// The events recorded so far, as (reason, note), and forgets them.
    pub fn take_events(&self) -> Vec<(EventType, String, String)> {
        std::mem::take(&mut self.events.lock().unwrap())
    }

    fn enter(&self, op: &'static str) -> std::result::Result<(), kube::Error> {
        match self.faults.lock().unwrap().get(op) {
            None => Ok(()),
            Some(Fault::Lost) => Err(unreachable_api()),
            Some(Fault::Refused) => Err(kube::Error::Api(
                Status::failure("the object has been modified", "Conflict")
                    .with_code(409)
                    .boxed(),
            )),
        }
    }
}

fn unreachable_api() -> kube::Error {
    kube::Error::Service("connection refused".into())
}

impl super::cluster::Cluster for FakeCluster {
    fn holder_pod<'a>(&'a self, _vm: &'a VirtualMachine) -> BoxFuture<'a, HolderLookup> {
        let lookup = self.holder.lock().unwrap().clone();
        Box::pin(async move { lookup.unwrap_or(HolderLookup::NotRequired) })
    }

    fn latest<'a>(
        &'a self,
        vm: &'a VirtualMachine,
    ) -> BoxFuture<'a, std::result::Result<Option<VirtualMachine>, kube::Error>> {
        Box::pin(async move {
            self.enter("latest")?;
            Ok(self.get(&vm.name_any()))
        })
    }

    fn set_finalizer<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        present: bool,
    ) -> BoxFuture<'a, std::result::Result<(), kube::Error>> {
        Box::pin(async move {
            self.enter("finalizer")?;
            if let Some(stored) = self.vms.lock().unwrap().get_mut(&vm.name_any()) {
                let finalizers = stored.finalizers_mut();
                finalizers.retain(|f| f != FINALIZER);
                if present {
                    finalizers.push(FINALIZER.into());
                }
            }
            Ok(())
        })
    }

    fn write_status<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        status: &'a VirtualMachineStatus,
    ) -> BoxFuture<'a, std::result::Result<(), kube::Error>> {
        Box::pin(async move {
            self.enter("status")?;
            *self.status_writes.lock().unwrap() += 1;
            if let Some(stored) = self.vms.lock().unwrap().get_mut(&vm.name_any()) {
                stored.status = Some(status.clone());
            }
            Ok(())
        })
    }

    fn publish<'a>(
        &'a self,
        _vm: &'a VirtualMachine,
        type_: EventType,
        reason: &'a str,
        note: &'a str,
    ) -> BoxFuture<'a, ()> {
        self.events
            .lock()
            .unwrap()
            .push((type_, reason.into(), note.into()));
        Box::pin(async {})
    }

    fn gather<'a>(
        &'a self,
        _vm: &'a VirtualMachine,
    ) -> BoxFuture<'a, std::result::Result<Inputs, InputError>> {
        *self.gathers.lock().unwrap() += 1;
        let gathered = *self.gathered.lock().unwrap();
        Box::pin(async move { gathered.map_or_else(|| Ok(Inputs::default()), |f| f()) })
    }
}
