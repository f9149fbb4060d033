//! Creating a VM's generated disks. Each file is written under a temporary name and renamed
//! into place, so a crash leaves either the whole file or nothing; an existing file is kept,
//! so running this again after a crash is safe. External tools get argument vectors, never a
//! shell command line.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use tokio::process::Command;

use crate::domain::{ImageFormat, ResolvedVolume};

use super::layout::VmLayout;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the virtual size of the image {path}")]
    ImageSize {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed making {path}: {stderr}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
}

/// True when `err`, or an error it wraps, is the filesystem being full (ENOSPC, EDQUOT): worth
/// failing the VM with that message rather than retrying a write that cannot succeed.
pub fn is_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.raw_os_error().map(Errno::from_raw),
                Some(Errno::ENOSPC | Errno::EDQUOT)
            ) {
                return true;
            }
            // An io::Error wrapping another (io::Error::other) hides it from source().
            if let Some(inner) = io.get_ref()
                && is_disk_full(inner)
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// Turns an I/O error into a StorageError saying what was being done to which path.
pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

/// Creates the VM's folder; see [`ensure_traversable_dir`].
pub async fn ensure_vm_dir(layout: &VmLayout) -> Result<(), StorageError> {
    ensure_traversable_dir(layout.dir()).await
}

/// Creates `dir` (with its missing parents) and sets it to 0711, whatever the umask: libvirt
/// runs QEMU as an unprivileged user that opens each disk by its full path (chowning the file,
/// not its folders), so every folder on the way must be traversable; none needs to be
/// listable by others.
pub async fn ensure_traversable_dir(dir: &Path) -> Result<(), StorageError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_error("creating", dir))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .await
        .map_err(io_error("setting permissions of", dir))
}

/// Creates a state folder and its VMs' folder, both traversable by QEMU.
pub async fn ensure_state_dir(state_dir: &Path) -> Result<(), StorageError> {
    ensure_traversable_dir(state_dir).await?;
    ensure_traversable_dir(&super::layout::vms_dir(state_dir)).await
}

/// The folders above `dir` that others cannot traverse (no o+x), with their modes: QEMU, running
/// as its own user, cannot open a disk below them. Folders that cannot be read are skipped.
pub fn untraversable_ancestors(dir: &Path) -> Vec<(PathBuf, u32)> {
    dir.ancestors()
        .skip(1)
        .filter_map(|ancestor| {
            let mode = std::fs::metadata(ancestor).ok()?.permissions().mode() & 0o7777;
            (mode & 0o001 == 0).then(|| (ancestor.to_path_buf(), mode))
        })
        .collect()
}

/// Removes the VM's folder and everything in it; a missing folder is fine.
pub async fn remove_vm_dir(dir: &Path) -> Result<(), StorageError> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("removing", dir)(e)),
        _ => Ok(()),
    }
}

fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// True when `path` exists (false when that cannot be told).
pub async fn exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

async fn run_tool(
    tool: &'static str,
    args: &[&std::ffi::OsStr],
    path: &Path,
) -> Result<(), StorageError> {
    let out = Command::new(tool)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(io_error("running the tool that makes", path))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StorageError::Tool {
            tool,
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Moves a finished file into place, or cleans up after a failed one.
async fn finish(
    result: Result<(), StorageError>,
    tmp: &Path,
    path: &Path,
) -> Result<(), StorageError> {
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(tmp).await;
        return Err(e);
    }
    // Cloud-init data may come from a Secret: only root (and QEMU, once libvirt hands the
    // disk over) may read what the agent made.
    tokio::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))
        .await
        .map_err(io_error("setting permissions of", tmp))?;
    tokio::fs::rename(tmp, path)
        .await
        .map_err(io_error("renaming into place", path))
}

/// A NoCloud `cidata` ISO with `user-data` and `meta-data` (instance-id, local-hostname).
pub async fn ensure_cloud_init_iso(
    path: &Path,
    instance_id: &str,
    hostname: &str,
    user_data: &[u8],
) -> Result<(), StorageError> {
    if exists(path).await {
        return Ok(());
    }
    let staging = partial(path).with_extension("d");
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(io_error("creating", &staging))?;
    tokio::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(io_error("setting permissions of", &staging))?;
    let user_data_path = staging.join("user-data");
    let meta_data_path = staging.join("meta-data");
    tokio::fs::write(&user_data_path, user_data)
        .await
        .map_err(io_error("writing", &user_data_path))?;
    let meta_data = format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n");
    tokio::fs::write(&meta_data_path, meta_data)
        .await
        .map_err(io_error("writing", &meta_data_path))?;
    let tmp = partial(path);
    let made = run_tool(
        "genisoimage",
        &[
            "-quiet".as_ref(),
            "-output".as_ref(),
            tmp.as_os_str(),
            "-volid".as_ref(),
            "cidata".as_ref(),
            "-joliet".as_ref(),
            "-rock".as_ref(),
            user_data_path.as_os_str(),
            meta_data_path.as_os_str(),
        ],
        path,
    )
    .await;
    let _ = tokio::fs::remove_dir_all(&staging).await;
    finish(made, &tmp, path).await
}

/// `qemu-img create -f qcow2` at `path` with `options` before the target and `after` it,
/// through a temporary name; an existing file is kept.
async fn create_qcow2(
    path: &Path,
    options: &[&OsStr],
    after: &[&OsStr],
) -> Result<(), StorageError> {
    if exists(path).await {
        return Ok(());
    }
    let tmp = partial(path);
    let mut args: Vec<&OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
    ];
    args.extend_from_slice(options);
    args.push(tmp.as_os_str());
    args.extend_from_slice(after);
    let made = run_tool("qemu-img", &args, path).await;
    finish(made, &tmp, path).await
}

/// A sparse qcow2 disk of `bytes` bytes.
pub async fn ensure_empty_disk(path: &Path, bytes: u64) -> Result<(), StorageError> {
    let size = bytes.to_string();
    create_qcow2(path, &[], &[size.as_ref()]).await
}

/// A qcow2 overlay of `size` bytes (the backing's virtual size) over `backing`, which QEMU
/// then only ever reads. The overlay names the backing by its node path, where QEMU opens it;
/// qemu-img does not open it (`-u`), so the agent need not see it.
pub async fn ensure_overlay(
    path: &Path,
    backing: &ResolvedVolume,
    size: u64,
) -> Result<(), StorageError> {
    let size = size.to_string();
    let options: [&OsStr; 5] = [
        "-u".as_ref(),
        "-F".as_ref(),
        backing.format().as_str().as_ref(),
        "-b".as_ref(),
        backing.path().as_ref(),
    ];
    create_qcow2(path, &options, &[size.as_ref()]).await
}

/// The virtual size of `image`, a file the agent itself can open (a registry disk's image in
/// its state folder): a raw file's length, or the size in a qcow2 header. The node's own
/// files are sized by its libvirtd instead (`hypervisor::backing`).
pub async fn local_image_size(image: &ResolvedVolume) -> Result<u64, StorageError> {
    let path = Path::new(image.path());
    read_image_size(path, image.format())
        .await
        .map_err(|source| StorageError::ImageSize {
            path: path.to_path_buf(),
            source,
        })
}

async fn read_image_size(path: &Path, format: ImageFormat) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    match format {
        ImageFormat::Raw => file.seek(std::io::SeekFrom::End(0)).await,
        ImageFormat::Qcow2 => {
            let mut header = [0u8; QCOW2_HEADER_LEN];
            file.read_exact(&mut header).await?;
            qcow2_virtual_size(&header).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a qcow2 image")
            })
        }
    }
}

/// The start of a qcow2 header: magic (4 bytes), version (4), backing file offset (8) and
/// size (4), cluster bits (4), then the virtual size in bytes (8, big-endian).
const QCOW2_HEADER_LEN: usize = 32;

fn qcow2_virtual_size(header: &[u8; QCOW2_HEADER_LEN]) -> Option<u64> {
    let (magic, rest) = header.split_first_chunk::<4>()?;
    let size = rest.get(20..28)?.try_into().ok()?;
    (magic == b"QFI\xfb").then(|| u64::from_be_bytes(size))
}

/// qemu-img's view of an image, for tests: (virtual size, backing file and its format as
/// written in it).
#[cfg(test)]
pub(crate) fn image_info(path: &Path) -> (u64, Option<String>, Option<String>) {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |key: &str| info[key].as_str().map(String::from);
    (
        info["virtual-size"].as_u64().unwrap(),
        text("backing-filename"),
        text("backing-filename-format"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_found_anywhere_in_the_chain() {
        let full = StorageError::Io {
            action: "writing",
            path: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(Errno::ENOSPC as i32),
        };
        assert!(is_disk_full(&full));
        let other = StorageError::Io {
            action: "writing",
            path: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(Errno::EIO as i32),
        };
        assert!(!is_disk_full(&other));
        let wrapped =
            std::io::Error::other(std::io::Error::from_raw_os_error(Errno::ENOSPC as i32));
        assert!(is_disk_full(&wrapped));
    }

    #[tokio::test]
    async fn state_folders_become_traversable_whatever_their_mode_was() {
        let root = tempfile::tempdir().unwrap();
        let private = root.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let state = private.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

        ensure_traversable_dir(&state).await.unwrap();
        ensure_traversable_dir(&state.join("vms/new"))
            .await
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o711, "an existing 0700 folder is fixed");
        assert_eq!(mode(&state.join("vms/new")), 0o711);
        let blocking = untraversable_ancestors(&state);
        assert!(
            blocking.contains(&(private.clone(), 0o700)),
            "{blocking:?} lacks {private:?}"
        );
        assert!(untraversable_ancestors(&state.join("vms/new")).contains(&(private, 0o700)));
    }

    #[tokio::test]
    async fn files_are_made_once_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let layout = VmLayout::new(dir.path(), "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        ensure_vm_dir(&layout).await.unwrap();
        let iso = layout.dir().join("ci.iso");
        ensure_cloud_init_iso(&iso, "uid-1", "vm", b"#!/bin/sh\necho hi\n")
            .await
            .unwrap();
        let bytes = std::fs::read(&iso).unwrap();
        assert_eq!(&bytes[0x8001..0x8006], b"CD001", "an ISO9660 image");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&iso), 0o600, "user-data is for root and QEMU only");
        assert_eq!(mode(layout.dir()), 0o711);
        assert!(bytes.windows(6).any(|w| w == b"cidata"), "labelled cidata");
        let disk = layout.dir().join("empty.qcow2");
        ensure_empty_disk(&disk, 1 << 30).await.unwrap();
        assert_eq!(&std::fs::read(&disk).unwrap()[..4], b"QFI\xfb");
        let modified = std::fs::metadata(&disk).unwrap().modified().unwrap();
        ensure_empty_disk(&disk, 1 << 30).await.unwrap();
        assert_eq!(
            std::fs::metadata(&disk).unwrap().modified().unwrap(),
            modified,
            "kept"
        );
        let overlay = layout.dir().join("overlay.qcow2");
        let backing = ResolvedVolume::File {
            path: iso.display().to_string(),
            format: ImageFormat::Raw,
        };
        let size = local_image_size(&backing).await.unwrap();
        ensure_overlay(&overlay, &backing, size).await.unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(layout.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        remove_vm_dir(layout.dir()).await.unwrap();
        remove_vm_dir(layout.dir()).await.unwrap();
        assert!(!layout.dir().exists());
    }

    #[tokio::test]
    async fn an_overlay_has_the_size_it_is_given_and_names_the_node_path_unopened() {
        // Node paths the agent cannot see: qemu-img must not open them.
        let dir = tempfile::tempdir().unwrap();
        let node_path = "/srv/nodevirt-absent/pv-1/disk.img";
        let overlay = dir.path().join("overlay.qcow2");
        let backing = ResolvedVolume::File {
            path: node_path.into(),
            format: ImageFormat::Qcow2,
        };
        ensure_overlay(&overlay, &backing, 10 << 20).await.unwrap();
        assert_eq!(
            image_info(&overlay),
            (10 << 20, Some(node_path.into()), Some("qcow2".into()))
        );
        let device = "/dev/disk/by-id/nodevirt-absent";
        let over_block = dir.path().join("over-block.qcow2");
        let backing = ResolvedVolume::Block {
            path: device.into(),
        };
        ensure_overlay(&over_block, &backing, 3 << 30)
            .await
            .unwrap();
        assert_eq!(
            image_info(&over_block),
            (3 << 30, Some(device.into()), Some("raw".into()))
        );
    }

    #[tokio::test]
    async fn a_local_image_is_sized_by_its_length_or_its_qcow2_header() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.img");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(10 << 20)
            .unwrap();
        let raw_path = raw.display().to_string();
        let as_raw = ResolvedVolume::File {
            path: raw_path.clone(),
            format: ImageFormat::Raw,
        };
        assert_eq!(local_image_size(&as_raw).await.unwrap(), 10 << 20);
        // A qcow2 image (a registry disk) gives its virtual size, not its file's length.
        let image = dir.path().join("image.qcow2");
        ensure_empty_disk(&image, 3 << 30).await.unwrap();
        let qcow2 = ResolvedVolume::File {
            path: image.display().to_string(),
            format: ImageFormat::Qcow2,
        };
        assert_eq!(local_image_size(&qcow2).await.unwrap(), 3 << 30);
        let not_qcow2 = ResolvedVolume::File {
            path: raw_path.clone(),
            format: ImageFormat::Qcow2,
        };
        let err = local_image_size(&not_qcow2).await.unwrap_err();
        assert_eq!(
            crate::k8s::error_chain(&err),
            format!("reading the virtual size of the image {raw_path}: not a qcow2 image")
        );
        let missing = ResolvedVolume::File {
            path: "/nonexistent/disk.img".into(),
            format: ImageFormat::Raw,
        };
        let err = local_image_size(&missing).await.unwrap_err();
        assert_eq!(
            crate::k8s::error_chain(&err),
            "reading the virtual size of the image /nonexistent/disk.img: \
             No such file or directory (os error 2)"
        );

        let mut header = [0u8; QCOW2_HEADER_LEN];
        header[..4].copy_from_slice(b"QFI\xfb");
        header[24..].copy_from_slice(&(5u64 << 30).to_be_bytes());
        assert_eq!(qcow2_virtual_size(&header), Some(5 << 30));
        header[0] = b'X';
        assert_eq!(qcow2_virtual_size(&header), None);
    }

    #[tokio::test]
    async fn a_failed_tool_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("huge.qcow2");
        let err = ensure_empty_disk(&disk, u64::MAX).await.unwrap_err();
        assert!(err.to_string().contains("qemu-img failed making"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
