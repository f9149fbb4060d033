//! `nodevirt console` and `nodevirt vnc` as users run them: through the API server (the
//! aggregated API subresources.kubevirt.io, served by the deployed controller Pods), the
//! controller, and the console port of the VM's node's agent (mutual TLS), with the user's own
//! RBAC. On the two-node cluster of hack/deploy.sh; hack/test.sh runs it with the other
//! nodes_* suites.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use support::cluster::{Namespace, wait_for, wait_for_explained};
use support::console::Console;
use support::deployed::{cluster, idle_vms, node_vm_dir};
use support::idle_proxy::IdleProxy;
use support::node::Node;
use support::vm::{BOOT, Vm, user_data, vm_yaml};

/// A kubeconfig for a new ServiceAccount `name` of `ns`, bound in `ns` to `role` (a `kind`).
fn bound_kubeconfig(ns: &str, name: &str, kind: &str, role: &str) -> std::path::PathBuf {
    let cluster = cluster();
    cluster.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {kind}, name: {role}}}\n\
         subjects:\n- {{kind: ServiceAccount, name: {name}, namespace: {ns}}}\n"
    ));
    cluster.service_account_kubeconfig(ns, name, None)
}

/// `nodevirt console VM -n NS ARGS...`, which must be refused: its one line on stderr.
fn console_refusal(vm: &str, ns: &str, args: &[&str]) -> String {
    let refused = nodevirt(&["console", vm, "-n", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).trim().to_string();
    assert!(!refused.status.success(), "{vm}: not refused: {said}");
    assert_eq!(said.lines().count(), 1, "{vm}: one line: {said}");
    said
}

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
    support::rfb::expect_framebuffer_update_through(&mut nodevirt(&[
        "vnc",
        vm,
        "-n",
        &ns.name,
        "--proxy-only",
        "--kubeconfig",
        admin,
    ]));

    // The console opens (the CLI says so once the websocket is up) and Ctrl-] leaves it.
    let console = Console::attach(vm, &ns.name, &["--kubeconfig", admin]);
    console.wait_said("Connected to", Duration::from_secs(30));
    let status = console.leave();
    assert!(
        status.success(),
        "Ctrl-] leaves with status 0, got {status}"
    );

    // A VM that is not Running, and one that does not exist: a line each.
    cluster.apply(&format!(
        "apiVersion: kubevirt.io/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: nowhere, namespace: {}}}\n\
         spec:\n  nodeSelector: {{kubernetes.io/hostname: no-such-node}}\n  domain: {{resources: {{requests: {{memory: 32Mi}}}}}}\n",
        ns.name
    ));
    for (name, expected) in [("nowhere", "is not Running"), ("absent", "not found")] {
        let said = console_refusal(name, &ns.name, &["--kubeconfig", admin]);
        assert!(
            said.contains(expected),
            "{name}: {expected:?} expected: {said}"
        );
    }

    // A user who may read VMs but not use their consoles: 403 naming the subresource.
    cluster.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: vm-viewer, namespace: {}}}\n\
         rules:\n- {{apiGroups: [kubevirt.io], resources: [virtualmachines], verbs: [get, list]}}\n",
        ns.name
    ));
    let viewer = bound_kubeconfig(&ns.name, "viewer", "Role", "vm-viewer");
    let said = console_refusal(
        vm,
        &ns.name,
        &[&format!("--kubeconfig={}", viewer.display())],
    );
    assert!(
        said.contains("forbidden") && said.contains("virtualmachines/console"),
        "the refusal names the subresource: {said}"
    );

    // The namespace's editors have it: nodevirt-console is aggregated into `edit`.
    let editor = bound_kubeconfig(&ns.name, "editor", "ClusterRole", "edit");
    let console = Console::attach(
        vm,
        &ns.name,
        &[&format!("--kubeconfig={}", editor.display())],
    );
    console.wait_said("Connected to", Duration::from_secs(30));
    let status = console.leave();
    assert!(
        status.success(),
        "the editor leaves with status 0, got {status}"
    );

    // The agent's console port takes no client but the controller's, and the controller's
    // API port none but the API server's front proxy.
    agent_refuses_a_stranger(cluster, &nodes[0]);
    controller_refuses_a_client_that_is_not_the_front_proxy(cluster);
}

/// What a TLS server at `address` answers `request` with, as a client of `config`: nothing
/// when it ends the handshake.
fn tls_answer(address: &str, config: Arc<rustls::ClientConfig>, request: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("{address} listens: {e}"));
        let name = rustls::pki_types::ServerName::try_from("server").unwrap();
        let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        else {
            return Vec::new();
        };
        let _ = tls.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
        answer
    })
}

/// The agent's console port takes no client but the controller's: a client with a
/// certificate of its own, pinning the agent's published one, is ended in the handshake.
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
    let answered = tls_answer(
        &format!("{}:9187", node.ip),
        client_config(&stranger, fingerprint).unwrap(),
        "GET /v1/vms/x/y/vnc HTTP/1.1\r\nHost: agent\r\n\r\n",
    );
    assert!(
        answered.is_empty(),
        "the agent answered a stranger: {}",
        String::from_utf8_lossy(&answered)
    );
}

/// The aggregated API takes users' names only from the API server's front proxy: a client
/// without its certificate, naming itself admin in the front proxy's headers, reaching a
/// controller Pod directly, gets no answer.
fn controller_refuses_a_client_that_is_not_the_front_proxy(cluster: &support::cluster::Cluster) {
    let pods = cluster.kubectl_ok(&[
        "-n",
        "nodevirt",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=nodevirt-controller",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let pod = pods.split_whitespace().next().expect("a controller Pod");
    let answered = tls_answer(
        &format!("{pod}:8443"),
        support::https::any_certificate(),
        "GET /apis/subresources.kubevirt.io/v1alpha1 HTTP/1.1\r\nHost: controller\r\n\
         X-Remote-User: admin\r\nX-Remote-Group: system:masters\r\n\r\n",
    );
    assert!(
        answered.is_empty(),
        "the controller answered a client that is not the front proxy: {}",
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

    // One writer at a time: a second session is refused in one line that says how to take
    // over; with --force it does, and the first one is told and ends.
    let said = console_refusal(vm, &ns.name, &[&kubeconfig]);
    assert!(
        said.contains("another session holds the serial console")
            && said.contains("nodevirt console --force"),
        "a second writer is refused: {said}"
    );
    let mut taker = Console::attach(vm, &ns.name, &[&kubeconfig, "--force"]);
    taker.wait_said("Connected to", Duration::from_secs(30));
    let status = console.wait_exit("end once taken over");
    assert!(
        status.success() && console.said().contains("another session took it over"),
        "the first session is told and ends without error ({status}): {}",
        console.said()
    );
    let from = taker.run("echo $((6*7))");
    taker.wait_line(from, "42", Duration::from_secs(30));
    let status = taker.leave();
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

    // A connection that stays quiet after a request is cut (the API server itself would keep
    // it 90 s): the proxy does what it is here for.
    let quiet = std::thread::spawn({
        let address = proxy.address;
        move || quiet_connection_lifetime(address)
    });

    let through_proxy = format!("--kubeconfig={}", through_proxy.display());
    let mut console = Console::attach(vm, &ns.name, &[&through_proxy, "--reconnect"]);
    console.wait_said("Connected to", Duration::from_secs(30));
    std::thread::sleep(IDLE);
    assert!(
        console.running(),
        "the console ended while idle: {}",
        console.said()
    );
    let from = console.run("echo $((6*7))");
    console.wait_line(from, "42", Duration::from_secs(30));
    let quiet = quiet.join().unwrap();
    assert!(
        quiet >= PROXY_IDLE && quiet < PROXY_IDLE + Duration::from_secs(20),
        "the proxy cuts a quiet connection after {PROXY_IDLE:?}; it lasted {quiet:?}"
    );
    assert_eq!(proxy.cut(), 1, "only the quiet connection was cut");

    // A connection that breaks is reported; with --reconnect the console comes back.
    proxy.sever_all();
    console.wait_said("dropped", Duration::from_secs(60));
    console.wait_said("Reconnected.", Duration::from_secs(60));
    let from = console.run("echo $((6*7))");
    console.wait_line(from, "42", Duration::from_secs(30));
    let said = console.said();
    let status = console.leave();
    assert!(status.success(), "{status}: {said}");

    // Without --reconnect, the break ends the command in one line.
    let mut console = Console::attach(vm, &ns.name, &[&through_proxy]);
    console.wait_said("Connected to", Duration::from_secs(30));
    proxy.sever_all();
    let status = console.wait_exit("exit when its connection breaks");
    let said = console.said();
    let last = said.trim().lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("the connection to the console of VM") && last.contains("dropped"),
        "the break in one line: {said}"
    );
    assert!(
        !status.success(),
        "a dropped connection is an error: {said}"
    );
}

/// Over TLS through `proxy`, one keep-alive request to the API server, then silence: how long
/// the connection lives after its answer.
fn quiet_connection_lifetime(proxy: std::net::SocketAddr) -> Duration {
    let tcp = std::net::TcpStream::connect(proxy).unwrap();
    tcp.set_read_timeout(Some(PROXY_IDLE * 3)).unwrap();
    let name = rustls::pki_types::ServerName::from(proxy.ip());
    let connection =
        rustls::ClientConnection::new(support::https::any_certificate(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    std::io::Write::write_all(
        &mut tls,
        format!("GET /healthz HTTP/1.1\r\nHost: {proxy}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tls.read(&mut buf).expect("the API server answers /healthz");
        assert!(n > 0, "the API server closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let answered = std::time::Instant::now();
    loop {
        match tls.read(&mut buf) {
            // The rest of the body.
            Ok(n @ 1..) => answer.extend_from_slice(&buf[..n]),
            // Closed, with or without TLS's close_notify.
            Ok(0) => return answered.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return answered.elapsed(),
            Err(e) => panic!("the quiet connection: {e} after {:?}", answered.elapsed()),
        }
    }
}
