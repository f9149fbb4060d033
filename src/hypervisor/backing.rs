//! The size of an image only the node can see (a claim's image), asked of the node's libvirtd
//! through a probe domain (`domain::probe`):
//!
//! 1. A probe of that name left behind (the agent died between 2 and 4) is undefined: libvirt
//!    would refuse to define the name again.
//! 2. The probe is defined: persistent and never started, so no QEMU runs and nothing on the
//!    node changes but libvirt's list of domains.
//! 3. virDomainGetBlockInfo on its disk: libvirtd opens the image on the node and reports its
//!    capacity (a raw file's or block device's size, a qcow2 image's virtual size).
//! 4. The probe is undefined, whatever step 3 gave (a guard).
//!
//! The `virt` crate's `Domain::block_info` (0.5.0) drops libvirt's error and returns the
//! struct it never filled, so this module calls virDomainGetBlockInfo itself: one unsafe
//! block, with its SAFETY comment.
//!
//! libvirt's test driver answers step 3 with made-up numbers ([`TEST_DRIVER_CAPACITY`]) and
//! without opening the image.
#![allow(unsafe_code)] // FFI to virDomainGetBlockInfo; the block has a SAFETY comment.

use std::ffi::CString;

use virt::domain::Domain;
use virt::sys;

use crate::domain::ResolvedVolume;
use crate::domain::probe::{PROBE_TARGET, probe_domain};

use super::{HypervisorError, Libvirt, Result};

/// What the test driver reports as every disk's capacity.
pub const TEST_DRIVER_CAPACITY: u64 = 1_099_506_450_432;

impl Libvirt {
    /// The virtual size in bytes of `volume`, a node path, read by libvirtd through the probe
    /// domain `probe_name` (see the module docs). An image libvirtd cannot open fails with
    /// [`HypervisorError::Probe`] naming the path, libvirt's message as its source.
    pub fn backing_capacity(&self, probe_name: &str, volume: &ResolvedVolume) -> Result<u64> {
        self.probe_capacity(probe_name, volume, PROBE_TARGET)
    }

    /// [`Libvirt::backing_capacity`], asking for the disk `target` of the probe.
    fn probe_capacity(
        &self,
        probe_name: &str,
        volume: &ResolvedVolume,
        target: &str,
    ) -> Result<u64> {
        let path = volume.path();
        let failed = |step| {
            move |source| HypervisorError::Probe {
                step,
                path: path.to_string(),
                source,
            }
        };
        let xml = probe_domain(probe_name, volume)
            .to_xml()
            .map_err(|source| HypervisorError::ProbeXml {
                path: path.to_string(),
                source,
            })?;
        self.undefine(probe_name)?;
        let step = "defining a probe domain for";
        let domain = self
            .conn(step, path)?
            .define_domain_xml(&xml)
            .map_err(failed(step))?;
        let probe = UndefineOnDrop {
            domain,
            name: probe_name,
        };
        block_capacity(&probe.domain, target).map_err(failed("reading the size of"))
    }
}

/// Undefines the probe when dropped: after its size was read, and after any error.
struct UndefineOnDrop<'a> {
    domain: Domain,
    name: &'a str,
}

impl Drop for UndefineOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.domain.undefine() {
            tracing::warn!(
                domain = self.name,
                error = %e,
                "cannot remove the probe domain; the next probe of this volume removes it"
            );
        }
    }
}

/// virDomainGetBlockInfo's capacity of the disk `target` of `domain`.
fn block_capacity(domain: &Domain, target: &str) -> std::result::Result<u64, virt::error::Error> {
    let target = CString::new(target)?;
    let mut info = sys::virDomainBlockInfo {
        capacity: 0,
        allocation: 0,
        physical: 0,
    };
    // SAFETY: `domain` holds a reference to a live virDomain for this call; `target` is a
    // NUL-terminated string and `info` a struct of the right type, both outliving the call,
    // which only writes into `info`.
    let ret = unsafe { sys::virDomainGetBlockInfo(domain.as_ptr(), target.as_ptr(), &mut info, 0) };
    if ret < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(info.capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageFormat;
    use crate::domain::probe::probe_name;
    use crate::k8s::error_chain;

    const UID: &str = "5d7a1c3e-2b4f-4a6d-8e9f-1a2b3c4d5e6f";

    fn file(path: &str) -> ResolvedVolume {
        ResolvedVolume::File {
            path: path.into(),
            format: ImageFormat::Raw,
        }
    }

    #[test]
    fn the_test_driver_makes_up_the_size_and_the_probe_is_gone_after() {
        let lv = Libvirt::open("test:///default").unwrap();
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(10 << 20).unwrap();
        let name = probe_name(UID, 0);
        let volume = file(&image.path().display().to_string());
        // Not the file's 10 MiB: the test driver does not open the image...
        assert_eq!(
            lv.backing_capacity(&name, &volume).unwrap(),
            TEST_DRIVER_CAPACITY
        );
        assert_eq!(lv.status(&name).unwrap(), None, "undefined");
        // ...so neither does a missing one fail there (qemu:///system fails it).
        let missing = ResolvedVolume::Block {
            path: "/dev/disk/by-id/nodevirt-missing".into(),
        };
        assert_eq!(
            lv.backing_capacity(&name, &missing).unwrap(),
            TEST_DRIVER_CAPACITY
        );
        assert_eq!(lv.status(&name).unwrap(), None);
    }

    #[test]
    fn a_probe_left_behind_is_replaced() {
        let lv = Libvirt::open("test:///default").unwrap();
        let name = probe_name(UID, 1);
        let left = probe_domain(&name, &file("/srv/old.img"));
        let left = left.to_xml().unwrap().replace(
            "<name>",
            "<uuid>9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d</uuid><name>",
        );
        lv.define(&name, &left).unwrap();
        let volume = file("/srv/new.img");
        assert_eq!(
            lv.backing_capacity(&name, &volume).unwrap(),
            TEST_DRIVER_CAPACITY
        );
        assert_eq!(lv.status(&name).unwrap(), None);
    }

    #[test]
    fn a_failed_read_names_the_path_and_still_removes_the_probe() {
        let lv = Libvirt::open("test:///default").unwrap();
        let name = probe_name(UID, 2);
        let volume = file("/srv/pv-1/disk.img");
        // The test driver fails GetBlockInfo only for a disk the domain lacks.
        let err = lv.probe_capacity(&name, &volume, "vdz").unwrap_err();
        assert!(!err.is_connection_lost(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "libvirt: reading the size of the backing image /srv/pv-1/disk.img"
        );
        assert!(error_chain(&err).contains("vdz"), "{}", error_chain(&err));
        assert_eq!(lv.status(&name).unwrap(), None, "undefined after the error");

        let err = lv
            .backing_capacity("nodevirt-probe/x", &volume)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "libvirt: defining a probe domain for the backing image /srv/pv-1/disk.img"
        );
        lv.disconnect();
        let err = lv.backing_capacity(&name, &volume).unwrap_err();
        assert!(err.is_connection_lost(), "{err:?}");
    }
}
