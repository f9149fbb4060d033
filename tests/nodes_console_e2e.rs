//! `nodevirt console` and `nodevirt vnc` as users run them: through the API server (the
//! aggregated API subresources.kubevirt.io, served by the deployed controller Pods), the
//! controller, and the console port of the VM's node's agent (mutual TLS), with the user's own
//! RBAC. On the two-node cluster of hack/deploy.sh; hack/test.sh runs it with the other
//! nodes_* suites.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::cluster::wait_for;
use support::deployed::{cluster, idle_vms};
use support::node::Node;

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
