//! Random VM specs into the renderer: it never panics, and every XML it returns is accepted
//! by libvirt.

mod support;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use support::libvirt::accepted_by_libvirt;
use support::vm_builder::VmBuilder;

/// A valid value 19 times in 20, else an invalid one: enough Ok results to check, and
/// every error path still taken.
fn mostly(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
) -> impl Strategy<Value = &'static str> {
    prop_oneof![
        19 => proptest::sample::select(valid),
        1 => proptest::sample::select(invalid),
    ]
}

/// Disk `index`, on volume v<index> (usually).
fn disk(index: usize) -> impl Strategy<Value = String> {
    (
        mostly(&["disk", "cdrom", "floppy", "none"], &["lun"]),
        mostly(&["virtio", "sata", "scsi"], &["ide", "usb", "", "<&>"]),
        mostly(&["open", "closed"], &["ajar"]),
        any::<Option<bool>>(),
        mostly(&[""], &["nope", "v0"]),
        mostly(&[""], &["BAD", "d0"]),
    )
        .prop_map(move |(kind, bus, tray, readonly, volume, name)| {
            let volume = if volume.is_empty() {
                format!("v{index}")
            } else {
                volume.to_string()
            };
            let name = if name.is_empty() {
                format!("d{index}")
            } else {
                name.to_string()
            };
            // QEMU has no virtio or sata floppy, and a cdrom is never on virtio.
            let bus = if kind == "cdrom" && bus == "virtio" {
                "sata"
            } else {
                bus
            };
            let ro = readonly
                .map(|r| format!(", readonly: {r}"))
                .unwrap_or_default();
            let target = match kind {
                "none" => String::new(),
                "floppy" => format!(", floppy: {{tray: {tray}{ro}}}"),
                "cdrom" => format!(", cdrom: {{bus: \"{bus}\", tray: {tray}{ro}}}"),
                k => format!(", {k}: {{bus: \"{bus}\"{ro}}}"),
            };
            format!("{{name: {name}, volumeName: {volume}{target}}}")
        })
}

fn volume(index: usize) -> impl Strategy<Value = String> {
    mostly(
        &[
            "emptyDisk: {capacity: 1Gi}",
            "emptyDisk: {capacity: 1.5Gi}",
            "cloudInitNoCloud: {userData: \"#!/bin/sh\\necho <&>\"}",
            "persistentVolumeClaim: {claimName: root}",
            "ephemeral: {persistentVolumeClaim: {claimName: root}}",
            "registryDisk: {image: reg.example/a:1}",
        ],
        &[
            "emptyDisk: {capacity: 0}",
            "cloudInitNoCloud: {}",
            "persistentVolumeClaim: {claimName: ../x}",
            "registryDisk: {image: \"\"}",
        ],
    )
    .prop_map(move |source| format!("{{name: v{index}, {source}}}"))
}

fn domain() -> impl Strategy<Value = String> {
    (
        mostly(&["64Mi", "1.5Gi", "1e3Mi", "128974848"], &["0", "12MB", "1e3Ki"]),
        prop_oneof![9 => 1u32..=256, 1 => 257u32..1000],
        mostly(&["q35", "pc", "pc-q35-7.2"], &["bad type"]),
        mostly(&["delay", "catchup", "merge", "discard"], &["never"]),
        mostly(&["guest", "wall"], &["x"]),
        any::<(bool, bool, bool)>(),
        mostly(&["reset", "poweroff", "shutdown"], &["boom"]),
        (0usize..=4).prop_flat_map(|n| (0..n).map(disk).collect::<Vec<_>>()),
        (any::<Option<i64>>(), mostly(&["", "Europe/Paris"], &["../x"])),
        (prop_oneof![9 => 4095u32..9000, 1 => 0u32..4095], mostly(&["abc", "KVMKVMKVM"], &["", "thirteen-char"])),
    )
        .prop_map(
            |(mem, cores, machine, tick, track, (acpi, eoi, present), action, disks, clock, hv)| {
                let (offset, tz) = clock;
                let clock = match (offset, tz) {
                    (Some(o), "") => format!("utc: {{offsetSeconds: {o}}}, "),
                    (None, "") => String::new(),
                    (_, tz) => format!("timezone: \"{tz}\", "),
                };
                format!(
                    "{{resources: {{requests: {{memory: \"{mem}\"}}}}, cpu: {{cores: {cores}}}, \
                     machine: {{type: \"{machine}\"}}, \
                     clock: {{{clock}timer: {{hpet: {{present: {present}, tickPolicy: {tick}}}, \
                     rtc: {{tickPolicy: {tick}, track: {track}}}, kvm: {{present: {present}}}}}}}, \
                     features: {{acpi: {{enabled: {acpi}}}, apic: {{endOfInterrupt: {eoi}}}, \
                     hyperv: {{spinlocks: {{spinlocks: {}}}, vendorid: {{vendorid: \"{}\"}}, relaxed: {{}}}}}}, \
                     watchdog: {{i6300esb: {{action: {action}}}}}, \
                     devices: {{disks: [{}]}}}}",
                    hv.0,
                    hv.1,
                    disks.join(", ")
                )
            },
        )
}

fn volumes() -> impl Strategy<Value = String> {
    (volume(0), volume(1), volume(2), volume(3))
        .prop_map(|(a, b, c, d)| format!("[{}]", [a, b, c, d].join(", ")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn render_never_panics_and_every_ok_is_valid(domain in domain(), volumes in volumes()) {
        let builder = VmBuilder::new().domain(&domain).volumes(&volumes);
        match builder.render() {
            Ok(xml) => accepted_by_libvirt(&xml),
            Err(err) => prop_assert!(!err.field.is_empty() && !err.message.is_empty()),
        }
    }
}

#[test]
fn some_random_specs_are_valid() {
    // Guards the generator: if it only ever made invalid specs, the property above would
    // check nothing.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut valid = 0;
    for _ in 0..300 {
        let domain = domain().new_tree(&mut runner).unwrap().current();
        let volumes = volumes().new_tree(&mut runner).unwrap().current();
        if VmBuilder::new()
            .domain(&domain)
            .volumes(&volumes)
            .render()
            .is_ok()
        {
            valid += 1;
        }
    }
    assert!(valid >= 30, "only {valid} of 300 random specs were valid");
}
