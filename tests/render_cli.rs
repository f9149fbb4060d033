//! `nodevirt render` and `nodevirt crds` as a user runs them.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::libvirt::accepted_by_libvirt;

fn nodevirt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodevirt"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run nodevirt")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_example_renders_and_libvirt_accepts_it() {
    for example in [
        "examples/vm.yaml",
        "examples/ovm.yaml",
        "examples/vmrs.yaml",
    ] {
        for hypervisor in ["kvm", "qemu"] {
            let out = nodevirt(&[
                "render",
                example,
                "--preset",
                "examples/preset.yaml",
                "--hypervisor",
                hypervisor,
            ]);
            assert!(out.status.success(), "{example}: {}", stderr(&out));
            let xml = stdout(&out);
            assert!(
                xml.contains(&format!("<domain type=\"{hypervisor}\">")),
                "{xml}"
            );
            accepted_by_libvirt(&xml);
        }
    }
}

#[test]
fn presets_apply_only_when_their_selector_matches() {
    let out = nodevirt(&["render", "examples/ovm.yaml"]);
    assert_eq!(out.status.code(), Some(2), "no memory without the preset");
    assert!(
        stderr(&out).contains("spec.domain.resources.requests.memory"),
        "{}",
        stderr(&out)
    );
    let out = nodevirt(&[
        "render",
        "examples/ovm.yaml",
        "--preset",
        "examples/preset.yaml",
    ]);
    assert!(stdout(&out).contains("<memory unit=\"KiB\">131072</memory>"));
}

#[test]
fn claims_and_state_dir_set_the_paths() {
    let out = nodevirt(&[
        "render",
        "examples/vm.yaml",
        "--state-dir",
        "/srv/nv",
        "--claim",
        "tiny-guest=/dev/sdz",
    ]);
    let xml = stdout(&out);
    assert!(
        xml.contains("/srv/nv/vms/00000000-0000-0000-0000-000000000000/volume-1.iso"),
        "{xml}"
    );
    assert!(
        xml.contains("/srv/nv/vms/00000000-0000-0000-0000-000000000000/console.log"),
        "{xml}"
    );
}

/// Writes `content` to a temp file, renders it, and returns (exit code, stderr).
fn render_text(content: &str) -> (Option<i32>, String, tempfile::TempPath) {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp");
    std::fs::write(file.path(), content).expect("write");
    let path = file.into_temp_path();
    let out = nodevirt(&["render", path.to_str().expect("utf-8 path")]);
    (out.status.code(), stderr(&out), path)
}

fn vm_yaml(domain: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: bad}}\n\
         spec:\n  domain: {domain}\n  volumes: [{{name: v, emptyDisk: {{capacity: 1Gi}}}}]\n"
    )
}

#[test]
fn bad_input_exits_2_naming_file_and_field() {
    let cases = [
        (
            vm_yaml(
                "{resources: {requests: {memory: 64Mi}}, devices: {disks: [{name: d, volumeName: v, disk: {bus: usb2}}]}}",
            ),
            "spec.domain.devices.disks[0].disk.bus: unknown value \"usb2\"; expected one of virtio, sata, scsi, ide",
        ),
        (
            vm_yaml("{resources: {requests: {memory: 64Mb}}}"),
            "spec.domain.resources.requests.memory",
        ),
        (
            vm_yaml("{resources: {requests: {memory: 64Mi}}, cpu: {cores: -2}}"),
            "spec.domain.cpu.cores",
        ),
        (
            vm_yaml(
                "{resources: {requests: {memory: 64Mi}}, devices: {disks: [{name: d, volumeName: missing}]}}",
            ),
            "spec.domain.devices.disks[0].volumeName: no volume named \"missing\"",
        ),
        (
            "apiVersion: kubevirt.io/v1alpha1\nkind: Pod\nmetadata: {name: x}\n".to_string(),
            "kind is \"kubevirt.io/v1alpha1/Pod\"",
        ),
        ("{not yaml: [".to_string(), "did not find expected"),
    ];
    for (content, expected) in cases {
        let (code, err, path) = render_text(&content);
        assert_eq!(code, Some(2), "{content}\n{err}");
        assert!(
            err.contains(path.to_str().unwrap()),
            "names the file: {err}"
        );
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = nodevirt(&["render", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does/not/exist.yaml: cannot read the file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn committed_crds_match_the_code() {
    let out = nodevirt(&["crds"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/crds.yaml"))
            .expect("docs/crds.yaml");
    assert!(
        committed == stdout(&out),
        "docs/crds.yaml is stale: run `cargo run -- crds > docs/crds.yaml`"
    );
    let deployment =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset.yaml"))
            .expect("daemonset.yaml");
    assert!(
        deployment.contains(&stdout(&out)),
        "daemonset.yaml must carry the CRDs of `nodevirt crds` verbatim"
    );
    let text = stdout(&out);
    for (plural, short) in [
        ("virtualmachines", "vm"),
        ("offlinevirtualmachines", "ovm"),
        ("virtualmachinereplicasets", "vmrs"),
        ("virtualmachinepresets", "vmpreset"),
    ] {
        assert!(text.contains(&format!("plural: {plural}")), "{plural}");
        assert!(text.contains(&format!("- {short}\n")), "{short}");
    }
}

/// `kubectl apply -k .` deploys the image of this version: kustomization.yaml's tag follows
/// Cargo.toml, and its one resource is daemonset.yaml, whose containers name that image.
#[test]
fn kustomization_deploys_this_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("kustomization.yaml")).expect("kustomization.yaml"),
    )
    .expect("kustomization.yaml is YAML");
    assert_eq!(
        kustomization["resources"],
        serde_yaml::Value::from(vec!["daemonset.yaml"])
    );
    let image = &kustomization["images"][0];
    assert_eq!(image["name"].as_str(), Some("nodevirt"));
    assert_eq!(image["newTag"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    let deployment = std::fs::read_to_string(root.join("daemonset.yaml")).unwrap();
    let images: Vec<&str> = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(
        images,
        ["nodevirt", "nodevirt"],
        "the agent's and the controller's"
    );
}
