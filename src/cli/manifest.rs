//! Reading manifests (YAML or JSON) for the offline commands, with errors that name the file.

use std::path::{Path, PathBuf};

use kube::Resource;
use serde::de::DeserializeOwned;

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
}

/// A manifest's text and its `apiVersion/kind`, read before the body is parsed, so that a
/// Preset given where a VM is expected says so plainly.
pub struct Manifest {
    pub path: PathBuf,
    pub text: String,
    pub api_version: String,
    pub kind: String,
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
        let header: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| ManifestError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let field = |name: &str| {
            header
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
        })
    }

    pub fn is<K: Resource<DynamicType = ()>>(&self) -> bool {
        self.kind == K::kind(&()) && self.api_version == K::api_version(&())
    }

    /// Parses the body as `K`; `expected` lists the kinds the caller accepts, for the error.
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
        serde_yaml::from_str(&self.text).map_err(|e| ManifestError::Parse {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}
