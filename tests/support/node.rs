//! The real nodes of a cluster started with `hack/cluster-up.sh NAME --nodes N`: commands run
//! on a node (hack/node-exec.sh: its network and mount namespaces and cgroup), its libvirtd,
//! and the nodevirt agent pod that runs there.

use std::process::{Command, Output};
use std::time::Duration;

use super::cluster::{Cluster, repo_root, stdout_of_success, wait_for_explained};
use super::https;

pub struct Node {
    pub name: String,
    /// The node's own address (on the cluster's bridge), where its agent's metrics port is.
    pub ip: String,
}

impl Node {
    /// Every node of the cluster, in order (node1, node2, ...).
    pub fn all(cluster: &Cluster) -> Vec<Node> {
        let mut names: Vec<String> = std::fs::read_dir(cluster.dir.join("nodes"))
            .expect("the cluster has real nodes (hack/cluster-up.sh NAME --nodes 2)")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let ip = std::fs::read_to_string(cluster.dir.join("nodes").join(&name).join("ip"))
                    .unwrap()
                    .trim()
                    .to_string();
                Node { name, ip }
            })
            .collect()
    }

    /// Runs `args` on the node.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new(repo_root().join("hack/node-exec.sh"))
            .arg(&Cluster::get().dir)
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run hack/node-exec.sh")
    }

    /// Runs `args` on the node and returns its stdout; panics with its stderr if it fails.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        stdout_of_success(
            self.exec(args),
            &format!("on {}: {}", self.name, args.join(" ")),
        )
    }

    /// `virsh` on the node's libvirtd; panics if virsh fails (e.g. libvirtd unreachable).
    pub fn virsh(&self, args: &[&str]) -> String {
        let mut all = vec!["virsh", "-c", "qemu:///system"];
        all.extend_from_slice(args);
        self.exec_ok(&all)
    }

    /// The libvirt ID of a running domain on this node (it changes when QEMU restarts).
    pub fn domain_id(&self, domain: &str) -> String {
        self.virsh(&["domid", domain]).trim().to_string()
    }

    /// Names of the domains defined on this node's libvirtd.
    pub fn domains(&self) -> Vec<String> {
        self.virsh(&["list", "--all", "--name"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// The agent pod on this node: (name, uid), once one is Ready.
    pub fn agent_pod(&self) -> (String, String) {
        let cluster = Cluster::get();
        wait_for_explained(
            Duration::from_secs(120),
            &format!("a Ready agent pod on {}", self.name),
            || {
                let out = cluster.kubectl_ok(&[
                    "-n",
                    "nodevirt",
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/name=nodevirt-agent",
                    "--field-selector",
                    &format!("spec.nodeName={}", self.name),
                    "-o",
                    "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}x{end}\
                     {range .items[*]}{.metadata.name} {.metadata.uid} \
                     {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ]);
                // Not while an old pod is still terminating: "the agent" must be one pod.
                if out.starts_with('x') {
                    return None;
                }
                let ready: Vec<_> = out.lines().filter(|l| l.ends_with(" True")).collect();
                match ready.as_slice() {
                    [one] if out.lines().count() == 1 => {
                        let mut f = one.split(' ');
                        Some((f.next()?.to_string(), f.next()?.to_string()))
                    }
                    _ => None,
                }
            },
            || cluster.kubectl_ok(&["-n", "nodevirt", "get", "pods", "-o", "wide"]),
        )
    }

    /// The agent's process on this node, found in the node's cgroup (pods' cgroups are
    /// nested in it), as its PID in the machine's PID namespace.
    pub fn agent_pid(&self) -> u32 {
        let cgroup = std::fs::read_to_string(
            Cluster::get()
                .dir
                .join("nodes")
                .join(&self.name)
                .join("cgroup"),
        )
        .unwrap();
        let cgroup = format!("{}/", cgroup.trim());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_agent =
                args.len() > 1 && args[0].ends_with(b"/nodevirt") && args[1] == b"agent".as_slice();
            let in_node = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.contains(&cgroup)));
            if is_agent && in_node {
                found.push(pid);
            }
        }
        assert_eq!(
            found.len(),
            1,
            "one agent process on {}, found {found:?}",
            self.name
        );
        found[0]
    }

    /// One scrape of the agent's metrics port on the node's address, as a Prometheus bound to
    /// nodevirt-metrics-reader scrapes it: HTTPS (the agent's self-signed certificate) and a
    /// bearer token.
    pub fn metrics(&self) -> String {
        let cluster = Cluster::get();
        let addr = format!("{}:9186", self.ip);
        let answer = https::get(
            &addr,
            "/metrics",
            Some(cluster.metrics_reader_token()),
            https::any_certificate(),
            &self.name,
        );
        assert_eq!(
            answer.status, 200,
            "scraping the agent's metrics on {} ({addr}): {answer:?}",
            self.name
        );
        answer.body
    }
}
