//! libvirt's capabilities XML (`virConnectGetCapabilities`, `virsh capabilities`): which domain
//! types the daemon offers for a guest architecture. Pure.
//!
//! The daemon, not this process, decides: it lists `<domain type='kvm'/>` under a guest's
//! `<arch>` only when its QEMU supports KVM and /dev/kvm is usable by the user it runs QEMU
//! as, and it refuses to define a kvm domain otherwise. So the agent asks it, wherever the
//! agent itself runs (a container has no /dev/kvm of its own).
//!
//! ```xml
//! <capabilities>
//!   <host>...</host>
//!   <guest>
//!     <os_type>hvm</os_type>
//!     <arch name='x86_64'>
//!       <emulator>/usr/bin/qemu-system-x86_64</emulator>
//!       <machine>pc-q35-7.2</machine>
//!       <domain type='qemu'/>
//!       <domain type='kvm'/>
//!     </arch>
//!   </guest>
//! </capabilities>
//! ```

use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Capabilities {
    #[serde(rename = "guest", default)]
    guests: Vec<Guest>,
}

#[derive(Debug, Deserialize)]
struct Guest {
    os_type: String,
    arch: GuestArch,
}

#[derive(Debug, Deserialize)]
struct GuestArch {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "domain", default)]
    domains: Vec<GuestDomain>,
}

#[derive(Debug, Deserialize)]
struct GuestDomain {
    #[serde(rename = "@type")]
    kind: String,
}

/// The domain types (`kvm`, `qemu`, `test`, ...) offered for `os_type` guests of `arch`, in
/// the order listed, each once; empty when no guest matches.
pub fn guest_domain_types(
    xml: &str,
    os_type: &str,
    arch: &str,
) -> Result<Vec<String>, quick_xml::DeError> {
    let capabilities: Capabilities = quick_xml::de::from_str(xml)?;
    let mut types: Vec<String> = Vec::new();
    let matching = capabilities
        .guests
        .into_iter()
        .filter(|g| g.os_type.trim() == os_type && g.arch.name == arch);
    for domain in matching.flat_map(|g| g.arch.domains) {
        if !types.contains(&domain.kind) {
            types.push(domain.kind);
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of libvirt 9.0's answer on an x86_64 host, its host part cut short.
    fn capabilities(x86_64_domains: &str) -> String {
        format!(
            "<capabilities>\n\
             <host><uuid>4c4c4544-0000-1000-8000-000000000000</uuid>\
             <cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model></cpu>\
             <secmodel><model>apparmor</model><doi>0</doi></secmodel></host>\n\
             <guest><os_type>hvm</os_type><arch name='i686'><wordsize>32</wordsize>\
             <emulator>/usr/bin/qemu-system-i386</emulator>\
             <machine maxCpus='255'>pc-i440fx-7.2</machine>\
             <domain type='qemu'/><domain type='kvm'/></arch>\
             <features><pae/><nonpae/><acpi default='on' toggle='yes'/></features></guest>\n\
             <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <machine maxCpus='255'>pc-i440fx-7.2</machine>\
             <machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>\
             {x86_64_domains}</arch>\
             <features><acpi default='on' toggle='yes'/><cpuselection/></features></guest>\n\
             </capabilities>\n"
        )
    }

    #[test]
    fn a_kvm_host_offers_kvm_beside_qemu() {
        let xml = capabilities("<domain type='qemu'/><domain type='kvm'/>");
        assert_eq!(
            guest_domain_types(&xml, "hvm", "x86_64").unwrap(),
            ["qemu", "kvm"]
        );
    }

    #[test]
    fn a_host_without_kvm_offers_qemu_only() {
        let xml = capabilities("<domain type='qemu'/>");
        assert_eq!(guest_domain_types(&xml, "hvm", "x86_64").unwrap(), ["qemu"]);
        assert_eq!(
            guest_domain_types(&xml, "hvm", "aarch64").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn older_libvirt_nests_an_emulator_in_the_domain() {
        let xml = capabilities(
            "<domain type='qemu'/><domain type='kvm'><emulator>/usr/bin/kvm</emulator></domain>",
        );
        assert_eq!(
            guest_domain_types(&xml, "hvm", "x86_64").unwrap(),
            ["qemu", "kvm"]
        );
    }

    #[test]
    fn the_test_driver_offers_only_its_own_type_for_i686() {
        // What test:///default answers (libvirt 9.0), host part cut short.
        let xml = "<capabilities><host><cpu><arch>i686</arch></cpu></host>\
             <guest><os_type>hvm</os_type><arch name='i686'><wordsize>32</wordsize>\
             <emulator>/usr/bin/test-hv</emulator><domain type='test'/></arch>\
             <features><pae/><nonpae/></features></guest>\
             <guest><os_type>xen</os_type><arch name='i686'><wordsize>32</wordsize>\
             <emulator>/usr/bin/test-hv</emulator><domain type='test'/></arch>\
             <features><pae/><nonpae/></features></guest></capabilities>";
        assert_eq!(guest_domain_types(xml, "hvm", "i686").unwrap(), ["test"]);
        assert!(guest_domain_types(xml, "hvm", "x86_64").unwrap().is_empty());
    }

    #[test]
    fn no_guests_and_no_xml() {
        assert!(
            guest_domain_types("<capabilities><host/></capabilities>", "hvm", "x86_64")
                .unwrap()
                .is_empty()
        );
        assert!(guest_domain_types("not xml", "hvm", "x86_64").is_err());
    }
}
