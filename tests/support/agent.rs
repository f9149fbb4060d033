//! nodevirt processes for tests: agents for test nodes and controller replicas, each running
//! with the token of its ServiceAccount from daemonset.yaml, so the tests prove those roles
//! are enough.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use super::cluster::{Cluster, unique_suffix, wait_for, wait_for_explained};
use super::https;

/// A nodevirt subcommand running in the background; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    args: Vec<String>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `nodevirt args`, logging to `log`: emptied first, so that a check of the log
    /// never reads an earlier run's lines (restarts append).
    pub fn start(args: Vec<String>, log: PathBuf) -> Daemon {
        std::fs::write(&log, "").unwrap();
        let mut daemon = Daemon {
            child: None,
            args,
            log,
        };
        daemon.spawn();
        daemon
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
            // Logs are on stdout; stderr only carries what dies before logging starts.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nodevirt");
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

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has ended by itself (it was not killed by the test).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows the daemon's last words: CI keeps only the test's output.
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- last {} lines of {} ----\n{}",
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// How long a restarted agent may take to be ready and to have reconciled its VMs.
pub const RESTART: Duration = Duration::from_secs(30);

/// How much of a daemon's log a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// How a test node and its agent look.
pub struct NodeOptions<'a> {
    pub libvirt_uri: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub memory: &'a str,
    pub heartbeat_seconds: u32,
    /// Registries (host:port) reached over plain HTTP.
    pub insecure_registries: &'a [&'a str],
    /// The agent's state folder; by default one under the cluster's folder.
    pub state_dir: Option<&'a std::path::Path>,
    /// More flags for `nodevirt agent`.
    pub extra_args: &'a [&'a str],
    /// Whether the agent runs VMs only with their holder pod, as deployed. Off by default:
    /// most tests label VMs for their node directly and run no controller to book them.
    pub holder_pods: bool,
}

impl Default for NodeOptions<'_> {
    fn default() -> Self {
        NodeOptions {
            libvirt_uri: "qemu:///system",
            labels: &[],
            memory: "8Gi",
            heartbeat_seconds: 60,
            insecure_registries: &[],
            state_dir: None,
            extra_args: &[],
            holder_pods: false,
        }
    }
}

pub struct Agent {
    daemon: Daemon,
    pub node: String,
    pub state_dir: PathBuf,
    /// Where the agent serves /metrics, /healthz and /readyz (HTTPS, its self-signed
    /// certificate, unless `extra_args` say otherwise).
    pub http: String,
    /// The bearer token [`Agent::get`] sends: a ServiceAccount's with nodevirt-metrics-reader.
    pub metrics_token: &'static str,
    /// The agent's admin socket.
    pub admin_socket: PathBuf,
}

impl Agent {
    /// Starts an agent for a new node (Node object included) on the real libvirtd.
    pub fn start(cluster: &'static Cluster, node_prefix: &str) -> Agent {
        Agent::start_with(cluster, node_prefix, NodeOptions::default())
    }

    pub fn start_with(cluster: &'static Cluster, node_prefix: &str, options: NodeOptions) -> Agent {
        let node = format!("{node_prefix}-{}", unique_suffix());
        cluster.node_with(&node, options.labels, options.memory);
        let state_dir = options
            .state_dir
            .map(PathBuf::from)
            .unwrap_or_else(|| cluster.state_root().join(&node));
        std::fs::create_dir_all(&state_dir).unwrap();
        // Bound to its Node, as a DaemonSet Pod's token is: the admission policy requires it.
        let kubeconfig =
            cluster.service_account_kubeconfig("nodevirt", "nodevirt-agent", Some(&node));
        let mut args = vec![
            "agent".to_string(),
            format!("--node-name={node}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--libvirt-uri={}", options.libvirt_uri),
            "--hypervisor=qemu".into(),
            "--network=nodevirt".into(),
            format!("--state-dir={}", state_dir.display()),
            format!("--heartbeat-interval={}", options.heartbeat_seconds),
            format!("--require-holder-pod={}", options.holder_pods),
        ];
        args.extend(
            options
                .insecure_registries
                .iter()
                .map(|r| format!("--insecure-registry={r}")),
        );
        args.extend(options.extra_args.iter().map(|a| a.to_string()));
        let http = free_local_address();
        args.push(format!("--metrics-addr={http}"));
        // Many agents share this host's network: each its own console port.
        args.push("--console-addr=127.0.0.1:0".into());
        let admin_socket = cluster.dir.join("admin").join(format!("{node}.sock"));
        args.push(format!("--admin-socket={}", admin_socket.display()));
        let log = cluster.dir.join(format!("agent-{node}.log"));
        let metrics_token = cluster.metrics_reader_token();
        let agent = Agent {
            daemon: Daemon::start(args, log),
            node,
            state_dir,
            http,
            metrics_token,
            admin_socket,
        };
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

    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// Waits for a restarted agent to have looked at the node's VMs again: `/readyz` 200
    /// (libvirt answers, the VM watch has listed), then `vms` reconciles finished since it
    /// started (ok or not: the first list reconciles each of the node's `vms` VMs once).
    /// Panics after [`RESTART`] with the agent's last answer.
    pub fn wait_restarted(&self, vms: u64) {
        wait_for_explained(
            RESTART,
            &format!("the agent of {} to be ready (/readyz 200)", self.node),
            || (self.get("/readyz").0 == 200).then_some(()),
            || format!("/readyz: {:?}", self.get("/readyz")),
        );
        wait_for_explained(
            RESTART,
            &format!("the agent of {} to reconcile its {vms} VMs", self.node),
            || (self.reconciles() >= vms).then_some(()),
            || format!("{} reconciles since the agent started", self.reconciles()),
        );
    }

    /// Reconciles finished since the agent started, whatever their result
    /// (`nodevirt_reconciles_total`).
    pub fn reconciles(&self) -> u64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "scraping the agent of {}: {text}", self.node);
        text.lines()
            .filter(|line| line.starts_with("nodevirt_reconciles_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// `nodevirt admin --socket S ARGS...` as root: (exit ok, stdout, stderr).
    pub fn admin(&self, args: &[&str]) -> (bool, String, String) {
        self.run_admin(
            std::process::Command::new(env!("CARGO_BIN_EXE_nodevirt")),
            args,
        )
    }

    /// The same as user `uid` (primary group `uid`) with supplementary `groups`, via setpriv.
    pub fn admin_as(&self, args: &[&str], uid: u32, groups: &[u32]) -> (bool, String, String) {
        let mut command = std::process::Command::new("setpriv");
        command.args([format!("--reuid={uid}"), format!("--regid={uid}")]);
        if groups.is_empty() {
            command.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            command.arg(format!("--groups={}", list.join(",")));
        }
        command.arg(env!("CARGO_BIN_EXE_nodevirt"));
        self.run_admin(command, args)
    }

    fn run_admin(
        &self,
        mut command: std::process::Command,
        args: &[&str],
    ) -> (bool, String, String) {
        let out = command
            .arg("admin")
            .arg(format!("--admin-socket={}", self.admin_socket.display()))
            .args(args)
            .output()
            .expect("run nodevirt admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// GET `path` on the agent's metrics port as a scraper with the reader role: HTTPS and
    /// the bearer token. (status code, body); (0, "") while nothing answers.
    pub fn get(&self, path: &str) -> (u16, String) {
        let answer = self.get_as(path, Some(self.metrics_token));
        (answer.status, answer.body)
    }

    /// GET `path` over HTTPS with `token`, or none.
    pub fn get_as(&self, path: &str, token: Option<&str>) -> https::Answer {
        get_metrics_port(&self.http, path, token)
    }
}

/// `127.0.0.1:<a port free now>`, for a daemon's metrics port.
pub fn free_local_address() -> String {
    format!("127.0.0.1:{}", super::registry::free_port())
}

/// GET `path` on the metrics port at `addr` (HTTPS, its self-signed certificate) with `token`.
fn get_metrics_port(addr: &str, path: &str, token: Option<&str>) -> https::Answer {
    https::get(addr, path, token, https::any_certificate(), "localhost")
}

/// The sum of the samples of `series` (a metric name and labels, as written in a scrape).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A controller replica: its process and its metrics port.
pub struct Controller {
    daemon: Daemon,
    /// Where it serves /metrics, /healthz and /readyz (HTTPS, its self-signed certificate).
    pub http: String,
    /// A ServiceAccount's token with nodevirt-metrics-reader.
    pub metrics_token: &'static str,
}

impl Controller {
    /// GET `path` on its metrics port as a scraper with the reader role.
    pub fn get(&self, path: &str) -> (u16, String) {
        let answer = self.get_as(path, Some(self.metrics_token));
        (answer.status, answer.body)
    }

    /// GET `path` over HTTPS with `token`, or none.
    pub fn get_as(&self, path: &str, token: Option<&str>) -> https::Answer {
        get_metrics_port(&self.http, path, token)
    }
}

impl std::ops::Deref for Controller {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for Controller {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// A controller replica named `identity`, its metrics port on a free local port.
pub fn controller(cluster: &'static Cluster, identity: &str, heartbeat_timeout: u32) -> Controller {
    let kubeconfig = cluster.service_account_kubeconfig("nodevirt", "nodevirt-controller", None);
    let http = free_local_address();
    let args = vec![
        "controller".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--identity={identity}"),
        "--lease-duration=6".into(),
        format!("--node-heartbeat-timeout={heartbeat_timeout}"),
        format!("--metrics-addr={http}"),
        // The aggregated API needs the Service and APIService of a deployed controller.
        "--api-addr=off".into(),
        // Holder pods bound to the test cluster's Node objects never start: no kubelet.
        "--holder-image=nodevirt:test".into(),
    ];
    let log = cluster.dir.join(format!("controller-{identity}.log"));
    Controller {
        daemon: Daemon::start(args, log),
        http,
        metrics_token: cluster.metrics_reader_token(),
    }
}
