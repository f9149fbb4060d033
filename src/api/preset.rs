//! The VirtualMachinePreset kind, a partial DomainSpec, and how it is merged into the
//! spec.domain of matching new VMs. Pure; the controller applies presets on admission,
//! `nodevirt render` offline.
//!
//! 1. Presets whose selector matches the VM's labels apply, in name order.
//! 2. Each preset's domain is walked down to its leaves (objects are descended into; scalars
//!    and lists are leaves). A leaf the VM sets itself is kept: the VM wins.
//! 3. A leaf two presets set to different values is a conflict naming both presets; the VM
//!    must then be fixed (or one preset), and nothing is merged.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::VirtualMachine;
use super::domain_spec::DomainSpec;
use super::selector::{SelectorError, matches};

/// Annotation prefix recording that a preset was applied to a VM.
pub const PRESET_ANNOTATION_PREFIX: &str = "virtualmachinepreset.kubevirt.io/";

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1alpha1",
    kind = "VirtualMachinePreset",
    namespaced,
    shortname = "vmpreset",
    shortname = "vmpresets",
    category = "all",
    category = "kubevirt",
    doc = "Settings merged into the spec.domain of every new VM its selector matches.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachinePresetSpec {
    /// VMs whose labels match; without a selector the preset applies to every VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    #[error("presets {first:?} and {second:?} both set spec.domain.{field} to different values")]
    Conflict {
        field: String,
        first: String,
        second: String,
    },
    #[error("preset {preset:?}: invalid selector")]
    Selector {
        preset: String,
        #[source]
        source: SelectorError,
    },
    #[error("preset {preset:?}: its domain does not fit a VM's spec.domain")]
    Shape {
        preset: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The presets that apply to `vm`, sorted by name.
pub fn matching<'a>(
    vm: &VirtualMachine,
    presets: &'a [VirtualMachinePreset],
) -> Result<Vec<&'a VirtualMachinePreset>, PresetError> {
    let labels = vm.metadata.labels.clone().unwrap_or_default();
    let mut out = Vec::new();
    for preset in presets {
        let name = preset.metadata.name.clone().unwrap_or_default();
        let selected = match &preset.spec.selector {
            None => true,
            Some(selector) => matches(selector, &labels, "spec.selector").map_err(|source| {
                PresetError::Selector {
                    preset: name,
                    source,
                }
            })?,
        };
        if selected {
            out.push(preset);
        }
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(out)
}

/// Returns `vm` with every matching preset merged into spec.domain and recorded in an
/// annotation `virtualmachinepreset.kubevirt.io/<name>: kubevirt.io/v1alpha1`.
pub fn apply(
    vm: &VirtualMachine,
    presets: &[VirtualMachinePreset],
) -> Result<VirtualMachine, PresetError> {
    let applicable = matching(vm, presets)?;
    let own = to_value(&vm.spec.domain);
    let mut merged = own.clone();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for preset in &applicable {
        let name = preset.metadata.name.clone().unwrap_or_default();
        let Some(domain) = &preset.spec.domain else {
            continue;
        };
        let mut leaves = Vec::new();
        collect_leaves(&to_value(domain), String::new(), &mut leaves);
        for (path, value) in leaves {
            if lookup(&own, &path).is_some() {
                continue;
            }
            if let Some(first) = owners.get(&path) {
                if lookup(&merged, &path) != Some(&value) {
                    return Err(PresetError::Conflict {
                        field: path,
                        first: first.clone(),
                        second: name,
                    });
                }
                continue;
            }
            insert(&mut merged, &path, value);
            owners.insert(path, name.clone());
        }
    }
    let mut out = vm.clone();
    out.spec.domain = serde_json::from_value(merged).map_err(|source| PresetError::Shape {
        preset: applicable
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        source,
    })?;
    let annotations = out
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for preset in applicable {
        let name = preset.metadata.name.clone().unwrap_or_default();
        annotations.insert(
            format!("{PRESET_ANNOTATION_PREFIX}{name}"),
            "kubevirt.io/v1alpha1".to_string(),
        );
    }
    Ok(out)
}

fn to_value(domain: &DomainSpec) -> Value {
    // A DomainSpec is plain data with string keys: serializing it cannot fail.
    serde_json::to_value(domain).unwrap_or(Value::Object(Map::new()))
}

fn collect_leaves(value: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                collect_leaves(child, child_path, out);
            }
        }
        _ if path.is_empty() => {}
        leaf => out.push((path, leaf.clone())),
    }
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

fn insert(root: &mut Value, path: &str, leaf: Value) {
    let mut keys: Vec<&str> = path.split('.').collect();
    let Some(last) = keys.pop() else { return };
    let mut node = root;
    for key in keys {
        let Some(map) = node.as_object_mut() else {
            return;
        };
        node = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(map) = node.as_object_mut() {
        map.insert(last.to_string(), leaf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachineSpec;

    fn vm(labels: &[(&str, &str)], domain: &str) -> VirtualMachine {
        let mut vm = VirtualMachine::new(
            "vm",
            VirtualMachineSpec {
                domain: serde_yaml::from_str(domain).unwrap(),
                ..Default::default()
            },
        );
        vm.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        vm
    }

    fn preset(name: &str, size: Option<&str>, domain: &str) -> VirtualMachinePreset {
        let selector = size.map(|s| {
            serde_yaml::from_str(&format!("matchLabels: {{kubevirt.io/size: {s}}}")).unwrap()
        });
        VirtualMachinePreset::new(
            name,
            VirtualMachinePresetSpec {
                selector,
                domain: Some(serde_yaml::from_str(domain).unwrap()),
            },
        )
    }

    #[test]
    fn matching_preset_fills_what_the_vm_leaves_unset() {
        let small = preset(
            "m1.small",
            Some("small"),
            "{resources: {requests: {memory: 64M}}, cpu: {cores: 2}}",
        );
        let vm = vm(&[("kubevirt.io/size", "small")], "{cpu: {cores: 4}}");
        let out = apply(&vm, &[small]).unwrap();
        assert_eq!(
            out.spec.domain.cpu.unwrap().cores,
            Some(4),
            "the VM's own value wins"
        );
        assert_eq!(
            out.spec.domain.resources.unwrap().requests["memory"].0,
            "64M"
        );
        assert_eq!(
            out.metadata.annotations.unwrap()["virtualmachinepreset.kubevirt.io/m1.small"],
            "kubevirt.io/v1alpha1"
        );
    }

    #[test]
    fn non_matching_preset_changes_nothing() {
        let large = preset("m1.large", Some("large"), "{cpu: {cores: 8}}");
        let vm = vm(&[("kubevirt.io/size", "small")], "{}");
        let out = apply(&vm, &[large]).unwrap();
        assert_eq!(out.spec.domain, DomainSpec::default());
        assert!(out.metadata.annotations.unwrap_or_default().is_empty());
    }

    #[test]
    fn two_presets_disagreeing_is_a_conflict_naming_both() {
        let a = preset("a", None, "{cpu: {cores: 2}}");
        let b = preset("b", None, "{cpu: {cores: 3}}");
        let err = apply(&vm(&[], "{}"), &[b, a]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "presets \"a\" and \"b\" both set spec.domain.cpu.cores to different values"
        );
    }

    #[test]
    fn two_presets_agreeing_is_fine() {
        let a = preset("a", None, "{cpu: {cores: 2}, machine: {type: pc}}");
        let b = preset("b", None, "{cpu: {cores: 2}}");
        let out = apply(&vm(&[], "{}"), &[a, b]).unwrap();
        assert_eq!(out.spec.domain.machine.unwrap().machine_type, "pc");
        assert_eq!(out.metadata.annotations.unwrap().len(), 2);
    }
}
