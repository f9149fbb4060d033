//! `spec.domain`: the virtual hardware of a VirtualMachine, as in KubeVirt v1alpha1.
//!
//! Every field is optional so that a VirtualMachinePreset can carry a partial DomainSpec.
//! Enumerated values (bus, tickPolicy, action, ...) are strings with an `enum` in the CRD
//! schema, numbers have a `minimum` and `maximum`, strings a `maxLength`, lists a `maxItems`,
//! all from `domain::values` and `domain::limits` (see [`super::schema`]): the apiserver
//! refuses a bad value at `kubectl apply`, naming the field. The renderer checks the same
//! values again, for `nodevirt render` and for objects stored before the schema had a bound;
//! there a bad value makes one VM Failed with a clear condition.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::patterns::{
    DNS_LABEL_PATTERN, MACHINE_TYPE_PATTERN, PRINTABLE_ASCII_PATTERN, TIMEZONE_PATTERN,
    UUID_PATTERN,
};
use super::schema::{binary_quantity, quantity_between, rule, unique};
use crate::domain::limits::{
    DNS_LABEL_MAX_LEN, MAX_CLOCK_OFFSET_SECONDS, MAX_CORES, MAX_DISKS, MAX_FLOPPY_DISKS,
    MAX_IDE_DISKS, MAX_MACHINE_TYPE_LEN, MAX_MEMORY_BYTES, MAX_TIMEZONE_LEN, MAX_VENDOR_ID_LEN,
    MIN_MEMORY_BYTES, MIN_SPINLOCK_RETRIES,
};
use crate::domain::values::{
    CDROM_BUSES, DISK_BUSES, IDE_BUS, LUN_BUSES, RTC_TRACKS, TICK_POLICIES, TRAY_STATES,
    WATCHDOG_ACTIONS,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [rule(
    "!(has(self.watchdog) && has(self.devices) && has(self.devices.watchdog))",
    "set the watchdog in one place: spec.domain.watchdog or spec.domain.devices.watchdog",
)]))]
pub struct DomainSpec {
    /// Memory and CPU; `requests.memory` is the guest's memory size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Where the API text puts it (`spec.domain.watchdog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Watchdog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Devices>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = resource_rules()))]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = resource_rules()))]
    pub limits: BTreeMap<String, Quantity>,
}

/// `requests` and `limits`: memory is the guest's size, within the renderer's range; cpu is
/// what the holder pod requests, a quantity of zero or more.
fn resource_rules() -> Vec<kube::core::Rule> {
    let (min, max) = (
        binary_quantity(MIN_MEMORY_BYTES),
        binary_quantity(MAX_MEMORY_BYTES),
    );
    vec![
        rule(
            format!(
                "!('memory' in self) || {}",
                quantity_between("self['memory']", MIN_MEMORY_BYTES, MAX_MEMORY_BYTES)
            ),
            format!("memory must be a quantity from {min} to {max}, e.g. 64Mi"),
        ),
        rule(
            "!('cpu' in self) || (isQuantity(string(self['cpu'])) && quantity(string(self['cpu'])).compareTo(quantity('0')) >= 0)",
            "cpu must be a quantity of zero or more, e.g. 500m or 2",
        ),
    ]
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// Cores of the guest's single socket; its holder pod requests this many times the controller's --cpu-ratio CPUs, unless requests.cpu is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CORES))]
    pub cores: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// QEMU machine type, e.g. q35 (the default) or pc.
    #[serde(rename = "type")]
    #[schemars(length(max = MAX_MACHINE_TYPE_LEN), pattern(MACHINE_TYPE_PATTERN))]
    pub machine_type: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [rule(
    "!(has(self.timezone) && has(self.utc))",
    "set either timezone or utc, not both",
)]))]
pub struct Clock {
    /// Guest clock in this timezone, e.g. "Europe/Paris". Exclusive with `utc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TIMEZONE_LEN), pattern(TIMEZONE_PATTERN))]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc: Option<ClockOffsetUtc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timers>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockOffsetUtc {
    /// Seconds the guest's clock runs ahead of (or behind, if negative) UTC; at most 100
    /// years either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -MAX_CLOCK_OFFSET_SECONDS, max = MAX_CLOCK_OFFSET_SECONDS))]
    pub offset_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpet: Option<TickTimer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<PresenceTimer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<PresenceTimer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<TickTimer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<RtcTimer>,
}

/// A timer that can only be switched on or off (hyperv, kvm).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceTimer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A timer with a policy for missed ticks (hpet, pit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TickTimer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// delay, catchup, merge or discard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = TICK_POLICIES))]
    pub tick_policy: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RtcTimer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// delay, catchup, merge or discard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = TICK_POLICIES))]
    pub tick_policy: Option<String>,
    /// guest or wall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = RTC_TRACKS))]
    pub track: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// On unless `enabled: false`: ACPI is how the agent asks a guest to shut down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic: Option<FeatureApic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<FeatureHyperv>,
}

/// A feature switch; a feature that is present without `enabled` is on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureApic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_interrupt: Option<bool>,
}

/// Hyper-V enlightenments, for Windows guests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureHyperv {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaxed: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<FeatureSpinlocks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synictimer: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendorid: Option<FeatureVendorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpindex: Option<FeatureState>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSpinlocks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retries before a spinlock is reported to the hypervisor; at least 4095 (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_SPINLOCK_RETRIES, max = u32::MAX))]
    pub spinlocks: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureVendorId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Up to 12 printable ASCII characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_VENDOR_ID_LEN), pattern(PRINTABLE_ASCII_PATTERN))]
    pub vendorid: Option<String>,
}

/// What the guest's firmware reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// The SMBIOS system UUID the guest sees (`dmidecode -s system-uuid`); without it, the
    /// VM's UID. Two VMs with the same one cannot run on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(UUID_PATTERN))]
    pub uuid: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Watchdog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DNS_LABEL_MAX_LEN))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i6300esb: Option<I6300EsbWatchdog>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct I6300EsbWatchdog {
    /// poweroff, reset (the default) or shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = WATCHDOG_ACTIONS))]
    pub action: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    /// The first disk is the boot disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_DISKS), extend("x-kubernetes-validations" = disks_rules()))]
    pub disks: Vec<Disk>,
    /// Where KubeVirt's API reference puts it; `spec.domain.watchdog` is the same thing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Watchdog>,
}

/// `devices.disks`, one list: names are unique, each volume backs one disk, and the buses with
/// a fixed number of units hold no more than their controller.
fn disks_rules() -> Vec<kube::core::Rule> {
    let on_ide =
        |kind: &str| format!("(has(d.{kind}) && has(d.{kind}.bus) && d.{kind}.bus == '{IDE_BUS}')");
    vec![
        unique("self", "name", "disk names must be unique"),
        unique(
            "self",
            "volumeName",
            "two disks name the same volumeName; each volume backs one disk",
        ),
        rule(
            format!(
                "self.filter(d, {} || {}).size() <= {MAX_IDE_DISKS}",
                on_ide("disk"),
                on_ide("cdrom")
            ),
            format!(
                "at most {MAX_IDE_DISKS} disks on the ide bus (one IDE controller: 2 channels of 2 units)"
            ),
        ),
        rule(
            format!("self.filter(d, has(d.floppy)).size() <= {MAX_FLOPPY_DISKS}"),
            format!("at most {MAX_FLOPPY_DISKS} floppies (one floppy controller: fda and fdb)"),
        ),
    ]
}

/// One disk of the guest: at most one of disk, cdrom, floppy or lun (a disk if none), backed
/// by a volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [rule(
    "(has(self.disk) ? 1 : 0) + (has(self.cdrom) ? 1 : 0) + (has(self.floppy) ? 1 : 0) + (has(self.lun) ? 1 : 0) <= 1",
    "set only one of disk, cdrom, floppy or lun",
)]))]
pub struct Disk {
    #[schemars(length(max = DNS_LABEL_MAX_LEN), pattern(DNS_LABEL_PATTERN))]
    pub name: String,
    /// The name of one of `spec.volumes`.
    #[schemars(length(max = DNS_LABEL_MAX_LEN), pattern(DNS_LABEL_PATTERN))]
    pub volume_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floppy: Option<FloppyTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<LunTarget>,
}

/// The target of a `disk`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    /// virtio (the default), sata, scsi or ide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = DISK_BUSES))]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

/// The target of a `lun`: a block device passed through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LunTarget {
    /// virtio (the default) or scsi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = LUN_BUSES))]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdromTarget {
    /// sata (the default), scsi or ide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = CDROM_BUSES))]
    pub bus: Option<String>,
    /// A CD-ROM is always read-only; `false` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [rule(
        "self",
        "a cdrom is always read-only; remove readonly or set it to true",
    )]))]
    pub readonly: Option<bool>,
    /// open or closed (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = TRAY_STATES))]
    pub tray: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FloppyTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// open or closed (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = TRAY_STATES))]
    pub tray: Option<String>,
}
