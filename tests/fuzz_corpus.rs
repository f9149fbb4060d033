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

/// What a render_manifest seed must come to.
enum Render {
    /// Renders, and libvirt accepts the XML.
    Rendered,
    /// Refused with a message that says this: the field at fault, or what is wrong.
    Refused(&'static str),
}

/// Every render_manifest seed and its outcome, sorted by name: a seed without one fails.
const RENDER_SEEDS: &[(&str, Render)] = &[
    (
        "bad-bus.yaml",
        Render::Refused("spec.domain.devices.disks[0].disk.bus: unknown value \"usb2\""),
    ),
    ("clock-and-features.yaml", Render::Rendered),
    ("every-device.yaml", Render::Rendered),
    // Its memory comes from a preset (kubevirt.io/size: small), and none is given.
    (
        "example-ovm.yaml",
        Render::Refused("spec.domain.resources.requests.memory: required"),
    ),
    (
        "example-preset.yaml",
        Render::Refused("kind is \"kubevirt.io/v1alpha1/VirtualMachinePreset\""),
    ),
    ("example-vm.yaml", Render::Rendered),
    (
        "example-vmrs.yaml",
        Render::Refused("spec.domain.resources.requests.memory: required"),
    ),
    ("ide-on-pc.yaml", Render::Rendered),
    ("minimal.yaml", Render::Rendered),
    (
        "names-and-uid.yaml",
        Render::Refused("metadata.uid: \"../../etc/passwd\" is not a UUID"),
    ),
    ("not-yaml.yaml", Render::Refused("at line 2 column 1")),
    ("ovm-with-preset.yaml", Render::Rendered),
    (
        "presets-conflict.yaml",
        Render::Refused("presets 'b' and 'a' conflict: spec.domain.cpu.cores: 3 != 2"),
    ),
    (
        "quantities.yaml",
        Render::Refused("spec.volumes[0].emptyDisk.capacity: must be larger than 0"),
    ),
    ("utc-offset.json", Render::Rendered),
    ("wrong-kind.yaml", Render::Refused("kind is \"v1/Pod\"")),
];

/// Every admin_request seed, sorted by name, and the status of each response it gets.
const ADMIN_SEEDS: &[(&str, &[u16])] = &[
    ("bad-percent.http", &[400]),
    ("console-bad-uid.http", &[404]),
    ("console-huge-lines.http", &[400]),
    ("console-negative.http", &[400]),
    ("console.http", &[200]),
    ("garbage.http", &[400]),
    ("health.http", &[200]),
    ("list.http", &[200]),
    ("not-found.http", &[404]),
    ("percent-encoded.http", &[400]),
    ("pipelined.http", &[200, 200, 202]),
    ("resync-chunked.http", &[404]),
    ("resync.http", &[202]),
    ("show.http", &[200]),
    ("wrong-method.http", &[405]),
    ("xml.http", &[404]),
];

/// The seeds of `target` with their expected outcomes from `table`, which must name exactly
/// the seeds there are: a new seed needs an outcome, a renamed or deleted one its entry gone.
fn with_outcomes<'t, T>(target: &str, table: &'t [(&str, T)]) -> Vec<(PathBuf, Vec<u8>, &'t T)> {
    let seeds = seeds(target);
    let names: Vec<String> = seeds.iter().map(|(path, _)| name(path)).collect();
    let listed: Vec<&str> = table.iter().map(|(listed, _)| *listed).collect();
    assert_eq!(
        names, listed,
        "the seeds of {target} and their table, both sorted by name"
    );
    seeds
        .into_iter()
        .zip(table)
        .map(|((path, bytes), (_, outcome))| (path, bytes, outcome))
        .collect()
}

#[test]
fn render_manifest_seeds() {
    for (path, bytes, expected) in with_outcomes("render_manifest", RENDER_SEEDS) {
        let outcome =
            render_manifest_bytes(&bytes).unwrap_or_else(|bug| panic!("{}: {bug}", path.display()));
        match (expected, outcome) {
            (Render::Rendered, RenderOutcome::Rendered(xml)) => accepted_by_libvirt(&xml),
            (Render::Refused(because), RenderOutcome::Refused(error)) => {
                let message = error.to_string();
                assert!(
                    message.contains(because),
                    "{}: refused with {message:?}, expected a message saying {because:?}",
                    path.display()
                );
            }
            (Render::Rendered, RenderOutcome::Refused(error)) => {
                panic!("{}: expected to render, refused: {error}", path.display())
            }
            (Render::Refused(because), RenderOutcome::Rendered(_)) => panic!(
                "{}: rendered, expected a refusal saying {because:?}",
                path.display()
            ),
            (_, RenderOutcome::NotText) => panic!("{}: a seed that is not UTF-8", path.display()),
        }
    }
}

#[test]
fn admin_request_seeds() {
    let harness = AdminHarness::new().expect("the admin harness on test:///default");
    for (path, bytes, expected) in with_outcomes("admin_request", ADMIN_SEEDS) {
        let answer = harness
            .exchange(&bytes)
            .unwrap_or_else(|bug| panic!("{}: {bug}", path.display()));
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            statuses(&answer),
            expected.to_vec(),
            "{}: the statuses of its responses; got:\n{answer}",
            path.display()
        );
    }
}

/// The status codes of the HTTP/1.x responses in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.")
        .filter_map(|(at, _)| answer.get(at + "HTTP/1.x ".len()..at + "HTTP/1.x 200".len()))
        .filter_map(|code| code.parse().ok())
        .collect()
}
