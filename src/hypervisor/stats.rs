//! Resource usage of running domains, for the per-VM metrics. Read at scrape time with safe
//! per-domain calls (virt 0.5 has no safe wrapper for the bulk virConnectGetAllDomainStats).

use serde::Deserialize;
use virt::sys;

use super::{Libvirt, OwnedDomain, Result};

/// Counters of one running domain since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainUsage {
    pub domain: OwnedDomain,
    pub cpu_seconds_nanos: u64,
    pub resident_bytes: u64,
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
    pub storage_read_bytes: u64,
    pub storage_write_bytes: u64,
}

/// The devices of a running domain's live XML whose counters we read.
#[derive(Debug, Default, Deserialize)]
struct LiveDomain {
    #[serde(default)]
    devices: LiveDevices,
}

#[derive(Debug, Default, Deserialize)]
struct LiveDevices {
    #[serde(rename = "disk", default)]
    disks: Vec<LiveDevice>,
    #[serde(rename = "interface", default)]
    interfaces: Vec<LiveDevice>,
}

#[derive(Debug, Default, Deserialize)]
struct LiveDevice {
    target: Option<LiveTarget>,
}

#[derive(Debug, Default, Deserialize)]
struct LiveTarget {
    #[serde(rename = "@dev")]
    dev: String,
}

fn targets(devices: &[LiveDevice]) -> impl Iterator<Item = &str> {
    devices
        .iter()
        .filter_map(|d| d.target.as_ref())
        .map(|t| t.dev.as_str())
}

impl Libvirt {
    /// Usage of every running domain of `node`. A domain that stops while being read is skipped.
    pub fn usage(&self, node: &str) -> Result<Vec<DomainUsage>> {
        let mut out = Vec::new();
        let conn = self.conn("reading usage on", self.uri())?;
        for owned in self.owned_domains()? {
            if owned.vm.node.as_deref() != Some(node) {
                continue;
            }
            let Ok(domain) = conn.lookup_domain_by_name(&owned.name) else {
                continue;
            };
            if !domain.is_active().unwrap_or(false) {
                continue;
            }
            let Ok(info) = domain.info() else { continue };
            let live: LiveDomain = domain
                .xml_desc(0)
                .ok()
                .and_then(|xml| quick_xml::de::from_str(&xml).ok())
                .unwrap_or_default();
            let resident_kib = domain
                .memory_stats(0)
                .unwrap_or_default()
                .iter()
                .find(|s| s.tag == sys::VIR_DOMAIN_MEMORY_STAT_RSS)
                .map(|s| s.val)
                .unwrap_or(0);
            let (mut rx, mut tx, mut read, mut written) = (0u64, 0u64, 0u64, 0u64);
            for dev in targets(&live.devices.interfaces) {
                if let Ok(s) = domain.interface_stats(dev) {
                    rx += s.rx_bytes.max(0) as u64;
                    tx += s.tx_bytes.max(0) as u64;
                }
            }
            for dev in targets(&live.devices.disks) {
                if let Ok(s) = domain.block_stats(dev) {
                    read += s.rd_bytes.max(0) as u64;
                    written += s.wr_bytes.max(0) as u64;
                }
            }
            out.push(DomainUsage {
                domain: owned,
                cpu_seconds_nanos: info.cpu_time,
                resident_bytes: resident_kib.saturating_mul(1024),
                network_rx_bytes: rx,
                network_tx_bytes: tx,
                storage_read_bytes: read,
                storage_write_bytes: written,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_xml_device_targets() {
        let xml = "<domain><devices><disk><target dev='vda' bus='virtio'/></disk><disk><target dev='sda'/></disk>\
                   <interface type='network'><target dev='vnet3'/></interface><interface type='network'/></devices></domain>";
        let live: LiveDomain = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(
            targets(&live.devices.disks).collect::<Vec<_>>(),
            ["vda", "sda"]
        );
        assert_eq!(
            targets(&live.devices.interfaces).collect::<Vec<_>>(),
            ["vnet3"]
        );
    }
}
