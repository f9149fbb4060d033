//! One test per spec.domain field: render a VM and check the element it must produce. Every
//! XML rendered here is also checked by libvirt itself (virt-xml-validate and defineXML).

mod support;

use support::vm_builder::{UID, VmBuilder};

fn assert_has(xml: &str, needle: &str) {
    assert!(xml.contains(needle), "expected {needle}\nin:\n{xml}");
}

#[test]
fn identity_name_uuid_and_metadata() {
    let xml = VmBuilder::new().xml();
    assert_has(&xml, "<domain type=\"qemu\">");
    assert_has(&xml, "<name>default_testvm</name>");
    assert_has(&xml, &format!("<uuid>{UID}</uuid>"));
    assert_has(&xml, "<nodevirt:namespace>default</nodevirt:namespace>");
    assert_has(&xml, "<nodevirt:name>testvm</nodevirt:name>");
    assert_has(&xml, &format!("<nodevirt:uid>{UID}</nodevirt:uid>"));
    assert_has(&xml, "<nodevirt:node>node1</nodevirt:node>");
}

#[test]
fn memory_from_requests_then_limits() {
    let xml = VmBuilder::new()
        .domain("resources: {requests: {memory: 1.5Gi}}")
        .xml();
    assert_has(&xml, "<memory unit=\"KiB\">1572864</memory>");
    let xml = VmBuilder::new()
        .domain("resources: {limits: {memory: 128974848}}")
        .xml();
    assert_has(&xml, "<memory unit=\"KiB\">125952</memory>");
    let xml = VmBuilder::new()
        .domain("resources: {requests: {memory: 1G}}")
        .xml();
    assert_has(&xml, "<memory unit=\"KiB\">976563</memory>");
}

#[test]
fn memory_is_required_and_checked() {
    let err = VmBuilder::new().domain("{}").error();
    assert_eq!(err.field, "spec.domain.resources.requests.memory");
    let err = VmBuilder::new()
        .domain("resources: {requests: {memory: 12MB}}")
        .error();
    assert_eq!(err.field, "spec.domain.resources.requests.memory");
    assert!(err.message.contains("\"12MB\""), "{err}");
    let err = VmBuilder::new()
        .domain("resources: {requests: {memory: 1Ki}}")
        .error();
    assert!(err.message.contains("out of range"), "{err}");
}

#[test]
fn cores_give_vcpus_and_topology() {
    let xml = VmBuilder::new().with("cpu: {cores: 4}").xml();
    assert_has(&xml, "<vcpu>4</vcpu>");
    assert_has(&xml, "<topology sockets=\"1\" cores=\"4\" threads=\"1\"/>");
    let err = VmBuilder::new().with("cpu: {cores: 0}").error();
    assert_eq!(err.field, "spec.domain.cpu.cores");
}

#[test]
fn negative_cores_are_refused_when_parsing() {
    let err = serde_yaml::from_str::<nodevirt::api::domain_spec::Cpu>("cores: -1").unwrap_err();
    assert!(err.to_string().contains("cores"), "{err}");
}

#[test]
fn machine_type_defaults_to_q35() {
    assert_has(&VmBuilder::new().xml(), "machine=\"q35\">hvm</type>");
    assert_has(
        &VmBuilder::new().with("machine: {type: pc}").xml(),
        "machine=\"pc\">hvm</type>",
    );
    let err = VmBuilder::new()
        .with("machine: {type: \"q35\\\" evil=\\\"\"}")
        .error();
    assert_eq!(err.field, "spec.domain.machine.type");
}

#[test]
fn clock_utc_offset_and_timezone() {
    assert_has(&VmBuilder::new().xml(), "<clock offset=\"utc\"/>");
    let xml = VmBuilder::new()
        .with("clock: {utc: {offsetSeconds: -3600}}")
        .xml();
    assert_has(
        &xml,
        "<clock offset=\"variable\" adjustment=\"-3600\" basis=\"utc\"/>",
    );
    let xml = VmBuilder::new()
        .with("clock: {timezone: Europe/Paris}")
        .xml();
    assert_has(
        &xml,
        "<clock offset=\"timezone\" timezone=\"Europe/Paris\"/>",
    );
    let err = VmBuilder::new()
        .with("clock: {timezone: UTC, utc: {}}")
        .error();
    assert_eq!(err.field, "spec.domain.clock");
    let err = VmBuilder::new()
        .with("clock: {timezone: ../../etc/passwd}")
        .error();
    assert_eq!(err.field, "spec.domain.clock.timezone");
}

#[test]
fn every_timer() {
    let xml = VmBuilder::new()
        .with(
            "clock: {timer: {hpet: {present: false, tickPolicy: merge}, hyperv: {present: true}, \
             kvm: {present: true}, pit: {present: true, tickPolicy: discard}, \
             rtc: {present: true, tickPolicy: catchup, track: wall}}}",
        )
        .xml();
    assert_has(
        &xml,
        "<timer name=\"hpet\" present=\"no\" tickpolicy=\"merge\"/>",
    );
    assert_has(&xml, "<timer name=\"hypervclock\" present=\"yes\"/>");
    assert_has(&xml, "<timer name=\"kvmclock\" present=\"yes\"/>");
    assert_has(
        &xml,
        "<timer name=\"pit\" present=\"yes\" tickpolicy=\"discard\"/>",
    );
    assert_has(
        &xml,
        "<timer name=\"rtc\" present=\"yes\" tickpolicy=\"catchup\" track=\"wall\"/>",
    );
}

#[test]
fn bad_timer_values_name_the_field_and_the_choices() {
    let err = VmBuilder::new()
        .with("clock: {timer: {pit: {tickPolicy: slow}}}")
        .error();
    assert_eq!(err.field, "spec.domain.clock.timer.pit.tickPolicy");
    assert!(
        err.message.contains("delay, catchup, merge, discard"),
        "{err}"
    );
    let err = VmBuilder::new()
        .with("clock: {timer: {rtc: {track: moon}}}")
        .error();
    assert_eq!(err.field, "spec.domain.clock.timer.rtc.track");
}

#[test]
fn acpi_is_on_by_default_and_can_be_turned_off() {
    assert_has(&VmBuilder::new().xml(), "<acpi/>");
    let xml = VmBuilder::new()
        .with("features: {acpi: {enabled: false}}")
        .xml();
    assert!(!xml.contains("<acpi/>"), "{xml}");
}

#[test]
fn apic_with_end_of_interrupt() {
    let xml = VmBuilder::new()
        .with("features: {apic: {enabled: true, endOfInterrupt: true}}")
        .xml();
    assert_has(&xml, "<apic eoi=\"on\"/>");
    let xml = VmBuilder::new().with("features: {apic: {}}").xml();
    assert_has(&xml, "<apic/>");
    let xml = VmBuilder::new()
        .with("features: {apic: {enabled: false}}")
        .xml();
    assert!(!xml.contains("<apic"), "{xml}");
}

#[test]
fn every_hyperv_feature() {
    let xml = VmBuilder::new()
        .with(
            "features: {hyperv: {relaxed: {}, reset: {enabled: true}, runtime: {}, \
             spinlocks: {spinlocks: 8191}, synic: {}, synictimer: {}, vapic: {}, \
             vendorid: {vendorid: nodevirt}, vpindex: {enabled: false}}}",
        )
        .xml();
    for needle in [
        "<relaxed state=\"on\"/>",
        "<reset state=\"on\"/>",
        "<runtime state=\"on\"/>",
        "<spinlocks state=\"on\" retries=\"8191\"/>",
        "<synic state=\"on\"/>",
        "<stimer state=\"on\"/>",
        "<vapic state=\"on\"/>",
        "<vendor_id state=\"on\" value=\"nodevirt\"/>",
        "<vpindex state=\"off\"/>",
    ] {
        assert_has(&xml, needle);
    }
}

#[test]
fn hyperv_limits() {
    let err = VmBuilder::new()
        .with("features: {hyperv: {spinlocks: {spinlocks: 10}}}")
        .error();
    assert_eq!(err.field, "spec.domain.features.hyperv.spinlocks.spinlocks");
    let err = VmBuilder::new()
        .with("features: {hyperv: {vendorid: {vendorid: thirteenchars}}}")
        .error();
    assert_eq!(err.field, "spec.domain.features.hyperv.vendorid.vendorid");
    let xml = VmBuilder::new()
        .with("features: {hyperv: {spinlocks: {}}}")
        .xml();
    assert_has(&xml, "<spinlocks state=\"on\" retries=\"4096\"/>");
}

#[test]
fn watchdog_in_either_place() {
    let xml = VmBuilder::new()
        .with("watchdog: {name: w, i6300esb: {action: poweroff}}")
        .xml();
    assert_has(&xml, "<watchdog model=\"i6300esb\" action=\"poweroff\"/>");
    let xml = VmBuilder::new()
        .with("devices: {watchdog: {name: w, i6300esb: {}}}")
        .xml();
    assert_has(&xml, "<watchdog model=\"i6300esb\" action=\"reset\"/>");
    let err = VmBuilder::new()
        .with("watchdog: {i6300esb: {action: explode}}")
        .error();
    assert_eq!(err.field, "spec.domain.watchdog.i6300esb.action");
    assert!(err.message.contains("poweroff, reset, shutdown"), "{err}");
    let err = VmBuilder::new()
        .with("watchdog: {i6300esb: {}}\ndevices: {watchdog: {i6300esb: {}}}")
        .error();
    assert_eq!(err.field, "spec.domain.watchdog");
}

const ALL_VOLUMES: &str = "[
  {name: root, persistentVolumeClaim: {claimName: guest}},
  {name: eph, ephemeral: {persistentVolumeClaim: {claimName: guest}}},
  {name: ci, cloudInitNoCloud: {userData: \"#!/bin/sh\\necho hi\"}},
  {name: scratch, emptyDisk: {capacity: 2Gi}},
  {name: reg, registryDisk: {image: registry.example/disks/tiny:1}}
]";

#[test]
fn every_volume_kind_reaches_its_source() {
    let xml = VmBuilder::new()
        .with(
            "devices: {disks: [{name: a, volumeName: root}, {name: b, volumeName: eph}, \
             {name: c, volumeName: ci}, {name: d, volumeName: scratch}, {name: e, volumeName: reg}]}",
        )
        .volumes(ALL_VOLUMES)
        .xml();
    let dir = format!("/var/lib/nodevirt/vms/{UID}");
    assert_has(&xml, "<source file=\"/srv/claims/guest/disk.img\"/>");
    assert_has(&xml, &format!("<source file=\"{dir}/volume-1.qcow2\"/>"));
    assert_has(&xml, &format!("<source file=\"{dir}/volume-2.iso\"/>"));
    assert_has(&xml, &format!("<source file=\"{dir}/volume-3.qcow2\"/>"));
    assert_has(&xml, &format!("<source file=\"{dir}/volume-4.qcow2\"/>"));
    assert_eq!(
        xml.matches("<driver name=\"qemu\" type=\"qcow2\"/>")
            .count(),
        3
    );
    assert_eq!(
        xml.matches("<driver name=\"qemu\" type=\"raw\"/>").count(),
        2
    );
    assert_has(&xml, "<boot order=\"1\"/>");
}

#[test]
fn disk_buses_and_target_names() {
    let xml = VmBuilder::new()
        .with(
            "machine: {type: pc}\ndevices: {disks: [{name: a, volumeName: a, disk: {bus: virtio}}, \
             {name: b, volumeName: b, disk: {bus: sata}}, {name: c, volumeName: c, disk: {bus: scsi}}, \
             {name: d, volumeName: d, disk: {bus: ide}}, {name: e, volumeName: e}]}",
        )
        .volumes(
            "[{name: a, emptyDisk: {capacity: 1Gi}}, {name: b, emptyDisk: {capacity: 1Gi}}, \
             {name: c, emptyDisk: {capacity: 1Gi}}, {name: d, emptyDisk: {capacity: 1Gi}}, \
             {name: e, emptyDisk: {capacity: 1Gi}}]",
        )
        .xml();
    assert_has(&xml, "<target dev=\"vda\" bus=\"virtio\"/>");
    assert_has(&xml, "<target dev=\"sda\" bus=\"sata\"/>");
    assert_has(&xml, "<target dev=\"sdb\" bus=\"scsi\"/>");
    assert_has(
        &xml,
        "<controller type=\"scsi\" index=\"0\" model=\"virtio-scsi\"/>",
    );
    assert_has(&xml, "<target dev=\"hda\" bus=\"ide\"/>");
    assert_has(&xml, "<target dev=\"vdb\" bus=\"virtio\"/>");
}

#[test]
fn cdrom_is_read_only_with_tray() {
    let xml = VmBuilder::new()
        .with(
            "devices: {disks: [{name: a, volumeName: ci, cdrom: {tray: closed}}, \
             {name: b, volumeName: scratch, cdrom: {bus: scsi, readonly: true, tray: open}}]}",
        )
        .volumes("[{name: ci, cloudInitNoCloud: {userData: x}}, {name: scratch, emptyDisk: {capacity: 1Mi}}]")
        .xml();
    assert_has(&xml, "<disk type=\"file\" device=\"cdrom\">");
    assert_has(&xml, "<target dev=\"sda\" bus=\"sata\" tray=\"closed\"/>");
    assert_has(&xml, "<target dev=\"sdb\" bus=\"scsi\" tray=\"open\"/>");
    assert_eq!(xml.matches("<readonly/>").count(), 2);
    assert_eq!(
        xml.matches("<source file=").count(),
        1,
        "an open tray holds no medium"
    );
    let err = VmBuilder::new()
        .with("devices: {disks: [{name: a, volumeName: ci, cdrom: {readonly: false}}]}")
        .volumes("[{name: ci, cloudInitNoCloud: {userData: x}}]")
        .error();
    assert_eq!(err.field, "spec.domain.devices.disks[0].cdrom.readonly");
}

#[test]
fn floppy_on_fdc() {
    let xml = VmBuilder::new()
        .with("machine: {type: pc}\ndevices: {disks: [{name: f, volumeName: v, floppy: {readonly: true, tray: closed}}]}")
        .volumes("[{name: v, emptyDisk: {capacity: 1440Ki}}]")
        .xml();
    assert_has(&xml, "<disk type=\"file\" device=\"floppy\">");
    assert_has(&xml, "<target dev=\"fda\" bus=\"fdc\" tray=\"closed\"/>");
    assert_has(&xml, "<readonly/>");
}

#[test]
fn lun_passes_a_block_device_through() {
    let xml = VmBuilder::new()
        .with("devices: {disks: [{name: l, volumeName: v, lun: {bus: scsi}}]}")
        .volumes("[{name: v, persistentVolumeClaim: {claimName: blockclaim}}]")
        .block_claims()
        .xml();
    assert_has(&xml, "<disk type=\"block\" device=\"lun\">");
    assert_has(&xml, "<source dev=\"/dev/loop7\"/>");
    assert_has(&xml, "<target dev=\"sda\" bus=\"scsi\"/>");
    let err = VmBuilder::new()
        .with("devices: {disks: [{name: l, volumeName: v, lun: {}}]}")
        .volumes("[{name: v, persistentVolumeClaim: {claimName: fileclaim}}]")
        .error();
    assert_eq!(err.field, "spec.domain.devices.disks[0].lun");
}

#[test]
fn readonly_everywhere() {
    let xml = VmBuilder::new()
        .with("devices: {disks: [{name: a, volumeName: a, disk: {readonly: true}}, {name: b, volumeName: b}]}")
        .volumes("[{name: a, emptyDisk: {capacity: 1Gi}}, {name: b, persistentVolumeClaim: {claimName: c, readOnly: true}}]")
        .xml();
    assert_eq!(xml.matches("<readonly/>").count(), 2);
}

#[test]
fn disk_and_volume_mistakes_are_named() {
    let one_disk = |disk: &str, volumes: &str| {
        VmBuilder::new()
            .with(&format!("devices: {{disks: [{disk}]}}"))
            .volumes(volumes)
            .error()
    };
    let ci = "[{name: v, cloudInitNoCloud: {userData: x}}]";
    let err = one_disk("{name: a, volumeName: v, disk: {bus: usb2}}", ci);
    assert_eq!(err.field, "spec.domain.devices.disks[0].disk.bus");
    assert!(err.message.contains("virtio, sata, scsi, ide"), "{err}");
    let err = one_disk("{name: a, volumeName: nope}", ci);
    assert_eq!(err.field, "spec.domain.devices.disks[0].volumeName");
    assert!(err.message.contains("expected one of: v"), "{err}");
    let err = one_disk("{name: a, volumeName: v, disk: {}, cdrom: {}}", ci);
    assert_eq!(err.field, "spec.domain.devices.disks[0]");
    let err = one_disk("{name: a, volumeName: v, disk: {bus: ide}}", ci);
    assert!(err.message.contains("q35"), "{err}");
    let err = one_disk(
        "{name: a, volumeName: v}",
        "[{name: v, emptyDisk: {capacity: 0}}]",
    );
    assert_eq!(err.field, "spec.volumes[0].emptyDisk.capacity");
    let err = one_disk(
        "{name: a, volumeName: v}",
        "[{name: v, emptyDisk: {capacity: lots}}]",
    );
    assert_eq!(err.field, "spec.volumes[0].emptyDisk.capacity");
    let err = one_disk("{name: a, volumeName: v}", "[{name: v}]");
    assert_eq!(err.field, "spec.volumes[0]");
    let err = one_disk(
        "{name: a, volumeName: v}",
        "[{name: v, cloudInitNoCloud: {userData: x, userDataBase64: eA==}}]",
    );
    assert_eq!(err.field, "spec.volumes[0].cloudInitNoCloud");
    let err = one_disk("{name: A, volumeName: v}", ci);
    assert_eq!(err.field, "spec.domain.devices.disks[0].name");
}

#[test]
fn two_disks_on_one_volume() {
    let err = VmBuilder::new()
        .with("devices: {disks: [{name: a, volumeName: v}, {name: b, volumeName: v}]}")
        .volumes("[{name: v, emptyDisk: {capacity: 1Gi}}]")
        .error();
    assert_eq!(err.field, "spec.domain.devices.disks[1].volumeName");
    assert!(err.message.contains("already used by disk \"a\""), "{err}");
}

#[test]
fn names_must_be_dns_labels() {
    for bad in ["", "Test", "a_b", "../../etc", "<vm>"] {
        let err = VmBuilder::new().name(bad).error();
        assert_eq!(err.field, "metadata.name", "{bad}");
    }
}

#[test]
fn xml_special_characters_are_escaped() {
    let xml = VmBuilder::new()
        .with("features: {hyperv: {vendorid: {vendorid: \"<&'\\\">\"}}}")
        .xml();
    // Inside a double-quoted attribute a single quote needs no escaping.
    assert_has(&xml, "value=\"&lt;&amp;'&quot;&gt;\"");
}

#[test]
fn nic_with_a_mac_derived_from_the_uid_and_console_log() {
    let xml = VmBuilder::new().xml();
    assert_has(&xml, "<source network=\"default\"/>");
    assert_has(&xml, "<mac address=\"52:54:00:");
    assert_eq!(xml, VmBuilder::new().xml(), "rendering is deterministic");
    assert_has(
        &xml,
        &format!("<log file=\"/var/lib/nodevirt/vms/{UID}/console.log\" append=\"on\"/>"),
    );
    assert_has(
        &xml,
        "<graphics type=\"vnc\" autoport=\"yes\" listen=\"127.0.0.1\"/>",
    );
}

/// A field the schema does not declare, anywhere in the manifest or its template, is refused
/// by the real binary as `kubectl apply` refuses it: the file, the full path and the fields
/// expected there, one line each, exit code 2.
#[test]
fn a_typo_in_any_field_is_refused_by_the_binary() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubevirt.io/v1alpha1\nkind: OfflineVirtualMachine\nmetadata: {name: vm}\n\
         spec:\n  running: true\n  template:\n    spec:\n      domain:\n        \
         cpu: {core: 4}\n        resources: {requests: {memory: 64Mi}}\n        \
         devices: {disks: [{name: a, volumeName: v, disk: {buss: virtio}}]}\n      \
         volumes: [{name: v, emptyDisk: {capacity: 1Gi}}]\n",
    )
    .expect("writing the manifest");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodevirt"))
        .arg("render")
        .arg(&file)
        .output()
        .expect("run nodevirt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "no XML for a refused manifest");
    let path = file.display();
    assert_eq!(
        stderr,
        format!(
            "error: {path}: spec.template.spec.domain.cpu.core: unknown field; expected cores\n\
             {path}: spec.template.spec.domain.devices.disks[0].disk.buss: unknown field; \
             expected one of bus, readonly\n"
        )
    );
}
