//! The node agent end to end: real kube-apiserver (RBAC), real libvirtd and QEMU (TCG), the
//! tiny guest booting from a claim and taking a DHCP lease. The agent runs with the token of
//! its ServiceAccount from daemonset.yaml.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nodevirt::storage::layout::VmLayout;
use support::agent::Agent;
use support::cluster::{Cluster, virsh, wait_for};
use support::vm::{BOOT, Vm, console_log, domain_absent, domain_exists, user_data, vm_yaml};

#[test]
fn seed_like_vm_runs_reports_its_lease_and_is_cleaned_up() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-run");
    let agent = Agent::start(cluster, "run");
    cluster.guest_claim(&ns.name, "guest");
    let vm = Vm {
        ns: &ns.name,
        name: "testvm",
    };
    let marker = "user-data-of-testvm-ran";
    // The SMBIOS system UUID the guest reads is spec.domain.firmware.uuid.
    let system_uuid = "6a1a24a1-4061-11e8-b62a-0242ac110003";
    let script = format!("echo {marker}; echo system-uuid=$(cat /sys/class/dmi/id/product_uuid)");
    let applied = Instant::now();
    cluster.apply(
        &vm_yaml(
            vm.ns,
            vm.name,
            &agent.node,
            "persistentVolumeClaim: {claimName: guest}",
            &user_data(&script),
        )
        .replace(
            "  domain:\n",
            &format!("  domain:\n    firmware: {{uuid: {system_uuid}}}\n"),
        ),
    );
    vm.wait_phase("Running", BOOT);
    let to_running = applied.elapsed();
    let ip = vm.wait_ip(BOOT);
    let to_ip = applied.elapsed();
    eprintln!(
        "timing: apply->Running {:.2}s, apply->IP {:.2}s",
        to_running.as_secs_f64(),
        to_ip.as_secs_f64()
    );

    assert_eq!(vm.get("{.status.nodeName}"), agent.node);
    let lease = virsh(&["domifaddr", &vm.domain(), "--source", "lease"]);
    assert!(
        lease.contains(&format!("{ip}/")),
        "status IP {ip} is not the lease libvirt reports:\n{lease}"
    );
    let uid = vm.uid();
    wait_for(BOOT, "the user-data's output on the serial console", || {
        let console = console_log(&agent, &uid);
        (console.contains(marker) && console.contains("system-uuid=")).then_some(())
    });
    let console = console_log(&agent, &uid);
    assert!(
        console.contains(&format!("system-uuid={system_uuid}")),
        "the guest should see firmware.uuid as its system UUID:\n{console}"
    );
    let describe = cluster.kubectl_ok(&["-n", vm.ns, "describe", "vm", vm.name]);
    for line in ["Created", "VM defined.", "Started", "VM started."] {
        assert!(
            describe.contains(line),
            "describe lacks {line:?}:\n{describe}"
        );
    }
    // An operator's virsh suspend: still Running, with a Paused condition until resumed.
    let paused_reason = || vm.get("{.status.conditions[?(@.type==\"Paused\")].reason}");
    virsh(&["suspend", &vm.domain()]);
    let suspended = Instant::now();
    wait_for(Duration::from_secs(10), "the Paused condition", || {
        (paused_reason() == "PausedByUser").then_some(())
    });
    eprintln!(
        "timing: virsh suspend -> Paused condition {:.2}s",
        suspended.elapsed().as_secs_f64()
    );
    assert_eq!(vm.get("{.status.phase}"), "Running");
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains(&format!(
            "nodevirt_vmi_paused{{namespace=\"{}\",name=\"testvm\",node=\"{}\",reason=\"PausedByUser\"}} 1",
            vm.ns, agent.node
        )),
        "{metrics}"
    );
    virsh(&["resume", &vm.domain()]);
    wait_for(
        Duration::from_secs(10),
        "the Paused condition to go",
        || paused_reason().is_empty().then_some(()),
    );
    let template = cluster.kubectl_ok(&[
        "-n",
        vm.ns,
        "get",
        "vm",
        vm.name,
        "--template",
        "{{.status.phase}}",
    ]);
    assert_eq!(template, "Running");
    let wide = cluster.kubectl_ok(&["-n", vm.ns, "get", "vms", "-o", "wide"]);
    assert!(wide.contains(&ip) && wide.contains(&agent.node), "{wide}");

    cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name, "--wait=false"]);
    let deleted = Instant::now();
    let state = VmLayout::new(&agent.state_dir, &uid).dir().to_path_buf();
    wait_for(
        Duration::from_secs(10),
        "the domain and its folder to be gone",
        || (domain_absent(&vm.domain()) && !state.exists()).then_some(()),
    );
    eprintln!(
        "timing: delete->domain gone {:.2}s",
        deleted.elapsed().as_secs_f64()
    );
}

#[test]
fn guest_poweroff_is_succeeded_and_outside_destroy_or_killed_qemu_is_failed() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-stop");
    let agent = Agent::start(cluster, "stop");
    cluster.guest_claim(&ns.name, "guest");
    let root = "ephemeral: {persistentVolumeClaim: {claimName: guest}}";
    let off = Vm {
        ns: &ns.name,
        name: "powers-off",
    };
    let killed = Vm {
        ns: &ns.name,
        name: "destroyed",
    };
    let crashed = Vm {
        ns: &ns.name,
        name: "crashes",
    };
    for (vm, script) in [
        (&off, "sleep 2; sync; poweroff -f"),
        (&killed, "echo up"),
        (&crashed, "echo up"),
    ] {
        cluster.apply(&vm_yaml(
            vm.ns,
            vm.name,
            &agent.node,
            root,
            &user_data(script),
        ));
    }

    killed.wait_phase("Running", BOOT);
    virsh(&["destroy", &killed.domain()]);
    let destroyed = Instant::now();
    killed.wait_phase("Failed", Duration::from_secs(10));
    eprintln!(
        "timing: virsh destroy->Failed {:.2}s",
        destroyed.elapsed().as_secs_f64()
    );
    assert!(
        killed
            .condition_message()
            .contains("destroyed outside nodevirt"),
        "{}",
        killed.condition_message()
    );

    // QEMU killed (as the OOM killer would): Failed, and the message says where QEMU's log is.
    crashed.wait_phase("Running", BOOT);
    let pid_file = format!("/run/libvirt/qemu/{}.pid", crashed.domain());
    let pid = std::fs::read_to_string(&pid_file).expect(&pid_file);
    let status = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
    crashed.wait_phase("Failed", Duration::from_secs(10));
    let log = format!("/var/log/libvirt/qemu/{}.log", crashed.domain());
    let message = crashed.condition_message();
    assert!(
        message.contains("crashed") && message.contains(&log),
        "the condition should say the VM crashed and name QEMU's log: {message}"
    );
    assert_eq!(
        crashed.get("{.status.conditions[?(@.type==\"Ready\")].reason}"),
        "Crashed"
    );
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(written.contains("qemu"), "{log}:\n{written}");

    off.wait_phase("Succeeded", BOOT);
    assert!(
        off.condition_message().contains("shut down"),
        "{}",
        off.condition_message()
    );
    let describe = cluster.kubectl_ok(&["-n", off.ns, "describe", "vm", off.name]);
    assert!(describe.contains("Stopped"), "{describe}");

    // Mortal: an ended VM stays ended, even after the agent restarts.
    let mut agent = agent;
    agent.restart();
    agent.wait_restarted(3);
    assert_eq!(off.phase(), "Succeeded");
    assert_eq!(killed.phase(), "Failed");
    let state = virsh(&["domstate", &off.domain()]);
    assert!(!state.contains("running"), "{state}");
}

/// The guest arms its i6300esb watchdog for 2 s and never feeds it again.
#[test]
fn a_fired_watchdog_fails_the_vm_naming_its_action_or_warns_when_the_guest_resets() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-watchdog");
    let agent = Agent::start(cluster, "watchdog");
    cluster.guest_claim(&ns.name, "guest");
    let root = "ephemeral: {persistentVolumeClaim: {claimName: guest}}";
    let script = "watchdog -T 2 -t 600 /dev/watchdog && echo watchdog-armed";
    let vms = ["poweroff", "shutdown", "reset"].map(|action| {
        let vm = Vm {
            ns: &ns.name,
            name: action,
        };
        let yaml = vm_yaml(vm.ns, vm.name, &agent.node, root, &user_data(script)).replace(
            "    devices:\n",
            &format!(
                "    devices:\n      watchdog: {{name: wd, i6300esb: {{action: {action}}}}}\n"
            ),
        );
        cluster.apply(&yaml);
        (vm, action)
    });
    for (vm, action) in &vms[..2] {
        // poweroff: QEMU quits at once, which libvirt calls a crash; shutdown: the guest obeys
        // the power button, which would be Succeeded.
        vm.wait_phase("Failed", BOOT);
        let reason = vm.get("{.status.conditions[?(@.type==\"Ready\")].reason}");
        let message = vm.condition_message();
        let console = console_log(&agent, &vm.uid());
        assert_eq!(reason, "WatchdogFired", "{message}\nconsole:\n{console}");
        assert!(
            message.contains(&format!("its action, {action}, stopped the VM")),
            "{message}"
        );
        assert!(console.contains("watchdog-armed"), "{console}");
    }
    let (reset, _) = &vms[2];
    wait_for(
        BOOT,
        "a Warning WatchdogFired event on the reset VM",
        || {
            let describe = reset.describe();
            (describe.contains("WatchdogFired") && describe.contains("its action: reset"))
                .then_some(())
        },
    );
    assert_eq!(reset.phase(), "Running");
}

#[test]
fn killed_agent_adopts_running_domain_and_cleans_vms_deleted_meanwhile() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-kill");
    let mut agent = Agent::start(cluster, "kill");
    cluster.guest_claim(&ns.name, "guest");
    let vm = Vm {
        ns: &ns.name,
        name: "survivor",
    };
    let root = "ephemeral: {persistentVolumeClaim: {claimName: guest}}";
    cluster.apply(&vm_yaml(
        vm.ns,
        vm.name,
        &agent.node,
        root,
        &user_data("echo up"),
    ));
    vm.wait_phase("Running", BOOT);
    let id_before = virsh(&["domid", &vm.domain()]).trim().to_string();
    assert!(!id_before.is_empty() && id_before != "-");

    agent.kill();
    agent.restart();
    agent.wait_restarted(1);
    assert_eq!(
        virsh(&["domid", &vm.domain()]).trim(),
        id_before,
        "the domain was restarted"
    );
    assert_eq!(vm.phase(), "Running");
    let describe = cluster.kubectl_ok(&["-n", vm.ns, "describe", "vm", vm.name]);
    assert_eq!(
        describe.matches("VM started.").count(),
        1,
        "started twice:\n{describe}"
    );

    // Deleted while the agent is down: the finalizer holds the VM until the agent is back.
    agent.kill();
    cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name, "--wait=false"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        domain_exists(&vm.domain()),
        "nothing may touch the domain while the agent is down"
    );
    agent.restart();
    wait_for(
        Duration::from_secs(30),
        "the domain of the deleted VM to be cleaned up",
        || {
            let gone = domain_absent(&vm.domain());
            let vm_gone = !cluster
                .kubectl(&["-n", vm.ns, "get", "vm", vm.name])
                .status
                .success();
            (gone && vm_gone).then_some(())
        },
    );

    // A VM gone for good while the agent is down (its finalizer stripped by hand): only the
    // agent's orphan collection, after its first full list, can clean its domain.
    let orphan = Vm {
        ns: &ns.name,
        name: "orphan",
    };
    cluster.apply(&vm_yaml(
        orphan.ns,
        orphan.name,
        &agent.node,
        root,
        &user_data("echo up"),
    ));
    orphan.wait_phase("Running", BOOT);
    agent.kill();
    let no_finalizers = r#"{"metadata":{"finalizers":null}}"#;
    cluster.kubectl_ok(&[
        "-n",
        orphan.ns,
        "patch",
        "vm",
        orphan.name,
        "--type",
        "merge",
        "-p",
        no_finalizers,
    ]);
    cluster.kubectl_ok(&["-n", orphan.ns, "delete", "vm", orphan.name, "--wait=true"]);
    assert!(domain_exists(&orphan.domain()));
    agent.restart();
    wait_for(
        Duration::from_secs(30),
        "the orphaned domain to be removed",
        || domain_absent(&orphan.domain()).then_some(()),
    );
}

#[test]
fn invalid_vms_fail_with_a_readable_condition_while_a_valid_one_runs() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-bad");
    let agent = Agent::start(cluster, "bad");
    cluster.guest_claim(&ns.name, "guest");
    let root = "ephemeral: {persistentVolumeClaim: {claimName: guest}}";
    // The schema refuses an unknown bus at once (schema_e2e); an IDE disk on the default q35
    // machine passes it (a preset could still set the machine type) and only the agent can
    // refuse it.
    let bad_bus = vm_yaml(&ns.name, "bad-bus", &agent.node, root, &user_data("true")).replace(
        "disk: {bus: virtio}}\n      - {name: cloudinit",
        "disk: {bus: ide}}\n      - {name: cloudinit",
    );
    cluster.apply(&bad_bus);
    cluster.apply(&vm_yaml(
        &ns.name,
        "no-secret",
        &agent.node,
        root,
        "{secretRef: {name: missing}}",
    ));
    // A disk QEMU (its own user) may not open: libvirt refuses to start the domain.
    let locked_image = cluster.guest_claim(&ns.name, "locked");
    let locked_dir = locked_image.parent().unwrap();
    std::fs::set_permissions(locked_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    cluster.apply(&vm_yaml(
        &ns.name,
        "locked",
        &agent.node,
        "persistentVolumeClaim: {claimName: locked}",
        &user_data("true"),
    ));
    cluster.apply(&vm_yaml(
        &ns.name,
        "good",
        &agent.node,
        root,
        &user_data("echo fine"),
    ));

    let locked = Vm {
        ns: &ns.name,
        name: "locked",
    };
    locked.wait_phase("Failed", Duration::from_secs(60));
    let message = locked.condition_message();
    assert!(
        message.contains("Permission denied") && message.contains(&*locked_image.to_string_lossy()),
        "the condition should name the file QEMU may not open: {message}"
    );
    assert!(
        message.contains(&format!("/var/log/libvirt/qemu/{}.log", locked.domain())),
        "the condition should name QEMU's log: {message}"
    );
    assert_eq!(
        locked.get("{.status.conditions[?(@.type==\"Ready\")].reason}"),
        "StartFailed"
    );

    let bus = Vm {
        ns: &ns.name,
        name: "bad-bus",
    };
    bus.wait_phase("Failed", Duration::from_secs(30));
    assert!(
        bus.condition_message().contains(
            "spec.domain.devices.disks[0].disk.bus: the q35 machine type has no IDE controller"
        ),
        "{}",
        bus.condition_message()
    );
    let secret = Vm {
        ns: &ns.name,
        name: "no-secret",
    };
    secret.wait_phase("Failed", Duration::from_secs(30));
    assert!(
        secret.condition_message().contains("Secret"),
        "{}",
        secret.condition_message()
    );
    let describe = cluster.kubectl_ok(&["-n", &ns.name, "describe", "vm", "bad-bus"]);
    assert!(
        describe.contains("Warning") && describe.contains("no IDE controller"),
        "{describe}"
    );
    assert!(domain_absent(&bus.domain()), "an invalid VM gets no domain");

    Vm {
        ns: &ns.name,
        name: "good",
    }
    .wait_phase("Running", BOOT);
    assert!(!agent.log_text().contains("panicked"));
}

#[test]
fn ephemeral_vm_never_writes_the_claims_image() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-eph");
    let agent = Agent::start(cluster, "eph");
    let image = cluster.guest_claim(&ns.name, "guest");
    let before = std::fs::read(&image).unwrap();
    // The user-data comes from a Secret, and overwrites the start of the root disk.
    cluster.user_data_secret(
        &ns.name,
        "userdata",
        "#!/bin/sh\ndd if=/dev/zero of=/dev/vda bs=4096 count=64 && sync && echo root-disk-overwritten\n",
    );
    let vm = Vm {
        ns: &ns.name,
        name: "scribbler",
    };
    let root = "ephemeral: {persistentVolumeClaim: {claimName: guest}}";
    cluster.apply(&vm_yaml(
        vm.ns,
        vm.name,
        &agent.node,
        root,
        "{secretRef: {name: userdata}}",
    ));
    vm.wait_phase("Running", BOOT);
    let uid = vm.uid();
    wait_for(BOOT, "the guest to overwrite its root disk", || {
        console_log(&agent, &uid)
            .contains("root-disk-overwritten")
            .then_some(())
    });
    cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name]);
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the claim's image changed"
    );
}
