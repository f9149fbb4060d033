//! Operating the agent: its Prometheus metrics for a running VM (KubeVirt's names, non-zero,
//! gone after deletion) and its health endpoints.

mod support;

use std::time::Duration;

use support::agent::{Agent, NodeOptions};
use support::cluster::{Cluster, wait_for};
use support::vm::{BOOT, Vm, console_log, user_data, vm_yaml};

/// The value of the series `name{...namespace="ns",name="vm"...}` in a scrape.
/// The sum of `metric`'s samples for VM `vm` (over its vCPUs, NICs or drives), if any.
fn sample(text: &str, metric: &str, vm: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&format!("name=\"{vm}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn metrics_show_a_running_vm_and_forget_it_when_deleted() {
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-ops");
    let agent = Agent::start(cluster, "ops");
    assert_eq!(agent.get("/healthz").0, 200);
    wait_for(Duration::from_secs(30), "/readyz", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    cluster.guest_claim(&ns.name, "guest");
    let vm = Vm {
        ns: &ns.name,
        name: "watched",
    };
    cluster.apply(&vm_yaml(
        vm.ns,
        vm.name,
        &agent.node,
        "ephemeral: {persistentVolumeClaim: {claimName: guest}}",
        &user_data("dd if=/dev/zero of=/dev/vdc bs=64k count=16 2>/dev/null; sync; echo io-done"),
    ));
    vm.wait_phase("Running", BOOT);
    let uid = vm.uid();
    wait_for(BOOT, "the guest's disk writes and lease", || {
        (console_log(&agent, &uid).contains("io-done") && !vm.ip().is_empty()).then_some(())
    });
    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200);
    for metric in [
        "kubevirt_vmi_cpu_usage_seconds_total",
        "kubevirt_vmi_vcpu_seconds_total",
        "kubevirt_vmi_memory_resident_bytes",
        "kubevirt_vmi_memory_domain_bytes_total",
        "kubevirt_vmi_network_receive_packets_total",
        "kubevirt_vmi_storage_iops_write_total",
        "kubevirt_vmi_network_receive_bytes_total",
        "kubevirt_vmi_network_transmit_bytes_total",
        "kubevirt_vmi_storage_read_traffic_bytes_total",
        "kubevirt_vmi_storage_write_traffic_bytes_total",
    ] {
        let value = sample(&text, metric, vm.name)
            .unwrap_or_else(|| panic!("no {metric} for the VM:\n{text}"));
        assert!(value > 0.0, "{metric} is {value}");
    }
    // The guest wrote 1 MiB to its third disk: that drive's own series says so.
    let vdc = format!(
        "name=\"{}\",node=\"{}\",drive=\"vdc\"}}",
        vm.name, agent.node
    );
    let written: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("kubevirt_vmi_storage_write_traffic_bytes_total{") && l.contains(&vdc)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no write traffic of drive vdc:\n{text}"));
    assert!(written >= 1_048_576.0, "vdc wrote {written} bytes");
    let vcpus = text
        .lines()
        .filter(|l| {
            l.starts_with("kubevirt_vmi_vcpu_seconds_total{")
                && l.contains(&format!("name=\"{}\"", vm.name))
        })
        .count();
    assert_eq!(vcpus, 1, "one series for the VM's one vCPU, in its state");
    assert!(
        text.contains(&format!(
            "kubevirt_vmi_phase_count{{node=\"{}\",phase=\"running\"}} 1",
            agent.node
        )),
        "{text}"
    );
    assert!(
        text.contains("nodevirt_reconciles_total{result=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("nodevirt_vm_creation_to_running_seconds_count 1"),
        "{text}"
    );

    cluster.kubectl_ok(&["-n", vm.ns, "delete", "vm", vm.name, "--wait=true"]);
    let (_, text) = agent.get("/metrics");
    assert!(
        sample(&text, "kubevirt_vmi_vcpu_seconds_total", vm.name).is_none(),
        "series of a deleted VM:\n{text}"
    );
}

#[test]
fn the_admin_socket_answers_every_question_and_only_root() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let cluster = Cluster::get();
    let ns = cluster.namespace("e2e-admin");
    let agent = Agent::start_with(
        cluster,
        "admin",
        NodeOptions {
            extra_args: &["--max-sessions=3"],
            ..NodeOptions::default()
        },
    );
    let meta = std::fs::metadata(&agent.admin_socket).expect("the admin socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    cluster.guest_claim(&ns.name, "guest");
    let vm = Vm {
        ns: &ns.name,
        name: "debugged",
    };
    cluster.apply(&vm_yaml(
        vm.ns,
        vm.name,
        &agent.node,
        "ephemeral: {persistentVolumeClaim: {claimName: guest}}",
        &user_data("echo admin-socket-console-line"),
    ));
    vm.wait_phase("Running", BOOT);
    let uid = vm.uid();
    wait_for(BOOT, "the guest's user-data", || {
        console_log(&agent, &uid)
            .contains("admin-socket-console-line")
            .then_some(())
    });
    let target = format!("{}/{}", vm.ns, vm.name);

    let (ok, out, err) = agent.admin(&["vms"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("debugged") && out.contains("Running") && out.contains("running"),
        "{out}"
    );
    // Flags before or after the subcommand, as kubectl takes them.
    for args in [["--output", "json", "vms"], ["vms", "-o", "json"]] {
        let (ok, out, _) = agent.admin(&args);
        let vms: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert!(ok && vms[0]["name"] == "debugged", "{args:?}: {out}");
    }
    // --socket, the old name, still works, after the subcommand too.
    let old_name = std::process::Command::new(env!("CARGO_BIN_EXE_nodevirt"))
        .args(["admin", "health"])
        .arg(format!("--socket={}", agent.admin_socket.display()))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&old_name.stdout);
    assert!(
        old_name.status.success() && out.contains("libvirt connected: true"),
        "{out}"
    );
    let (ok, out, _) = agent.admin(&["show", &target]);
    assert!(
        ok && out.contains("VM started.") && out.contains(&uid),
        "{out}"
    );
    let (ok, out, _) = agent.admin(&["xml", &target]);
    assert!(ok && out.contains("<domain") && out.contains(&uid), "{out}");
    let (ok, out, _) = agent.admin(&["console", &target, "--lines", "200"]);
    assert!(ok && out.contains("admin-socket-console-line"), "{out}");
    attach_sessions(&agent, &target);
    vnc_session(&agent, &target);
    sessions_stop_at_the_limit(&agent, &target);
    let (ok, out, _) = agent.admin(&["resync", &target]);
    assert!(ok && out.contains("resync of"), "{out}");
    let (ok, out, _) = agent.admin(&["health"]);
    assert!(
        ok && out.contains("libvirt connected: true") && out.contains("watch synced: true"),
        "{out}"
    );
    let (ok, _, err) = agent.admin(&["show", "nope/missing"]);
    assert!(!ok && err.contains("no VM nope/missing"), "{err}");

    let (ok, _, err) = agent.admin_as(&["health"], 65534, &[]);
    assert!(
        !ok && err.contains("Permission denied"),
        "a non-root user must be refused: {err}"
    );
}

#[test]
fn the_admin_socket_checks_its_peer_beyond_the_file_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const GROUP: u32 = 4242;
    let cluster = Cluster::get();
    let group_flag = format!("--admin-group={GROUP}");
    let agent = Agent::start_with(
        cluster,
        "admin-group",
        NodeOptions {
            extra_args: &[&group_flag],
            ..Default::default()
        },
    );
    let meta = std::fs::metadata(&agent.admin_socket).expect("the admin socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), GROUP);
    let (ok, out, err) = agent.admin_as(&["health"], 65534, &[GROUP]);
    assert!(
        ok && out.contains("watch synced"),
        "a member of the group: {err}"
    );
    let (ok, _, err) = agent.admin_as(&["health"], 65534, &[]);
    assert!(!ok && err.contains("Permission denied"), "{err}");
    // Even if someone opens the file mode up, the peer's credentials still decide.
    std::fs::set_permissions(&agent.admin_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, _, err) = agent.admin_as(&["health"], 65534, &[]);
    assert!(
        !ok && err.contains("uid 65534 is neither root nor in group 4242"),
        "{err}"
    );
    let (ok, _, err) = agent.admin(&["health"]);
    assert!(ok, "root: {err}");
}

/// A running `nodevirt admin attach`, its output gathered as it comes.
struct Attached {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    started: std::time::Instant,
    first_byte: std::sync::Arc<std::sync::OnceLock<std::time::Instant>>,
}

impl Attached {
    fn start(agent: &Agent, target: &str, force: bool) -> Attached {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let mut command = Command::new(env!("CARGO_BIN_EXE_nodevirt"));
        command
            .args(["admin", "attach", target])
            .arg(format!("--admin-socket={}", agent.admin_socket.display()));
        if force {
            command.arg("--force");
        }
        let started = std::time::Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let first_byte = std::sync::Arc::new(std::sync::OnceLock::new());
        let mut stdout = child.stdout.take().unwrap();
        let (gathered, first) = (output.clone(), first_byte.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                first.get_or_init(std::time::Instant::now);
                gathered.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Attached {
            child,
            output,
            started,
            first_byte,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn wait_output(&self, what: &str, contains: &str) {
        wait_for(Duration::from_secs(20), what, || {
            self.text().contains(contains).then_some(())
        });
    }

    fn type_in(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Its exit status and stderr, once it exits.
    fn finish(mut self) -> (bool, String) {
        use std::io::Read;
        let status = wait_for(
            Duration::from_secs(10),
            "nodevirt admin attach to exit",
            || self.child.try_wait().unwrap(),
        );
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), err)
    }
}

/// The serial console through the admin socket: the replay shows the boot, a command typed
/// runs in the guest's shell, one session at a time unless forced, and 100 attach/detach
/// cycles all work (the first byte's median time printed).
fn attach_sessions(agent: &Agent, target: &str) {
    let mut first = Attached::start(agent, target, false);
    first.wait_output("the replay of the console log", "admin-socket-console-line");
    first.wait_output("the guest's shell", "shell on the serial console");
    first.type_in(b"echo $((6*7))\n");
    first.wait_output("the shell's answer", "\n42\r\n");

    let second = Attached::start(agent, target, false);
    let (ok, err) = second.finish();
    assert!(
        !ok && err.contains("another session holds the serial console") && err.contains("--force"),
        "a second session must be refused while one is attached: {err}"
    );
    let mut taker = Attached::start(agent, target, true);
    let (ok, err) = first.finish();
    assert!(
        ok && err.contains("another session took it over"),
        "the forced-out session ends and says why: {err}"
    );
    taker.type_in(b"echo forced-$((6*7))\n");
    taker.wait_output("the forcing session's answer", "forced-42");
    taker.type_in(&[0x1d]);
    let (ok, err) = taker.finish();
    assert!(ok, "Ctrl-] leaves: {err}");

    let mut first_bytes = Vec::new();
    for cycle in 0..100 {
        let mut session = Attached::start(agent, target, false);
        let at = wait_for(Duration::from_secs(10), "the first byte", || {
            session.first_byte.get().copied()
        });
        first_bytes.push(at.duration_since(session.started));
        session.type_in(&[0x1d]);
        let (ok, err) = session.finish();
        assert!(ok, "attach/detach cycle {cycle}: {err}");
    }
    first_bytes.sort();
    eprintln!(
        "timing: admin attach -> first console byte, median of 100 {:.1} ms (max {:.1} ms)",
        first_bytes[50].as_secs_f64() * 1000.0,
        first_bytes[99].as_secs_f64() * 1000.0
    );
}

/// With `--max-sessions=3`, three VNC viewers through `nodevirt admin vnc` get QEMU's
/// greeting, a fourth is refused (its connection closed, the 503 said by the tunnel), and
/// once one leaves there is room again.
fn sessions_stop_at_the_limit(agent: &Agent, target: &str) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut tunnel = Command::new(env!("CARGO_BIN_EXE_nodevirt"))
        .args(["admin", "vnc", target])
        .arg(format!("--admin-socket={}", agent.admin_socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let address = support::rfb::printed_address(&mut tunnel);
    let greeted = |viewer: &mut std::net::TcpStream| {
        viewer
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut greeting = Vec::new();
        let _ = viewer.take(12).read_to_end(&mut greeting);
        greeting == b"RFB 003.008\n"
    };
    let mut open: Vec<_> = (0..3)
        .map(|i| {
            let mut viewer = std::net::TcpStream::connect(&address).unwrap();
            assert!(
                greeted(&mut viewer),
                "viewer {i} within the limit is greeted"
            );
            viewer
        })
        .collect();
    let mut fourth = std::net::TcpStream::connect(&address).unwrap();
    assert!(!greeted(&mut fourth), "a fourth session is refused");
    drop(open.pop());
    wait_for(Duration::from_secs(20), "room for a session again", || {
        let mut viewer = std::net::TcpStream::connect(&address).unwrap();
        greeted(&mut viewer).then_some(())
    });
    tunnel.kill().unwrap();
    let mut said = String::new();
    tunnel
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    tunnel.wait().unwrap();
    assert!(
        said.contains("limit of 3 console and VNC sessions"),
        "the tunnel says why: {said}"
    );
}

/// `nodevirt admin vnc`: a client on the printed port gets QEMU's RFB handshake, then a
/// FramebufferUpdate of the whole screen.
fn vnc_session(agent: &Agent, target: &str) {
    support::rfb::expect_framebuffer_update_through(
        std::process::Command::new(env!("CARGO_BIN_EXE_nodevirt"))
            .args(["admin", "vnc", target])
            .arg(format!("--admin-socket={}", agent.admin_socket.display())),
    );
}
