//! Every size limit on a VM's spec, in one place, each with the reason for its value.
//!
//! Two lines of defence use them. The CRD schemas (`crate::api`, printed by `nodevirt crds`)
//! carry each limit as a `minimum`/`maximum`, `maxItems`, `maxLength` or CEL rule formatted
//! from these constants, so the apiserver refuses a bad VM, template or preset at
//! `kubectl apply`, naming the field. The renderer checks them again, for `nodevirt render`
//! and for objects stored before the schema had the bound: a value over a limit is refused
//! with a [`super::FieldError`] that names the field, the size found and the limit, e.g.
//! `spec.volumes: 70 volumes; at most 64 are allowed`.
//!
//! The limits keep what one VM can ask of a node bounded (devices QEMU emulates, files the
//! agent writes, bytes kept in etcd and sent to every watcher) and make a mistake fail at
//! `kubectl apply`, `nodevirt render` or in the VM's status, not deep inside libvirt.

/// A DNS label (RFC 1123), as Kubernetes checks names and namespaces. `metadata.name`,
/// `metadata.namespace`, disk and volume names are labels; the libvirt domain name
/// `<namespace>_<name>` is therefore at most 63 + 1 + 63 = 127 characters, which libvirt and
/// QEMU take as is.
pub const DNS_LABEL_MAX_LEN: usize = 63;

/// A DNS subdomain (RFC 1123): claim and Secret names.
pub const DNS_SUBDOMAIN_MAX_LEN: usize = 253;

/// `spec.domain.devices.disks`. Each disk is a device QEMU emulates and libvirt must give an
/// address: on q35 every virtio disk sits behind a pcie-root-port that libvirt adds, 8 to a
/// slot of pcie-root, so 64 of them take 8 of its 32 slots and leave room for the NIC,
/// balloon, watchdog and controllers; sata disks take an AHCI controller per 6, scsi disks a
/// virtio-scsi controller per 7. KubeVirt's webhook allows 256 list entries, but every disk
/// also costs the agent a file to prepare and QEMU memory and an I/O queue, and guests that
/// need more than a few tens of disks want a volume manager, not more devices.
pub const MAX_DISKS: usize = 64;

/// `spec.volumes`. A volume backs at most one disk, so more volumes than disks only add work
/// for the agent (images to pull, files to create) that no device uses.
pub const MAX_VOLUMES: usize = MAX_DISKS;

/// The pc machine's one IDE controller has two channels of two units; libvirt refuses a fifth
/// IDE disk or cdrom ("Only a single IDE controller is supported for this machine type").
pub const MAX_IDE_DISKS: usize = 4;

/// The one floppy controller has two drives (fda, fdb); libvirt refuses a third.
pub const MAX_FLOPPY_DISKS: usize = 2;

/// Inline user-data (`userData`, or `userDataBase64` once decoded), per volume. Inline data
/// lives in the VM object: it is stored in etcd (1.5 MiB per object), copied into every VM of
/// a ReplicaSet or OfflineVirtualMachine template, and sent to every watcher on each status
/// change. 64 KiB is what the clouds that carry user-data in instance metadata allow at most
/// (Azure custom data 64 KiB, EC2 16 KiB) and far more than a cloud-config or boot script
/// needs; KubeVirt stops inline data at 2 KiB. Larger user-data belongs in a Secret
/// (`secretRef`), which Kubernetes caps at 1 MiB and the VM object does not carry.
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// `spec.domain.cpu.cores` (one socket): a sanity bound; QEMU checks the machine type's own
/// maximum when the domain starts.
pub const MAX_CORES: u32 = 256;

/// The guest's memory: QEMU refuses guests smaller than this to be useful; libvirt counts in
/// KiB.
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// 16 TiB: more than any node has; a larger value is almost surely a wrong suffix.
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;

/// `spec.domain.machine.type`: QEMU's machine names are short (`pc-q35-9.2`); a long one is
/// a mistake.
pub const MAX_MACHINE_TYPE_LEN: usize = 64;

/// `spec.domain.clock.timezone`: the longest IANA names have about 30 characters.
pub const MAX_TIMEZONE_LEN: usize = 64;

/// `registryDisk.image`: a name (registry host and repository) of at most 255 characters, as
/// the Docker reference grammar allows, a tag of at most 128 and a digest fit in 512.
pub const MAX_IMAGE_REFERENCE_LEN: usize = 512;

/// `spec.domain.clock.utc.offsetSeconds`, either way: 100 years (of 365.25 days). A guest
/// clock a century away from UTC is a mistake (milliseconds, or a date, given as an offset);
/// libvirt refuses an adjustment that leaves the years 1 to 9999 ("Invalid clock
/// adjustment") only when the domain starts, and this bound keeps now + offset far inside
/// them.
pub const MAX_CLOCK_OFFSET_SECONDS: i64 = 36_525 * 24 * 3600;

/// `spec.domain.features.hyperv.spinlocks.spinlocks`: Hyper-V's minimum number of retries
/// before a guest reports a spinning lock (libvirt refuses fewer). The renderer checks it when
/// spinlocks are enabled; the schema always (a smaller count is of no use either way).
pub const MIN_SPINLOCK_RETRIES: u32 = 4095;

/// `spec.domain.features.hyperv.vendorid.vendorid`: Hyper-V's vendor id is 12 bytes, as
/// CPUID's vendor string. The renderer checks it when the vendor id is enabled; the schema
/// always.
pub const MAX_VENDOR_ID_LEN: usize = 12;

/// `spec.terminationGracePeriodSeconds`: one hour. On delete the agent asks the guest to shut
/// down and waits this long before it destroys the domain; meanwhile the VM and its share of
/// the node stay taken. A guest that has not shut down after an hour will not; without a
/// bound, 9223372036854775807 kept a deleted VM for ever. The schema refuses more, and the
/// agent cuts an older object's larger value to it.
pub const MAX_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 3600;

/// The text of a quantity (`emptyDisk.capacity`): the parser refuses more than 30 digits
/// ("too many digits"), and with a sign, a point and a suffix or exponent that fits in 64.
/// The bound also keeps the apiserver's cost estimate of the quantity rules small.
pub const MAX_QUANTITY_LEN: usize = 64;
