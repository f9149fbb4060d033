//! The committed fuzz seeds (fuzz/corpus/) replayed on the stable toolchain through the same
//! functions the fuzz targets call (nodevirt::fuzzing), so `cargo test` covers them without
//! cargo-fuzz or nightly. Every XML a seed renders is also checked by libvirt itself.

mod support;

use std::path::{Path, PathBuf};

use nodevirt::fuzzing::{AdminHarness, RenderOutcome, render_manifest_bytes};
use support::libvirt::accepted_by_libvirt;

/// The seeds of one target, sorted by file name.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn render_manifest_seeds() {
    let mut rendered = Vec::new();
    for (path, bytes) in seeds("render_manifest") {
        match render_manifest_bytes(&bytes) {
            Err(bug) => panic!("{}: {bug}", path.display()),
            Ok(RenderOutcome::Rendered(xml)) => {
                accepted_by_libvirt(&xml);
                rendered.push(name(&path));
            }
            Ok(RenderOutcome::Refused(_) | RenderOutcome::NotText) => {}
        }
    }
    // The examples and the edge cases meant to be valid render; the others are refused.
    for valid in [
        "example-vm.yaml",
        "ovm-with-preset.yaml",
        "minimal.yaml",
        "every-device.yaml",
        "ide-on-pc.yaml",
        "clock-and-features.yaml",
        "utc-offset.json",
    ] {
        assert!(
            rendered.iter().any(|r| r == valid),
            "{valid} did not render; rendered: {rendered:?}"
        );
    }
}

#[test]
fn admin_request_seeds() {
    let harness = AdminHarness::new().expect("the admin harness on test:///default");
    for (path, bytes) in seeds("admin_request") {
        let answer = harness
            .exchange(&bytes)
            .unwrap_or_else(|bug| panic!("{}: {bug}", path.display()));
        let answer = String::from_utf8_lossy(&answer);
        // The seeds of the paths that exist on the harness's VM are answered with success.
        let expected = match name(&path).as_str() {
            "list.http" | "show.http" | "console.http" | "health.http" | "pipelined.http" => {
                Some("200")
            }
            "resync.http" => Some("202"),
            "xml.http" | "not-found.http" | "console-bad-uid.http" => Some("404"),
            "console-huge-lines.http"
            | "console-negative.http"
            | "bad-percent.http"
            | "percent-encoded.http" => Some("400"),
            "wrong-method.http" => Some("405"),
            _ => None,
        };
        if let Some(status) = expected {
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} "))
                    || answer.starts_with(&format!("HTTP/1.0 {status} ")),
                "{}: expected {status}, got:\n{answer}",
                path.display()
            );
        }
    }
}
