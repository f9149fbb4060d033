//! VirtualMachines in end-to-end tests: manifests, and reading them back with kubectl.

use std::time::Duration;

use nodevirt::domain::names::domain_name;
use nodevirt::storage::layout::VmLayout;

use super::agent::Agent;
use super::cluster::{Cluster, virsh, wait_for_explained};

/// How long a tiny guest may take to boot under TCG on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(180);

pub struct Vm<'a> {
    pub ns: &'a str,
    pub name: &'a str,
}

impl Vm<'_> {
    /// A field of the VM (`kubectl get -o jsonpath`). Panics when kubectl fails, the VM's
    /// absence included, so an empty answer is an empty field, never "kubectl did not answer";
    /// [`Vm::exists`] is for callers that expect the VM to be gone.
    pub fn get(&self, jsonpath: &str) -> String {
        Cluster::get().kubectl_ok(&[
            "-n",
            self.ns,
            "get",
            "vm",
            self.name,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
    }

    /// Whether the VM exists; panics when kubectl fails for any other reason than its absence.
    pub fn exists(&self) -> bool {
        let name = Cluster::get().kubectl_ok(&[
            "-n",
            self.ns,
            "get",
            "vm",
            self.name,
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        !name.trim().is_empty()
    }

    pub fn phase(&self) -> String {
        self.get("{.status.phase}")
    }

    pub fn wait_phase(&self, phase: &str, timeout: Duration) {
        wait_for_explained(
            timeout,
            &format!("VM {}/{} to be {phase}", self.ns, self.name),
            || (self.phase() == phase).then_some(()),
            || self.describe(),
        );
    }

    /// `kubectl describe`: status, conditions and events, for failure messages.
    pub fn describe(&self) -> String {
        let out = Cluster::get().kubectl(&["-n", self.ns, "describe", "vm", self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self) -> String {
        self.get("{.status.interfaces[0].ipAddress}")
    }

    /// Waits until the VM's status reports an IP, and returns it.
    pub fn wait_ip(&self, timeout: Duration) -> String {
        wait_for_explained(
            timeout,
            &format!("an IP in the status of VM {}/{}", self.ns, self.name),
            || Some(self.ip()).filter(|ip| !ip.is_empty()),
            || self.describe(),
        )
    }

    pub fn uid(&self) -> String {
        self.get("{.metadata.uid}")
    }

    pub fn domain(&self) -> String {
        domain_name(self.ns, self.name)
    }

    pub fn condition_message(&self) -> String {
        self.get("{.status.conditions[?(@.type==\"Ready\")].message}")
    }
}

/// A VM on `node` whose root disk is `root` (a volume source in YAML flow style), with
/// cloud-init user-data and a scratch emptyDisk.
pub fn vm_yaml(ns: &str, name: &str, node: &str, root: &str, cloud_init: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {ns}
  labels: {{kubevirt.io/nodeName: {node}}}
spec:
  terminationGracePeriodSeconds: 2
  domain:
    resources: {{requests: {{memory: 128Mi}}}}
    devices:
      disks:
      - {{name: root, volumeName: root, disk: {{bus: virtio}}}}
      - {{name: cloudinit, volumeName: cloudinit, disk: {{bus: virtio}}}}
      - {{name: scratch, volumeName: scratch, disk: {{bus: virtio}}}}
  volumes:
  - {{name: root, {root}}}
  - {{name: cloudinit, cloudInitNoCloud: {cloud_init}}}
  - {{name: scratch, emptyDisk: {{capacity: 1Gi}}}}
"#
    )
}

/// A VM on `node` whose guest ignores ACPI: a QEMU domain with no disk, where SeaBIOS finds
/// nothing to boot and no OS answers the power button, as a hung or acpid-less guest would not.
/// Its deletion waits out the whole `grace` period (seconds).
pub fn deaf_vm_yaml(ns: &str, name: &str, node: &str, grace: u32) -> String {
    format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubevirt.io/nodeName: {node}}}}}\n\
         spec:\n  terminationGracePeriodSeconds: {grace}\n  domain: {{resources: {{requests: {{memory: 32Mi}}}}}}\n"
    )
}

pub fn user_data(script: &str) -> String {
    format!(
        "{{userData: {}}}",
        serde_json::to_string(&format!("#!/bin/sh\n{script}\n")).unwrap()
    )
}

pub fn console_log(agent: &Agent, uid: &str) -> String {
    std::fs::read_to_string(VmLayout::new(&agent.state_dir, uid).console_log()).unwrap_or_default()
}

/// Whether the test cluster's libvirtd has a domain named `domain`, running or not. From a
/// listing that succeeded: `false` means absent, never "libvirtd did not answer" (that panics).
pub fn domain_exists(domain: &str) -> bool {
    virsh(&["list", "--all", "--name"])
        .lines()
        .any(|l| l.trim() == domain)
}

/// The "domain gone" check: libvirtd answered, and has no domain named `domain`.
pub fn domain_absent(domain: &str) -> bool {
    !domain_exists(domain)
}
