//! The CRD schemas on a real kube-apiserver (the one of $NODEVIRT_CLUSTER_DIR, with
//! daemonset.yaml applied): `kubectl apply --dry-run=server` refuses each hostile object at
//! once and names the field. That every example and every value at its limit is accepted is
//! tests/schema_limits_e2e.rs.
//!
//! Each attack is a valid object (itself checked to be accepted) with one thing made wrong, so a
//! refusal can only come from that change; its expected texts are the field path and what
//! the apiserver says about it, the limits formatted from `domain::limits`.

mod support;

use nodevirt::api::replica_set::GENERATED_NAME_SUFFIX_LEN;
use nodevirt::domain::limits::{
    DNS_LABEL_MAX_LEN, MAX_CLOCK_OFFSET_SECONDS, MAX_CORES, MAX_DISKS, MAX_FLOPPY_DISKS,
    MAX_IDE_DISKS, MAX_IMAGE_REFERENCE_LEN, MAX_MACHINE_TYPE_LEN,
    MAX_TERMINATION_GRACE_PERIOD_SECONDS, MAX_USER_DATA_BYTES, MAX_VOLUMES,
};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::schema::{
    accepted, base64, disks, dry_run, first_disk, first_volume, offline_vm_with, preset_with,
    replica_set_with, vm, vm_with,
};

/// One hostile object, and what kubectl's error must say: the field path and the reason.
struct Attack {
    name: &'static str,
    object: Value,
    says: Vec<String>,
}

fn attack(name: &'static str, object: Value, says: &[&str]) -> Attack {
    Attack {
        name,
        object,
        says: says.iter().map(|s| s.to_string()).collect(),
    }
}

fn attacks() -> Vec<Attack> {
    let at_most = |n: usize| format!("must have at most {n} items");
    let not_more_than = |n: usize| format!("may not be more than {n} bytes");
    let most = |n: i64| format!("should be less than or equal to {n}");
    let least = |n: i64| format!("should be greater than or equal to {n}");
    let cores = "spec.domain.cpu.cores";
    let disks_field = "spec.domain.devices.disks";
    vec![
        // The issue's attacks.
        attack(
            "cores 4294967296",
            vm_with(|v| v["spec"]["domain"]["cpu"]["cores"] = json!(4_294_967_296u64)),
            &[cores, &most(MAX_CORES.into())],
        ),
        attack(
            "cores 0",
            vm_with(|v| v["spec"]["domain"]["cpu"]["cores"] = json!(0)),
            &[cores, &least(1)],
        ),
        attack(
            "70 disks",
            vm_with(|v| disks(&mut v["spec"], 70, json!({}))),
            &[
                &format!("{disks_field}: Too many: 70"),
                &at_most(MAX_DISKS),
                "spec.volumes: Too many: 70",
                &at_most(MAX_VOLUMES),
            ],
        ),
        attack(
            "a disk naming a missing volume",
            vm_with(|v| first_disk(v)["volumeName"] = json!("missing")),
            &[
                disks_field,
                "every disk's volumeName must be the name of one of spec.volumes",
            ],
        ),
        attack(
            "a volume with two sources",
            vm_with(|v| first_volume(v)["registryDisk"] = json!({"image": "reg.example/a:1"})),
            &["spec.volumes[0]", "a volume needs exactly one source"],
        ),
        attack(
            "bus usb9",
            vm_with(|v| first_disk(v)["disk"]["bus"] = json!("usb9")),
            &[
                "spec.domain.devices.disks[0].disk.bus",
                "Unsupported value: \"usb9\"",
            ],
        ),
        attack(
            "terminationGracePeriodSeconds 9223372036854775807",
            vm_with(|v| v["spec"]["terminationGracePeriodSeconds"] = json!(i64::MAX)),
            &[
                "spec.terminationGracePeriodSeconds",
                &most(MAX_TERMINATION_GRACE_PERIOD_SECONDS),
            ],
        ),
        attack(
            "a 70 KiB userData",
            vm_with(|v| {
                *first_volume(v) =
                    json!({"name": "root", "cloudInitNoCloud": {"userData": "x".repeat(70 * 1024)}})
            }),
            &[
                "spec.volumes[0].cloudInitNoCloud.userData",
                &not_more_than(MAX_USER_DATA_BYTES),
            ],
        ),
        attack(
            "a 600-character image",
            vm_with(|v| {
                let image = format!("reg.example/{}", "a".repeat(600 - 12));
                *first_volume(v) = json!({"name": "root", "registryDisk": {"image": image}})
            }),
            &[
                "spec.volumes[0].registryDisk.image",
                &not_more_than(MAX_IMAGE_REFERENCE_LEN),
            ],
        ),
        attack(
            "a ReplicaSet whose template has 4294967296 cores",
            replica_set_with(|v| v["spec"]["domain"]["cpu"]["cores"] = json!(4_294_967_296u64)),
            &[
                "spec.template.spec.domain.cpu.cores",
                &most(MAX_CORES.into()),
            ],
        ),
        attack(
            "an OfflineVirtualMachine whose template's disk names a missing volume",
            offline_vm_with(|v| first_disk(v)["volumeName"] = json!("missing")),
            &[
                "spec.template.spec.domain.devices.disks",
                "every disk's volumeName must be the name of one of spec.volumes",
            ],
        ),
        attack(
            "a preset with bus usb9",
            preset_with(|d| {
                d["devices"] =
                    json!({"disks": [{"name": "a", "volumeName": "a", "disk": {"bus": "usb9"}}]})
            }),
            &[
                "spec.domain.devices.disks[0].disk.bus",
                "Unsupported value: \"usb9\"",
            ],
        ),
        attack(
            "a preset with 0 cores",
            preset_with(|d| d["cpu"]["cores"] = json!(0)),
            &[cores, &least(1)],
        ),
        // The other bounds, one each.
        attack(
            "a 2-byte character 40000 times in userData (80000 bytes)",
            vm_with(|v| {
                *first_volume(v) =
                    json!({"name": "root", "cloudInitNoCloud": {"userData": "é".repeat(40_000)}})
            }),
            &[
                "spec.volumes[0].cloudInitNoCloud.userData",
                &format!("at most {MAX_USER_DATA_BYTES} bytes"),
            ],
        ),
        attack(
            "userDataBase64 of 64 KiB + 1 byte",
            vm_with(|v| {
                let encoded = base64(&vec![0u8; MAX_USER_DATA_BYTES + 1]);
                *first_volume(v) =
                    json!({"name": "root", "cloudInitNoCloud": {"userDataBase64": encoded}})
            }),
            &[
                "spec.volumes[0].cloudInitNoCloud.userDataBase64",
                &format!("decodes to more than {MAX_USER_DATA_BYTES} bytes"),
            ],
        ),
        attack(
            "userDataBase64 that is not base64",
            vm_with(|v| {
                *first_volume(v) =
                    json!({"name": "root", "cloudInitNoCloud": {"userDataBase64": "not base64!"}})
            }),
            &[
                "spec.volumes[0].cloudInitNoCloud.userDataBase64",
                "should match",
            ],
        ),
        attack(
            "cloud-init with both userData and a secretRef",
            vm_with(
                |v| *first_volume(v) = json!({"name": "root", "cloudInitNoCloud": {"userData": "x", "secretRef": {"name": "s"}}}),
            ),
            &[
                "spec.volumes[0].cloudInitNoCloud",
                "expected exactly one of secretRef, userData or userDataBase64",
            ],
        ),
        attack(
            "memory of 1Ki",
            vm_with(|v| v["spec"]["domain"]["resources"]["requests"]["memory"] = json!("1Ki")),
            &[
                "spec.domain.resources.requests",
                "memory must be a quantity from 1Mi to 16Ti",
            ],
        ),
        attack(
            "memory of 17Ti in limits",
            vm_with(|v| v["spec"]["domain"]["resources"]["limits"] = json!({"memory": "17Ti"})),
            &[
                "spec.domain.resources.limits",
                "memory must be a quantity from 1Mi to 16Ti",
            ],
        ),
        attack(
            "memory that is not a quantity",
            vm_with(|v| v["spec"]["domain"]["resources"]["requests"]["memory"] = json!("lots")),
            &[
                "spec.domain.resources.requests",
                "memory must be a quantity",
            ],
        ),
        attack(
            "a negative cpu request",
            vm_with(|v| v["spec"]["domain"]["resources"]["requests"]["cpu"] = json!("-1")),
            &[
                "spec.domain.resources.requests",
                "cpu must be a quantity of zero or more",
            ],
        ),
        attack(
            "two disks of one name",
            vm_with(|v| {
                disks(&mut v["spec"], 2, json!({}));
                v["spec"]["domain"]["devices"]["disks"][1]["name"] = json!("d0");
            }),
            &[disks_field, "disk names must be unique"],
        ),
        attack(
            "two disks on one volume",
            vm_with(|v| {
                disks(&mut v["spec"], 2, json!({}));
                v["spec"]["domain"]["devices"]["disks"][1]["volumeName"] = json!("v0");
            }),
            &[disks_field, "each volume backs one disk"],
        ),
        attack(
            "two volumes of one name",
            vm_with(|v| {
                disks(&mut v["spec"], 2, json!({}));
                v["spec"]["volumes"][1]["name"] = json!("v0");
            }),
            &["spec.volumes", "volume names must be unique"],
        ),
        attack(
            "a disk name that is not a DNS label",
            vm_with(|v| first_disk(v)["name"] = json!("Root_Disk")),
            &["spec.domain.devices.disks[0].name", "should match"],
        ),
        attack(
            "a claim name of 254 characters",
            vm_with(|v| {
                *first_volume(v) =
                    json!({"name": "root", "persistentVolumeClaim": {"claimName": "a".repeat(254)}})
            }),
            &[
                "spec.volumes[0].persistentVolumeClaim.claimName",
                "may not be more than 253",
            ],
        ),
        attack(
            "an ephemeral volume without its claim",
            vm_with(|v| *first_volume(v) = json!({"name": "root", "ephemeral": {}})),
            &[
                "spec.volumes[0].ephemeral.persistentVolumeClaim",
                "Required value",
            ],
        ),
        attack(
            "an emptyDisk of capacity 0",
            vm_with(|v| first_volume(v)["emptyDisk"]["capacity"] = json!("0")),
            &[
                "spec.volumes[0].emptyDisk.capacity",
                "capacity must be a quantity larger than 0",
            ],
        ),
        attack(
            "a disk that is also a cdrom",
            vm_with(|v| first_disk(v)["cdrom"] = json!({})),
            &[
                "spec.domain.devices.disks[0]",
                "set only one of disk, cdrom, floppy or lun",
            ],
        ),
        attack(
            "a lun on sata",
            vm_with(|v| {
                *first_disk(v) =
                    json!({"name": "root", "volumeName": "root", "lun": {"bus": "sata"}})
            }),
            &[
                "spec.domain.devices.disks[0].lun.bus",
                "Unsupported value: \"sata\"",
            ],
        ),
        attack(
            "a cdrom on virtio",
            vm_with(|v| {
                *first_disk(v) =
                    json!({"name": "root", "volumeName": "root", "cdrom": {"bus": "virtio"}})
            }),
            &[
                "spec.domain.devices.disks[0].cdrom.bus",
                "Unsupported value: \"virtio\"",
            ],
        ),
        attack(
            "a writable cdrom",
            vm_with(|v| {
                *first_disk(v) =
                    json!({"name": "root", "volumeName": "root", "cdrom": {"readonly": false}})
            }),
            &[
                "spec.domain.devices.disks[0].cdrom.readonly",
                "a cdrom is always read-only",
            ],
        ),
        attack(
            "a half-open tray",
            vm_with(|v| {
                *first_disk(v) =
                    json!({"name": "root", "volumeName": "root", "floppy": {"tray": "ajar"}})
            }),
            &[
                "spec.domain.devices.disks[0].floppy.tray",
                "Unsupported value: \"ajar\"",
            ],
        ),
        attack(
            "an ide disk on q35",
            vm_with(|v| {
                v["spec"]["domain"]["machine"] = json!({"type": "q35"});
                first_disk(v)["disk"]["bus"] = json!("ide");
            }),
            &[disks_field, "the q35 machine type has no IDE controller"],
        ),
        attack(
            "one ide disk too many on pc",
            vm_with(|v| {
                v["spec"]["domain"]["machine"] = json!({"type": "pc"});
                disks(
                    &mut v["spec"],
                    MAX_IDE_DISKS + 1,
                    json!({"disk": {"bus": "ide"}}),
                );
            }),
            &[
                disks_field,
                &format!("at most {MAX_IDE_DISKS} disks on the ide bus"),
            ],
        ),
        attack(
            "one floppy too many",
            vm_with(|v| disks(&mut v["spec"], MAX_FLOPPY_DISKS + 1, json!({"floppy": {}}))),
            &[disks_field, &format!("at most {MAX_FLOPPY_DISKS} floppies")],
        ),
        attack(
            "a tickPolicy of its own",
            vm_with(|v| {
                v["spec"]["domain"]["clock"] = json!({"timer": {"rtc": {"tickPolicy": "skip"}}})
            }),
            &[
                "spec.domain.clock.timer.rtc.tickPolicy",
                "Unsupported value: \"skip\"",
            ],
        ),
        attack(
            "an rtc track of its own",
            vm_with(|v| {
                v["spec"]["domain"]["clock"] = json!({"timer": {"rtc": {"track": "moon"}}})
            }),
            &[
                "spec.domain.clock.timer.rtc.track",
                "Unsupported value: \"moon\"",
            ],
        ),
        attack(
            "a watchdog action of its own",
            vm_with(|v| {
                v["spec"]["domain"]["watchdog"] =
                    json!({"name": "w", "i6300esb": {"action": "explode"}})
            }),
            &[
                "spec.domain.watchdog.i6300esb.action",
                "Unsupported value: \"explode\"",
            ],
        ),
        attack(
            "a watchdog in both places",
            vm_with(|v| {
                v["spec"]["domain"]["watchdog"] = json!({"i6300esb": {}});
                v["spec"]["domain"]["devices"]["watchdog"] = json!({"i6300esb": {}});
            }),
            &["spec.domain", "set the watchdog in one place"],
        ),
        attack(
            "both timezone and utc",
            vm_with(|v| {
                v["spec"]["domain"]["clock"] = json!({"timezone": "Europe/Paris", "utc": {}})
            }),
            &["spec.domain.clock", "set either timezone or utc, not both"],
        ),
        attack(
            "a clock 100 years and a second off",
            vm_with(|v| {
                v["spec"]["domain"]["clock"] =
                    json!({"utc": {"offsetSeconds": -MAX_CLOCK_OFFSET_SECONDS - 1}})
            }),
            &[
                "spec.domain.clock.utc.offsetSeconds",
                &least(-MAX_CLOCK_OFFSET_SECONDS),
            ],
        ),
        attack(
            "a timezone that climbs out of zoneinfo",
            vm_with(|v| v["spec"]["domain"]["clock"] = json!({"timezone": "../../etc/passwd"})),
            &["spec.domain.clock.timezone", "should match"],
        ),
        attack(
            "a machine type one character too long",
            vm_with(|v| {
                v["spec"]["domain"]["machine"] =
                    json!({"type": "q".repeat(MAX_MACHINE_TYPE_LEN + 1)})
            }),
            &[
                "spec.domain.machine.type",
                &not_more_than(MAX_MACHINE_TYPE_LEN),
            ],
        ),
        attack(
            "too few spinlock retries",
            vm_with(|v| {
                v["spec"]["domain"]["features"] =
                    json!({"hyperv": {"spinlocks": {"spinlocks": 100}}})
            }),
            &[
                "spec.domain.features.hyperv.spinlocks.spinlocks",
                &least(4095),
            ],
        ),
        attack(
            "a 13-character vendor id",
            vm_with(|v| {
                v["spec"]["domain"]["features"] =
                    json!({"hyperv": {"vendorid": {"vendorid": "x".repeat(13)}}})
            }),
            &[
                "spec.domain.features.hyperv.vendorid.vendorid",
                &not_more_than(12),
            ],
        ),
        attack(
            "a preferred node-affinity weight of 0",
            vm_with(|v| {
                v["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 0, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
                ]}})
            }),
            &[
                "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
                &least(1),
            ],
        ),
        attack(
            "a VM name with a dot",
            vm_with(|v| v["metadata"]["name"] = json!("attack.vm")),
            &["metadata.name", "should match"],
        ),
        attack(
            "a ReplicaSet name too long for its VMs' names",
            {
                let mut rs = replica_set_with(|_| {});
                rs["metadata"]["name"] =
                    json!("r".repeat(DNS_LABEL_MAX_LEN - GENERATED_NAME_SUFFIX_LEN + 1));
                rs
            },
            &[
                "metadata.name",
                &not_more_than(DNS_LABEL_MAX_LEN - GENERATED_NAME_SUFFIX_LEN),
            ],
        ),
        attack(
            "a negative replica count",
            {
                let mut rs = replica_set_with(|_| {});
                rs["spec"]["replicas"] = json!(-1);
                rs
            },
            &["spec.replicas", &least(0)],
        ),
    ]
}

#[test]
fn every_attack_is_refused_naming_its_field() {
    let cluster = Cluster::get();
    for (what, base) in [
        ("the VM every attack starts from", vm()),
        ("the OfflineVirtualMachine", offline_vm_with(|_| {})),
        ("the ReplicaSet", replica_set_with(|_| {})),
        ("the preset", preset_with(|_| {})),
    ] {
        accepted(cluster, what, &base);
    }
    let mut failures = Vec::new();
    for attack in attacks() {
        let out = dry_run(cluster, &attack.object);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted", attack.name));
        } else if let Some(missing) = attack.says.iter().find(|s| !stderr.contains(s.as_str())) {
            failures.push(format!(
                "{}: refused, but the error does not say {missing:?}:\n{stderr}",
                attack.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
