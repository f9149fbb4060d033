//! `nodevirt console` and `nodevirt vnc` as users run them: through the API server (the
//! aggregated API subresources.kubevirt.io, served by the deployed controller Pods), the
//! controller, and the console port of the VM's node's agent (mutual TLS), with the user's own
//! RBAC. On the two-node cluster of hack/deploy.sh; hack/test.sh runs it with the other
//! nodes_* suites.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::cluster::{Namespace, wait_for, wait_for_explained};
use support::console::Console;
use support::deployed::{cluster, idle_vms, node_vm_dir};
use support::idle_proxy::IdleProxy;
use support::node::Node;
use support::vm::{BOOT, Vm, user_data, vm_yaml};

fn nodevirt(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodevirt"));
    command.args(args);
    command
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn console_and_vnc_go_through_the_api_server_with_the_users_rbac() {
    let cluster = cluster();
    let nodes = Node::all(cluster);
    let available = wait_for(
        Duration::from_secs(120),
        "the APIService to be Available",
        || {
            let status = cluster.kubectl_ok(&[
                "get",
                "apiservice",
                "v1alpha1.subresources.kubevirt.io",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ]);
            (status == "True").then_some(status)
        },
    );
    assert_eq!(available, "True");
    let ns = cluster.namespace("console");
    let vms = idle_vms(&ns, &nodes[..1], 1);
    let vm = vms[0].0.as_str();
    let admin = cluster.kubeconfig.to_str().unwrap();

    // VNC: a viewer on the printed port gets QEMU's handshake and a FramebufferUpdate.
    let mut tunnel = nodevirt(&[
        "vnc",
        vm,
        "-n",
        &ns.name,
        "--proxy-only",
        "--kubeconfig",
        admin,
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let address = support::rfb::printed_address(&mut tunnel);
    support::rfb::expect_framebuffer_update(&address);
    tunnel.kill().unwrap();
    tunnel.wait().unwrap();

    // The console opens (the CLI says so once the websocket is up) and Ctrl-] leaves it.
    let mut console = nodevirt(&["console", vm, "-n", &ns.name, "--kubeconfig", admin])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = console.stderr.take().unwrap();
    let mut said = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&said).contains("Connected to") {
        match stderr.read(&mut byte) {
            Ok(1) => said.push(byte[0]),
            _ => panic!(
                "nodevirt console ended before connecting: {}",
                String::from_utf8_lossy(&said)
            ),
        }
    }
    console.stdin.as_mut().unwrap().write_all(&[0x1d]).unwrap();
    let status = console.wait().unwrap();
    assert!(
        status.success(),
        "Ctrl-] leaves with status 0, got {status}"
    );

    // A user who may read VMs but not use their consoles: 403 naming the subresource.
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: viewer, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: vm-viewer, namespace: {ns}}}
rules:
- apiGroups: [kubevirt.io]
  resources: [virtualmachines]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: vm-viewer, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: vm-viewer}}
subjects:
- {{kind: ServiceAccount, name: viewer, namespace: {ns}}}
"#,
        ns = ns.name
    ));
    let viewer = cluster.service_account_kubeconfig(&ns.name, "viewer", None);
    let refused = nodevirt(&["console", vm, "-n", &ns.name])
        .arg(format!("--kubeconfig={}", viewer.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "the viewer got a console: {said}"
    );
    assert!(
        said.contains("forbidden") && said.contains("virtualmachines/console"),
        "the refusal names the subresource: {said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "one line: {said}");

    // The agent's console port takes no client but the controller's.
    agent_refuses_a_stranger(cluster, &nodes[0]);
}

/// A client with a certificate of its own, pinning the agent's published one: the agent
/// ends the handshake, so no request is ever answered.
fn agent_refuses_a_stranger(cluster: &support::cluster::Cluster, node: &Node) {
    use nodevirt::tunnel::pin::{Identity, client_config};
    let fingerprint = cluster.kubectl_ok(&[
        "get",
        "node",
        &node.name,
        "-o",
        "jsonpath={.metadata.annotations.nodevirt\\.io/console-tls-sha256}",
    ]);
    assert_eq!(fingerprint.len(), 64, "the agent publishes its fingerprint");
    let stranger = Identity::generate("nodevirt-controller@stranger").unwrap();
    let config = client_config(&stranger, fingerprint).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answered = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect((node.ip.as_str(), 9187))
            .await
            .expect("the console port listens");
        let name = rustls::pki_types::ServerName::try_from("agent").unwrap();
        let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        else {
            return Vec::new();
        };
        let _ = tls
            .write_all(b"GET /v1/vms/x/y/vnc HTTP/1.1\r\nHost: agent\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
        answer
    });
    assert!(
        answered.is_empty(),
        "the agent answered a stranger: {}",
        String::from_utf8_lossy(&answered)
    );
}

/// The booted test guest whose serial console runs a shell, shared by the tests below (they
/// run one at a time): its namespace, which lives as long as the test binary.
fn guest() -> &'static (Namespace, String) {
    static GUEST: OnceLock<(Namespace, String)> = OnceLock::new();
    GUEST.get_or_init(|| {
        let cluster = cluster();
        let node = &Node::all(cluster)[0];
        let ns = cluster.namespace("console-guest");
        cluster.guest_claim(&ns.name, "guest");
        cluster.apply(&vm_yaml(
            &ns.name,
            "shell",
            &node.name,
            "persistentVolumeClaim: {claimName: guest}",
            &user_data("echo up"),
        ));
        let vm = Vm {
            ns: &ns.name,
            name: "shell",
        };
        vm.wait_phase("Running", BOOT);
        let log = format!("{}/console.log", node_vm_dir(&vm.uid()));
        wait_for_explained(
            BOOT,
            "the guest's shell on its serial console",
            || {
                let out = node.exec(&["cat", &log]);
                String::from_utf8_lossy(&out.stdout)
                    .contains("nodevirt-guest: shell on the serial console")
                    .then_some(())
            },
            || String::from_utf8_lossy(&node.exec(&["cat", &log]).stdout).into_owned(),
        );
        (ns, "shell".to_string())
    })
}

fn admin_kubeconfig() -> String {
    format!("--kubeconfig={}", cluster().kubeconfig.display())
}

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn the_guests_shell_answers_through_nodevirt_console_and_attaching_100_times_works() {
    let (ns, vm) = guest();
    let kubeconfig = admin_kubeconfig();
    let mut console = Console::attach(vm, &ns.name, &[&kubeconfig]);
    // The replay shows how the guest booted, up to its shell.
    console.wait_line(
        0,
        "nodevirt-guest: shell on the serial console",
        Duration::from_secs(30),
    );
    let replay = console.output();
    assert!(
        replay.contains("nodevirt-guest: booted, kernel"),
        "the replay shows the boot lines:\n{replay}"
    );
    let from = console.run("echo $((6*7))");
    console.wait_line(from, "42", Duration::from_secs(30));
    let status = console.leave();
    assert!(
        status.success(),
        "Ctrl-] leaves with status 0, got {status}"
    );

    // Attach and leave, 100 times in a row: each attach gets the console (the previous
    // session has let it go) and its first byte; the first 20 are timed.
    let mut first_bytes = Vec::new();
    let mut failures = Vec::new();
    for cycle in 0..100 {
        let mut console = Console::attach(vm, &ns.name, &[&kubeconfig]);
        let got = wait_for(Duration::from_secs(30), "a byte or an exit", || {
            if !console.output().is_empty() {
                Some(true)
            } else {
                (!console.running()).then_some(false)
            }
        });
        if !got {
            failures.push(format!("cycle {cycle}: {}", console.said().trim()));
            continue;
        }
        if cycle < 20 {
            first_bytes.push(console.first_byte_after(Duration::from_secs(1)));
        }
        let status = console.leave();
        if !status.success() {
            failures.push(format!("cycle {cycle}: left with {status}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 100 cycles failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    first_bytes.sort();
    println!(
        "console first byte after `nodevirt console` starts, of 20: median {:?}, min {:?}, max {:?}",
        first_bytes[first_bytes.len() / 2],
        first_bytes[0],
        first_bytes[first_bytes.len() - 1]
    );
}

/// How long the idle session lasts; the proxy cuts what idles longer than [`PROXY_IDLE`].
const IDLE: Duration = Duration::from_secs(300);
const PROXY_IDLE: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs the two-node cluster of hack/deploy.sh: hack/test.sh runs it"]
fn an_idle_console_outlives_a_proxy_that_cuts_idle_connections() {
    let (ns, vm) = guest();
    let cluster = cluster();
    let original = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let server = original
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("the kubeconfig names its server")
        .to_string();
    let upstream: std::net::SocketAddr = server.parse().unwrap();
    // On the API server's own address, so that its certificate still names the host.
    let proxy = IdleProxy::start(&format!("{}:0", upstream.ip()), upstream, PROXY_IDLE);
    let through_proxy = cluster.dir.join("idle-proxy.kubeconfig");
    std::fs::write(
        &through_proxy,
        original.replace(&server, &proxy.address.to_string()),
    )
    .unwrap();

    // A connection that stays quiet is cut: the proxy does what it is here for.
    let quiet = std::thread::spawn({
        let address = proxy.address;
        move || {
            let mut idle = std::net::TcpStream::connect(address).unwrap();
            idle.set_read_timeout(Some(PROXY_IDLE * 2)).unwrap();
            let started = std::time::Instant::now();
            let read = idle.read(&mut [0u8; 1]);
            (read.map_err(|e| e.kind()), started.elapsed())
        }
    });

    let mut console = Console::attach(
        vm,
        &ns.name,
        &[&format!("--kubeconfig={}", through_proxy.display())],
    );
    console.wait_said("Connected to", Duration::from_secs(30));
    std::thread::sleep(IDLE);
    assert!(
        console.running(),
        "the console ended while idle: {}",
        console.said()
    );
    let from = console.run("echo $((6*7))");
    console.wait_line(from, "42", Duration::from_secs(30));
    let (read, after) = quiet.join().unwrap();
    assert!(
        read == Ok(0) && after >= PROXY_IDLE,
        "the proxy cuts a quiet connection after {PROXY_IDLE:?}: read {read:?} after {after:?}"
    );
    assert_eq!(proxy.cut(), 1, "only the quiet connection was cut");
    let said = console.said();
    let status = console.leave();
    assert!(status.success(), "{status}: {said}");
}
