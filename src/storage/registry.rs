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
use crate::storage::layout::{image_disk, image_entry, images_dir};

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
    #[error("{image}: registry {registry} is not among the registries this node pulls from")]
    NotAllowed { image: String, registry: String },
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

    /// What the failure means for the VM.
    pub fn failure(&self) -> PullFailure {
        use oci_client::errors::OciDistributionError as E;
        if self.is_disk_full() {
            return PullFailure::DiskFull;
        }
        match self {
            RegistryError::Pull { source, .. } if untrusted(source) => PullFailure::Untrusted,
            RegistryError::Pull { source, .. } => match source {
                E::RequestError(_) | E::IoError(_) | E::ServerError { .. } => {
                    PullFailure::Transient
                }
                _ => PullFailure::Invalid,
            },
            RegistryError::Storage(_) => PullFailure::Transient,
            RegistryError::Reference { .. }
            | RegistryError::Content { .. }
            | RegistryError::NotAllowed { .. } => PullFailure::Invalid,
        }
    }

    /// What the VM's status may say: what its owner can act on, and nothing of the network
    /// seen from the node (whether a port is closed, speaks TLS or plain HTTP), which would
    /// make registryDisk a port scanner. The whole error goes to the agent's log.
    pub fn user_message(&self) -> String {
        use oci_client::errors::OciDistributionError as E;
        let RegistryError::Pull { image, source } = self else {
            return match self {
                RegistryError::Storage(e) => crate::k8s::error_chain(e),
                other => other.to_string(),
            };
        };
        match self.failure() {
            PullFailure::Untrusted => {
                format!(
                    "{image}: no trusted TLS connection to the registry (a certificate this \
                     node does not trust, or no TLS)"
                )
            }
            PullFailure::DiskFull => crate::k8s::error_chain(self),
            PullFailure::Transient => format!("{image}: the registry cannot be reached now"),
            PullFailure::Invalid => match source {
                E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
                    format!("{image}: the registry refused access (check imagePullSecret)")
                }
                E::ImageManifestNotFoundError(_) => format!("{image}: no such image"),
                E::RegistryError { envelope, .. } => {
                    let codes: Vec<String> = envelope
                        .errors
                        .iter()
                        .map(|e| format!("{:?}", e.code))
                        .collect();
                    format!("{image}: the registry refused it ({})", codes.join(", "))
                }
                _ => format!("{image}: the registry's answer is not a usable image"),
            },
        }
    }
}

/// How a failed pull is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The registry is unreachable or busy, the disk hiccuped: the VM waits and tries again.
    Transient,
    /// No trusted TLS session (a certificate the node does not trust, a server that does not
    /// speak TLS): tried a few times (a certificate being rotated), then the VM fails; it
    /// does not heal by itself.
    Untrusted,
    /// The VM must be fixed: a malformed reference, a registry not allowed, an image that does
    /// not exist, credentials refused, content that is no disk.
    Invalid,
    /// The state folder's filesystem is full.
    DiskFull,
}

/// rustls' own words for a session that could not be established, as reqwest passes them on.
const TLS_FAILURE_TEXTS: [&str; 5] = [
    "invalid peer certificate",
    "received corrupt message",
    "peer is incompatible",
    "peer misbehaved",
    "received fatal alert",
];

/// A TLS failure: rustls' error, wherever reqwest and hyper put it in the chain (an
/// io::Error's `source()` skips the error it wraps, so its `get_ref()` is looked at too);
/// reqwest boxes connector errors in private types, so rustls' messages are recognised too.
fn untrusted(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        let text = error.to_string();
        if error.downcast_ref::<rustls::Error>().is_some()
            || wrapped
            || TLS_FAILURE_TEXTS.iter().any(|t| text.contains(t))
        {
            return true;
        }
        next = error.source();
    }
    false
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

/// How many pulls of one image may fail on an untrusted certificate before its VM fails.
pub const UNTRUSTED_TRIES: u32 = 3;

pub struct Puller {
    insecure: Vec<String>,
    /// Empty: every registry.
    allowed: Vec<String>,
    cache: PathBuf,
    /// Consecutive untrusted-certificate failures per image reference.
    untrusted: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Puller {
    /// `insecure` registries (host:port) are reached over plain HTTP, e.g. one on loopback;
    /// only the `allowed` registries (host or host:port) are pulled from, or all when empty.
    pub fn new(state_dir: &Path, insecure: &[String], allowed: &[String]) -> Self {
        Self {
            insecure: insecure.to_vec(),
            allowed: allowed.to_vec(),
            cache: images_dir(state_dir),
            untrusted: Default::default(),
        }
    }

    /// Whether `registry` (host or host:port, as in a reference) may be pulled from. Pure.
    fn allows(&self, registry: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|a| a == registry)
    }

    /// Counts an untrusted-certificate failure of `image`; returns the consecutive count.
    pub fn count_untrusted(&self, image: &str) -> u32 {
        self.untrusted
            .lock()
            .map(|mut m| {
                let n = m.entry(image.to_string()).or_insert(0);
                *n += 1;
                *n
            })
            .unwrap_or(UNTRUSTED_TRIES)
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
        let registry = reference.resolve_registry().to_string();
        // Before any connection: a registry an operator did not allow is never dialled.
        if !self.allows(&registry) {
            return Err(RegistryError::NotAllowed {
                image: image.to_string(),
                registry,
            });
        }
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
        if let Ok(mut untrusted) = self.untrusted.lock() {
            untrusted.remove(image);
        }
        let dir = image_entry(&self.cache, &digest).ok_or_else(|| RegistryError::Content {
            image: image.to_string(),
            message: format!("unexpected manifest digest {digest:?}"),
        })?;
        let disk = image_disk(&dir);
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
            let out = image_disk(staging.path());
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

/// QEMU runs unprivileged and must read the cached image.
fn set_readable(dir: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io_error("setting permissions of", dir))?;
    let disk = image_disk(dir);
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

    fn pull_error(source: oci_client::errors::OciDistributionError) -> RegistryError {
        RegistryError::Pull {
            image: "registry.example:5000/i:1".into(),
            source,
        }
    }

    fn io(errno: nix::errno::Errno) -> oci_client::errors::OciDistributionError {
        oci_client::errors::OciDistributionError::IoError(std::io::Error::from_raw_os_error(
            errno as i32,
        ))
    }

    #[test]
    fn failures_are_classified_and_the_status_says_nothing_of_the_network() {
        use oci_client::errors::OciDistributionError as E;
        let full = pull_error(io(nix::errno::Errno::ENOSPC));
        assert_eq!(full.failure(), PullFailure::DiskFull);
        let reset = pull_error(io(nix::errno::Errno::ECONNRESET));
        assert_eq!(reset.failure(), PullFailure::Transient);
        assert_eq!(
            reset.user_message(),
            "registry.example:5000/i:1: the registry cannot be reached now"
        );
        let tls = pull_error(E::IoError(std::io::Error::other(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert_eq!(tls.failure(), PullFailure::Untrusted);
        assert!(
            !tls.user_message().contains("UnknownIssuer"),
            "{}",
            tls.user_message()
        );
        let denied = pull_error(E::UnauthorizedError {
            url: "https://registry.example:5000/v2/i/manifests/1".into(),
        });
        assert_eq!(denied.failure(), PullFailure::Invalid);
        assert!(
            !denied.user_message().contains("https://"),
            "{}",
            denied.user_message()
        );
        let reference = parse("Not A Reference").unwrap_err();
        assert_eq!(reference.failure(), PullFailure::Invalid);
    }

    #[tokio::test]
    async fn a_registry_not_allowed_is_never_dialled() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = ["registry.example:5000".to_string()];
        let puller = Puller::new(dir.path(), &[], &allowed);
        // 127.0.0.1:9 would refuse: an attempt would be a Transient failure, not NotAllowed.
        let error = puller.fetch("127.0.0.1:9/probe:1", None).await.unwrap_err();
        assert!(
            matches!(error, RegistryError::NotAllowed { ref registry, .. } if registry == "127.0.0.1:9"),
            "{error:?}"
        );
        assert!(puller.allows("registry.example:5000"));
        assert!(
            !puller.allows("registry.example"),
            "the port is part of the name"
        );
        assert!(Puller::new(dir.path(), &[], &[]).allows("anything:1"));
    }

    #[test]
    fn untrusted_failures_are_counted_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let puller = Puller::new(dir.path(), &[], &[]);
        assert_eq!(puller.count_untrusted("a"), 1);
        assert_eq!(puller.count_untrusted("a"), 2);
        assert_eq!(puller.count_untrusted("b"), 1);
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
}
