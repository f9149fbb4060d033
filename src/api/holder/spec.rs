//! The holder pod of a VM, built from the VM (its presets already merged). Pure.
//!
//! What kube-scheduler and kubelet see of the VM is this pod: its requests (the guest's
//! memory plus QEMU's overhead, and CPU per core), the VM's nodeSelector and node affinity
//! plus `kubevirt.io/schedulable=true` (nodes with a live agent), and the VM's grace period.
//! Requests equal limits, so the pod is of the Guaranteed QoS class: kubelet evicts it last
//! under node pressure. The container only waits (`/pause --until-killed` of the nodevirt
//! image); it has no token, no service links, no privileges.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::{APP, APP_LABEL, VM_LABEL, pod_name};
use crate::api::quantity::{QuantityError, parse_bytes, parse_millicores};
use crate::api::{NODE_NAME_LABEL, SCHEDULABLE_LABEL, VirtualMachine, VirtualMachineSpec};

/// The container's name in every holder pod.
pub const CONTAINER: &str = "holder";
/// The user of the holder's process: the image's `nonroot`.
const NONROOT_UID: i64 = 65532;
/// The grace period of a VM that sets none, as the agent's.
const DEFAULT_GRACE_SECONDS: i64 = 30;
const MI: u64 = 1 << 20;

/// What the controller puts in every holder pod.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderConfig {
    /// The image whose `/pause` the container runs (the controller's own, by default).
    pub image: String,
    /// CPU requested per guest core, in millicores (the `--cpu-ratio` flag times 1000).
    pub millicores_per_core: u64,
}

/// What a VM's pod requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub memory: u64,
    pub millicores: u64,
}

/// The guest's memory (`requests`, else `limits`; 0 if neither: the agent fails such a VM)
/// and an explicit CPU request, if the VM sets one.
fn guest_resources(spec: &VirtualMachineSpec) -> Result<(u64, Option<u64>), QuantityError> {
    let resources = spec.domain.resources.clone().unwrap_or_default();
    let get = |key: &str| {
        resources
            .requests
            .get(key)
            .map(|q| (q.0.clone(), format!("spec.domain.resources.requests.{key}")))
            .or_else(|| {
                resources
                    .limits
                    .get(key)
                    .map(|q| (q.0.clone(), format!("spec.domain.resources.limits.{key}")))
            })
    };
    let memory = get("memory")
        .map(|(q, field)| parse_bytes(&q, &field))
        .transpose()?
        .unwrap_or(0);
    let cpu = get("cpu")
        .map(|(q, field)| parse_millicores(&q, &field))
        .transpose()?;
    Ok((memory, cpu))
}

fn cores(spec: &VirtualMachineSpec) -> u64 {
    u64::from(spec.domain.cpu.as_ref().and_then(|c| c.cores).unwrap_or(1))
}

/// What QEMU needs beside the guest's RAM, in bytes: KubeVirt v0.6's estimate (page tables,
/// shared libraries and QEMU itself, per-vCPU state, video RAM). docs/operations.md has what
/// it was measured against.
pub fn qemu_overhead(guest_memory: u64, cores: u64) -> u64 {
    guest_memory / 512 + 64 * MI + 8 * MI * cores + 8 * MI + 16 * MI
}

/// The pod's requests for a VM with `spec`: memory = guest + overhead; cpu = the VM's own
/// CPU request if it sets one, else its cores times the configured ratio.
pub fn requests(
    spec: &VirtualMachineSpec,
    config: &HolderConfig,
) -> Result<Requests, QuantityError> {
    let (guest, cpu) = guest_resources(spec)?;
    Ok(Requests {
        memory: guest.saturating_add(qemu_overhead(guest, cores(spec))),
        millicores: cpu.unwrap_or(cores(spec).saturating_mul(config.millicores_per_core)),
    })
}

/// The holder pod of `vm`, whose spec is the one to place (presets merged).
pub fn holder_pod(vm: &VirtualMachine, config: &HolderConfig) -> Result<Pod, QuantityError> {
    let spec = &vm.spec;
    let wanted = requests(spec, config)?;
    let name = vm.name_any();
    let mut labels: BTreeMap<String, String> = vm.labels().clone();
    labels.remove(NODE_NAME_LABEL);
    labels.insert(APP_LABEL.into(), APP.into());
    labels.insert(VM_LABEL.into(), name.clone());
    let mut node_selector = spec.node_selector.clone();
    node_selector.insert(SCHEDULABLE_LABEL.into(), "true".into());
    let quantities = BTreeMap::from([
        ("memory".to_string(), Quantity(wanted.memory.to_string())),
        (
            "cpu".to_string(),
            Quantity(format!("{}m", wanted.millicores)),
        ),
    ]);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(
                &name,
                vm.metadata.uid.as_deref().unwrap_or_default(),
            )),
            namespace: vm.namespace(),
            labels: Some(labels),
            owner_references: vm.controller_owner_ref(&()).map(|mut owner| {
                owner.block_owner_deletion = Some(true);
                vec![owner]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(config.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                // Ignores SIGTERM: the pod, and the VM's booking, last while the agent
                // shuts the guest down, until kubelet's SIGKILL at the grace period's end.
                command: Some(vec!["/pause".into(), "--until-killed".into()]),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities.clone()),
                    limits: Some(quantities),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: Some(node_selector),
            affinity: spec.affinity.as_ref().map(|a| Affinity {
                node_affinity: a.node_affinity.clone(),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(
                spec.termination_grace_period_seconds
                    .unwrap_or(DEFAULT_GRACE_SECONDS),
            ),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NONROOT_UID),
                run_as_group: Some(NONROOT_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The configuration unit tests build pods with: one CPU per core.
#[cfg(test)]
pub fn test_config() -> HolderConfig {
    HolderConfig {
        image: "nodevirt:1".into(),
        millicores_per_core: 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_config as config;

    fn vm(yaml: &str) -> VirtualMachine {
        let mut vm: VirtualMachine = serde_yaml::from_str(yaml).unwrap();
        vm.metadata.uid = Some("uid-1".into());
        vm
    }

    #[test]
    fn the_pod_asks_for_the_guest_plus_overhead_where_the_vm_may_go() {
        let vm = vm("apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\n\
             metadata: {name: testvm, namespace: ns, labels: {app: web, kubevirt.io/nodeName: stale}}\n\
             spec:\n  terminationGracePeriodSeconds: 90\n  nodeSelector: {disk: ssd}\n\
             \x20 affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: \
             {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [z1]}]}]}}}\n\
             \x20 domain: {cpu: {cores: 2}, resources: {requests: {memory: 512Mi}}}\n");
        let pod = holder_pod(&vm, &config()).unwrap();
        assert_eq!(pod.name_any(), pod_name("testvm", "uid-1"));
        assert_eq!(pod.namespace().as_deref(), Some("ns"));
        let labels = pod.labels();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get(VM_LABEL).map(String::as_str), Some("testvm"));
        assert_eq!(labels.get(APP_LABEL).map(String::as_str), Some(APP));
        assert!(
            !labels.contains_key(NODE_NAME_LABEL),
            "the pod decides the node"
        );
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("VirtualMachine", "uid-1")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.termination_grace_period_seconds, Some(90));
        let selector = spec.node_selector.unwrap();
        assert_eq!(selector.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(
            selector.get(SCHEDULABLE_LABEL).map(String::as_str),
            Some("true")
        );
        assert!(spec.affinity.unwrap().node_affinity.is_some());
        assert_eq!(spec.automount_service_account_token, Some(false));
        let resources = spec.containers[0].resources.clone().unwrap();
        // 512Mi + 1Mi page tables + 64Mi + 2 x 8Mi + 8Mi + 16Mi.
        let memory = Quantity(((512 + 1 + 64 + 16 + 8 + 16) * MI).to_string());
        assert_eq!(resources.requests.as_ref().unwrap()["memory"], memory);
        assert_eq!(
            resources.requests.as_ref().unwrap()["cpu"],
            Quantity("2000m".into())
        );
        assert_eq!(resources.requests, resources.limits, "Guaranteed QoS");
    }

    #[test]
    fn cpu_is_the_vms_own_request_else_cores_times_the_ratio() {
        let ratio = HolderConfig {
            millicores_per_core: 250,
            ..config()
        };
        let spec = |yaml: &str| vm(yaml).spec;
        let base = "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: a}\nspec:\n  domain: ";
        let wanted = |domain: &str| requests(&spec(&format!("{base}{domain}\n")), &ratio).unwrap();
        assert_eq!(wanted("{cpu: {cores: 4}}").millicores, 1000);
        assert_eq!(wanted("{}").millicores, 250, "one core by default");
        assert_eq!(
            wanted("{cpu: {cores: 4}, resources: {requests: {cpu: 300m}}}").millicores,
            300
        );
        assert_eq!(
            wanted("{resources: {limits: {memory: 1Gi}}}").memory,
            1024 * MI + qemu_overhead(1024 * MI, 1)
        );
        let err = requests(
            &spec(&format!(
                "{base}{{resources: {{requests: {{memory: lots}}}}}}\n"
            )),
            &ratio,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.domain.resources.requests.memory"),
            "{err}"
        );
    }
}
