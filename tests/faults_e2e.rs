//! Faults the agent must survive without losing or mixing up anything, on the real cluster:
//! SIGKILL at random moments (many VMs on libvirtd's test driver plus real QEMU guests),
//! a VM deleted and re-created under the same name mid-reconcile, and a full state disk.
//! The kill test's size comes from NODEVIRT_SOAK_KILLS / NODEVIRT_SOAK_VMS (hack/soak.sh runs
//! it long; hack/test.sh short).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nodevirt::domain::names::domain_name;
use nodevirt::storage::layout::vms_dir;
use support::agent::{Agent, NodeOptions};
use support::cluster::{Cluster, unique_suffix, virsh_on, wait_for};
use support::registry::Registry;
use support::vm::{BOOT, Vm, user_data, vm_yaml};

/// libvirtd's own test driver: its domains live in the daemon, so they outlive the agent
/// (test:///default would die with the agent's process) — as long as some connection holds
/// the driver's state: libvirtd frees it when its last client disconnects.
const TEST_DRIVER: &str = "test+unix:///default";

/// A connection that keeps the test driver's domains alive while agents are killed.
fn hold_test_driver() -> virt::connect::Connect {
    virt::connect::Connect::open(Some(TEST_DRIVER)).expect("libvirtd's test driver")
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator: the kill moments vary between runs, and the seed is printed
/// so a failing run can be replayed with NODEVIRT_SOAK_SEED.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("NODEVIRT_SOAK_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill moments: NODEVIRT_SOAK_SEED={seed}");
        Moments(seed)
    }

    fn below(&mut self, max_millis: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(self.0 % max_millis.max(1))
    }
}

/// Running domains of namespace `ns` on `uri`: name -> domain ID.
fn running_domains(uri: &str, ns: &str) -> BTreeMap<String, String> {
    virsh_on(uri, &["list"])
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let id = cols.next()?;
            let name = cols.next()?;
            name.starts_with(&format!("{ns}_"))
                .then(|| (name.to_string(), id.to_string()))
        })
        .collect()
}

/// Every domain of namespace `ns` on `uri`, running or not.
fn all_domains(uri: &str, ns: &str) -> BTreeSet<String> {
    virsh_on(uri, &["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(&format!("{ns}_")))
        .map(str::to_string)
        .collect()
}

/// `name -> phase` of the VMs of a namespace, in one request.
fn phases(cluster: &Cluster, ns: &str) -> BTreeMap<String, String> {
    let out = cluster.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "vms",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(name, phase)| (name.to_string(), phase.to_string()))
        .collect()
}

fn uids(cluster: &Cluster, ns: &str) -> BTreeSet<String> {
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "vms",
            "-o",
            "jsonpath={.items[*].metadata.uid}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn vm_folders(state_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(vms_dir(state_dir))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A VM for the test driver: no claim, small disks.
fn light_vm(ns: &str, name: &str, node: &str) -> String {
    vm_yaml(
        ns,
        name,
        node,
        "emptyDisk: {capacity: 64Mi}",
        &user_data(&format!("echo {name}")),
    )
}

#[test]
fn killing_the_agent_at_random_moments_restarts_and_leaks_nothing() {
    let kills = env_count("NODEVIRT_SOAK_KILLS", 4);
    let light = env_count("NODEVIRT_SOAK_VMS", 20);
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-kill");
    let _holder = hold_test_driver();
    let mut fake = Agent::start_with(
        cluster,
        "kill-test",
        NodeOptions {
            libvirt_uri: TEST_DRIVER,
            ..Default::default()
        },
    );
    let mut real = Agent::start(cluster, "kill-qemu");
    cluster.guest_claim(&ns.name, "guest-a");
    cluster.guest_claim(&ns.name, "guest-b");
    let guests = ["guest-a", "guest-b"];
    let manifests: Vec<String> = guests
        .iter()
        .map(|claim| {
            vm_yaml(
                &ns.name,
                claim,
                &real.node,
                &format!("persistentVolumeClaim: {{claimName: {claim}}}"),
                &user_data("echo up"),
            )
        })
        .chain((0..light).map(|i| light_vm(&ns.name, &format!("light-{i}"), &fake.node)))
        .collect();
    let mut moments = Moments::new();
    let mut next_light = light;
    let mut restarted = 0;
    let started = Instant::now();
    // Round 0 kills while the first VMs are being created; every later round creates and
    // deletes a few more, so that each kill lands while reconciles are in flight.
    cluster.apply(&manifests.join("---\n"));
    for round in 0..kills {
        let before_fake = running_domains(TEST_DRIVER, &ns.name);
        let before_real: BTreeMap<String, (String, String)> =
            running_domains("qemu:///system", &ns.name)
                .into_iter()
                .map(|(name, id)| {
                    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
                        .unwrap_or_default();
                    (name, (id, pid.trim().to_string()))
                })
                .collect();
        if round > 0 {
            let new: Vec<String> = (next_light..next_light + 3)
                .map(|i| light_vm(&ns.name, &format!("light-{i}"), &fake.node))
                .collect();
            next_light += 3;
            cluster.apply(&new.join("---\n"));
            let old = format!("light-{}", round - 1);
            cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", &old, "--wait=false"]);
        }
        std::thread::sleep(moments.below(1500));
        fake.kill();
        real.kill();
        fake.restart();
        real.restart();
        let mut last = String::new();
        let converged = Instant::now();
        loop {
            let phases = phases(cluster, &ns.name);
            let waiting: Vec<_> = phases.iter().filter(|(_, p)| *p != "Running").collect();
            let domains = all_domains(TEST_DRIVER, &ns.name);
            let expected: BTreeSet<String> = phases
                .keys()
                .filter(|name| name.starts_with("light-"))
                .map(|name| domain_name(&ns.name, name))
                .collect();
            if waiting.is_empty() && domains == expected {
                break;
            }
            last = format!(
                "not Running: {waiting:?}; domains without VM: {:?}; VMs without domain: {:?}",
                domains.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&domains).collect::<Vec<_>>()
            );
            assert!(
                converged.elapsed() < BOOT,
                "round {round}: no convergence after the restart: {last}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(last);
        for (name, id) in &before_fake {
            let after = running_domains(TEST_DRIVER, &ns.name);
            if let Some(now) = after.get(name)
                && now != id
            {
                restarted += 1;
                eprintln!("round {round}: {name} restarted (ID {id} -> {now})");
            }
        }
        let after_real = running_domains("qemu:///system", &ns.name);
        for (name, (id, pid)) in &before_real {
            let now_pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
                .unwrap_or_default();
            if after_real.get(name) != Some(id) || now_pid.trim() != pid {
                restarted += 1;
                eprintln!("round {round}: {name} restarted (QEMU PID {pid} -> {now_pid})");
            }
        }
    }
    assert_eq!(restarted, 0, "running domains were restarted");
    // No file leaked: only live VMs keep a folder (orphans go at the agent's next cleanup).
    let live = uids(cluster, &ns.name);
    wait_for(
        Duration::from_secs(90),
        "only live VMs to keep folders",
        || {
            let folders: BTreeSet<String> = vm_folders(&fake.state_dir)
                .union(&vm_folders(&real.state_dir))
                .cloned()
                .collect();
            (folders == live).then_some(())
        },
    );
    eprintln!(
        "soak: {kills} kills, {} VMs at the end, 0 restarted, 0 leaked, {:.1}s",
        live.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_vm_recreated_under_the_same_name_mid_reconcile_is_never_mixed_up() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-churn");
    let agent = Agent::start_with(
        cluster,
        "churn",
        NodeOptions {
            libvirt_uri: TEST_DRIVER,
            ..Default::default()
        },
    );
    let vm = Vm {
        ns: &ns.name,
        name: "same-name",
    };
    let mut moments = Moments::new();
    let mut seen_uids = Vec::new();
    for _ in 0..6 {
        cluster.apply(&light_vm(vm.ns, vm.name, &agent.node));
        seen_uids.push(vm.uid());
        std::thread::sleep(moments.below(800));
        // Deleted for good at once: the finalizer is stripped, as a force delete would.
        cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name, "--wait=false"]);
        cluster.kubectl(&[
            "-n",
            vm.ns,
            "patch",
            "vm",
            vm.name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        wait_for(Duration::from_secs(10), "the VM to be gone", || {
            (!vm.exists()).then_some(())
        });
    }
    cluster.apply(&light_vm(vm.ns, vm.name, &agent.node));
    let last = vm.uid();
    vm.wait_phase("Running", Duration::from_secs(60));
    let uuid = virsh_on(TEST_DRIVER, &["domuuid", &vm.domain()]);
    assert_eq!(uuid.trim(), last, "the domain belongs to another VM");
    assert_eq!(
        vm.get("{.status.nodeName}"),
        agent.node,
        "status of the newest VM"
    );
    // The earlier VMs' status never landed on the newest one, and their files are gone.
    assert!(!seen_uids.contains(&last));
    wait_for(
        Duration::from_secs(90),
        "only the newest VM's folder",
        || (vm_folders(&agent.state_dir) == BTreeSet::from([last.clone()])).then_some(()),
    );
    let ready = vm.get("{.status.conditions[?(@.type==\"Ready\")].status}");
    assert_eq!(ready, "True");
}

/// A VM with one disk from `root` and nothing else.
fn bare_vm(ns: &str, name: &str, node: &str, root: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}, namespace: {ns}, labels: {{kubevirt.io/nodeName: {node}}}}}
spec:
  domain:
    resources: {{requests: {{memory: 64Mi}}}}
    devices: {{disks: [{{name: root, volumeName: root, disk: {{bus: virtio}}}}]}}
  volumes: [{{name: root, {root}}}]
"#
    )
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(cluster: &Cluster, size: &str) -> Tmpfs {
        let dir = cluster.dir.join(format!("tmpfs-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Files a crash or a failed write could leave behind.
fn half_written(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("partial") || name.starts_with(".pull-") {
                found.push(path.clone());
            }
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn a_full_state_disk_fails_only_the_vm_that_needs_the_space() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-full");
    let registry = Registry::start(cluster, false);
    // Room for a cloud-init ISO and an empty qcow2, not for the registry image.
    let tmpfs = Tmpfs::mount(cluster, "4m");
    let agent = Agent::start_with(
        cluster,
        "full",
        NodeOptions {
            libvirt_uri: TEST_DRIVER,
            insecure_registries: &[&registry.address],
            state_dir: Some(&tmpfs.0),
            ..Default::default()
        },
    );
    let big = Vm {
        ns: &ns.name,
        name: "needs-room",
    };
    let small = Vm {
        ns: &ns.name,
        name: "fits",
    };
    cluster.apply(&bare_vm(
        big.ns,
        big.name,
        &agent.node,
        &format!("registryDisk: {{image: \"{}\"}}", registry.image()),
    ));
    cluster.apply(&bare_vm(
        small.ns,
        small.name,
        &agent.node,
        "emptyDisk: {capacity: 1Mi}",
    ));
    big.wait_phase("Failed", Duration::from_secs(60));
    let message = big.condition_message();
    let reason = big.get("{.status.conditions[?(@.type==\"Ready\")].reason}");
    assert_eq!(reason, "StorageFailed", "{message}");
    assert!(
        message.contains("spec.volumes[0].registryDisk")
            && message.contains("No space left on device"),
        "{message}"
    );
    let events = cluster.kubectl_ok(&["-n", big.ns, "describe", "vm", big.name]);
    assert!(events.contains("No space left on device"), "{events}");
    small.wait_phase("Running", Duration::from_secs(60));
    assert!(
        !all_domains(TEST_DRIVER, &ns.name).contains(&big.domain()),
        "a domain was defined for the VM without its disk"
    );
    assert_eq!(half_written(&tmpfs.0), Vec::<PathBuf>::new());
}
