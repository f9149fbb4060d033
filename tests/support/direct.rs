//! The tiny guest defined and started straight through libvirt, without the agent: the
//! baseline the agent is compared with (`virsh start` -> DHCP lease).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nodevirt::api::VirtualMachine;
use nodevirt::api::volume::VolumeKind;
use nodevirt::domain::{DomainType, ImageFormat, RenderOptions, ResolvedVolume, render};
use nodevirt::hypervisor::Libvirt;
use nodevirt::storage::files;
use nodevirt::storage::layout::{VmLayout, resolve_volumes};

use super::cluster::{Cluster, virsh, wait_for};

pub struct DirectGuest {
    pub domain: String,
    pub layout: VmLayout,
    libvirt: Libvirt,
}

impl DirectGuest {
    /// Renders the tiny guest (a fresh copy of its image as the root claim, cloud-init with
    /// `user_data`) with nodevirt's renderer and defines it on qemu:///system.
    /// Each call gets a new UID, hence a new MAC: libvirt's dnsmasq remembers leases for an
    /// hour, and a MAC seen before would "have a lease" before the guest even boots.
    pub async fn define(cluster: &Cluster, name: &str, user_data: &str) -> DirectGuest {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let uid = &format!(
            "{:08x}-0000-4000-8000-{:012x}",
            (nanos >> 32) as u32,
            nanos as u64 & 0xffff_ffff_ffff
        );
        let state = cluster.state_root().join(format!("direct-{name}"));
        let layout = VmLayout::new(&state, uid);
        let image: PathBuf = cluster.guest_claim("default", &format!("direct-{name}"));
        let mut vm: VirtualMachine = serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: default, uid: {uid}}}\n\
             spec:\n  domain:\n    resources: {{requests: {{memory: 128Mi}}}}\n    devices:\n      disks:\n\
             \x20     - {{name: root, volumeName: root}}\n      - {{name: ci, volumeName: ci}}\n  volumes:\n\
             \x20 - {{name: root, persistentVolumeClaim: {{claimName: root}}}}\n\
             \x20 - {{name: ci, cloudInitNoCloud: {{userData: x}}}}\n"
        ))
        .unwrap();
        vm.metadata.uid = Some(uid.into());
        let claim = ResolvedVolume::File {
            path: image.display().to_string(),
            format: ImageFormat::Raw,
        };
        let volumes = resolve_volumes(&vm.spec, &layout, |_| Some(claim.clone()));
        let options = RenderOptions {
            domain_type: DomainType::Qemu,
            cpu_model: Default::default(),
            network: Some("nodevirt".into()),
            console_log: layout.console_log().display().to_string(),
            node: None,
        };
        let xml = render(&vm, &volumes, &options).unwrap().to_xml().unwrap();
        files::ensure_state_dir(&state).await.unwrap();
        files::ensure_vm_dir(&layout).await.unwrap();
        let iso = layout.volume_file(1, VolumeKind::CloudInitNoCloud);
        files::ensure_cloud_init_iso(&iso, uid, name, user_data.as_bytes())
            .await
            .unwrap();
        let libvirt = Libvirt::open("qemu:///system").unwrap();
        let domain = format!("default_{name}");
        let _ = libvirt
            .destroy(&domain)
            .and_then(|_| libvirt.undefine(&domain));
        libvirt.define(&domain, &xml).unwrap();
        DirectGuest {
            domain,
            layout,
            libvirt,
        }
    }

    /// Starts the domain; returns the time from start to a DHCP lease, and the lease.
    pub fn start_to_lease(&self, timeout: Duration) -> (Duration, String) {
        self.libvirt.start(&self.domain).unwrap();
        let started = Instant::now();
        let lease = wait_for(timeout, "a DHCP lease", || {
            let out = virsh(&["domifaddr", &self.domain, "--source", "lease"]);
            out.contains("ipv4").then_some(out)
        });
        (started.elapsed(), lease)
    }

    pub async fn remove(self) {
        self.libvirt.destroy(&self.domain).unwrap();
        self.libvirt.undefine(&self.domain).unwrap();
        files::remove_vm_dir(self.layout.dir()).await.unwrap();
    }
}
