//! Every enumerated value the renderer accepts, in one place, as [`super::limits`] holds every
//! size. The renderer checks a field against its list here; the CRD schemas (`crate::api`)
//! make their `enum`s from the same lists, so `kubectl apply` refuses exactly what `nodevirt
//! render` refuses, and the two can never drift. The first value of each bus list is the
//! default the renderer picks when the field is not set.

/// `disks[].disk.bus`: virtio (the default), sata, scsi or ide.
pub const DISK_BUSES: &[&str] = &["virtio", "sata", "scsi", "ide"];

/// `disks[].lun.bus`: a lun passes a block device through, which only virtio-blk and
/// virtio-scsi do.
pub const LUN_BUSES: &[&str] = &["virtio", "scsi"];

/// `disks[].cdrom.bus`: QEMU has no virtio CD-ROM.
pub const CDROM_BUSES: &[&str] = &["sata", "scsi", "ide"];

/// `disks[].cdrom.tray`, `disks[].floppy.tray`.
pub const TRAY_STATES: &[&str] = &["open", "closed"];

/// `clock.timer.{hpet,pit,rtc}.tickPolicy`: libvirt's policies for missed ticks.
pub const TICK_POLICIES: &[&str] = &["delay", "catchup", "merge", "discard"];

/// `clock.timer.rtc.track`.
pub const RTC_TRACKS: &[&str] = &["guest", "wall"];

/// `watchdog.i6300esb.action`.
pub const WATCHDOG_ACTIONS: &[&str] = &["poweroff", "reset", "shutdown"];

/// The one bus whose controller the q35 machine type lacks.
pub const IDE_BUS: &str = "ide";
