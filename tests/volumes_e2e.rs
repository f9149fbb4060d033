//! Volumes and disks on the real cluster: registryDisk from a real registry (anonymous and
//! with a pull secret, cached by digest), claims that bind late, capacity and name checks, and
//! every disk kind showing up inside the guest.

mod support;

use std::time::Duration;

use nodevirt::storage::layout::{VmLayout, vms_dir};
use support::agent::{Agent, NodeOptions};
use support::cluster::Cluster;
use support::registry::{PASSWORD, Registry, USER};
use support::vm::{BOOT, Vm, console_log, user_data, vm_yaml};

#[test]
fn registry_disks_boot_are_pulled_once_and_use_pull_secrets() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-reg");
    let open = Registry::start(cluster, false);
    let locked = Registry::start(cluster, true);
    let agent = Agent::start_with(
        cluster,
        "reg",
        NodeOptions {
            insecure_registries: &[&open.address, &locked.address],
            ..Default::default()
        },
    );
    let root = |image: &str, secret: &str| format!("registryDisk: {{image: \"{image}\"{secret}}}");
    let ci = user_data("echo booted-from-registry");
    cluster.apply(&vm_yaml(
        &ns.name,
        "reg-a",
        &agent.node,
        &root(&open.image(), ""),
        &ci,
    ));
    let a = Vm {
        ns: &ns.name,
        name: "reg-a",
    };
    a.wait_phase("Running", BOOT);
    cluster.apply(&vm_yaml(
        &ns.name,
        "reg-b",
        &agent.node,
        &root(&open.image(), ""),
        &ci,
    ));
    let b = Vm {
        ns: &ns.name,
        name: "reg-b",
    };
    b.wait_phase("Running", BOOT);
    for vm in [&a, &b] {
        let uid = vm.uid();
        support::cluster::wait_for(BOOT, "the registry disk to boot the guest", || {
            console_log(&agent, &uid)
                .contains("booted-from-registry")
                .then_some(())
        });
    }
    assert_eq!(
        open.blob_downloads(),
        1,
        "the second VM must reuse the cached image"
    );
    assert!(
        agent.log_text().contains("cached=true"),
        "the agent logs the cache hit"
    );

    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "secret",
        "docker-registry",
        "pull",
        &format!("--docker-server={}", locked.address),
        &format!("--docker-username={USER}"),
        &format!("--docker-password={PASSWORD}"),
    ]);
    cluster.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "secret",
        "docker-registry",
        "wrong",
        &format!("--docker-server={}", locked.address),
        &format!("--docker-username={USER}"),
        "--docker-password=not-the-password",
    ]);
    let with = |secret: &str| root(&locked.image(), &format!(", imagePullSecret: {secret}"));
    cluster.apply(&vm_yaml(
        &ns.name,
        "reg-auth",
        &agent.node,
        &with("pull"),
        &ci,
    ));
    cluster.apply(&vm_yaml(
        &ns.name,
        "reg-wrong",
        &agent.node,
        &with("wrong"),
        &ci,
    ));
    cluster.apply(&vm_yaml(
        &ns.name,
        "reg-anon",
        &agent.node,
        &root(&locked.image(), ""),
        &ci,
    ));
    Vm {
        ns: &ns.name,
        name: "reg-auth",
    }
    .wait_phase("Running", BOOT);
    for name in ["reg-wrong", "reg-anon"] {
        let vm = Vm { ns: &ns.name, name };
        vm.wait_phase("Failed", Duration::from_secs(60));
        let message = vm.condition_message();
        assert!(
            message.contains("registryDisk.image") && message.contains(&locked.address),
            "{message}"
        );
    }
}

/// The attack: a user points registryDisk at hosts of the node's network and reads from the
/// VM's status whether a port is closed, speaks TLS or plain HTTP; TLS failures were retried
/// forever. Now an allowlist keeps the agent from dialling other registries at all, the
/// status says only what the VM's owner can act on (the details are in the agent's log), and
/// a certificate that is not trusted fails the VM after a few tries.
#[test]
fn registries_are_limited_to_the_allowlist_and_the_status_tells_nothing_of_the_network() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-reg-limits");
    let open = Registry::start(cluster, false);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let tls = support::registry::TlsPort::start(cluster);
    // A port that counts who connects: the allowlist must keep the agent from dialling it.
    let (watched, dialled) = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&count);
        std::thread::spawn(move || {
            for _ in listener.incoming() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (address, count)
    };
    let root = |image: &str| format!("registryDisk: {{image: \"{image}\"}}");
    let ci = user_data("true");

    // With an allowlist: another registry is refused before any connection.
    let limited = Agent::start_with(
        cluster,
        "reg-allow",
        NodeOptions {
            insecure_registries: &[&open.address],
            extra_args: &[&format!("--allowed-registry={}", open.address)],
            ..Default::default()
        },
    );
    cluster.apply(&vm_yaml(
        &ns.name,
        "allowed",
        &limited.node,
        &root(&open.image()),
        &ci,
    ));
    cluster.apply(&vm_yaml(
        &ns.name,
        "not-allowed",
        &limited.node,
        &root(&format!("{watched}/probe:1")),
        &ci,
    ));
    Vm {
        ns: &ns.name,
        name: "allowed",
    }
    .wait_phase("Running", BOOT);
    let refused = Vm {
        ns: &ns.name,
        name: "not-allowed",
    };
    refused.wait_phase("Failed", Duration::from_secs(30));
    assert!(
        refused
            .condition_message()
            .contains("is not among the registries this node pulls from"),
        "{}",
        refused.condition_message()
    );
    assert_eq!(refused.get("{.status.conditions[0].reason}"), "InvalidSpec");
    assert_eq!(
        dialled.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a registry not allowed was dialled"
    );

    // Without one: a closed port waits, a TLS port whose certificate is not trusted and a
    // plain-HTTP registry reached over HTTPS fail after a few tries; no status says which.
    let open_agent = Agent::start(cluster, "reg-any");
    let probes = [
        ("closed", format!("{closed}/probe:1")),
        ("tls", format!("{}/probe:1", tls.address)),
        ("plain", open.image()),
    ];
    for (name, image) in &probes {
        cluster.apply(&vm_yaml(
            &ns.name,
            name,
            &open_agent.node,
            &root(image),
            &ci,
        ));
    }
    for name in ["tls", "plain"] {
        let vm = Vm { ns: &ns.name, name };
        vm.wait_phase("Failed", Duration::from_secs(60));
        assert_eq!(
            vm.get("{.status.conditions[0].reason}"),
            "InvalidSpec",
            "{name}"
        );
    }
    let waiting = Vm {
        ns: &ns.name,
        name: "closed",
    };
    assert_eq!(
        waiting.get("{.status.conditions[0].reason}"),
        "MissingInput"
    );
    let messages: Vec<String> = probes
        .iter()
        .map(|(name, _)| Vm { ns: &ns.name, name }.condition_message())
        .collect();
    for message in &messages {
        let lower = message.to_lowercase();
        for detail in [
            "refused",
            "os error",
            "unknownissuer",
            "invalidcontenttype",
            "corrupt",
            "https://",
            "handshake",
        ] {
            assert!(
                !lower.contains(detail),
                "the status tells {detail:?}: {message}"
            );
        }
    }
    assert_eq!(
        messages[1].replace(&probes[1].1, "IMAGE"),
        messages[2].replace(&probes[2].1, "IMAGE"),
        "a TLS port and a plain-HTTP one must look the same"
    );
    let log = open_agent.log_text();
    for (_, image) in &probes {
        assert!(
            log.lines().any(|l| l.contains("pulling a registry disk failed") && l.contains(image.as_str())),
            "the agent's log has the details of {image}"
        );
    }
}

#[test]
fn claims_bind_late_and_bad_volumes_fail_before_anything_is_written() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-vol");
    let agent = Agent::start(cluster, "vol");
    let late = Vm {
        ns: &ns.name,
        name: "late",
    };
    cluster.apply(&vm_yaml(
        late.ns,
        late.name,
        &agent.node,
        "persistentVolumeClaim: {claimName: later}",
        &user_data("true"),
    ));
    support::cluster::wait_for(
        Duration::from_secs(30),
        "the VM to say it waits for its claim",
        || {
            late.condition_message()
                .contains("does not exist yet")
                .then_some(())
        },
    );
    assert_ne!(late.phase(), "Failed");
    cluster.guest_claim(&ns.name, "later");
    late.wait_phase("Running", BOOT);

    let huge = vm_yaml(
        &ns.name,
        "huge",
        &agent.node,
        "persistentVolumeClaim: {claimName: later}",
        &user_data("true"),
    )
    .replace("emptyDisk: {capacity: 1Gi}", "emptyDisk: {capacity: 900Ti}");
    cluster.apply(&huge);
    let huge = Vm {
        ns: &ns.name,
        name: "huge",
    };
    huge.wait_phase("Failed", Duration::from_secs(30));
    assert!(
        huge.condition_message()
            .contains("spec.volumes[2].emptyDisk.capacity"),
        "{}",
        huge.condition_message()
    );
    assert!(
        huge.condition_message()
            .contains("free in the state folder"),
        "{}",
        huge.condition_message()
    );
    assert!(
        !VmLayout::new(&agent.state_dir, &huge.uid()).dir().exists(),
        "nothing was written"
    );

    let sneaky = vm_yaml(
        &ns.name,
        "sneaky",
        &agent.node,
        "persistentVolumeClaim: {claimName: ../../etc}",
        &user_data("true"),
    )
    .replace("{name: scratch, emptyDisk", "{name: ../../etc, emptyDisk");
    // Refused by the API server's schema, naming both fields; the agent's own check of the
    // same names (for objects stored before the schema had bounds) is the renderer's, in
    // render_fields and storage::layout's unit tests.
    let manifest = cluster.dir.join(format!("{}-sneaky.yaml", ns.name));
    std::fs::write(&manifest, &sneaky).unwrap();
    let out = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a path as a name must be refused");
    for field in ["persistentVolumeClaim.claimName", "].name"] {
        assert!(
            stderr.contains(field) && stderr.contains("../../etc"),
            "{field}: {stderr}"
        );
    }
    let entries: Vec<String> = std::fs::read_dir(vms_dir(&agent.state_dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| e.len() == 36 && e.matches('-').count() == 4),
        "only UID folders: {entries:?}"
    );
}

#[test]
fn every_disk_kind_shows_up_in_the_guest_and_readonly_refuses_writes() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-disks");
    let agent = Agent::start(cluster, "disks");
    cluster.guest_claim(&ns.name, "guest");
    let script = "if dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; then echo ro-write-ok; else echo ro-write-refused; fi";
    cluster.apply(&format!(
        r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachine
metadata: {{name: kinds, namespace: {ns}, labels: {{kubevirt.io/nodeName: {node}}}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    resources: {{requests: {{memory: 128Mi}}}}
    devices:
      disks:
      - {{name: root, volumeName: root, disk: {{bus: virtio}}}}
      - {{name: ro, volumeName: ro, disk: {{bus: virtio, readonly: true}}}}
      - {{name: ci, volumeName: ci, cdrom: {{bus: sata}}}}
      - {{name: scsi, volumeName: scsi, disk: {{bus: scsi}}}}
      - {{name: sata, volumeName: sata, disk: {{bus: sata}}}}
  volumes:
  - {{name: root, ephemeral: {{persistentVolumeClaim: {{claimName: guest}}}}}}
  - {{name: ro, emptyDisk: {{capacity: 16Mi}}}}
  - {{name: ci, cloudInitNoCloud: {ci}}}
  - {{name: scsi, emptyDisk: {{capacity: 16Mi}}}}
  - {{name: sata, emptyDisk: {{capacity: 16Mi}}}}
"#,
        ns = ns.name,
        node = agent.node,
        ci = user_data(script)
    ));
    let vm = Vm {
        ns: &ns.name,
        name: "kinds",
    };
    vm.wait_phase("Running", BOOT);
    let uid = vm.uid();
    let log = support::cluster::wait_for(BOOT, "the user-data to try the read-only disk", || {
        let log = console_log(&agent, &uid);
        log.contains("ro-write-").then_some(log)
    });
    for device in ["vda", "vdb", "sr0", "sda", "sdb"] {
        assert!(
            log.contains(&format!("block device {device}\r")),
            "no {device} in the guest:\n{log}"
        );
    }
    assert!(
        log.contains("cidata on /dev/sr0"),
        "cloud-init from the cdrom:\n{log}"
    );
    assert!(
        log.contains("ro-write-refused"),
        "the read-only disk took a write:\n{log}"
    );
}

/// A loop device over a file, detached when dropped.
struct LoopDevice {
    device: String,
    backing: tempfile::NamedTempFile,
}

impl LoopDevice {
    fn new(bytes: u64) -> LoopDevice {
        let backing = tempfile::NamedTempFile::new().unwrap();
        backing.as_file().set_len(bytes).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.path())
            .output()
            .expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LoopDevice { device, backing }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.device])
            .status();
    }
}

#[test]
fn a_block_claim_reaches_the_guest_and_its_data_outlives_the_vm() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-lun");
    let agent = Agent::start(cluster, "lun");
    cluster.guest_claim(&ns.name, "guest");
    let disk = LoopDevice::new(16 << 20);
    let pv = format!("{}-blk", ns.name);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {pv}}}\nspec:\n  capacity: {{storage: 16Mi}}\n  \
         accessModes: [ReadWriteOnce]\n  volumeMode: Block\n  storageClassName: \"\"\n  \
         hostPath: {{path: {dev}, type: BlockDevice}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\n\
         metadata: {{name: blk, namespace: {ns}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: Block\n  \
         storageClassName: \"\"\n  volumeName: {pv}\n  resources: {{requests: {{storage: 16Mi}}}}\n",
        dev = disk.device,
        ns = ns.name
    ));
    let vm = |name: &str, target: &str, script: &str| {
        format!(
            r#"apiVersion: kubevirt.io/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}, namespace: {ns}, labels: {{kubevirt.io/nodeName: {node}}}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    resources: {{requests: {{memory: 128Mi}}}}
    devices:
      disks:
      - {{name: root, volumeName: root}}
      - {{name: data, volumeName: data, {target}}}
      - {{name: ci, volumeName: ci}}
  volumes:
  - {{name: root, ephemeral: {{persistentVolumeClaim: {{claimName: guest}}}}}}
  - {{name: data, persistentVolumeClaim: {{claimName: blk}}}}
  - {{name: ci, cloudInitNoCloud: {ci}}}
"#,
            ns = ns.name,
            node = agent.node,
            ci = user_data(script)
        )
    };
    // QEMU passes a lun through with SG_IO, which only SCSI devices speak: on a loop device
    // the VM must fail, saying so.
    cluster.apply(&vm("lun", "lun: {bus: scsi}", "true"));
    let lun = Vm {
        ns: &ns.name,
        name: "lun",
    };
    lun.wait_phase("Failed", Duration::from_secs(60));
    assert!(
        lun.condition_message().contains("SG_IO"),
        "{}",
        lun.condition_message()
    );
    cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", "lun", "--wait=true"]);

    let marker = "persisted-by-writer";
    cluster.apply(&vm(
        "writer",
        "disk: {bus: scsi}",
        &format!("printf {marker} | dd of=/dev/sda bs=512 count=1 conv=sync 2>/dev/null && sync && echo wrote-the-block-disk"),
    ));
    let writer = Vm {
        ns: &ns.name,
        name: "writer",
    };
    writer.wait_phase("Running", BOOT);
    let uid = writer.uid();
    support::cluster::wait_for(BOOT, "the guest to write to the block claim", || {
        console_log(&agent, &uid)
            .contains("wrote-the-block-disk")
            .then_some(())
    });
    cluster.kubectl_ok(&["-n", &ns.name, "delete", "vm", "writer", "--wait=true"]);
    let on_disk = std::fs::read(disk.backing.path()).unwrap();
    assert!(
        on_disk.starts_with(marker.as_bytes()),
        "the data must outlive the VM"
    );

    cluster.apply(&vm(
        "reader",
        "disk: {bus: virtio}",
        "echo \"read: $(dd if=/dev/vdb bs=19 count=1 2>/dev/null)\"",
    ));
    let reader = Vm {
        ns: &ns.name,
        name: "reader",
    };
    reader.wait_phase("Running", BOOT);
    let uid = reader.uid();
    support::cluster::wait_for(BOOT, "a second VM to read what the first wrote", || {
        console_log(&agent, &uid)
            .contains(&format!("read: {marker}"))
            .then_some(())
    });
}
