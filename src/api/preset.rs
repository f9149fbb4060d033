//! The VirtualMachinePreset kind, a partial DomainSpec, and how it is merged into the
//! spec.domain of matching new VMs. Pure; the controller applies presets before it hands a
//! VM over, `nodevirt render` offline. As KubeVirt v0.6 (virt-controller's preset.go), with
//! one deliberate difference: settings are compared and merged leaf by leaf, not by whole
//! sections, so a preset setting `cpu.cores` and one setting `cpu.model` do not conflict.
//!
//! 1. A VM annotated `virtualmachinepresets.admission.kubevirt.io/exclude: "true"`, or one
//!    already marked `presets.virtualmachines.kubevirt.io/presets-applied`, gets no preset:
//!    presets apply once, to new VMs.
//! 2. Presets whose selector matches the VM's labels apply, in name order; one with an
//!    invalid selector is skipped with a notice.
//! 3. Each preset's domain is walked down to its leaves (objects are descended into; scalars
//!    and lists are leaves). Two presets setting a leaf to different values conflict, whatever
//!    the VM sets: none is applied, and the VM fails.
//! 4. A leaf the VM sets itself keeps the VM's value; a different preset value is a notice
//!    (`Override`). A preset is recorded in the annotation
//!    `virtualmachinepreset.kubevirt.io/<name>: kubevirt.io/v1alpha1` only when it applied
//!    something (a leaf it filled or the VM already had).

use std::fmt;

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
/// Marks a VM whose presets were looked at: they are never applied again.
pub const PRESETS_APPLIED_ANNOTATION: &str = "presets.virtualmachines.kubevirt.io/presets-applied";
/// `"true"` keeps every preset off a VM.
pub const EXCLUDE_ANNOTATION: &str = "virtualmachinepresets.admission.kubevirt.io/exclude";
const API_VERSION: &str = "kubevirt.io/v1alpha1";

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

/// A field a preset sets to another value than the VM (or another preset) does.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// From spec.domain down, e.g. `spec.domain.cpu.cores`.
    pub field: String,
    pub ours: Value,
    pub theirs: Value,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} != {}",
            self.field,
            plain(&self.ours),
            plain(&self.theirs)
        )
    }
}

/// Two matching presets that disagree on at least one field.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub preset: String,
    pub other: String,
    pub differences: Vec<Difference>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "presets '{}' and '{}' conflict: {}",
            self.preset,
            self.other,
            joined(&self.differences)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    #[error("VirtualMachinePresets cannot be applied due to conflicts: {}", joined(.0))]
    Conflicts(Vec<Conflict>),
    #[error("VirtualMachinePresets {presets}: their domain does not fit a VM's spec.domain")]
    Shape {
        presets: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What a user is told about a merge that went through (an event each in the cluster).
#[derive(Debug)]
pub enum Notice {
    /// The VM's own values kept some (`applied_some`) or all of a preset's settings out.
    Override {
        preset: String,
        applied_some: bool,
        differences: Vec<Difference>,
    },
    /// A preset whose selector cannot be evaluated was skipped.
    InvalidSelector {
        preset: String,
        error: SelectorError,
    },
}

impl Notice {
    /// Kubernetes event reasons, as KubeVirt v0.6 records them.
    pub const OVERRIDE: &str = "Override";
    pub const PRESET_FAILED: &str = "PresetFailed";

    pub fn reason(&self) -> &'static str {
        match self {
            Notice::Override { .. } => Self::OVERRIDE,
            Notice::InvalidSelector { .. } => Self::PRESET_FAILED,
        }
    }

    /// An Override is a Normal event (the VM got what it asked for); the rest warn.
    pub fn is_warning(&self) -> bool {
        !matches!(self, Notice::Override { .. })
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Override {
                preset,
                applied_some: true,
                differences,
            } => write!(
                f,
                "Some settings were not applied for VirtualMachinePreset '{preset}': {}",
                joined(differences)
            ),
            Notice::Override {
                preset,
                differences,
                ..
            } => write!(
                f,
                "Unable to apply VirtualMachinePreset '{preset}': {}",
                joined(differences)
            ),
            Notice::InvalidSelector { preset, error } => {
                write!(f, "Invalid Preset '{preset}': {error}")
            }
        }
    }
}

/// The VM with its presets merged and marked, and what to tell about it.
#[derive(Debug)]
pub struct Merged {
    pub vm: VirtualMachine,
    pub notices: Vec<Notice>,
}

/// Merges the presets matching `vm` (out of its namespace's `presets`) into its spec.domain.
pub fn apply(vm: &VirtualMachine, presets: &[VirtualMachinePreset]) -> Result<Merged, PresetError> {
    let mut out = vm.clone();
    let annotations = out
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    let excluded = annotations.get(EXCLUDE_ANNOTATION).map(String::as_str) == Some("true");
    if excluded || annotations.contains_key(PRESETS_APPLIED_ANNOTATION) {
        annotations.insert(PRESETS_APPLIED_ANNOTATION.into(), API_VERSION.into());
        return Ok(Merged {
            vm: out,
            notices: Vec::new(),
        });
    }
    let (applicable, mut notices) = matching(vm, presets);
    let conflicts = conflicts(&applicable);
    if !conflicts.is_empty() {
        return Err(PresetError::Conflicts(conflicts));
    }
    let own = to_value(&vm.spec.domain);
    let mut merged = own.clone();
    let mut applied = Vec::new();
    for (name, leaves) in &applicable {
        let mut applied_some = false;
        let mut differences = Vec::new();
        for (path, value) in leaves {
            match lookup(&own, path) {
                None => {
                    insert(&mut merged, path, value.clone());
                    applied_some = true;
                }
                Some(mine) if mine == value => applied_some = true,
                Some(mine) => differences.push(Difference {
                    field: format!("spec.domain.{path}"),
                    ours: value.clone(),
                    theirs: mine.clone(),
                }),
            }
        }
        if !differences.is_empty() {
            notices.push(Notice::Override {
                preset: name.clone(),
                applied_some,
                differences,
            });
        }
        if applied_some {
            applied.push(name.clone());
        }
    }
    out.spec.domain = serde_json::from_value(merged).map_err(|source| PresetError::Shape {
        presets: applied.join(", "),
        source,
    })?;
    let annotations = out
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for name in applied {
        annotations.insert(
            format!("{PRESET_ANNOTATION_PREFIX}{name}"),
            API_VERSION.into(),
        );
    }
    annotations.insert(PRESETS_APPLIED_ANNOTATION.into(), API_VERSION.into());
    Ok(Merged { vm: out, notices })
}

/// A preset's name and the leaves of its domain.
type Leaves = (String, Vec<(String, Value)>);

/// The presets that apply to `vm`, sorted by name, with a notice for each one skipped.
fn matching(vm: &VirtualMachine, presets: &[VirtualMachinePreset]) -> (Vec<Leaves>, Vec<Notice>) {
    let labels = vm.metadata.labels.clone().unwrap_or_default();
    let mut sorted: Vec<&VirtualMachinePreset> = presets.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut applicable = Vec::new();
    let mut notices = Vec::new();
    for preset in sorted {
        let name = preset.metadata.name.clone().unwrap_or_default();
        let selected = match &preset.spec.selector {
            None => true,
            Some(selector) => match matches(selector, &labels, "spec.selector") {
                Ok(selected) => selected,
                Err(error) => {
                    notices.push(Notice::InvalidSelector {
                        preset: name,
                        error,
                    });
                    continue;
                }
            },
        };
        if selected {
            let mut leaves = Vec::new();
            if let Some(domain) = &preset.spec.domain {
                collect_leaves(&to_value(domain), String::new(), &mut leaves);
            }
            applicable.push((name, leaves));
        }
    }
    (applicable, notices)
}

/// Every pair of presets that set a leaf to different values; the later preset is named first.
fn conflicts(presets: &[Leaves]) -> Vec<Conflict> {
    let mut out = Vec::new();
    for (i, (name, leaves)) in presets.iter().enumerate() {
        for (other, other_leaves) in &presets[..i] {
            let differences: Vec<Difference> = leaves
                .iter()
                .filter_map(|(path, value)| {
                    let (_, theirs) = other_leaves.iter().find(|(p, _)| p == path)?;
                    (theirs != value).then(|| Difference {
                        field: format!("spec.domain.{path}"),
                        ours: value.clone(),
                        theirs: theirs.clone(),
                    })
                })
                .collect();
            if !differences.is_empty() {
                out.push(Conflict {
                    preset: name.clone(),
                    other: other.clone(),
                    differences,
                });
            }
        }
    }
    out
}

fn joined<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A value as a user wrote it: strings without JSON quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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

    fn preset_names(vm: &VirtualMachine) -> Vec<String> {
        let annotations = vm.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations[PRESETS_APPLIED_ANNOTATION], API_VERSION,
            "every VM looked at is marked"
        );
        annotations
            .keys()
            .filter_map(|k| k.strip_prefix(PRESET_ANNOTATION_PREFIX).map(String::from))
            .collect()
    }

    #[test]
    fn matching_preset_fills_what_the_vm_leaves_unset_and_says_what_it_kept() {
        let small = preset(
            "m1.small",
            Some("small"),
            "{resources: {requests: {memory: 64M}}, cpu: {cores: 2}}",
        );
        let vm = vm(&[("kubevirt.io/size", "small")], "{cpu: {cores: 4}}");
        let Merged { vm: out, notices } = apply(&vm, &[small]).unwrap();
        assert_eq!(
            out.spec.domain.cpu.clone().unwrap().cores,
            Some(4),
            "the VM's own value wins"
        );
        assert_eq!(
            out.spec.domain.resources.clone().unwrap().requests["memory"].0,
            "64M"
        );
        assert_eq!(preset_names(&out), ["m1.small"]);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason(), "Override");
        assert!(!notices[0].is_warning());
        assert_eq!(
            notices[0].to_string(),
            "Some settings were not applied for VirtualMachinePreset 'm1.small': \
             spec.domain.cpu.cores: 2 != 4"
        );
    }

    #[test]
    fn a_preset_the_vm_overrides_entirely_is_not_recorded_as_applied() {
        let big = preset("big", None, "{cpu: {cores: 8}, machine: {type: q35}}");
        let vm = vm(&[], "{cpu: {cores: 1}, machine: {type: pc}}");
        let Merged { vm: out, notices } = apply(&vm, &[big]).unwrap();
        assert_eq!(out.spec.domain, vm.spec.domain);
        assert!(preset_names(&out).is_empty());
        assert_eq!(
            notices[0].to_string(),
            "Unable to apply VirtualMachinePreset 'big': spec.domain.cpu.cores: 8 != 1; \
             spec.domain.machine.type: q35 != pc"
        );
        let same = preset("same", None, "{cpu: {cores: 1}}");
        let Merged { vm: out, notices } = apply(&vm, &[same]).unwrap();
        assert_eq!(
            preset_names(&out),
            ["same"],
            "a preset the VM already agrees with applied"
        );
        assert!(notices.is_empty());
    }

    #[test]
    fn non_matching_preset_changes_nothing() {
        let large = preset("m1.large", Some("large"), "{cpu: {cores: 8}}");
        let vm = vm(&[("kubevirt.io/size", "small")], "{}");
        let out = apply(&vm, &[large]).unwrap();
        assert_eq!(out.vm.spec.domain, DomainSpec::default());
        assert!(preset_names(&out.vm).is_empty());
        assert!(out.notices.is_empty());
    }

    #[test]
    fn two_presets_disagreeing_conflict_even_where_the_vm_sets_the_field() {
        let a = preset("a", None, "{cpu: {cores: 2}, machine: {type: pc}}");
        let b = preset("b", None, "{cpu: {cores: 3}}");
        let c = preset("c", None, "{machine: {type: q35}}");
        let err = apply(&vm(&[], "{cpu: {cores: 1}}"), &[c, b, a]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VirtualMachinePresets cannot be applied due to conflicts: \
             presets 'b' and 'a' conflict: spec.domain.cpu.cores: 3 != 2; \
             presets 'c' and 'a' conflict: spec.domain.machine.type: q35 != pc"
        );
    }

    #[test]
    fn two_presets_agreeing_is_fine() {
        let a = preset("a", None, "{cpu: {cores: 2}, machine: {type: pc}}");
        let b = preset("b", None, "{cpu: {cores: 2}, clock: {utc: {}}}");
        let out = apply(&vm(&[], "{}"), &[a, b]).unwrap().vm;
        assert_eq!(out.spec.domain.machine.clone().unwrap().machine_type, "pc");
        assert_eq!(preset_names(&out), ["a", "b"]);
    }

    #[test]
    fn excluded_or_already_processed_vms_get_no_preset() {
        let any = preset("any", None, "{cpu: {cores: 2}}");
        for (annotation, value) in [
            (EXCLUDE_ANNOTATION, "true"),
            (PRESETS_APPLIED_ANNOTATION, API_VERSION),
        ] {
            let mut vm = vm(&[], "{}");
            vm.metadata.annotations = Some([(annotation.to_string(), value.to_string())].into());
            let out = apply(&vm, std::slice::from_ref(&any)).unwrap();
            assert_eq!(out.vm.spec.domain, DomainSpec::default(), "{annotation}");
            assert!(preset_names(&out.vm).is_empty());
        }
        let mut not_excluded = vm(&[], "{}");
        not_excluded.metadata.annotations =
            Some([(EXCLUDE_ANNOTATION.to_string(), "false".to_string())].into());
        assert_eq!(
            preset_names(&apply(&not_excluded, &[any]).unwrap().vm),
            ["any"]
        );
    }

    #[test]
    fn a_preset_with_an_invalid_selector_is_skipped_with_a_warning() {
        let mut broken = preset("broken", None, "{cpu: {cores: 2}}");
        broken.spec.selector =
            Some(serde_yaml::from_str("matchExpressions: [{key: size, operator: Near}]").unwrap());
        let fine = preset("fine", None, "{machine: {type: pc}}");
        let out = apply(&vm(&[], "{}"), &[broken, fine]).unwrap();
        assert_eq!(preset_names(&out.vm), ["fine"]);
        assert_eq!(out.notices[0].reason(), "PresetFailed");
        assert!(out.notices[0].is_warning());
        assert!(
            out.notices[0]
                .to_string()
                .starts_with("Invalid Preset 'broken': "),
            "{}",
            out.notices[0]
        );
    }
}
