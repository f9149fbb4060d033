//! State and resource usage of running domains, for the per-VM metrics: one
//! `virConnectGetAllDomainStats` call per scrape, whatever the number of domains (per-domain
//! calls cost ~8 RPCs each: 0.9 s for 1100 domains through libvirtd).
//!
//! The `virt` crate's wrapper of that call leaks the records (it frees the array, not the
//! records), so this module calls libvirt directly: the only unsafe code besides `events`, each
//! block with a SAFETY comment. Parsing the parameters is pure and unit-tested.
#![allow(unsafe_code)] // FFI to virConnectGetAllDomainStats; each block has a SAFETY comment.

use std::collections::HashMap;
use std::ffi::{CStr, c_int, c_uint};

use virt::sys;

use super::{HypervisorError, Libvirt, Result};

/// libvirt's interface counters (`net.<n>.<counter>`), in the order of [`Device::values`].
pub const NET_COUNTERS: [&str; 8] = [
    "rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop",
];
/// libvirt's drive counters (`block.<n>.<counter>`; times in ns).
pub const BLOCK_COUNTERS: [&str; 8] = [
    "rd.bytes", "wr.bytes", "rd.reqs", "wr.reqs", "rd.times", "wr.times", "fl.reqs", "fl.times",
];
/// libvirt's balloon fields (`balloon.<field>`; sizes in KiB, faults in counts).
pub const BALLOON_FIELDS: [&str; 11] = [
    "rss",
    "current",
    "maximum",
    "available",
    "unused",
    "usable",
    "swap_in",
    "swap_out",
    "major_fault",
    "minor_fault",
    "disk_caches",
];
/// `cpu.<field>` in ns.
pub const CPU_FIELDS: [&str; 3] = ["time", "user", "system"];

/// One NIC or drive: libvirt's name for it (tap device, target dev) and its counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub values: [Option<u64>; 8],
}

/// One vCPU: libvirt's state (0 offline, 1 running, 2 blocked) and times in ns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vcpu {
    pub state: Option<u64>,
    pub time: Option<u64>,
    pub wait: Option<u64>,
}

/// What libvirt's bulk stats say about one running domain; a field libvirt did not give is
/// `None` (a guest without a balloon driver has no `available`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainStats {
    /// `state.state` and `state.reason`, libvirt's enums.
    pub state: Option<(u64, u64)>,
    pub cpu: [Option<u64>; 3],
    pub balloon: [Option<u64>; 11],
    pub vcpus: Vec<Vcpu>,
    pub interfaces: Vec<Device>,
    pub drives: Vec<Device>,
}

/// A typed parameter's value.
pub enum Value<'a> {
    Number(u64),
    Text(&'a str),
}

fn slot<'a, T: Default>(list: &'a mut Vec<T>, index: &str) -> Option<&'a mut T> {
    // libvirt counts from 0 up to `<group>.count`; a bound keeps a bad index from allocating.
    let index: usize = index.parse().ok().filter(|i| *i < 4096)?;
    if list.len() <= index {
        list.resize_with(index + 1, T::default);
    }
    list.get_mut(index)
}

impl DomainStats {
    /// Adds one typed parameter of a stats record (libvirt's names, e.g. `net.0.rx.bytes`).
    fn add(&mut self, field: &str, value: Value) {
        let Some((group, rest)) = field.split_once('.') else {
            return;
        };
        let position = |names: &[&str], name: &str| names.iter().position(|n| *n == name);
        match (group, value) {
            ("state", Value::Number(v)) => {
                let (state, reason) = self.state.get_or_insert((0, 0));
                match rest {
                    "state" => *state = v,
                    "reason" => *reason = v,
                    _ => {}
                }
            }
            ("cpu", Value::Number(v)) => {
                if let Some(i) = position(&CPU_FIELDS, rest) {
                    self.cpu[i] = Some(v);
                }
            }
            ("balloon", Value::Number(v)) => {
                if let Some(i) = position(&BALLOON_FIELDS, rest) {
                    self.balloon[i] = Some(v);
                }
            }
            ("vcpu", Value::Number(v)) => {
                let Some((index, name)) = rest.split_once('.') else {
                    return;
                };
                let Some(vcpu) = slot(&mut self.vcpus, index) else {
                    return;
                };
                match name {
                    "state" => vcpu.state = Some(v),
                    "time" => vcpu.time = Some(v),
                    "wait" => vcpu.wait = Some(v),
                    _ => {}
                }
            }
            ("net" | "block", value) => {
                // `<group>.count` has no index; `<group>.<n>.name` is the device's name.
                let Some((index, name)) = rest.split_once('.') else {
                    return;
                };
                let (list, names) = if group == "net" {
                    (&mut self.interfaces, &NET_COUNTERS)
                } else {
                    (&mut self.drives, &BLOCK_COUNTERS)
                };
                let Some(device) = slot(list, index) else {
                    return;
                };
                match value {
                    Value::Text(text) if name == "name" => device.name = text.to_string(),
                    Value::Number(v) => {
                        if let Some(i) = position(names, name) {
                            device.values[i] = Some(v);
                        }
                    }
                    Value::Text(_) => {}
                }
            }
            _ => {}
        }
    }
}

impl Libvirt {
    /// The stats of every running (or paused) domain, by domain name, from one call.
    pub fn running_stats(&self) -> Result<HashMap<String, DomainStats>> {
        let conn = self.conn("reading usage on", self.uri())?;
        let stats = sys::VIR_DOMAIN_STATS_STATE
            | sys::VIR_DOMAIN_STATS_VCPU
            | sys::VIR_DOMAIN_STATS_CPU_TOTAL
            | sys::VIR_DOMAIN_STATS_BALLOON
            | sys::VIR_DOMAIN_STATS_INTERFACE
            | sys::VIR_DOMAIN_STATS_BLOCK;
        let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: `conn` is a live connection for this call; libvirt allocates the
        // NULL-terminated record list into `records`, which is freed below.
        let count = unsafe {
            sys::virConnectGetAllDomainStats(
                conn.as_ptr(),
                stats as c_uint,
                &mut records,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE as c_uint,
            )
        };
        if count < 0 {
            return Err(HypervisorError::Call {
                op: "reading domain statistics on",
                target: self.uri().to_string(),
                source: virt::error::Error::last_error(),
            });
        }
        let mut out = HashMap::with_capacity(count as usize);
        for index in 0..count as usize {
            // SAFETY: `records` holds `count` valid record pointers until the list is freed.
            let record = unsafe { &**records.add(index) };
            // SAFETY: the record's domain is valid while the record is; the name is copied.
            let name = unsafe {
                let ptr = sys::virDomainGetName(record.dom);
                if ptr.is_null() {
                    continue;
                }
                CStr::from_ptr(ptr).to_string_lossy().into_owned()
            };
            let mut counters = DomainStats::default();
            for param in 0..record.nparams.max(0) as usize {
                // SAFETY: `params` holds `nparams` typed parameters owned by the record.
                let param = unsafe { &*record.params.add(param) };
                // SAFETY: `field` is a NUL-terminated name libvirt filled in.
                let field = unsafe { CStr::from_ptr(param.field.as_ptr()) };
                // SAFETY: the union member read is the one `type_` names; a string is
                // NUL-terminated and owned by the record.
                let value = unsafe {
                    match param.type_ as c_int as u32 {
                        sys::VIR_TYPED_PARAM_ULLONG => Value::Number(param.value.ul),
                        sys::VIR_TYPED_PARAM_UINT => Value::Number(u64::from(param.value.ui)),
                        sys::VIR_TYPED_PARAM_INT => {
                            Value::Number(u64::try_from(param.value.i).unwrap_or(0))
                        }
                        sys::VIR_TYPED_PARAM_STRING if !param.value.s.is_null() => {
                            match CStr::from_ptr(param.value.s).to_str() {
                                Ok(text) => Value::Text(text),
                                Err(_) => continue,
                            }
                        }
                        _ => continue,
                    }
                };
                if let Ok(field) = field.to_str() {
                    counters.add(field, value);
                }
            }
            out.insert(name, counters);
        }
        // SAFETY: the list came from virConnectGetAllDomainStats and is freed once, with its
        // records; nothing borrowed from it outlives this point.
        unsafe { sys::virDomainStatsRecordListFree(records) };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_fill_the_stats_of_each_vcpu_nic_and_drive() {
        let mut s = DomainStats::default();
        for (field, value) in [
            ("state.state", Value::Number(3)),
            ("state.reason", Value::Number(1)),
            ("cpu.time", Value::Number(2_500_000_000)),
            ("cpu.user", Value::Number(1_000_000_000)),
            ("balloon.rss", Value::Number(1024)),
            ("vcpu.current", Value::Number(2)),
            ("vcpu.1.state", Value::Number(2)),
            ("vcpu.1.time", Value::Number(99)),
            ("net.count", Value::Number(1)),
            ("net.0.name", Value::Text("vnet3")),
            ("net.0.rx.bytes", Value::Number(10)),
            ("net.0.tx.drop", Value::Number(2)),
            ("block.count", Value::Number(2)),
            ("block.1.name", Value::Text("vdb")),
            ("block.1.wr.reqs", Value::Number(7)),
            ("block.1.path", Value::Text("/state/x")),
            ("block.99999999.rd.bytes", Value::Number(1)),
        ] {
            s.add(field, value);
        }
        assert_eq!(s.state, Some((3, 1)));
        assert_eq!(s.cpu, [Some(2_500_000_000), Some(1_000_000_000), None]);
        assert_eq!(s.balloon[0], Some(1024));
        assert_eq!(s.vcpus.len(), 2);
        assert_eq!(
            s.vcpus[1],
            Vcpu {
                state: Some(2),
                time: Some(99),
                wait: None
            }
        );
        assert_eq!(s.interfaces[0].name, "vnet3");
        assert_eq!(s.interfaces[0].values[0], Some(10));
        assert_eq!(s.interfaces[0].values[7], Some(2));
        assert_eq!(s.drives.len(), 2, "an absurd index is ignored");
        assert_eq!(s.drives[1].name, "vdb");
        assert_eq!(s.drives[1].values[3], Some(7));
    }

    #[test]
    fn one_call_covers_every_running_domain_on_the_test_driver() {
        let lv = Libvirt::open("test:///default").unwrap();
        // The driver's built-in domain "test" runs from the start.
        let stats = lv.running_stats().unwrap();
        let test = &stats["test"];
        // The test driver gives the state only; QEMU's is checked in agent_e2e.
        assert_eq!(test.state.map(|s| s.0), Some(1), "running: {test:?}");
    }
}
