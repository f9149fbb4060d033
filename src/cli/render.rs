//! `nodevirt render`: a VM manifest (plus presets) -> libvirt domain XML, offline.

use std::path::{Path, PathBuf};

use kube::{Resource, ResourceExt};

use crate::api::preset::{self, PresetError};
use crate::api::{
    OfflineVirtualMachine, VirtualMachine, VirtualMachinePreset, VirtualMachineReplicaSet,
};
use crate::domain::names::check_uid;
use crate::domain::{CpuModel, FieldError, ImageFormat, RenderOptions, ResolvedVolume, render};
use crate::storage::layout::{DEFAULT_STATE_DIR, VmLayout, offline_claim_image, resolve_volumes};

use super::DomainTypeArg;
use super::manifest::{Manifest, ManifestError};

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// A VirtualMachine manifest (YAML or JSON), or an OfflineVirtualMachine or
    /// VirtualMachineReplicaSet, whose template is rendered as the VM it would create.
    pub file: PathBuf,
    /// A VirtualMachinePreset manifest to apply first, if its selector matches; repeatable.
    #[arg(long = "preset", value_name = "FILE")]
    pub presets: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = DomainTypeArg::Kvm)]
    pub hypervisor: DomainTypeArg,
    /// The guest CPU under kvm, as the agent's --cpu-model.
    #[arg(long, default_value = "host-model")]
    pub cpu_model: CpuModel,
    /// Where the agent keeps generated disks; their paths in the XML start here.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The libvirt network of the guest's NIC.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// The image of a persistentVolumeClaim, as the agent would find it on the node:
    /// CLAIM=PATH (a file, or a block device under /dev). Without it, a claim renders as
    /// <state-dir>/claims/<claim>/disk.img.
    #[arg(long = "claim", value_name = "CLAIM=PATH", value_parser = parse_claim)]
    pub claims: Vec<(String, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: {source}")]
    Preset {
        path: PathBuf,
        #[source]
        source: PresetError,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: FieldError,
    },
    #[error("{path}: serializing the domain XML")]
    Serialize {
        path: PathBuf,
        #[source]
        source: quick_xml::SeError,
    },
}

fn parse_claim(arg: &str) -> Result<(String, PathBuf), String> {
    let (claim, path) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: expected CLAIM=PATH"))?;
    Ok((claim.to_string(), PathBuf::from(path)))
}

pub fn run(args: &RenderArgs) -> Result<String, RenderError> {
    let manifest = Manifest::read(&args.file)?;
    let presets = args
        .presets
        .iter()
        .map(|path| Manifest::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    render_manifest(&manifest, &presets, args)
}

/// What `run` does once the files are read: the VM of `manifest` (a VirtualMachine or a
/// template kind), the matching `presets` applied, its volumes resolved as `args` say, as
/// domain XML. `args.file` and `args.presets` are not read again.
pub fn render_manifest(
    manifest: &Manifest,
    presets: &[Manifest],
    args: &RenderArgs,
) -> Result<String, RenderError> {
    let path = &manifest.path;
    let mut vm = load_vm(manifest)?;
    let mut preset_objects = Vec::new();
    for preset in presets {
        let mut preset: VirtualMachinePreset = preset.parse(&VirtualMachinePreset::kind(&()))?;
        // Presets apply within a namespace; a file without one is taken as the VM's.
        preset.metadata.namespace = preset.metadata.namespace.or(vm.metadata.namespace.clone());
        if preset.metadata.namespace == vm.metadata.namespace {
            preset_objects.push(preset);
        }
    }
    let merged = preset::apply(&vm, &preset_objects).map_err(|source| RenderError::Preset {
        path: path.clone(),
        source,
    })?;
    for notice in &merged.notices {
        eprintln!("warning: {}: {notice}", path.display());
    }
    vm = merged.vm;
    let invalid = |source| RenderError::Invalid {
        path: path.clone(),
        source,
    };
    let uid = vm
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
    check_uid(&uid, "metadata.uid").map_err(invalid)?;
    let layout = VmLayout::new(&args.state_dir, &uid);
    let volumes = resolve_volumes(&vm.spec, &layout, |claim| Some(claim_source(args, claim)));
    let options = RenderOptions {
        domain_type: args.hypervisor.into(),
        cpu_model: args.cpu_model.clone(),
        network: Some(args.network.clone()),
        console_log: layout.console_log().display().to_string(),
        node: None,
    };
    let domain = render(&vm, &volumes, &options).map_err(invalid)?;
    domain.to_xml().map_err(|source| RenderError::Serialize {
        path: path.clone(),
        source,
    })
}

const RENDERABLE: &str = "VirtualMachine, OfflineVirtualMachine or VirtualMachineReplicaSet";

fn load_vm(manifest: &Manifest) -> Result<VirtualMachine, ManifestError> {
    if manifest.is::<OfflineVirtualMachine>() {
        let ovm: OfflineVirtualMachine = manifest.parse(RENDERABLE)?;
        return Ok(ovm
            .spec
            .template
            .instantiate(&ovm.name_any(), ovm.metadata.namespace.clone()));
    }
    if manifest.is::<VirtualMachineReplicaSet>() {
        let vmrs: VirtualMachineReplicaSet = manifest.parse(RENDERABLE)?;
        return Ok(vmrs
            .spec
            .template
            .instantiate(&vmrs.name_any(), vmrs.metadata.namespace.clone()));
    }
    manifest.parse(RENDERABLE)
}

fn claim_source(args: &RenderArgs, claim: &str) -> ResolvedVolume {
    let path = args
        .claims
        .iter()
        .find(|(name, _)| name == claim)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| offline_claim_image(&args.state_dir, claim));
    if path.starts_with(Path::new("/dev")) {
        ResolvedVolume::Block {
            path: path.display().to_string(),
        }
    } else {
        ResolvedVolume::File {
            path: path.display().to_string(),
            format: ImageFormat::Raw,
        }
    }
}
