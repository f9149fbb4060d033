//! A typed model of the part of libvirt's domain XML that nodevirt writes
//! (<https://libvirt.org/formatdomain.html>). Serialized with quick-xml, which escapes every
//! attribute and text value, so no user string can change the structure of the document.
//!
//! Conventions: `@name` fields are attributes, `$text` is element text, `Option` fields are
//! left out when `None`, and `Flag` is an empty element such as `<acpi/>`.

use serde::{Deserialize, Serialize};

/// XML namespace of nodevirt's element inside the domain `<metadata>`.
pub const METADATA_NAMESPACE: &str = "https://nodevirt.io/xmlns/vm/v1alpha1";

/// An empty element whose presence is the value, e.g. `<acpi/>` or `<readonly/>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Flag {}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename = "domain")]
pub struct Domain {
    /// kvm or qemu (TCG).
    #[serde(rename = "@type")]
    pub domain_type: String,
    pub name: String,
    pub uuid: String,
    pub metadata: Metadata,
    pub memory: Memory,
    pub vcpu: u32,
    pub os: Os,
    pub features: Features,
    pub cpu: Cpu,
    pub clock: Clock,
    pub on_poweroff: &'static str,
    pub on_reboot: &'static str,
    pub on_crash: &'static str,
    pub devices: Devices,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    #[serde(rename = "nodevirt:vm")]
    pub vm: VmMetadata,
}

/// Identifies the VirtualMachine a domain belongs to, so an agent that restarts can adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMetadata {
    /// libvirt returns the element without it, so it is optional when parsing.
    #[serde(rename = "@xmlns:nodevirt", default)]
    pub xmlns: String,
    #[serde(rename = "nodevirt:namespace", alias = "namespace")]
    pub namespace: String,
    #[serde(rename = "nodevirt:name", alias = "name")]
    pub name: String,
    #[serde(rename = "nodevirt:uid", alias = "uid")]
    pub uid: String,
    /// The node whose agent runs the domain: an agent only ever cleans up its own.
    #[serde(
        rename = "nodevirt:node",
        alias = "node",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Os {
    #[serde(rename = "type")]
    pub os_type: OsType,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OsType {
    #[serde(rename = "@arch")]
    pub arch: &'static str,
    #[serde(rename = "@machine")]
    pub machine: String,
    #[serde(rename = "$text")]
    pub value: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Features {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi: Option<Flag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apic: Option<Apic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<Hyperv>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Apic {
    #[serde(rename = "@eoi", skip_serializing_if = "Option::is_none")]
    pub eoi: Option<OnOff>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

impl From<bool> for OnOff {
    fn from(on: bool) -> Self {
        if on { OnOff::On } else { OnOff::Off }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum YesNo {
    Yes,
    No,
}

impl From<bool> for YesNo {
    fn from(yes: bool) -> Self {
        if yes { YesNo::Yes } else { YesNo::No }
    }
}

/// Hyper-V enlightenments; libvirt wants them in this order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Hyperv {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relaxed: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vapic: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<Spinlocks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpindex: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synic: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stimer: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<VendorId>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct State {
    #[serde(rename = "@state")]
    pub state: OnOff,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spinlocks {
    #[serde(rename = "@state")]
    pub state: OnOff,
    #[serde(rename = "@retries", skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VendorId {
    #[serde(rename = "@state")]
    pub state: OnOff,
    #[serde(rename = "@value", skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    /// host-model, host-passthrough or custom; none under TCG.
    #[serde(rename = "@mode", skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    #[serde(rename = "@match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<CpuModelName>,
    pub topology: Topology,
}

/// A named model; `fallback='forbid'`: a host without it refuses the guest rather than
/// silently giving it another CPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuModelName {
    #[serde(rename = "@fallback")]
    pub fallback: &'static str,
    #[serde(rename = "$text")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    #[serde(rename = "@sockets")]
    pub sockets: u32,
    #[serde(rename = "@cores")]
    pub cores: u32,
    #[serde(rename = "@threads")]
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clock {
    /// utc, variable (with adjustment) or timezone.
    #[serde(rename = "@offset")]
    pub offset: &'static str,
    #[serde(rename = "@adjustment", skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<i64>,
    #[serde(rename = "@basis", skip_serializing_if = "Option::is_none")]
    pub basis: Option<&'static str>,
    #[serde(rename = "@timezone", skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(rename = "timer", skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Timer>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timer {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@present", skip_serializing_if = "Option::is_none")]
    pub present: Option<YesNo>,
    #[serde(rename = "@tickpolicy", skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<String>,
    #[serde(rename = "@track", skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Devices {
    #[serde(rename = "controller", skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<Controller>,
    #[serde(rename = "disk")]
    pub disks: Vec<Disk>,
    #[serde(rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    pub serial: Serial,
    pub console: Console,
    pub graphics: Graphics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Watchdog>,
    pub memballoon: MemBalloon,
}

/// A disk controller, where libvirt's default would be one the guest has no driver for
/// (the SCSI default on q35 is not virtio-scsi).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Controller {
    #[serde(rename = "@type")]
    pub controller_type: &'static str,
    #[serde(rename = "@index")]
    pub index: u32,
    #[serde(rename = "@model")]
    pub model: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    /// file or block.
    #[serde(rename = "@type")]
    pub disk_type: &'static str,
    /// disk, cdrom, floppy or lun.
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: Driver,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<DiskSource>,
    pub target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Flag>,
    /// The user's disk name, for `virsh domblklist` and for the guest's serial numbers.
    pub alias: Alias,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Driver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    /// raw or qcow2.
    #[serde(rename = "@type")]
    pub format: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSource {
    #[serde(rename = "@file", skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(rename = "@dev", skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus")]
    pub bus: &'static str,
    #[serde(rename = "@tray", skip_serializing_if = "Option::is_none")]
    pub tray: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Boot {
    #[serde(rename = "@order")]
    pub order: u32,
}

/// libvirt accepts user aliases only with the `ua-` prefix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alias {
    #[serde(rename = "@name")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interface {
    #[serde(rename = "@type")]
    pub interface_type: &'static str,
    pub mac: Mac,
    pub source: NetworkSource,
    pub model: Model,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mac {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkSource {
    #[serde(rename = "@network")]
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    #[serde(rename = "@type")]
    pub model_type: &'static str,
}

/// The first serial port: a pty for `virsh console`, with everything the guest prints logged
/// to a file by virtlogd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Serial {
    #[serde(rename = "@type")]
    pub serial_type: &'static str,
    pub target: SerialTarget,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Log {
    #[serde(rename = "@file")]
    pub file: String,
    #[serde(rename = "@append")]
    pub append: OnOff,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Console {
    #[serde(rename = "@type")]
    pub console_type: &'static str,
    pub target: ConsoleTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub target_type: &'static str,
    #[serde(rename = "@port")]
    pub port: u32,
}

/// VNC, on loopback only: reach it through the node (`virsh vncdisplay`, an SSH tunnel).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graphics {
    #[serde(rename = "@type")]
    pub graphics_type: &'static str,
    #[serde(rename = "@autoport")]
    pub autoport: YesNo,
    #[serde(rename = "@listen")]
    pub listen: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Watchdog {
    #[serde(rename = "@model")]
    pub model: &'static str,
    #[serde(rename = "@action")]
    pub action: &'static str,
}

/// A balloon with statistics, so the agent can report the guest's memory use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemBalloon {
    #[serde(rename = "@model")]
    pub model: &'static str,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    #[serde(rename = "@period")]
    pub period: u32,
}

impl Domain {
    /// The document libvirt's defineXML takes.
    pub fn to_xml(&self) -> Result<String, quick_xml::SeError> {
        document(self)
    }
}

/// `element` as an indented XML document, every value escaped.
pub(super) fn document(element: &impl Serialize) -> Result<String, quick_xml::SeError> {
    let mut out = String::new();
    let mut serializer = quick_xml::se::Serializer::new(&mut out);
    serializer.indent(' ', 2);
    element.serialize(serializer)?;
    out.push('\n');
    Ok(out)
}

impl VmMetadata {
    /// Parses the element libvirt returns for our metadata namespace.
    pub fn from_xml(xml: &str) -> Result<Self, quick_xml::DeError> {
        quick_xml::de::from_str(xml)
    }
}
