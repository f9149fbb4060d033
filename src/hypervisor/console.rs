//! A running domain's serial console as a byte stream, and its VNC server as a socket.
//!
//! The console (libvirt's `virDomainOpenConsole`): what the guest writes comes out of [`ConsoleSession::output`], what is sent to
//! [`ConsoleSession::input`] reaches its serial port. QEMU's log of the port (the VM's console
//! log) keeps being written meanwhile.
//!
//! libvirt allows one session per console, as `virsh console` does: a second open is refused
//! ([`ConsoleError::Busy`]) unless it forces, which ends the first session.
//!
//! The stream is used in blocking mode from two threads of its own, one receiving and one
//! sending (libvirt's RPC client serves both on one connection). Dropping the session aborts
//! the stream, which ends both.

use std::os::fd::{FromRawFd, OwnedFd};

use tokio::sync::mpsc;
use virt::error::ErrorNumber;
use virt::stream::Stream;
use virt::sys;

use super::{HypervisorError, Libvirt};

/// How much of the guest's output may wait for a slow client, in chunks of at most
/// [`CHUNK`] bytes.
const QUEUED_CHUNKS: usize = 64;
const CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the domain {0} is not running")]
    NotRunning(String),
    #[error("another session holds the serial console of {0} (force to take it over)")]
    Busy(String),
    #[error(transparent)]
    Libvirt(#[from] HypervisorError),
    #[error("using the VNC server's socket")]
    Socket(#[from] std::io::Error),
}

pub struct ConsoleSession {
    /// The guest's output, in chunks; ends when the stream does (the guest stopped, another
    /// session took over, libvirtd went away).
    pub output: mpsc::Receiver<Vec<u8>>,
    /// To the guest's serial port; the stream's sending thread ends when this is dropped.
    pub input: mpsc::UnboundedSender<Vec<u8>>,
    stream: Stream,
}

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        // Wakes the receiving thread; an error means the stream had already ended.
        let _ = self.stream.clone().abort();
    }
}

impl Libvirt {
    /// A new connection to the running domain's VNC server (`virDomainOpenGraphicsFD`: QEMU
    /// hands libvirtd a socket, which passes it here), as if a viewer had connected to it.
    #[allow(unsafe_code)] // owning the descriptor libvirt returns as a plain integer
    pub fn open_vnc(&self, name: &str) -> Result<OwnedFd, ConsoleError> {
        let op = "opening the VNC server of";
        let domain = self
            .find(name)?
            .filter(|d| d.is_active().unwrap_or(false))
            .ok_or_else(|| ConsoleError::NotRunning(name.to_string()))?;
        // The domain's one graphics device; VNC listens without a password on the node's
        // loopback, so skipping its authentication changes nothing.
        let fd = domain
            .open_graphics_fd(0, sys::VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
            .map_err(Self::err(op, name))?;
        let fd = i32::try_from(fd).map_err(|_| ConsoleError::NotRunning(name.to_string()))?;
        // SAFETY: libvirt just opened this descriptor for the caller, who owns it from here.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens the serial console of the running domain `name`; `force` takes it over from
    /// another session.
    pub fn open_console(&self, name: &str, force: bool) -> Result<ConsoleSession, ConsoleError> {
        let op = "opening the serial console of";
        let conn = self.conn(op, name)?;
        let domain = self
            .find(name)?
            .filter(|d| d.is_active().unwrap_or(false))
            .ok_or_else(|| ConsoleError::NotRunning(name.to_string()))?;
        let stream = Stream::new(&conn, 0).map_err(Self::err(op, name))?;
        let flags = if force {
            sys::VIR_DOMAIN_CONSOLE_FORCE
        } else {
            sys::VIR_DOMAIN_CONSOLE_SAFE
        };
        domain
            .open_console(None, &stream, flags)
            .map_err(|e| match e.code() {
                virt::enumutil::Enum::Known(ErrorNumber::OperationFailed) if !force => {
                    ConsoleError::Busy(name.to_string())
                }
                _ => ConsoleError::Libvirt(Self::err(op, name)(e)),
            })?;
        let (output_tx, output) = mpsc::channel(QUEUED_CHUNKS);
        let (input, input_rx) = mpsc::unbounded_channel();
        let spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("console-{what}"))
                .spawn(f)
                .map(drop)
                .map_err(
                    |e| tracing::error!(domain = name, error = %e, "cannot start a console thread"),
                )
        };
        let (receiving, sending) = (stream.clone(), stream.clone());
        spawn("out", Box::new(move || receive(&receiving, &output_tx))).ok();
        spawn("in", Box::new(move || send(&sending, input_rx))).ok();
        Ok(ConsoleSession {
            output,
            input,
            stream,
        })
    }
}

fn receive(stream: &Stream, output: &mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; CHUNK];
    // 0 is the end of the stream, an error its abort or loss.
    while let Ok(n @ 1..) = stream.recv(&mut buf) {
        let n = usize::try_from(n).unwrap_or(0).min(buf.len());
        if output.blocking_send(buf[..n].to_vec()).is_err() {
            return;
        }
    }
}

fn send(stream: &Stream, mut input: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(chunk) = input.blocking_recv() {
        let mut rest = chunk.as_slice();
        while !rest.is_empty() {
            match stream.send(rest) {
                Ok(n @ 1..) => rest = &rest[usize::try_from(n).unwrap_or(0).min(rest.len())..],
                _ => return,
            }
        }
    }
}
