//! The top of the translation: identity, memory, CPU, machine, and the devices every usable
//! VM needs although the spec does not say so (serial console, NIC, VNC, balloon).

use crate::api::VirtualMachine;
use crate::api::domain_spec::DomainSpec;
use crate::api::quantity::parse_bytes;

use super::limits::{MAX_CORES, MAX_MACHINE_TYPE_LEN, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES};
use super::model::{
    Console, ConsoleTarget, Controller, Cpu, CpuModelName, Devices, Domain, Graphics, Interface,
    Log, METADATA_NAMESPACE, Mac, MemBalloon, Memory, Metadata, Model, NetworkSource, OnOff, Os,
    OsType, Serial, SerialTarget, Stats, Topology, VmMetadata, YesNo,
};
use super::names::{check_dns_label, check_length, check_uid, domain_name};
use super::{CpuModel, DomainType, FieldError, RenderOptions, ResolvedVolumes, disks, hardware};

const DEFAULT_MACHINE: &str = "q35";
const DEFAULT_NAMESPACE: &str = "default";
/// Used when rendering a manifest that was never stored, so it has no UID yet.
const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Translates a VM into the libvirt domain that runs it. Pure; see the module docs.
pub fn render(
    vm: &VirtualMachine,
    volumes: &ResolvedVolumes,
    options: &RenderOptions,
) -> Result<Domain, FieldError> {
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    check_dns_label(name, "metadata.name")?;
    let namespace = vm
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    check_dns_label(namespace, "metadata.namespace")?;
    let uid = vm.metadata.uid.as_deref().unwrap_or(PLACEHOLDER_UID);
    check_uid(uid, "metadata.uid")?;

    let spec = &vm.spec;
    let domain = &spec.domain;
    let machine = machine_type(domain)?;
    let q35 = machine.contains("q35");
    let cores = cores(domain)?;
    disks::check_volumes(spec)?;
    let disks = disks::disks(spec, volumes, q35)?;

    Ok(Domain {
        domain_type: options.domain_type.to_string(),
        name: domain_name(namespace, name),
        uuid: system_uuid(domain, uid)?,
        metadata: Metadata {
            vm: VmMetadata {
                xmlns: METADATA_NAMESPACE.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                node: options.node.clone(),
            },
        },
        memory: Memory {
            unit: "KiB",
            value: memory_bytes(domain)?.div_ceil(1024),
        },
        vcpu: cores,
        os: Os {
            os_type: OsType {
                arch: super::GUEST_ARCH,
                machine,
                value: "hvm",
            },
        },
        features: hardware::features(domain.features.as_ref())?,
        cpu: cpu(options, cores),
        clock: hardware::clock(domain.clock.as_ref())?,
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices {
            controllers: if disks.iter().any(|d| d.target.bus == "scsi") {
                vec![Controller {
                    controller_type: "scsi",
                    index: 0,
                    model: "virtio-scsi",
                }]
            } else {
                Vec::new()
            },
            disks,
            interfaces: options
                .network
                .iter()
                .map(|network| Interface {
                    interface_type: "network",
                    mac: Mac {
                        address: mac_address(uid),
                    },
                    source: NetworkSource {
                        network: network.clone(),
                    },
                    model: Model {
                        model_type: "virtio",
                    },
                })
                .collect(),
            serial: Serial {
                serial_type: "pty",
                target: SerialTarget { port: 0 },
                log: Log {
                    file: options.console_log.clone(),
                    append: OnOff::On,
                },
            },
            console: Console {
                console_type: "pty",
                target: ConsoleTarget {
                    target_type: "serial",
                    port: 0,
                },
            },
            graphics: Graphics {
                graphics_type: "vnc",
                autoport: YesNo::Yes,
                listen: "127.0.0.1",
            },
            watchdog: hardware::watchdog(domain)?,
            memballoon: MemBalloon {
                model: "virtio",
                stats: Stats { period: 10 },
            },
        },
    })
}

/// The domain's `<uuid>`, which QEMU gives the guest as its SMBIOS system UUID. The agent
/// knows its domains by the VM UID in their metadata, so this one is free to be the VM's.
fn system_uuid(domain: &DomainSpec, uid: &str) -> Result<String, FieldError> {
    match domain.firmware.as_ref().and_then(|f| f.uuid.as_deref()) {
        Some(uuid) => {
            check_uid(uuid, "spec.domain.firmware.uuid")?;
            Ok(uuid.to_ascii_lowercase())
        }
        None => Ok(uid.to_string()),
    }
}

fn machine_type(domain: &DomainSpec) -> Result<String, FieldError> {
    let Some(machine) = &domain.machine else {
        return Ok(DEFAULT_MACHINE.to_string());
    };
    let value = machine.machine_type.as_str();
    let field = "spec.domain.machine.type";
    check_length(value, MAX_MACHINE_TYPE_LEN, "a machine type", field)?;
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(value.to_string())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{value:?} is not a machine type; expected e.g. q35, pc or pc-q35-7.2 (see qemu-system-x86_64 -machine help)"
            ),
        ))
    }
}

/// The guest's CPU: the agent's model under KVM, QEMU's default under TCG; one socket.
fn cpu(options: &RenderOptions, cores: u32) -> Cpu {
    let (mode, match_, model) = match (&options.domain_type, &options.cpu_model) {
        (DomainType::Qemu, _) => (None, None, None),
        (DomainType::Kvm, CpuModel::HostModel) => (Some("host-model"), None, None),
        (DomainType::Kvm, CpuModel::HostPassthrough) => (Some("host-passthrough"), None, None),
        (DomainType::Kvm, CpuModel::Named(name)) => (
            Some("custom"),
            Some("exact"),
            Some(CpuModelName {
                fallback: "forbid",
                name: name.clone(),
            }),
        ),
    };
    Cpu {
        mode,
        match_,
        model,
        topology: Topology {
            sockets: 1,
            cores,
            threads: 1,
        },
    }
}

fn cores(domain: &DomainSpec) -> Result<u32, FieldError> {
    let cores = domain.cpu.as_ref().and_then(|c| c.cores).unwrap_or(1);
    if (1..=MAX_CORES).contains(&cores) {
        Ok(cores)
    } else {
        Err(FieldError::new(
            "spec.domain.cpu.cores",
            format!("{cores} cores; expected 1 to {MAX_CORES}"),
        ))
    }
}

/// The guest's memory: requests.memory, else limits.memory.
fn memory_bytes(domain: &DomainSpec) -> Result<u64, FieldError> {
    let resources = domain.resources.as_ref();
    let (quantity, field) = resources
        .and_then(|r| {
            r.requests
                .get("memory")
                .map(|q| (q, "spec.domain.resources.requests.memory"))
                .or_else(|| {
                    r.limits
                        .get("memory")
                        .map(|q| (q, "spec.domain.resources.limits.memory"))
                })
        })
        .ok_or_else(|| {
            FieldError::new(
                "spec.domain.resources.requests.memory",
                "required: the guest's memory size, e.g. \"64Mi\"",
            )
        })?;
    let bytes = parse_bytes(&quantity.0, field)?;
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&bytes) {
        return Err(FieldError::new(
            field,
            format!("{:?} is out of range; expected 1Mi to 16Ti", quantity.0),
        ));
    }
    Ok(bytes)
}

/// A stable, locally administered MAC in QEMU's 52:54:00 range, derived from the VM's UID, so
/// a re-defined domain keeps its address and DHCP lease.
fn mac_address(uid: &str) -> String {
    let [a, b, c, ..] = crate::hash::fnv1a(uid.as_bytes()).to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{render_vm, vm};
    use super::*;

    fn domain(extra: &str) -> String {
        format!("{{resources: {{requests: {{memory: 64Mi}}}}, {extra}}}")
    }

    #[test]
    fn firmware_uuid_is_the_domains_uuid_and_the_vm_stays_known_by_its_uid() {
        let uid = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let with = |firmware: &str| {
            let mut vm = vm(&domain(firmware), "[]");
            vm.metadata.uid = Some(uid.into());
            render_vm(&vm)
        };
        let chosen = with("firmware: {uuid: 6A1A24A1-4061-11E8-B62A-0242AC110003}").unwrap();
        assert_eq!(chosen.uuid, "6a1a24a1-4061-11e8-b62a-0242ac110003");
        assert_eq!(chosen.metadata.vm.uid, uid);
        assert_eq!(with("firmware: {}").unwrap().uuid, uid);
        let error = with("firmware: {uuid: not-a-uuid}")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("spec.domain.firmware.uuid") && error.contains("not a UUID"),
            "{error}"
        );
    }

    #[test]
    fn kvm_guests_get_the_agents_cpu_model_and_tcg_guests_qemus_default() {
        let vm = vm(&domain("cpu: {cores: 2}"), "[]");
        let xml = |domain_type, model: &str| {
            let options = RenderOptions {
                domain_type,
                cpu_model: model.parse().unwrap(),
                network: None,
                console_log: "/state/console.log".into(),
                node: None,
            };
            let xml = render(&vm, &Default::default(), &options)
                .unwrap()
                .to_xml()
                .unwrap();
            let start = xml.find("<cpu").unwrap();
            let cpu = &xml[start..start + xml[start..].find("</cpu>").unwrap()];
            cpu.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("> <", "><")
        };
        let topology = "<topology sockets=\"1\" cores=\"2\" threads=\"1\"/>";
        assert_eq!(
            xml(DomainType::Kvm, "host-model"),
            format!("<cpu mode=\"host-model\">{topology}")
        );
        assert_eq!(
            xml(DomainType::Kvm, "host-passthrough"),
            format!("<cpu mode=\"host-passthrough\">{topology}")
        );
        assert_eq!(
            xml(DomainType::Kvm, "Skylake-Server"),
            format!(
                "<cpu mode=\"custom\" match=\"exact\">\
                 <model fallback=\"forbid\">Skylake-Server</model>{topology}"
            )
        );
        for model in ["host-model", "host-passthrough", "Skylake-Server"] {
            assert_eq!(xml(DomainType::Qemu, model), format!("<cpu>{topology}"));
        }
        assert!("<script>".parse::<CpuModel>().is_err());
        assert!("".parse::<CpuModel>().is_err());
    }

    #[test]
    fn the_longest_names_make_a_127_character_domain_name() {
        let mut longest = vm(&domain("cpu: {cores: 1}"), "[]");
        longest.metadata.name = Some("n".repeat(63));
        longest.metadata.namespace = Some("s".repeat(63));
        let rendered = render_vm(&longest).unwrap();
        assert_eq!(rendered.name.len(), 127);
        longest.metadata.namespace = Some("s".repeat(64));
        assert_eq!(
            render_vm(&longest).unwrap_err().to_string(),
            "metadata.namespace: 64 characters; a DNS label has at most 63"
        );
    }

    #[test]
    fn cores_up_to_the_limit() {
        let cores = |n: u32| render_vm(&vm(&domain(&format!("cpu: {{cores: {n}}}")), "[]"));
        assert_eq!(cores(MAX_CORES).unwrap().vcpu, MAX_CORES);
        assert_eq!(
            cores(MAX_CORES + 1).unwrap_err().to_string(),
            "spec.domain.cpu.cores: 257 cores; expected 1 to 256"
        );
        assert!(cores(0).is_err());
    }

    #[test]
    fn memory_within_its_range() {
        let memory = |q: &str| {
            render_vm(&vm(
                &format!("{{resources: {{requests: {{memory: \"{q}\"}}}}}}"),
                "[]",
            ))
        };
        assert_eq!(memory("1Mi").unwrap().memory.value, 1024);
        assert_eq!(memory("16Ti").unwrap().memory.value, 16 << 30);
        for out_of_range in ["1048575", "17592186044417"] {
            let err = memory(out_of_range).unwrap_err();
            assert_eq!(err.field, "spec.domain.resources.requests.memory");
            assert!(err.message.contains("expected 1Mi to 16Ti"), "{err}");
        }
        // Values that overflow any integer are refused, not wrapped.
        assert!(memory("99999999999999999999999999999Ei").is_err());
    }

    #[test]
    fn machine_types_up_to_the_limit() {
        let machine = |name: &str| {
            render_vm(&vm(
                &domain(&format!("machine: {{type: \"{name}\"}}")),
                "[]",
            ))
        };
        let at_limit = format!("pc-q35-{}", "9".repeat(MAX_MACHINE_TYPE_LEN - 7));
        assert_eq!(machine(&at_limit).unwrap().os.os_type.machine, at_limit);
        assert_eq!(
            machine(&format!("{at_limit}9")).unwrap_err().to_string(),
            "spec.domain.machine.type: 65 characters; a machine type has at most 64"
        );
    }
}
