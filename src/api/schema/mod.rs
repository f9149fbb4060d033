//! The bounds the CRD schemas carry beyond the shape of the types, so that the apiserver
//! refuses a bad VirtualMachine, template or preset at `kubectl apply`, naming the field, as
//! KubeVirt's validating webhook did. (The apiserver enforces `minimum`, `maximum`,
//! `maxItems`, `maxLength`, `pattern`, `enum` and CEL rules; it does not enforce `format`:
//! `format: uint32` let `cores: 4294967296` through.)
//!
//! 1. Each bound sits on the field it guards in `api/*.rs`, as a schemars attribute: `range`
//!    (integers), `length` (`maxLength` of strings, `maxItems` of lists), `pattern`,
//!    `extend("enum" = ...)`, and `extend("x-kubernetes-validations" = [rule(...), ...])` for
//!    CEL rules (struct-level for rules that relate the struct's fields).
//! 2. Every number comes from `domain::limits` and every enumerated value from
//!    `domain::values`: the constants the renderer checks against, so the schema and the
//!    renderer refuse the same values. Rule texts are formatted from them in code.
//! 3. CEL rules guard every optional field with `has()` (a null one is absent to `has()`), and
//!    every list and string they walk is bounded by `maxItems`/`maxLength`, which keeps the
//!    apiserver's cost estimate of the rules under its budget.
//! 4. A VirtualMachinePreset holds a partial `spec.domain`, merged into a VM's leaf by leaf, the
//!    VM's own leaves winning (`api/preset.rs`). So the domain types carry only the
//!    bounds that hold for any such merge: one value's range, one list's items. Rules that
//!    relate the domain to `spec.volumes`, or that one object's leaf could make true or false in
//!    the merge, sit on [`super::VirtualMachineSpec`] (VMs and the templates of
//!    OfflineVirtualMachine and VirtualMachineReplicaSet), or are left to the renderer.
//!
//! [`patterns`] holds the regular expressions of string fields, each the renderer's (or the
//! agent's) own check as the apiserver runs it; this module the CEL helpers and the bounds
//! added to whole schemas.

pub mod patterns;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::core::{Message, Rule};
use schemars::Schema;
use serde_json::json;

use crate::domain::limits::DNS_LABEL_MAX_LEN;
use patterns::DNS_LABEL_PATTERN;

/// A CEL rule for `x-kubernetes-validations`, refused with `message`.
pub fn rule(cel: impl Into<String>, message: impl Into<String>) -> Rule {
    Rule::new(cel.into()).message(Message::Message(message.into()))
}

/// A CEL rule that `list` (a CEL expression) has no two items with the same `key`, refused
/// with `message`. Quadratic, which `maxItems` keeps small. (Not `reason:
/// FieldValueDuplicate`: the apiserver then prints `Duplicate value: "array"` without the
/// message.)
pub fn unique(list: &str, key: &str, message: impl Into<String>) -> Rule {
    rule(
        format!("{list}.all(a, {list}.exists_one(b, b.{key} == a.{key}))"),
        message,
    )
}

/// `bytes` as a Kubernetes quantity with the largest binary suffix that divides it ("1Mi",
/// "16Ti"), for messages.
pub fn binary_quantity(bytes: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    for (i, suffix) in SUFFIXES.iter().enumerate() {
        let unit = 1u64 << (10 * (SUFFIXES.len() - i));
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// CEL: the int-or-string `expr` is a quantity from `min` to `max` (inclusive), compared
/// exactly, as the renderer compares whole bytes.
pub fn quantity_between(expr: &str, min: u64, max: u64) -> String {
    let q = format!("quantity(string({expr}))");
    format!(
        "isQuantity(string({expr})) && {q}.compareTo(quantity('{min}')) >= 0 && {q}.compareTo(quantity('{max}')) <= 0"
    )
}

/// The weight of a preferred node-affinity term, as Kubernetes validates it for pods (the VM's
/// holder pod carries the VM's affinity).
pub const NODE_AFFINITY_WEIGHT: (i32, i32) = (1, 100);

/// schemars transform for a `NodeAffinity` field: k8s-openapi's schema of it says "in the range
/// 1-100" of a preferred term's weight only in words; this makes it `minimum`/`maximum`.
pub fn bound_node_affinity(schema: &mut Schema) {
    let weight = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("preferredDuringSchedulingIgnoredDuringExecution"))
        .and_then(|p| p.get_mut("items"))
        .and_then(|i| i.get_mut("properties"))
        .and_then(|p| p.get_mut("weight"))
        .and_then(|w| w.as_object_mut());
    if let Some(weight) = weight {
        let (min, max) = NODE_AFFINITY_WEIGHT;
        weight.insert("minimum".into(), json!(min));
        weight.insert("maximum".into(), json!(max));
    }
}

/// Bounds `metadata.name` of the objects of `crd` to a DNS label of at most `max_len`
/// characters. The one part of metadata a CRD may restrict, and only at the root of its
/// schema, which kube's derive leaves without `metadata`; so it is added here, to the CRD.
pub fn bound_name(mut crd: CustomResourceDefinition, max_len: usize) -> CustomResourceDefinition {
    debug_assert!(max_len <= DNS_LABEL_MAX_LEN);
    let name = JSONSchemaProps {
        type_: Some("string".into()),
        max_length: Some(max_len as i64),
        pattern: Some(DNS_LABEL_PATTERN.into()),
        ..Default::default()
    };
    let metadata = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some([("name".to_string(), name)].into()),
        ..Default::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.properties
                .get_or_insert_default()
                .insert("metadata".into(), metadata.clone());
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::api::replica_set::GENERATED_NAME_SUFFIX_LEN;
    use crate::domain::limits::*;
    use crate::domain::values::*;

    /// The root schema of each CRD, by kind.
    fn schemas() -> Vec<(String, Value)> {
        crate::api::crds()
            .into_iter()
            .map(|crd| {
                let schema = crd.spec.versions[0].schema.clone().unwrap();
                (
                    crd.spec.names.kind,
                    serde_json::to_value(schema.open_api_v3_schema.unwrap()).unwrap(),
                )
            })
            .collect()
    }

    /// The schema of the field at `path` (dot-separated; `[]` after a name for its items).
    fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
        let mut here = schema;
        for part in path.split('.') {
            let (name, items) = match part.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (part, false),
            };
            here = &here["properties"][name];
            if items {
                here = &here["items"];
            }
            assert!(!here.is_null(), "no {part} in {path}");
        }
        here
    }

    /// Where each kind carries a VM's spec and a domain.
    fn spec_and_domain_paths(kind: &str) -> (Option<&'static str>, &'static str) {
        match kind {
            "VirtualMachine" => (Some("spec"), "spec.domain"),
            "OfflineVirtualMachine" | "VirtualMachineReplicaSet" => {
                (Some("spec.template.spec"), "spec.template.spec.domain")
            }
            "VirtualMachinePreset" => (None, "spec.domain"),
            other => panic!("unknown kind {other}"),
        }
    }

    fn rules(schema: &Value) -> Vec<&str> {
        schema["x-kubernetes-validations"]
            .as_array()
            .map(|r| r.iter().map(|r| r["rule"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_bounds_are_the_renderers_limits_wherever_a_domain_is() {
        let schemas = schemas();
        assert_eq!(schemas.len(), 4);
        for (kind, schema) in &schemas {
            let (spec, domain) = spec_and_domain_paths(kind);
            let domain_at = |path: &str| at(schema, &format!("{domain}.{path}"));
            let cores = domain_at("cpu.cores");
            assert_eq!(cores["minimum"], 1.0, "{kind}");
            assert_eq!(cores["maximum"], f64::from(MAX_CORES), "{kind}");
            let disks = domain_at("devices.disks");
            assert_eq!(disks["maxItems"], MAX_DISKS, "{kind}");
            assert!(
                rules(disks)
                    .iter()
                    .any(|r| r.ends_with(&format!("<= {MAX_IDE_DISKS}"))),
                "{kind}"
            );
            assert!(
                rules(disks)
                    .iter()
                    .any(|r| r.ends_with(&format!("<= {MAX_FLOPPY_DISKS}"))),
                "{kind}"
            );
            for (path, values) in [
                ("devices.disks[].disk.bus", DISK_BUSES),
                ("devices.disks[].lun.bus", LUN_BUSES),
                ("devices.disks[].cdrom.bus", CDROM_BUSES),
                ("devices.disks[].cdrom.tray", TRAY_STATES),
                ("devices.disks[].floppy.tray", TRAY_STATES),
                ("clock.timer.hpet.tickPolicy", TICK_POLICIES),
                ("clock.timer.pit.tickPolicy", TICK_POLICIES),
                ("clock.timer.rtc.tickPolicy", TICK_POLICIES),
                ("clock.timer.rtc.track", RTC_TRACKS),
                ("watchdog.i6300esb.action", WATCHDOG_ACTIONS),
                ("devices.watchdog.i6300esb.action", WATCHDOG_ACTIONS),
            ] {
                assert_eq!(
                    domain_at(path)["enum"],
                    serde_json::json!(values),
                    "{kind} {path}"
                );
            }
            for (path, max) in [
                ("devices.disks[].name", DNS_LABEL_MAX_LEN),
                ("devices.disks[].volumeName", DNS_LABEL_MAX_LEN),
                ("machine.type", MAX_MACHINE_TYPE_LEN),
                ("clock.timezone", MAX_TIMEZONE_LEN),
                ("features.hyperv.vendorid.vendorid", MAX_VENDOR_ID_LEN),
            ] {
                assert_eq!(domain_at(path)["maxLength"], max, "{kind} {path}");
            }
            let offset = domain_at("clock.utc.offsetSeconds");
            assert_eq!(offset["maximum"], MAX_CLOCK_OFFSET_SECONDS as f64, "{kind}");
            assert_eq!(
                offset["minimum"], -MAX_CLOCK_OFFSET_SECONDS as f64,
                "{kind}"
            );
            let spinlocks = domain_at("features.hyperv.spinlocks.spinlocks");
            assert_eq!(
                spinlocks["minimum"],
                f64::from(MIN_SPINLOCK_RETRIES),
                "{kind}"
            );
            let memory = rules(domain_at("resources.requests"))[0];
            for bound in [MIN_MEMORY_BYTES, MAX_MEMORY_BYTES] {
                assert!(memory.contains(&format!("quantity('{bound}')")), "{memory}");
            }

            // Only a whole VM spec relates disks to volumes.
            let Some(spec) = spec else { continue };
            let spec_at = |path: &str| at(schema, &format!("{spec}.{path}"));
            assert_eq!(spec_at("volumes")["maxItems"], MAX_VOLUMES, "{kind}");
            let grace = spec_at("terminationGracePeriodSeconds");
            assert_eq!(grace["minimum"], 0.0, "{kind}");
            assert_eq!(
                grace["maximum"], MAX_TERMINATION_GRACE_PERIOD_SECONDS as f64,
                "{kind}"
            );
            for (path, max) in [
                ("volumes[].name", DNS_LABEL_MAX_LEN),
                ("volumes[].cloudInitNoCloud.userData", MAX_USER_DATA_BYTES),
                (
                    "volumes[].cloudInitNoCloud.secretRef.name",
                    DNS_SUBDOMAIN_MAX_LEN,
                ),
                (
                    "volumes[].persistentVolumeClaim.claimName",
                    DNS_SUBDOMAIN_MAX_LEN,
                ),
                (
                    "volumes[].ephemeral.persistentVolumeClaim.claimName",
                    DNS_SUBDOMAIN_MAX_LEN,
                ),
                ("volumes[].registryDisk.image", MAX_IMAGE_REFERENCE_LEN),
                (
                    "volumes[].registryDisk.imagePullSecret",
                    DNS_SUBDOMAIN_MAX_LEN,
                ),
                ("volumes[].emptyDisk.capacity", MAX_QUANTITY_LEN),
            ] {
                assert_eq!(spec_at(path)["maxLength"], max, "{kind} {path}");
            }
            let user_data = rules(spec_at("volumes[].cloudInitNoCloud.userData"));
            assert_eq!(
                user_data,
                [format!("size(bytes(self)) <= {MAX_USER_DATA_BYTES}")]
            );
            let base64 = rules(spec_at("volumes[].cloudInitNoCloud.userDataBase64"));
            assert!(base64[0].ends_with(&format!("<= {MAX_USER_DATA_BYTES}")));
            assert!(
                rules(at(schema, spec))
                    .iter()
                    .any(|r| r.contains("self.volumes.exists(v, v.name == d.volumeName)")),
                "{kind}: no rule that disks name volumes"
            );
        }
    }

    /// Every CEL rule anywhere in `schema`.
    fn all_rules(schema: &Value, out: &mut Vec<String>) {
        match schema {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "x-kubernetes-validations" {
                        out.extend(rules(schema).iter().map(|r| r.to_string()));
                    } else {
                        all_rules(value, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| all_rules(i, out)),
            _ => {}
        }
    }

    #[test]
    fn a_preset_has_no_rules_that_need_a_whole_vm() {
        let (_, preset) = schemas()
            .into_iter()
            .find(|(kind, _)| kind == "VirtualMachinePreset")
            .unwrap();
        let mut preset_rules = Vec::new();
        all_rules(&preset, &mut preset_rules);
        assert!(preset_rules.len() >= 8, "{preset_rules:?}");
        for rule in &preset_rules {
            assert!(
                !rule.contains("self.volumes") && !rule.contains("machine.type"),
                "{rule}"
            );
        }
        assert!(preset["properties"].get("metadata").is_none());
    }

    #[test]
    fn names_are_labels_short_enough_for_the_vms_named_after_them() {
        for (kind, schema) in schemas() {
            let name = &schema["properties"]["metadata"]["properties"]["name"];
            let max = match kind.as_str() {
                "VirtualMachine" | "OfflineVirtualMachine" => DNS_LABEL_MAX_LEN,
                "VirtualMachineReplicaSet" => DNS_LABEL_MAX_LEN - GENERATED_NAME_SUFFIX_LEN,
                _ => continue,
            };
            assert_eq!(name["maxLength"], max, "{kind}");
            assert_eq!(name["pattern"], DNS_LABEL_PATTERN, "{kind}");
        }
    }

    #[test]
    fn node_affinity_weights_are_bounded() {
        for (kind, schema) in schemas() {
            let Some(spec) = spec_and_domain_paths(&kind).0 else {
                continue;
            };
            let weight = at(
                &schema,
                &format!(
                    "{spec}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[].weight"
                ),
            );
            assert_eq!(weight["minimum"], 1.0, "{kind}");
            assert_eq!(weight["maximum"], 100.0, "{kind}");
        }
    }

    #[test]
    fn quantities_in_messages() {
        assert_eq!(binary_quantity(MIN_MEMORY_BYTES), "1Mi");
        assert_eq!(binary_quantity(MAX_MEMORY_BYTES), "16Ti");
        assert_eq!(binary_quantity(1536), "1536");
        assert_eq!(binary_quantity(0), "0");
        assert_eq!(binary_quantity(3 << 30), "3Gi");
    }
}
