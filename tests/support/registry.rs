//! A real OCI registry (Debian's docker-registry) on loopback for registryDisk tests, with the
//! tiny guest pushed into it by skopeo; optionally behind htpasswd basic auth.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::{Cluster, repo_root, unique_suffix, wait_for};

pub const USER: &str = "puller";
pub const PASSWORD: &str = "s3cret-pull";

pub struct Registry {
    child: Child,
    pub address: String,
    pub dir: PathBuf,
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Registry {
    /// Starts a registry, with basic auth if `auth`, and pushes the tiny guest as `tiny:1`.
    pub fn start(cluster: &Cluster, auth: bool) -> Registry {
        let dir = cluster.dir.join(format!("registry-{}", unique_suffix()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {address}}}\n",
            dir.join("data").display()
        );
        if auth {
            let htpasswd = run("htpasswd", &["-Bbn", USER, PASSWORD]);
            std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: nodevirt, path: {}}}}}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let registry = Registry {
            child,
            address,
            dir,
        };
        wait_for(Duration::from_secs(20), "the registry to listen", || {
            std::net::TcpStream::connect(&registry.address)
                .ok()
                .map(drop)
        });
        let layout = run(
            "bash",
            &[repo_root().join("hack/guest-oci.sh").to_str().unwrap()],
        );
        let layout = layout.lines().last().unwrap().trim().to_string();
        let mut args = vec![
            "copy".to_string(),
            "--dest-tls-verify=false".into(),
            format!("oci:{layout}:latest"),
            format!("docker://{}/tiny:1", registry.address),
        ];
        if auth {
            args.insert(1, format!("--dest-creds={USER}:{PASSWORD}"));
        }
        run(
            "skopeo",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        registry
    }

    pub fn image(&self) -> String {
        format!("{}/tiny:1", self.address)
    }

    /// How many times a blob of the image was downloaded (the registry logs each request).
    pub fn blob_downloads(&self) -> usize {
        std::fs::read_to_string(self.dir.join("registry.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("msg=\"response completed\"")
                    && l.contains("http.request.method=GET")
                    && l.contains("/v2/tiny/blobs/sha256:")
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS server on loopback with a self-signed certificate (openssl s_server) that is no
/// registry: what a user would point registryDisk at to probe the node's network.
pub struct TlsPort {
    child: Child,
    pub address: String,
}

impl TlsPort {
    pub fn start(cluster: &Cluster) -> TlsPort {
        let dir = cluster.dir.join(format!("tls-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=probe",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &address, "-www", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        let port = TlsPort { child, address };
        wait_for(
            Duration::from_secs(10),
            "openssl s_server to listen",
            || std::net::TcpStream::connect(&port.address).ok().map(drop),
        );
        port
    }
}

impl Drop for TlsPort {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
