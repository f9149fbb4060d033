//! Render throughput: the seed-like example VM (examples/vm.yaml, every volume kind the API
//! text shows) translated to libvirt domain XML, parse excluded.

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

criterion_group!(benches, render_seed_like_vm);
criterion_main!(benches);
