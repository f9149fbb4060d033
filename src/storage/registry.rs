//! registryDisk: a disk image pulled from an OCI registry (oci-client), cached by manifest
//! digest under `<state-dir>/images/sha256-<hex>/disk.img`, shared by every VM of the image
//! (each gets its own qcow2 overlay, so the cached file is only ever read).
//!
//! 1. Resolve the reference to its manifest and digest (one small request).
//! 2. If the digest is cached, done: no layer is downloaded.
//! 3. Else download the layers into a private temporary folder and take the disk from them:
//!    the file under /disk/ ending in .qcow2 or .img (KubeVirt's registry disks), or the
//!    image's only regular file. Then rename the folder into place, atomically.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tracing::info;

use crate::domain::{ImageFormat, ResolvedVolume};
use crate::storage::files::{StorageError, ensure_traversable_dir, io_error, is_disk_full};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{image:?} is not a valid image reference")]
    Reference {
        image: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("pulling {image}")]
    Pull {
        image: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{image}: {message}")]
    Content { image: String, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl RegistryError {
    /// The state folder's filesystem is full: the VM fails, naming it, until room is made.
    pub fn is_disk_full(&self) -> bool {
        use oci_client::errors::OciDistributionError as E;
        match self {
            // oci-client's IoError is `transparent`: its source() skips the io::Error itself.
            RegistryError::Pull {
                source: E::IoError(io),
                ..
            } => is_disk_full(io),
            RegistryError::Storage(storage) => is_disk_full(storage),
            _ => false,
        }
    }

    /// A network or disk hiccup, worth retrying; the rest needs the VM or its secret fixed.
    pub fn is_transient(&self) -> bool {
        use oci_client::errors::OciDistributionError as E;
        !self.is_disk_full()
            && match self {
                RegistryError::Pull { source, .. } => {
                    matches!(source, E::RequestError(_) | E::IoError(_))
                }
                RegistryError::Storage(_) => true,
                RegistryError::Reference { .. } | RegistryError::Content { .. } => false,
            }
    }
}

/// Credentials for one registry, from an imagePullSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Whether a pull downloaded the image or found it cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Pulled,
    Cached,
}

pub struct Puller {
    insecure: Vec<String>,
    cache: PathBuf,
}

impl Puller {
    /// `insecure` registries (host:port) are reached over plain HTTP, e.g. one on loopback.
    pub fn new(state_dir: &Path, insecure: &[String]) -> Self {
        Self {
            insecure: insecure.to_vec(),
            cache: state_dir.join("images"),
        }
    }

    /// A client of its own for each pull: oci-client keeps the registry token it obtained, and
    /// a shared one would let a VM without the right secret pull what another VM could.
    fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            ..Default::default()
        })
    }

    /// The registry host of an image reference (for choosing credentials).
    pub fn registry_of(image: &str) -> Result<String, RegistryError> {
        parse(image).map(|r| r.resolve_registry().to_string())
    }

    /// The cached disk of `image`, pulled first if needed.
    pub async fn fetch(
        &self,
        image: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(ResolvedVolume, Fetch), RegistryError> {
        let reference = parse(image)?;
        let auth = credentials
            .map(|c| RegistryAuth::Basic(c.username.clone(), c.password.clone()))
            .unwrap_or(RegistryAuth::Anonymous);
        let pull_error = |source| RegistryError::Pull {
            image: image.to_string(),
            source,
        };
        let client = self.client();
        // The manifest request is also the authorization check: it runs with this VM's own
        // credentials even when the image is cached.
        let (manifest, digest) = client
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(pull_error)?;
        let dir = self
            .cache
            .join(cache_key(&digest).ok_or_else(|| RegistryError::Content {
                image: image.to_string(),
                message: format!("unexpected manifest digest {digest:?}"),
            })?);
        let disk = dir.join("disk.img");
        if tokio::fs::try_exists(&disk).await.unwrap_or(false) {
            return Ok((resolved(&disk).await?, Fetch::Cached));
        }
        ensure_traversable_dir(&self.cache).await?;
        let staging = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(&self.cache)
            .map_err(io_error("creating a temporary folder in", &self.cache))?;
        let mut found = None;
        for (index, layer) in manifest.layers.iter().enumerate() {
            let blob = staging.path().join(format!("layer-{index}"));
            let mut file = tokio::fs::File::create(&blob)
                .await
                .map_err(io_error("creating", &blob))?;
            client
                .pull_blob(&reference, layer, &mut file)
                .await
                .map_err(pull_error)?;
            let out = staging.path().join("disk.img");
            let blob_path = blob.clone();
            let out_path = out.clone();
            let extracted =
                tokio::task::spawn_blocking(move || extract_disk(&blob_path, &out_path))
                    .await
                    .map_err(|e| RegistryError::Content {
                        image: image.to_string(),
                        message: e.to_string(),
                    })?
                    .map_err(|message| RegistryError::Content {
                        image: image.to_string(),
                        message,
                    })?;
            let _ = tokio::fs::remove_file(&blob).await;
            if extracted {
                found = Some(out);
            }
        }
        let Some(_) = found else {
            return Err(RegistryError::Content {
                image: image.to_string(),
                message:
                    "no disk in the image: expected /disk/*.qcow2 or /disk/*.img, or a single file"
                        .into(),
            });
        };
        // Make the staged folder the cache entry; if another pull won the race, keep theirs.
        let staged = staging.keep();
        set_readable(&staged)?;
        if tokio::fs::rename(&staged, &dir).await.is_err() {
            let _ = tokio::fs::remove_dir_all(&staged).await;
        }
        info!(image, %digest, "pulled registry disk");
        Ok((resolved(&disk).await?, Fetch::Pulled))
    }
}

fn parse(image: &str) -> Result<Reference, RegistryError> {
    Reference::try_from(image).map_err(|source| RegistryError::Reference {
        image: image.to_string(),
        source,
    })
}

/// `sha256:<64 hex>` -> `sha256-<64 hex>`; anything else is refused, so a registry cannot
/// choose a path.
fn cache_key(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256-{hex}"))
}

/// QEMU runs unprivileged and must read the cached image.
fn set_readable(dir: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io_error("setting permissions of", dir))?;
    let disk = dir.join("disk.img");
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o444))
        .map_err(io_error("setting permissions of", &disk))?;
    Ok(())
}

async fn resolved(disk: &Path) -> Result<ResolvedVolume, RegistryError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(disk).map_err(io_error("opening", disk))?;
    let qcow2 = file.read_exact(&mut magic).is_ok() && magic == *b"QFI\xfb";
    Ok(ResolvedVolume::File {
        path: disk.display().to_string(),
        format: if qcow2 {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        },
    })
}

/// Takes the disk out of one layer (a tar, gzip-compressed or not) into `out`. Ok(false) when
/// the layer holds no disk.
fn extract_disk(layer: &Path, out: &Path) -> Result<bool, String> {
    let open = || std::fs::File::open(layer).map_err(|e| format!("reading a layer: {e}"));
    let mut head = [0u8; 2];
    let gzip = open()?.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b];
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(open()?))
    } else {
        Box::new(open()?)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("reading a layer: {e}"))?;
    let mut files = Vec::new();
    let mut chosen = None;
    for (index, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| format!("reading a layer: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("reading a layer: {e}"))?
            .to_string_lossy()
            .into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if path.starts_with("disk/") && (path.ends_with(".qcow2") || path.ends_with(".img")) {
            chosen = Some(index);
        }
        files.push(path);
    }
    let pick = match (chosen, files.len()) {
        (Some(index), _) => index,
        (None, 1) => 0,
        _ => return Ok(false),
    };
    // Second pass: stream the chosen entry to `out` (never to a path taken from the archive).
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(open()?))
    } else {
        Box::new(open()?)
    };
    let mut archive = tar::Archive::new(reader);
    for (index, entry) in archive.entries().map_err(|e| e.to_string())?.enumerate() {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if index == pick {
            let mut file =
                std::fs::File::create(out).map_err(|e| format!("writing the disk: {e}"))?;
            std::io::copy(&mut entry, &mut file).map_err(|e| format!("writing the disk: {e}"))?;
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_not_worth_retrying() {
        let full = RegistryError::Pull {
            image: "r/i:1".into(),
            source: oci_client::errors::OciDistributionError::IoError(
                std::io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32),
            ),
        };
        assert!(full.is_disk_full() && !full.is_transient());
        let network = RegistryError::Pull {
            image: "r/i:1".into(),
            source: oci_client::errors::OciDistributionError::IoError(
                std::io::Error::from_raw_os_error(nix::errno::Errno::ECONNRESET as i32),
            ),
        };
        assert!(network.is_transient());
    }

    fn layer(files: &[(&str, &[u8])], gzip: bool) -> tempfile::NamedTempFile {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = tar::Header::new_old();
            // Written raw: the tar crate refuses to build `..` paths, but an attacker's need not.
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let bytes = if gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar).unwrap();
            enc.finish().unwrap()
        } else {
            tar
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    #[test]
    fn takes_the_disk_from_kubevirt_style_and_single_file_layers() {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("disk.img");
        let kubevirt = layer(
            &[("disk/fedora.qcow2", b"QFI\xfbdata"), ("README", b"x")],
            true,
        );
        assert_eq!(extract_disk(kubevirt.path(), &out), Ok(true));
        assert_eq!(std::fs::read(&out).unwrap(), b"QFI\xfbdata");
        let single = layer(&[("image.raw", b"raw")], false);
        assert_eq!(extract_disk(single.path(), &out), Ok(true));
        assert_eq!(std::fs::read(&out).unwrap(), b"raw");
        let none = layer(&[("a", b"1"), ("b", b"2")], true);
        assert_eq!(extract_disk(none.path(), &out), Ok(false));
    }

    #[test]
    fn archive_paths_never_become_file_paths() {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("disk.img");
        let evil = layer(&[("disk/../../../tmp/evil.img", b"x")], false);
        assert_eq!(extract_disk(evil.path(), &out), Ok(true));
        assert!(out.exists(), "written only to the chosen output path");
    }

    #[test]
    fn cache_keys_come_from_digests_only() {
        let hex = "a".repeat(64);
        assert_eq!(
            cache_key(&format!("sha256:{hex}")),
            Some(format!("sha256-{hex}"))
        );
        assert_eq!(cache_key("sha256:../../etc"), None);
        assert_eq!(cache_key("md5:abc"), None);
    }
}
