//! Builders for the renderer's unit tests: a VM from a few lines of YAML, rendered with every
//! volume resolved to a file.

use crate::api::VirtualMachine;

use super::model::Domain;
use super::{
    DomainType, FieldError, ImageFormat, RenderOptions, ResolvedVolume, ResolvedVolumes, render,
};

/// The smallest valid spec.domain.
pub const DOMAIN: &str = "{resources: {requests: {memory: 64Mi}}}";

/// A VM `testvm` in `default` with this spec.domain and spec.volumes (YAML flow style).
pub fn vm(domain: &str, volumes: &str) -> VirtualMachine {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: testvm}}\n\
         spec:\n  domain: {domain}\n  volumes: {volumes}\n"
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// spec.domain and spec.volumes with `count` disks on `bus` (`floppy` for floppies), each on
/// an emptyDisk volume of its own.
pub fn disks(count: usize, bus: &str, machine: &str) -> (String, String) {
    let disks: Vec<String> = (0..count)
        .map(|i| match bus {
            "floppy" => format!("{{name: d{i}, volumeName: v{i}, floppy: {{}}}}"),
            _ => format!("{{name: d{i}, volumeName: v{i}, disk: {{bus: {bus}}}}}"),
        })
        .collect();
    let volumes: Vec<String> = (0..count)
        .map(|i| format!("{{name: v{i}, emptyDisk: {{capacity: 1Gi}}}}"))
        .collect();
    (
        format!(
            "{{resources: {{requests: {{memory: 64Mi}}}}, machine: {{type: {machine}}}, devices: {{disks: [{}]}}}}",
            disks.join(", ")
        ),
        format!("[{}]", volumes.join(", ")),
    )
}

/// Renders `vm` offline, every volume a raw file.
pub fn render_vm(vm: &VirtualMachine) -> Result<Domain, FieldError> {
    let volumes: ResolvedVolumes = vm
        .spec
        .volumes
        .iter()
        .map(|v| {
            let source = ResolvedVolume::File {
                path: format!("/state/{}", v.name),
                format: ImageFormat::Raw,
            };
            (v.name.clone(), source)
        })
        .collect();
    let options = RenderOptions {
        domain_type: DomainType::Qemu,
        cpu_model: Default::default(),
        network: None,
        console_log: "/state/console.log".into(),
        node: None,
    };
    render(vm, &volumes, &options)
}
