//! Render throughput: the seed-like example VM (examples/vm.yaml, every volume kind the API
//! text shows) translated to libvirt domain XML, parse excluded; and the per-VM part of one
//! /metrics scrape with 1100 VMs (libvirt's bulk stats already read: 2 vCPUs, a NIC and two
//! drives each, every field set), the agent's share of the 20 ms a scrape may take.

use criterion::{Criterion, criterion_group, criterion_main};
use nodevirt::api::VirtualMachine;
use nodevirt::domain::{DomainType, RenderOptions, render};
use nodevirt::storage::layout::{VmLayout, resolve_volumes};

fn render_seed_like_vm(c: &mut Criterion) {
    let text = include_str!("../examples/vm.yaml");
    let mut vm: VirtualMachine = serde_yaml::from_str(text).expect("examples/vm.yaml parses");
    vm.metadata.namespace = Some("default".into());
    vm.metadata.uid = Some("0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into());
    let layout = VmLayout::new(
        std::path::Path::new("/var/lib/nodevirt"),
        "0f9b6e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
    );
    let options = RenderOptions {
        domain_type: DomainType::Kvm,
        cpu_model: Default::default(),
        network: Some("default".into()),
        console_log: layout.console_log().display().to_string(),
        node: Some("node1".into()),
    };
    c.bench_function("render_seed_like_vm", |b| {
        b.iter(|| {
            let volumes = resolve_volumes(&vm.spec, &layout, |_| None);
            let domain = render(std::hint::black_box(&vm), &volumes, &options).unwrap();
            domain.to_xml().unwrap()
        })
    });
}

fn metrics_of_1100_vms(c: &mut Criterion) {
    use nodevirt::hypervisor::stats::{Device, DomainStats, Vcpu};
    use nodevirt::metrics::{AgentMetrics, VmUsage};
    let vcpu = Vcpu {
        state: Some(1),
        time: Some(1_500_000_000),
        wait: Some(1_000),
    };
    let device = |name: &str| Device {
        name: name.into(),
        values: [Some(123_456); 8],
    };
    let usage: Vec<VmUsage> = (0..1100)
        .map(|i| VmUsage {
            namespace: "default".into(),
            name: format!("vm-{i}"),
            stats: DomainStats {
                state: Some((1, 1)),
                cpu: [Some(2_500_000_000); 3],
                balloon: [Some(131_072); 11],
                vcpus: vec![vcpu.clone(), vcpu.clone()],
                interfaces: vec![device("vnet0")],
                drives: vec![device("vda"), device("vdb")],
            },
        })
        .collect();
    let phases = vec![nodevirt::api::Phase::Running; 1100];
    let metrics = AgentMetrics::new();
    c.bench_function("metrics_of_1100_vms", |b| {
        b.iter(|| {
            metrics
                .render("node1", std::hint::black_box(&usage), &phases)
                .unwrap()
        })
    });
}

criterion_group!(benches, render_seed_like_vm, metrics_of_1100_vms);
criterion_main!(benches);
