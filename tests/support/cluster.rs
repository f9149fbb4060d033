//! The real cluster the end-to-end tests run against: the one hack/test.sh starts with
//! hack/cluster-up.sh (its folder in $NODEVIRT_CLUSTER_DIR). Tests fail, never skip, when it
//! is not there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nodevirt::storage::layout::claim_image;

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Cluster {
    /// The running test cluster; panics with what to do when there is none.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        let cluster = CLUSTER.get_or_init(|| {
            let dir = std::env::var_os("NODEVIRT_CLUSTER_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp/nodevirt-cluster/default"));
            let kubeconfig = dir.join("kubeconfig");
            assert!(
                kubeconfig.exists(),
                "no test cluster at {}: run the tests with hack/test.sh, or start one with \
                 hack/cluster-up.sh and `source` the env file it prints",
                dir.display()
            );
            let cluster = Cluster { dir, kubeconfig };
            cluster.kubectl_ok(&["get", "--raw", "/readyz"]);
            // A cluster with real nodes runs nodevirt as hack/deploy.sh deployed it: applying
            // daemonset.yaml here would replace the image it set.
            if !cluster.has_nodes() {
                cluster.apply(&without_api_service(
                    &std::fs::read_to_string(repo_root().join("daemonset.yaml")).unwrap(),
                ));
            }
            cluster
        });
        if !cluster.has_nodes() {
            static KUBELET: OnceLock<()> = OnceLock::new();
            KUBELET.get_or_init(|| {
                std::thread::spawn(|| cluster.finish_pod_deletions());
            });
        }
        cluster
    }

    /// What a kubelet does for the holder pods of its node once they are deleted, for the test
    /// cluster's Node objects, which have none: removes each (force, grace 0) when its grace
    /// period ends, as kubelet does when it kills the holder, so its requests stop counting.
    fn finish_pod_deletions(&self) {
        let terminating = "{range .items[?(@.metadata.deletionTimestamp)]}{.metadata.namespace} {.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}";
        loop {
            let out = self.kubectl(&[
                "get",
                "pods",
                "-A",
                "-l",
                "kubevirt.io=virt-launcher",
                "-o",
                &format!("jsonpath={terminating}"),
            ]);
            let now = k8s_openapi::jiff::Timestamp::now();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut fields = line.split(' ');
                let (Some(namespace), Some(pod), Some(end)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                if end
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .is_ok_and(|end| end <= now)
                {
                    let _ = self.kubectl(&[
                        "-n",
                        namespace,
                        "delete",
                        "pod",
                        pod,
                        "--grace-period=0",
                        "--force",
                        "--wait=false",
                    ]);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether hack/cluster-up.sh started real nodes for this cluster (`--nodes N`).
    pub fn has_nodes(&self) -> bool {
        std::fs::read_dir(self.dir.join("nodes")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Stops or starts again one of the cluster's components (hack/cluster-ctl.sh).
    pub fn ctl(&self, action: &str, component: &str) {
        let name = self.dir.file_name().unwrap().to_str().unwrap();
        let out = Command::new(repo_root().join("hack/cluster-ctl.sh"))
            .args([name, action, component])
            .env("NODEVIRT_CLUSTER_DIR", &self.dir)
            .output()
            .expect("run hack/cluster-ctl.sh");
        assert!(
            out.status.success(),
            "cluster-ctl {action} {component} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl must be on PATH (hack/install-deps.sh builds it)")
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_of_success(self.kubectl(args), &format!("kubectl {}", args.join(" ")))
    }

    pub fn apply(&self, yaml: &str) {
        let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(file.path(), yaml).unwrap();
        self.kubectl_ok(&["apply", "-f", file.path().to_str().unwrap()]);
    }

    /// A fresh namespace, deleted when the guard drops.
    pub fn namespace(&'static self, prefix: &str) -> Namespace {
        let name = format!("{prefix}-{}", unique_suffix());
        self.kubectl_ok(&["create", "namespace", &name]);
        Namespace {
            cluster: self,
            name,
        }
    }

    /// A token of ServiceAccount `namespace/name`, from the TokenRequest API; bound to Node
    /// `node` if given (the API server then puts the node's name in the user's extra info, as
    /// for a Pod's projected token on that node).
    pub fn token(&self, namespace: &str, name: &str, node: Option<&str>) -> String {
        let mut args = vec!["-n", namespace, "create", "token", name, "--duration=2h"];
        if let Some(node) = node {
            args.extend(["--bound-object-kind", "Node", "--bound-object-name", node]);
        }
        self.kubectl_ok(&args).trim().to_string()
    }

    /// A token of a ServiceAccount bound to daemonset.yaml's ClusterRole
    /// `nodevirt-metrics-reader`, as a Prometheus is: what the helpers scrape agents with.
    pub fn metrics_reader_token(&self) -> &'static str {
        static TOKEN: OnceLock<String> = OnceLock::new();
        TOKEN.get_or_init(|| {
            self.metrics_scraper(METRICS_SCRAPER, true);
            self.token("nodevirt", METRICS_SCRAPER, None)
        })
    }

    /// ServiceAccount `nodevirt/name`, bound to `nodevirt-metrics-reader` if `reader`
    /// (idempotent: every test process applies it).
    pub fn metrics_scraper(&self, name: &str, reader: bool) {
        let mut yaml = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: nodevirt}}\n"
        );
        if reader {
            yaml.push_str(&format!(
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodevirt-metrics-reader}}\n\
                 subjects: [{{kind: ServiceAccount, name: {name}, namespace: nodevirt}}]\n"
            ));
        }
        self.apply(&yaml);
    }

    /// A kubeconfig file for ServiceAccount `namespace/name`, bound to `node` if given.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> PathBuf {
        let path = self.dir.join(format!(
            "sa-{namespace}-{name}-{}.kubeconfig",
            unique_suffix()
        ));
        let raw = self.kubectl_ok(&["config", "view", "--raw", "--minify"]);
        std::fs::write(&path, raw).unwrap();
        let token = self.token(namespace, name, node);
        let out = Command::new("kubectl")
            .args([
                "config",
                "set-credentials",
                "admin",
                &format!("--token={token}"),
            ])
            .env("KUBECONFIG", &path)
            .output()
            .unwrap();
        assert!(out.status.success());
        path
    }

    /// A kube Client as the cluster's admin.
    pub async fn admin_client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// A kube Client as ServiceAccount `namespace/name`, bound to `node` if given.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> kube::Client {
        client_from(&self.service_account_kubeconfig(namespace, name, node)).await
    }

    /// A PersistentVolume (hostPath) + claim `name` in `namespace` whose disk.img is a fresh copy
    /// of the tiny guest; returns the image's path.
    pub fn guest_claim(&self, namespace: &str, name: &str) -> PathBuf {
        let dir = self.dir.join("volumes").join(format!("{namespace}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        for d in [self.dir.as_path(), &self.dir.join("volumes"), &dir] {
            set_mode(d, 0o755);
        }
        let image = claim_image(&dir);
        // Sparse: the 64 MiB image holds 10 MiB of data, and every test copies it.
        let status = Command::new("cp")
            .arg("--sparse=always")
            .args([guest_image(), &image])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "copying the guest image to {}",
            image.display()
        );
        let pv = format!("{namespace}-{name}");
        self.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {pv}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  \
             accessModes: [ReadWriteOnce]\n  storageClassName: \"\"\n  persistentVolumeReclaimPolicy: Retain\n  \
             hostPath: {{path: {}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: \"\"\n  volumeName: {pv}\n  resources: {{requests: {{storage: 1Gi}}}}\n",
            dir.display()
        ));
        wait_for(Duration::from_secs(60), "the claim to bind", || {
            let phase = self.kubectl_ok(&[
                "-n",
                namespace,
                "get",
                "pvc",
                name,
                "-o",
                "jsonpath={.status.phase}",
            ]);
            (phase == "Bound").then_some(())
        });
        image
    }

    /// A Secret `name` in `namespace` holding `script` under the key `userdata`, as a VM's
    /// `cloudInitNoCloud.secretRef` reads it.
    pub fn user_data_secret(&self, namespace: &str, name: &str, script: &str) {
        self.kubectl_ok(&[
            "-n",
            namespace,
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=userdata={script}"),
        ]);
    }

    /// The folder that holds the test agents' state folders: traversable by QEMU whatever the
    /// umask the tests run under (the agent fixes its own folder, not the ones above it).
    pub fn state_root(&self) -> PathBuf {
        let root = self.dir.join("state");
        std::fs::create_dir_all(&root).unwrap();
        set_mode(&root, 0o711);
        root
    }

    /// A Node object with `labels` and `memory` allocatable, as a kubelet would register it,
    /// and Ready, as its kubelet would report it: kube-scheduler binds holder pods there.
    pub fn node_with(&self, name: &str, labels: &[(&str, &str)], memory: &str) {
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!(", {k}: \"{v}\""))
            .collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}{labels}}}\n\
             status:\n  capacity: {{cpu: \"64\", memory: {memory}, pods: \"250\"}}\n  allocatable: {{cpu: \"64\", memory: {memory}, pods: \"250\"}}\n"
        ));
        // The API server taints a new Node not-ready; the node lifecycle controller, off in the
        // test cluster, would lift it once Ready.
        self.kubectl_ok(&[
            "patch",
            "node",
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"taints":null}}"#,
        ]);
        let ready = format!(
            "{{\"status\":{{\"conditions\":[{{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\
             \"message\":\"a test node\",\"lastHeartbeatTime\":\"{now}\",\"lastTransitionTime\":\"{now}\"}}]}}}}",
            now = k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .unwrap()
        );
        self.kubectl_ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &ready,
        ]);
    }
}

/// The ServiceAccount the test helpers scrape agents' metrics as.
pub const METRICS_SCRAPER: &str = "nodevirt-test-scraper";

pub struct Namespace {
    cluster: &'static Cluster,
    pub name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The tiny guest's disk image (hack/guest-image.sh builds it once and caches it).
pub fn guest_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("hack/guest-image.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/guest-image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().expect("image path").trim())
    })
}

/// A command's stdout; panics naming `what` with its stderr when it failed.
pub fn stdout_of_success(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:x}{}",
        (nanos ^ std::process::id()) & 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 200 ms until it returns Some, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(timeout, what, check, String::new)
}

/// [`wait_for`], and on timeout the panic message also carries `explain()`: the state that
/// tells a CI log reader why the wait failed.
pub fn wait_for_explained<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `virsh` on the test cluster's libvirtd.
pub fn virsh(args: &[&str]) -> String {
    virsh_on("qemu:///system", args)
}

/// `virsh -c uri ARGS`: its standard output. Panics with virsh's stderr when virsh fails
/// (libvirtd unreachable, no such domain, ...): an empty answer is never read as "nothing".
pub fn virsh_on(uri: &str, args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("virsh (libvirt-clients)");
    stdout_of_success(out, &format!("virsh -c {uri} {}", args.join(" ")))
}

/// daemonset.yaml without its APIService: no controller Pod runs in a cluster without nodes,
/// and an APIService nobody serves fails the API server's discovery (and with it namespace
/// deletion) for every test.
fn without_api_service(manifests: &str) -> String {
    manifests
        .split("\n---\n")
        .filter(|document| !document.lines().any(|l| l == "kind: APIService"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}
