//! Reading manifests (YAML or JSON) for the offline commands, with errors that name the file.
//! Parsing is strict: a field the kind's schema does not declare is an error
//! (`unknown_fields`), as at `kubectl apply`.

use std::path::{Path, PathBuf};

use kube::Resource;
use serde::de::DeserializeOwned;

use super::unknown_fields::{UnknownField, unknown_fields};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read the file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: kind is {found:?}; expected {expected} (apiVersion kubevirt.io/v1alpha1)")]
    WrongKind {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// One line per field, each naming the file.
    #[error("{}", unknown_lines(path, fields))]
    UnknownFields {
        path: PathBuf,
        fields: Vec<UnknownField>,
    },
}

fn unknown_lines(path: &Path, fields: &[UnknownField]) -> String {
    let lines: Vec<String> = fields
        .iter()
        .map(|field| format!("{}: {field}", path.display()))
        .collect();
    lines.join("\n")
}

/// A manifest's text and its `apiVersion/kind`, read before the body is parsed, so that a
/// Preset given where a VM is expected says so plainly.
pub struct Manifest {
    pub path: PathBuf,
    pub text: String,
    pub api_version: String,
    pub kind: String,
    /// The text as a YAML document, for the unknown fields.
    document: serde_yaml::Value,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_text(path, text)
    }

    /// A manifest already in memory; `path` names it in errors.
    pub fn from_text(path: &Path, text: String) -> Result<Self, ManifestError> {
        let document: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| ManifestError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let field = |name: &str| {
            document
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self {
            path: path.to_path_buf(),
            api_version: field("apiVersion"),
            kind: field("kind"),
            text,
            document,
        })
    }

    pub fn is<K: Resource<DynamicType = ()>>(&self) -> bool {
        self.kind == K::kind(&()) && self.api_version == K::api_version(&())
    }

    /// Parses the body as `K`, refusing unknown fields; `expected` lists the kinds the caller
    /// accepts, for the error.
    pub fn parse<K>(&self, expected: &str) -> Result<K, ManifestError>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        if !self.is::<K>() {
            return Err(ManifestError::WrongKind {
                path: self.path.clone(),
                found: format!("{}/{}", self.api_version, self.kind),
                expected: expected.to_string(),
            });
        }
        let fields = unknown_fields(&self.kind, &self.document);
        if !fields.is_empty() {
            return Err(ManifestError::UnknownFields {
                path: self.path.clone(),
                fields,
            });
        }
        serde_yaml::from_str(&self.text).map_err(|e| ManifestError::Parse {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}
