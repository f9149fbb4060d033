//! A `nodevirt agent` process for one test node, running with the token of the agent's
//! ServiceAccount from daemonset.yaml, so the tests prove that role is enough.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::{Cluster, wait_for};

pub struct Agent {
    child: Option<Child>,
    pub node: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Agent {
    /// Starts an agent for a new node (Node object included) on the real libvirtd.
    pub fn start(cluster: &'static Cluster, node_prefix: &str) -> Agent {
        let node = format!("{node_prefix}-{}", super::cluster::unique_suffix());
        cluster.node(&node);
        let state_dir = cluster.dir.join("state").join(&node);
        std::fs::create_dir_all(&state_dir).unwrap();
        let kubeconfig = cluster.service_account_kubeconfig("nodevirt", "nodevirt-agent");
        let args = vec![
            "agent".to_string(),
            format!("--node-name={node}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--libvirt-uri=qemu:///system".into(),
            "--hypervisor=qemu".into(),
            "--network=nodevirt".into(),
            format!("--state-dir={}", state_dir.display()),
        ];
        let log = cluster.dir.join(format!("agent-{node}.log"));
        let mut agent = Agent {
            child: None,
            node,
            state_dir,
            log,
            args,
        };
        agent.spawn();
        // Ready once it has marked its node schedulable.
        wait_for(
            Duration::from_secs(30),
            "the agent's first heartbeat",
            || {
                let label = cluster.kubectl_ok(&[
                    "get",
                    "node",
                    &agent.node,
                    "-o",
                    "jsonpath={.metadata.labels.kubevirt\\.io/schedulable}",
                ]);
                (label == "true").then_some(())
            },
        );
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nodevirt"))
            .args(&self.args)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nodevirt agent");
        self.child = Some(child);
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
