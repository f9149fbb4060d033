//! The libvirt adapter: every call the agent makes to libvirt, through the `virt` crate.
//!
//! Calls are blocking (libvirt RPC); async callers run them on tokio's blocking pool with
//! [`Libvirt::run`]. Works the same on qemu:///system and on the test:///default driver.
//!
//! The connection can go away (libvirtd restarts, is upgraded, crashes). [`Libvirt`] holds the
//! current one, or none: calls made while there is none fail with
//! [`HypervisorError::Disconnected`], and [`HypervisorError::is_connection_lost`] tells callers
//! to retry rather than blame the VM. Whoever owns the agent reconnects ([`Libvirt::connect`]).

pub mod backing;
pub mod capabilities;
pub mod choice;
pub mod console;
pub mod events;
pub mod runs;
pub mod seam;
pub mod stats;
pub mod watchdog;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use virt::connect::Connect;
use virt::domain::{
    Domain, DomainPausedReason, DomainShutoffReason, DomainState as VirtState, DomainStateEnum,
    DomainStateReason, DomainStateReasonEnum,
};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;

use crate::domain::model::{METADATA_NAMESPACE, VmMetadata};

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("libvirt: {op} {target}")]
    Call {
        op: &'static str,
        target: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("libvirt: {op} {target}: not connected to {uri} (reconnecting)")]
    Disconnected {
        op: &'static str,
        target: String,
        uri: String,
    },
    #[error("libvirt: a call on {uri} panicked: {message}")]
    Panicked { uri: String, message: String },
    /// A step of sizing a backing image through a probe domain (`backing`).
    #[error("libvirt: {step} the backing image {path}")]
    Probe {
        step: &'static str,
        path: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("libvirt: writing the probe domain of the backing image {path}")]
    ProbeXml {
        path: String,
        #[source]
        source: quick_xml::SeError,
    },
    #[error("libvirt: reading {what} of {target}")]
    Parse {
        what: &'static str,
        target: String,
        #[source]
        source: quick_xml::DeError,
    },
}

impl HypervisorError {
    /// True when the call failed because the connection to libvirtd is gone, not because of
    /// the domain: the caller should retry once reconnected instead of failing the VM. A dead
    /// socket is a system error from the RPC layer; a system error from anywhere else (QEMU
    /// denied a disk, say) is the domain's own failure and must reach the VM's status.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Disconnected { .. } => true,
            Self::Call { source, .. } | Self::Probe { source, .. } => {
                source.domain() == Enum::Known(virt::error::ErrorDomain::Rpc)
                    || matches!(
                        source.code(),
                        Enum::Known(
                            ErrorNumber::NoConnect | ErrorNumber::InvalidConn | ErrorNumber::Rpc
                        )
                    )
            }
            Self::Panicked { .. } | Self::Parse { .. } | Self::ProbeXml { .. } => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, HypervisorError>;

/// What libvirt reports about a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    /// The UID of the VM whose domain it is (nodevirt's metadata); `None` for a domain
    /// without it. Not the domain's `<uuid>`: that is what the guest sees (firmware.uuid).
    pub vm_uid: Option<String>,
    /// The running domain's ID; `None` while it is shut off.
    pub id: Option<u32>,
    pub state: DomainState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused(PauseReason),
    ShutOff(ShutoffReason),
    Crashed,
    /// Starting, stopping, suspended to disk: transient, look again later.
    Transient,
}

impl DomainState {
    /// The guest is not running and will not again unless started.
    pub fn is_off(self) -> bool {
        matches!(self, Self::ShutOff(_) | Self::Crashed)
    }
}

/// Why libvirt holds a domain's vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// `virsh suspend`, or another client's request.
    User,
    /// A disk returned an error (often: full) and the disk's error policy stops the guest.
    IoError,
    /// The watchdog device fired with action `pause`.
    Watchdog,
    /// Anything else libvirt reports (saving, dumping, starting up, ...).
    Other,
}

impl PauseReason {
    /// libvirt's `state.state` of a paused domain (VIR_DOMAIN_PAUSED).
    pub const LIBVIRT_STATE: u64 = sys::VIR_DOMAIN_PAUSED as u64;

    /// From libvirt's virDomainPausedReason number, as bulk stats give it.
    pub fn from_libvirt(reason: u64) -> Self {
        match reason {
            r if r == u64::from(sys::VIR_DOMAIN_PAUSED_USER) => PauseReason::User,
            r if r == u64::from(sys::VIR_DOMAIN_PAUSED_IOERROR) => PauseReason::IoError,
            r if r == u64::from(sys::VIR_DOMAIN_PAUSED_WATCHDOG) => PauseReason::Watchdog,
            _ => PauseReason::Other,
        }
    }

    /// The name the VM's `Paused` condition and the metrics carry (KubeVirt's for a user).
    pub fn name(self) -> &'static str {
        match self {
            PauseReason::User => "PausedByUser",
            PauseReason::IoError => "PausedIOError",
            PauseReason::Watchdog => "PausedByWatchdog",
            PauseReason::Other => "Paused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutoffReason {
    /// The guest powered itself off.
    Shutdown,
    /// Destroyed: by the agent, or by someone else.
    Destroyed,
    Crashed,
    /// QEMU failed to start or died.
    Failed,
    /// Never started since it was defined (or libvirt does not know).
    Unknown,
}

/// The VM a domain belongs to, from nodevirt's metadata in it; `None` when it has none (a
/// domain someone else defined). Metadata that cannot be read or parsed is an error.
fn vm_of(domain: &Domain, name: &str) -> Result<Option<VmMetadata>> {
    let op = "reading nodevirt's metadata of";
    let xml = match domain.metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(METADATA_NAMESPACE),
        sys::VIR_DOMAIN_AFFECT_CURRENT,
    ) {
        Ok(xml) => xml,
        Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomainMetadata) => return Ok(None),
        // Anything else (a dropped connection, a busy domain) says nothing about ownership:
        // taking it for "not ours" would make the agent destroy a VM's own domain.
        Err(e) => return Err(Libvirt::err(op, name)(e)),
    };
    VmMetadata::from_xml(&xml)
        .map(Some)
        .map_err(|source| HypervisorError::Parse {
            what: "nodevirt's metadata",
            target: name.to_string(),
            source,
        })
}

/// A domain that carries nodevirt's metadata, i.e. that some VM owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDomain {
    pub name: String,
    pub vm: VmMetadata,
}

/// An address the guest has on one of its NICs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAddress {
    pub mac: String,
    pub ip: String,
}

pub struct Libvirt {
    uri: String,
    /// The current connection; `None` until the first connect and while reconnecting.
    conn: RwLock<Option<Connect>>,
    /// The current connection's event subscriptions, ended with it.
    subscriptions: std::sync::Mutex<Vec<i32>>,
    /// Filled by the connection's event subscription (`events::subscribe`).
    runs: Arc<runs::DomainRuns>,
}

impl Libvirt {
    /// A handle with no connection yet; see [`Libvirt::connect`].
    pub fn new(uri: &str) -> Self {
        // libvirt prints every error to stderr by default; ours are returned and logged.
        virt::error::clear_error_callback();
        Self {
            uri: uri.to_string(),
            conn: RwLock::new(None),
            subscriptions: Default::default(),
            runs: Arc::default(),
        }
    }

    /// The runs of this handle's domains, as its event subscription records them.
    pub fn runs(&self) -> &Arc<runs::DomainRuns> {
        &self.runs
    }

    /// A handle connected at once (commands and tests).
    pub fn open(uri: &str) -> Result<Self> {
        let lv = Self::new(uri);
        lv.connect()?;
        Ok(lv)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Where libvirt keeps `domain`'s QEMU log (its command line and its last words), when
    /// this is the node's own system daemon; None for other connections. A path on the node,
    /// written by its libvirtd: the agent only names it in messages, never reads it.
    pub fn qemu_log(&self, domain: &str) -> Option<PathBuf> {
        qemu_log_path(&self.uri, domain)
    }

    /// Opens a new connection and makes it the current one, dropping the previous one. Returns
    /// it so the caller can subscribe to its events.
    pub fn connect(&self) -> Result<Connect> {
        let conn = Connect::open(Some(&self.uri)).map_err(|source| HypervisorError::Call {
            op: "connecting to",
            target: self.uri.clone(),
            source,
        })?;
        let previous = self.slot().replace(conn.clone());
        self.release(previous);
        Ok(conn)
    }

    /// Forgets the current connection (after it died), so calls fail fast as Disconnected.
    pub fn disconnect(&self) {
        let previous = self.slot().take();
        self.release(previous);
    }

    /// Subscribes the current connection `conn` to domain events, delivered to `sink`.
    pub fn subscribe(
        &self,
        conn: &Connect,
        sink: &events::Sink,
    ) -> std::result::Result<(), events::EventError> {
        let ids = events::subscribe(conn, sink)?;
        self.subscriptions_mut().extend(ids);
        Ok(())
    }

    /// Ends a given-up connection's subscriptions: each holds a reference to it, which would
    /// keep its socket open.
    fn release(&self, previous: Option<Connect>) {
        let ids = std::mem::take(&mut *self.subscriptions_mut());
        if let Some(conn) = previous {
            events::unsubscribe(&conn, &ids);
        }
    }

    fn subscriptions_mut(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Connect>> {
        // A panic while holding the lock leaves the Option itself intact: keep using it.
        self.conn
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current connection (a new reference to it), or Disconnected naming the call.
    fn conn(&self, op: &'static str, target: &str) -> Result<Connect> {
        let current = self
            .conn
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current
            .clone()
            .ok_or_else(|| HypervisorError::Disconnected {
                op,
                target: target.to_string(),
                uri: self.uri.clone(),
            })
    }

    /// Runs blocking libvirt calls off the async runtime (see [`seam::call`]).
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Libvirt) -> Result<T> + Send + 'static,
    {
        seam::call(self, f).await
    }

    /// True while there is a connection and libvirt has not seen it close.
    pub fn is_alive(&self) -> bool {
        self.conn("checking", "the connection")
            .is_ok_and(|conn| conn.is_alive().unwrap_or(false))
    }

    fn err(op: &'static str, target: &str) -> impl FnOnce(virt::error::Error) -> HypervisorError {
        let target = target.to_string();
        move |source| HypervisorError::Call { op, target, source }
    }

    /// The domain types the daemon offers for `os_type` guests of `arch`, from its
    /// capabilities (see `capabilities`): `["qemu", "kvm"]` on a KVM host.
    pub fn guest_domain_types(&self, os_type: &str, arch: &str) -> Result<Vec<String>> {
        let op = "reading the capabilities of";
        let xml = self
            .conn(op, &self.uri)?
            .capabilities()
            .map_err(Self::err(op, &self.uri))?;
        capabilities::guest_domain_types(&xml, os_type, arch).map_err(|source| {
            HypervisorError::Parse {
                what: "the capabilities",
                target: self.uri.clone(),
                source,
            }
        })
    }

    fn find(&self, name: &str) -> Result<Option<Domain>> {
        let conn = self.conn("looking up domain", name)?;
        match conn.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(Self::err("looking up domain", name)(e)),
        }
    }

    /// The domain's state, or `None` if no domain has this name.
    pub fn status(&self, name: &str) -> Result<Option<DomainStatus>> {
        let Some(domain) = self.find(name)? else {
            return Ok(None);
        };
        let (state, reason) = domain
            .state()
            .map_err(Self::err("reading the state of", name))?;
        Ok(Some(DomainStatus {
            vm_uid: vm_of(&domain, name)?.map(|vm| vm.uid),
            id: domain.id(),
            state: decode_state(state, reason),
        }))
    }

    pub fn define(&self, name: &str, xml: &str) -> Result<()> {
        self.conn("defining domain", name)?
            .define_domain_xml(xml)
            .map(drop)
            .map_err(Self::err("defining domain", name))
    }

    pub fn start(&self, name: &str) -> Result<()> {
        let Some(domain) = self.find(name)? else {
            return Err(Self::err("starting domain", name)(
                virt::error::Error::last_error(),
            ));
        };
        // A watchdog that fired in an earlier run has nothing to say about this one.
        self.runs.forget(name);
        domain.create().map_err(Self::err("starting domain", name))
    }

    /// Asks the guest to power off through ACPI; the guest may ignore it.
    pub fn shutdown(&self, name: &str) -> Result<()> {
        match self.find(name)? {
            Some(domain) if domain.is_active().unwrap_or(false) => domain
                .shutdown()
                .map_err(Self::err("shutting down domain", name)),
            _ => Ok(()),
        }
    }

    /// Stops the domain at once; a domain that is not running is left as it is.
    pub fn destroy(&self, name: &str) -> Result<()> {
        match self.find(name)? {
            Some(domain) if domain.is_active().unwrap_or(false) => match domain.destroy() {
                Ok(()) => Ok(()),
                Err(e) if e.code() == Enum::Known(ErrorNumber::OperationInvalid) => Ok(()),
                Err(e) => Err(Self::err("destroying domain", name)(e)),
            },
            _ => Ok(()),
        }
    }

    /// Removes the domain's definition; a missing domain is not an error.
    pub fn undefine(&self, name: &str) -> Result<()> {
        let Some(domain) = self.find(name)? else {
            return Ok(());
        };
        // No NVRAM flag: nodevirt domains boot with BIOS, and the test driver refuses it.
        let flags =
            sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        self.runs.forget(name);
        match domain.undefine_flags(flags) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomain) => Ok(()),
            Err(e) => Err(Self::err("undefining domain", name)(e)),
        }
    }

    pub fn xml(&self, name: &str) -> Result<Option<String>> {
        let Some(domain) = self.find(name)? else {
            return Ok(None);
        };
        domain
            .xml_desc(0)
            .map(Some)
            .map_err(Self::err("reading the XML of", name))
    }

    /// Every domain that carries nodevirt's metadata, running or not.
    pub fn owned_domains(&self) -> Result<Vec<OwnedDomain>> {
        let domains = self
            .conn("listing domains on", &self.uri)?
            .list_all_domains(0)
            .map_err(Self::err("listing domains on", &self.uri))?;
        let mut owned = Vec::new();
        for domain in domains {
            let Ok(name) = domain.name() else { continue };
            // A domain undefined since the listing is simply gone; any other failure ends the
            // listing, as a partial one would let the collector take a VM's folder for orphaned.
            match vm_of(&domain, &name) {
                Ok(Some(vm)) => owned.push(OwnedDomain { name, vm }),
                Ok(None) => {}
                Err(HypervisorError::Call { source, .. })
                    if source.code() == Enum::Known(ErrorNumber::NoDomain) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(owned)
    }

    /// The guest's addresses: DHCP leases of libvirt's network first, then the host's ARP
    /// table. Empty while the guest has none (or the driver cannot tell).
    pub fn addresses(&self, name: &str) -> Result<Vec<GuestAddress>> {
        let Some(domain) = self.find(name)? else {
            return Ok(Vec::new());
        };
        for source in [
            sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
        ] {
            let Ok(interfaces) = domain.interface_addresses(source, 0) else {
                continue;
            };
            let found: Vec<GuestAddress> = interfaces
                .into_iter()
                .flat_map(|iface| {
                    let mac = iface.hwaddr.clone().unwrap_or_default();
                    iface.addrs.into_iter().map(move |a| GuestAddress {
                        mac: mac.clone(),
                        ip: a.addr,
                    })
                })
                .collect();
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Ok(Vec::new())
    }
}

fn decode_state(state: DomainStateEnum, reason: DomainStateReasonEnum) -> DomainState {
    match state {
        Enum::Known(VirtState::Running | VirtState::Blocked) => DomainState::Running,
        Enum::Known(VirtState::Paused) => DomainState::Paused(match reason {
            Enum::Known(DomainStateReason::Paused(Enum::Known(r))) => match r {
                DomainPausedReason::User => PauseReason::User,
                DomainPausedReason::IOError => PauseReason::IoError,
                DomainPausedReason::Watchdog => PauseReason::Watchdog,
                _ => PauseReason::Other,
            },
            _ => PauseReason::Other,
        }),
        Enum::Known(VirtState::Crashed) => DomainState::Crashed,
        Enum::Known(VirtState::Shutoff) => DomainState::ShutOff(match reason {
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(r))) => match r {
                DomainShutoffReason::Shutdown => ShutoffReason::Shutdown,
                DomainShutoffReason::Destroyed => ShutoffReason::Destroyed,
                DomainShutoffReason::Crashed => ShutoffReason::Crashed,
                DomainShutoffReason::Failed => ShutoffReason::Failed,
                _ => ShutoffReason::Unknown,
            },
            _ => ShutoffReason::Unknown,
        }),
        _ => DomainState::Transient,
    }
}

fn qemu_log_path(uri: &str, domain: &str) -> Option<PathBuf> {
    let (scheme, rest) = uri.split_once("://")?;
    // No host between "//" and the path: this node's daemon.
    let path = rest.split('?').next()?;
    (matches!(scheme, "qemu" | "qemu+unix") && path == "/system")
        .then(|| PathBuf::from(format!("/var/log/libvirt/qemu/{domain}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(name: &str, uid: &str) -> String {
        format!(
            "<domain type='test'><name>{name}</name><uuid>{uid}</uuid><memory>65536</memory>\
             <metadata><nodevirt:vm xmlns:nodevirt='{METADATA_NAMESPACE}'>\
             <nodevirt:namespace>ns</nodevirt:namespace><nodevirt:name>vm</nodevirt:name>\
             <nodevirt:uid>{uid}</nodevirt:uid><nodevirt:node>n1</nodevirt:node></nodevirt:vm></metadata>\
             <os><type>hvm</type></os></domain>"
        )
    }

    #[test]
    fn lifecycle_on_the_test_driver() {
        let lv = Libvirt::open("test:///default").unwrap();
        let uid = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(lv.status("ns_vm").unwrap(), None);
        lv.define("ns_vm", &xml("ns_vm", uid)).unwrap();
        let defined = lv.status("ns_vm").unwrap().unwrap();
        assert_eq!(defined.vm_uid.as_deref(), Some(uid));
        assert_eq!(defined.state, DomainState::ShutOff(ShutoffReason::Unknown));
        lv.start("ns_vm").unwrap();
        let running = lv.status("ns_vm").unwrap().unwrap();
        assert_eq!(running.state, DomainState::Running);
        assert!(running.id.is_some());
        let owned = lv.owned_domains().unwrap();
        let mine: Vec<_> = owned.iter().filter(|d| d.name == "ns_vm").collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(
            (mine[0].vm.namespace.as_str(), mine[0].vm.uid.as_str()),
            ("ns", uid)
        );
        assert_eq!(mine[0].vm.node.as_deref(), Some("n1"));
        lv.destroy("ns_vm").unwrap();
        lv.destroy("ns_vm").unwrap();
        assert_eq!(
            lv.status("ns_vm").unwrap().unwrap().state,
            DomainState::ShutOff(ShutoffReason::Destroyed)
        );
        lv.undefine("ns_vm").unwrap();
        lv.undefine("ns_vm").unwrap();
        assert_eq!(lv.status("ns_vm").unwrap(), None);
    }

    #[test]
    fn a_domain_without_our_metadata_is_foreign_and_broken_metadata_is_an_error() {
        let lv = Libvirt::open("test:///default").unwrap();
        let foreign = "<domain type='test'><name>someone_else</name><memory>65536</memory>\
                       <os><type>hvm</type></os></domain>";
        lv.define("someone_else", foreign).unwrap();
        assert_eq!(lv.status("someone_else").unwrap().unwrap().vm_uid, None);
        assert!(
            lv.owned_domains()
                .unwrap()
                .iter()
                .all(|d| d.name != "someone_else")
        );

        // Our namespace without the fields: neither ours nor foreign, so nothing may act on it.
        let broken = format!(
            "<domain type='test'><name>ns_broken</name><memory>65536</memory>\
             <metadata><nodevirt:vm xmlns:nodevirt='{METADATA_NAMESPACE}'/></metadata>\
             <os><type>hvm</type></os></domain>"
        );
        lv.define("ns_broken", &broken).unwrap();
        let err = lv.status("ns_broken").unwrap_err();
        assert!(
            err.to_string().contains("nodevirt's metadata of ns_broken"),
            "{err}"
        );
        assert!(lv.owned_domains().is_err());
        lv.undefine("ns_broken").unwrap();
        lv.undefine("someone_else").unwrap();
    }

    #[test]
    fn the_test_driver_offers_no_kvm_and_no_x86_64() {
        let lv = Libvirt::open("test:///default").unwrap();
        assert_eq!(lv.guest_domain_types("hvm", "i686").unwrap(), ["test"]);
        assert!(lv.guest_domain_types("hvm", "x86_64").unwrap().is_empty());
        lv.disconnect();
        let err = lv.guest_domain_types("hvm", "x86_64").unwrap_err();
        assert!(err.is_connection_lost(), "{err:?}");
    }

    #[test]
    fn a_system_error_outside_the_rpc_layer_is_not_a_lost_connection() {
        // A file libvirt cannot open fails as a system error, as a disk QEMU may not read does.
        let lv = Libvirt::open("test:///default").unwrap();
        let uid = "6c0e36b4-8f43-4d8e-9a51-0d2b9b8f3e11";
        lv.define("ns_dump", &xml("ns_dump", uid)).unwrap();
        lv.start("ns_dump").unwrap();
        let conn = lv.conn("dumping", "ns_dump").unwrap();
        let domain = conn.lookup_domain_by_name("ns_dump").unwrap();
        let source = domain
            .core_dump("/nonexistent/nodevirt/ns_dump.core", 0)
            .expect_err("dumped into a folder that does not exist");
        assert_eq!(
            source.code(),
            Enum::Known(ErrorNumber::SystemError),
            "{source}"
        );
        let err = HypervisorError::Call {
            op: "dumping",
            target: "ns_dump".into(),
            source,
        };
        assert!(!err.is_connection_lost(), "{err:?}");
        lv.destroy("ns_dump").unwrap();
        lv.undefine("ns_dump").unwrap();
        let gone = HypervisorError::Disconnected {
            op: "starting",
            target: "ns_vm".into(),
            uri: "qemu:///system".into(),
        };
        assert!(gone.is_connection_lost());
    }

    #[test]
    fn the_qemu_log_is_known_for_the_local_system_daemon_only() {
        let log = Some(PathBuf::from("/var/log/libvirt/qemu/ns_vm.log"));
        assert_eq!(qemu_log_path("qemu:///system", "ns_vm"), log);
        assert_eq!(
            qemu_log_path("qemu+unix:///system?socket=/run/x.sock", "ns_vm"),
            log
        );
        for other in [
            "qemu:///session",
            "qemu+ssh://host/system",
            "test:///default",
            "test+unix:///default",
            "nonsense",
        ] {
            assert_eq!(qemu_log_path(other, "ns_vm"), None, "{other}");
        }
    }
}
