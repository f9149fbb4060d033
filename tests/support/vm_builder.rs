//! Builds VMs from YAML fragments and renders them as the agent would; every XML it returns
//! has been accepted by libvirt.

use std::path::Path;

use nodevirt::api::{VirtualMachine, VirtualMachineSpec};
use nodevirt::domain::{
    DomainType, FieldError, ImageFormat, RenderOptions, ResolvedVolume, render,
};
use nodevirt::storage::layout::{DEFAULT_STATE_DIR, VmLayout, claim_image, resolve_volumes};

use super::libvirt::accepted_by_libvirt;

pub const UID: &str = "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

/// Builds a VM from YAML fragments of its spec; volumes are resolved as the agent would.
pub struct VmBuilder {
    domain: String,
    volumes: String,
    name: String,
    block_claims: bool,
}

impl VmBuilder {
    pub fn new() -> Self {
        Self {
            domain: "resources: {requests: {memory: 64Mi}}".into(),
            volumes: "[]".into(),
            name: "testvm".into(),
            block_claims: false,
        }
    }

    /// Replaces spec.domain (as YAML flow or block text).
    pub fn domain(mut self, yaml: &str) -> Self {
        self.domain = yaml.into();
        self
    }

    /// Adds to spec.domain, keeping the default memory request.
    pub fn with(self, yaml: &str) -> Self {
        let domain = format!("resources: {{requests: {{memory: 64Mi}}}}\n{yaml}");
        self.domain(&domain)
    }

    pub fn volumes(mut self, yaml: &str) -> Self {
        self.volumes = yaml.into();
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Claims resolve to block devices (volumeMode: Block) instead of disk.img files.
    pub fn block_claims(mut self) -> Self {
        self.block_claims = true;
        self
    }

    pub fn vm(&self) -> VirtualMachine {
        let domain: serde_yaml::Value = serde_yaml::from_str(&self.domain).expect("domain yaml");
        let volumes: serde_yaml::Value = serde_yaml::from_str(&self.volumes).expect("volumes yaml");
        let spec: VirtualMachineSpec = serde_yaml::from_value(serde_yaml::Value::Mapping(
            [("domain".into(), domain), ("volumes".into(), volumes)]
                .into_iter()
                .collect(),
        ))
        .expect("spec");
        let mut vm = VirtualMachine::new(&self.name, spec);
        vm.metadata.namespace = Some("default".into());
        vm.metadata.uid = Some(UID.into());
        vm
    }

    pub fn render(&self) -> Result<String, FieldError> {
        let vm = self.vm();
        let layout = VmLayout::new(Path::new(DEFAULT_STATE_DIR), UID);
        let block = self.block_claims;
        let volumes = resolve_volumes(&vm.spec, &layout, |claim| {
            Some(if block {
                ResolvedVolume::Block {
                    path: "/dev/loop7".into(),
                }
            } else {
                ResolvedVolume::File {
                    path: claim_image(&Path::new("/srv/claims").join(claim))
                        .display()
                        .to_string(),
                    format: ImageFormat::Raw,
                }
            })
        });
        let options = RenderOptions {
            domain_type: DomainType::Qemu,
            cpu_model: Default::default(),
            network: Some("default".into()),
            console_log: layout.console_log().display().to_string(),
            node: Some("node1".into()),
        };
        let domain = render(&vm, &volumes, &options)?;
        Ok(domain.to_xml().expect("serialize"))
    }

    /// Renders, checks libvirt accepts the XML, and returns it.
    pub fn xml(&self) -> String {
        let xml = self
            .render()
            .unwrap_or_else(|e| panic!("render failed: {e}"));
        accepted_by_libvirt(&xml);
        xml
    }

    pub fn error(&self) -> FieldError {
        match self.render() {
            Ok(xml) => panic!("expected an error, rendered:\n{xml}"),
            Err(e) => e,
        }
    }
}
