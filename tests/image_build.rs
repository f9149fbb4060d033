//! hack/image.sh on this very binary: built twice, it is the same image (same manifest
//! digest); it holds what the pods run, a nonroot user, and nothing to log in or install with.
//! The script's own check runs the programs inside the image in a chroot (so: run as root).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

/// What the pods run (the agent calls qemu-img and genisoimage through PATH).
const REQUIRED: &[&str] = &[
    "usr/local/bin/nodevirt",
    "usr/bin/qemu-img",
    "usr/bin/genisoimage",
];
/// A shell or a package manager would make the image a place to work in, not just run.
const FORBIDDEN: &[&str] = &[
    "bin/sh",
    "usr/bin/sh",
    "bin/bash",
    "usr/bin/bash",
    "usr/bin/apt",
    "usr/bin/dpkg",
];
/// The controller Deployment's runAsUser.
const NONROOT_UID: &str = "65532";

/// One run of hack/image.sh into its own folder, and what it printed.
struct Image {
    _out: tempfile::TempDir,
    archive: PathBuf,
    manifest: String,
    compressed_bytes: u64,
    unpacked_bytes: u64,
}

impl Image {
    fn build() -> Image {
        let out = tempfile::tempdir().expect("a temporary --out folder");
        let run = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/image.sh"))
            .arg(env!("CARGO_BIN_EXE_nodevirt"))
            .arg("--out")
            .arg(out.path())
            .output()
            .expect("run hack/image.sh");
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "hack/image.sh failed ({}):\n{stdout}\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key}= in hack/image.sh's output:\n{stdout}"))
                .to_string()
        };
        let bytes = |key: &str| value(key).parse().expect("a byte count");
        Image {
            archive: PathBuf::from(stdout.lines().last().expect("the archive path, last")),
            manifest: value("manifest"),
            compressed_bytes: bytes("compressed_bytes"),
            unpacked_bytes: bytes("unpacked_bytes"),
            _out: out,
        }
    }

    /// The files of the OCI layout in the archive, by name.
    fn layout(&self) -> HashMap<String, Vec<u8>> {
        let file = std::fs::File::open(&self.archive).expect("open the archive");
        read_tar(file)
            .into_iter()
            .map(|(path, entry)| (path, entry.data))
            .collect()
    }

    /// The entries of the image's one layer, found through index.json and the manifest.
    fn layer(&self) -> HashMap<String, Entry> {
        let layout = self.layout();
        let json = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&layout[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let blob = |digest: &serde_json::Value| {
            let digest = digest.as_str().expect("a digest");
            format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
        };
        let index = json("index.json");
        let manifest = json(&blob(&index["manifests"][0]["digest"]));
        let layer = &layout[&blob(&manifest["layers"][0]["digest"])];
        read_tar(flate2::read::GzDecoder::new(&layer[..]))
    }
}

struct Entry {
    uid: u64,
    gid: u64,
    data: Vec<u8>,
}

fn read_tar(reader: impl Read) -> HashMap<String, Entry> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = HashMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let header = entry.header();
        let (uid, gid) = (header.uid().expect("uid"), header.gid().expect("gid"));
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read a tar entry");
        entries.insert(
            path.trim_start_matches("./").to_string(),
            Entry { uid, gid, data },
        );
    }
    entries
}

#[test]
fn the_image_is_reproducible_and_holds_only_what_runs() {
    let first = Image::build();
    let second = Image::build();
    println!(
        "image {}: {} bytes compressed, {} bytes unpacked",
        first.manifest, first.compressed_bytes, first.unpacked_bytes
    );
    assert_ne!(
        first.archive, second.archive,
        "two --out folders, two archives"
    );
    assert_eq!(
        first.manifest, second.manifest,
        "the same binary twice, two images"
    );

    let layer = first.layer();
    for path in REQUIRED
        .iter()
        .chain(&["etc/passwd", "etc/ssl/certs/ca-certificates.crt"])
    {
        assert!(
            layer.contains_key(*path),
            "{path} is missing from the image"
        );
    }
    for path in FORBIDDEN {
        assert!(!layer.contains_key(*path), "{path} is in the image");
    }
    let passwd = String::from_utf8_lossy(&layer["etc/passwd"].data).into_owned();
    assert!(
        passwd
            .lines()
            .any(|line| line.split(':').nth(2) == Some(NONROOT_UID)),
        "no user {NONROOT_UID} in etc/passwd:\n{passwd}"
    );
    let owned = layer
        .iter()
        .find(|(_, entry)| entry.uid != 0 || entry.gid != 0);
    assert!(
        owned.is_none(),
        "{:?} is not owned by 0:0",
        owned.map(|(path, _)| path)
    );
}
