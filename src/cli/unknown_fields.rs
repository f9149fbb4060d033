//! Strict field validation for the offline commands, as the apiserver's for `kubectl apply`:
//! every field of a manifest must be one its kind's CRD schema declares, so a typo (`cpu:
//! {core: 4}`) is an error instead of a field silently ignored.
//!
//! Only the CLI is strict. The agent and the controller read objects leniently: the apiserver
//! has pruned unknown fields already, and an agent older than a field must still read objects
//! that carry it.
//!
//! 1. A kind's schema is its CRD's `openAPIV3Schema` (`api::crds`), with the root's
//!    `apiVersion` and `kind`, and `metadata` as an ObjectMeta (the apiserver checks root
//!    metadata itself; the CRD's schema of it names only the bounded `name`).
//! 2. The manifest is walked beside its schema: an object's keys must be its `properties`
//!    (then each value is walked with its own schema), a map's values follow
//!    `additionalProperties`, a list's items follow `items`. An object whose schema declares
//!    neither, or `x-kubernetes-preserve-unknown-fields`, takes any field.
//! 3. Every unknown field is returned, with its full path and the fields expected there.

use std::fmt;
use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value as Schema, json};
use serde_yaml::Value;

/// A field the schema does not declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Its full path: `spec.domain.cpu.core`, `spec.volumes[1].nmae`.
    pub field: String,
    /// The fields its object declares, sorted.
    pub expected: Vec<String>,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: unknown field; ", self.field)?;
        match self.expected.as_slice() {
            [] => write!(f, "this object takes no fields"),
            [only] => write!(f, "expected {only}"),
            all => write!(f, "expected one of {}", all.join(", ")),
        }
    }
}

/// The schema of each kind, by kind, built once (generating the CRDs takes milliseconds, and
/// the fuzz targets parse thousands of manifests).
static SCHEMAS: LazyLock<Vec<(String, Schema)>> = LazyLock::new(|| {
    let object_meta = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<ObjectMeta>()
        .to_value();
    crate::api::crds()
        .into_iter()
        .filter_map(|crd| {
            let root = crd
                .spec
                .versions
                .first()?
                .schema
                .clone()?
                .open_api_v3_schema?;
            let mut root = serde_json::to_value(root).ok()?;
            let properties = root.get_mut("properties")?.as_object_mut()?;
            properties.insert("apiVersion".into(), json!({"type": "string"}));
            properties.insert("kind".into(), json!({"type": "string"}));
            properties.insert("metadata".into(), object_meta.clone());
            Some((crd.spec.names.kind, root))
        })
        .collect()
});

/// The unknown fields of `document`, a manifest of `kind`; none for a kind without a CRD.
pub fn unknown_fields(kind: &str, document: &Value) -> Vec<UnknownField> {
    let mut found = Vec::new();
    if let Some((_, schema)) = SCHEMAS.iter().find(|(k, _)| k == kind) {
        walk(document, schema, "", &mut found);
    }
    found
}

fn walk(value: &Value, schema: &Schema, path: &str, found: &mut Vec<UnknownField>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
        return;
    }
    match value {
        Value::Tagged(tagged) => walk(&tagged.value, schema, path, found),
        Value::Mapping(map) => {
            let keys = map.iter().filter_map(|(k, v)| Some((k.as_str()?, v)));
            if let Some(properties) = schema["properties"].as_object() {
                for (key, value) in keys {
                    let field = join(path, key);
                    match properties.get(key) {
                        Some(inner) => walk(value, inner, &field, found),
                        None => found.push(UnknownField {
                            field,
                            expected: sorted(properties.keys()),
                        }),
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for (key, value) in keys {
                    walk(
                        value,
                        &schema["additionalProperties"],
                        &join(path, key),
                        found,
                    );
                }
            }
        }
        Value::Sequence(items) if schema["items"].is_object() => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &schema["items"], &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut keys: Vec<String> = keys.cloned().collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(kind: &str, yaml: &str) -> Vec<String> {
        let document: Value = serde_yaml::from_str(yaml).unwrap();
        unknown_fields(kind, &document)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const VM: &str = "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\n\
                      metadata: {name: vm, labels: {a: b}}\n";

    #[test]
    fn a_typo_names_the_path_and_the_expected_fields() {
        let found = unknown(
            "VirtualMachine",
            &format!("{VM}spec: {{domain: {{cpu: {{core: 4}}}}}}"),
        );
        assert_eq!(
            found,
            ["spec.domain.cpu.core: unknown field; expected cores"]
        );
    }

    #[test]
    fn a_valid_manifest_has_none() {
        for example in ["examples/vm.yaml", "examples/preset.yaml"] {
            let text = std::fs::read_to_string(example).unwrap();
            let document: Value = serde_yaml::from_str(&text).unwrap();
            let kind = document["kind"].as_str().unwrap();
            assert_eq!(unknown_fields(kind, &document), [], "{example}");
        }
    }

    #[test]
    fn lists_maps_and_every_unknown_field() {
        let found = unknown(
            "VirtualMachine",
            &format!(
                "{VM}spec:\n  volumes: [{{name: a, emptyDisk: {{capacity: 1Gi}}}}, {{nmae: b}}]\n  \
                 nodeSelector: {{zone: a}}\n  runing: true\n"
            ),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("spec.volumes[1].nmae: unknown field; expected one of "));
        assert!(found[0].contains("emptyDisk"), "{found:?}");
        assert!(
            found[1].starts_with("spec.runing: unknown field"),
            "{found:?}"
        );
    }

    #[test]
    fn root_fields_and_metadata_are_those_of_any_object() {
        let found = unknown(
            "VirtualMachine",
            &format!("{VM}spec: {{}}\nstatuss: {{}}\n"),
        );
        assert_eq!(
            found,
            ["statuss: unknown field; expected one of apiVersion, kind, metadata, spec, status"]
        );
        let found = unknown(
            "VirtualMachine",
            "kind: VirtualMachine\nmetadata: {name: vm, lables: {a: b}, annotations: {x: y}}\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("metadata.lables: unknown field; expected one of "));
        assert!(found[0].contains("labels"), "{found:?}");
    }

    #[test]
    fn templates_of_every_kind_are_checked() {
        for kind in ["OfflineVirtualMachine", "VirtualMachineReplicaSet"] {
            let found = unknown(
                kind,
                &format!(
                    "kind: {kind}\nspec:\n  template:\n    metadata: {{labelz: {{}}}}\n    \
                     spec: {{domain: {{cpu: {{core: 4}}}}}}\n"
                ),
            );
            assert_eq!(found.len(), 2, "{kind}: {found:?}");
            assert!(
                found[0].starts_with("spec.template.metadata.labelz: "),
                "{found:?}"
            );
            assert_eq!(
                found[1],
                "spec.template.spec.domain.cpu.core: unknown field; expected cores"
            );
        }
        let found = unknown(
            "VirtualMachinePreset",
            "kind: VirtualMachinePreset\nspec: {selector: {matchLabel: {}}, domain: {cpu: {core: 4}}}\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("spec.selector.matchLabel: "),
            "{found:?}"
        );
        assert!(found[0].contains("matchLabels"), "{found:?}");
        assert!(found[1].starts_with("spec.domain.cpu.core: "), "{found:?}");
    }
}
