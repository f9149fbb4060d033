//! `nodevirt console` driven as a user would: keys on its stdin, the guest's output read from
//! its stdout as it comes (each byte timed), what it says on stderr.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::wait_for_explained;

pub struct Console {
    child: Child,
    keys: ChildStdin,
    pub started: Instant,
    output: Arc<Mutex<Captured>>,
    said: Arc<Mutex<Vec<u8>>>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    first_byte: Option<Instant>,
}

/// Appends everything `from` yields to `into`, calling `seen` at each read.
fn drain(mut from: impl Read + Send + 'static, mut seen: impl FnMut(&[u8]) + Send + 'static) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            seen(&buf[..n]);
        }
    });
}

impl Console {
    /// Starts `nodevirt console VM -n NS` with `extra` arguments (a kubeconfig, flags).
    pub fn attach(vm: &str, ns: &str, extra: &[&str]) -> Self {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodevirt"))
            .args(["console", vm, "-n", ns])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let keys = child.stdin.take().unwrap();
        let output = Arc::new(Mutex::new(Captured::default()));
        let into = Arc::clone(&output);
        drain(child.stdout.take().unwrap(), move |bytes| {
            let mut captured = into.lock().unwrap();
            captured.first_byte.get_or_insert_with(Instant::now);
            captured.bytes.extend_from_slice(bytes);
        });
        let said = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&said);
        drain(child.stderr.take().unwrap(), move |bytes| {
            into.lock().unwrap().extend_from_slice(bytes)
        });
        Self {
            child,
            keys,
            started,
            output,
            said,
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap().bytes).into_owned()
    }

    pub fn said(&self) -> String {
        String::from_utf8_lossy(&self.said.lock().unwrap()).into_owned()
    }

    /// How long after the command started the guest's first byte arrived, once it has.
    pub fn first_byte_after(&self, timeout: Duration) -> Duration {
        wait_for_explained(
            timeout,
            "the console's first byte",
            || {
                let captured = self.output.lock().unwrap();
                captured.first_byte.map(|at| at - self.started)
            },
            || format!("it said: {}", self.said()),
        )
    }

    /// Waits until stdout from byte `from` on holds a line that, trimmed, is `line`.
    pub fn wait_line(&self, from: usize, line: &str, timeout: Duration) {
        wait_for_explained(
            timeout,
            &format!("a console line {line:?}"),
            || {
                let output = self.output();
                output
                    .get(from..)?
                    .lines()
                    .any(|l| l.trim() == line)
                    .then_some(())
            },
            || format!("output:\n{}\nit said: {}", self.output(), self.said()),
        );
    }

    /// Waits until stderr says `what`.
    pub fn wait_said(&self, what: &str, timeout: Duration) {
        wait_for_explained(
            timeout,
            &format!("nodevirt console to say {what:?}"),
            || self.said().contains(what).then_some(()),
            || format!("it said: {}", self.said()),
        );
    }

    pub fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Types a shell command and returns how much output there was before it.
    pub fn run(&mut self, command: &str) -> usize {
        let before = self.output.lock().unwrap().bytes.len();
        self.type_keys(&format!("{command}\r"));
        before
    }

    /// Ctrl-] and the command's exit status.
    pub fn leave(mut self) -> ExitStatus {
        self.type_keys("\u{1d}");
        self.wait_exit("leave on Ctrl-]")
    }

    /// The command's exit status once it ends by itself, within 60 s.
    pub fn wait_exit(&mut self, why: &str) -> ExitStatus {
        let said = Arc::clone(&self.said);
        wait_for_explained(
            Duration::from_secs(60),
            &format!("nodevirt console to {why}"),
            || self.child.try_wait().unwrap(),
            || {
                format!(
                    "it said: {}",
                    String::from_utf8_lossy(&said.lock().unwrap())
                )
            },
        )
    }

    /// Whether the command is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
