//! A running domain's serial console as a byte stream, and its VNC server as a socket.
//!
//! The console (libvirt's `virDomainOpenConsole`): what the guest writes comes out of [`ConsoleSession::output`], what is sent to
//! [`ConsoleSession::input`] reaches its serial port. QEMU's log of the port (the VM's console
//! log) keeps being written meanwhile.
//!
//! libvirt allows one session per console, as `virsh console` does: a second open is refused
//! ([`ConsoleError::Busy`]) unless it forces, which ends the first session.
//!
//! The stream is non-blocking and has one thread of its own, which alone receives, sends and
//! finally aborts it: libvirt's remote stream must not be aborted while another thread is
//! inside a call on it. libvirt's event loop wakes that thread when the stream has data or
//! room, and the session's handles wake it with input or its end, all on one channel.
#![allow(unsafe_code)] // FFI: stream calls whose would-block result the `virt` crate hides

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    input: ConsoleInput,
}

impl ConsoleSession {
    /// Where keystrokes for the guest's serial port go.
    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }
}

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        // The stream's thread aborts it; an error means it had already ended.
        let _ = self.input.wakes.send(Wake::Close);
    }
}

/// To the guest's serial port.
#[derive(Clone)]
pub struct ConsoleInput {
    wakes: mpsc::UnboundedSender<Wake>,
}

/// The session ended.
#[derive(Debug)]
pub struct Closed;

impl ConsoleInput {
    pub fn send(&self, bytes: Vec<u8>) -> Result<(), Closed> {
        self.wakes.send(Wake::Input(bytes)).map_err(|_| Closed)
    }
}

/// What the stream's thread is woken for.
enum Wake {
    /// libvirt's event loop: the stream has data, room, or an error.
    Io,
    Input(Vec<u8>),
    Close,
}

impl Libvirt {
    /// A new connection to the running domain's VNC server (`virDomainOpenGraphicsFD`: QEMU
    /// hands libvirtd a socket, which passes it here), as if a viewer had connected to it.
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
        let fd = i32::try_from(fd).map_err(|_| {
            ConsoleError::Socket(std::io::Error::other(format!(
                "libvirt gave {fd}, not a descriptor, for the VNC server of {name}"
            )))
        })?;
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
        let stream = Stream::new(&conn, sys::VIR_STREAM_NONBLOCK).map_err(Self::err(op, name))?;
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
        let (wakes_tx, wakes) = mpsc::unbounded_channel();
        let watch = Arc::new(Watch {
            wakes: wakes_tx.clone(),
            woken: AtomicBool::new(false),
        });
        if let Err(e) = watch_stream(&stream, &watch, READ_EVENTS) {
            let _ = stream.abort();
            return Err(Self::err("watching the serial console of", name)(e).into());
        }
        let (output_tx, output) = mpsc::channel(QUEUED_CHUNKS);
        let io = StreamIo {
            stream,
            watch,
            wakes,
            output: output_tx,
        };
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || io.run())
            .map_err(ConsoleError::Socket)?;
        Ok(ConsoleSession {
            output,
            input: ConsoleInput { wakes: wakes_tx },
        })
    }
}

const READ_EVENTS: sys::virStreamEventType =
    sys::VIR_STREAM_EVENT_READABLE | sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP;

/// What libvirt's event loop holds for the stream: it only wakes the stream's thread.
struct Watch {
    wakes: mpsc::UnboundedSender<Wake>,
    /// A wake is queued and not yet taken: the loop calls back while the stream stays readable,
    /// and one queued wake is enough.
    woken: AtomicBool,
}

/// The stream and everything its thread needs; the thread alone calls the stream.
struct StreamIo {
    stream: Stream,
    watch: Arc<Watch>,
    wakes: mpsc::UnboundedReceiver<Wake>,
    output: mpsc::Sender<Vec<u8>>,
}

/// What a non-blocking call on the stream did.
enum Transfer {
    Done(usize),
    WouldBlock,
    /// The end of the stream, its abort or its loss.
    Ended,
}

impl StreamIo {
    fn run(mut self) {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        while self.serve(&mut pending, &mut buf) {}
        // SAFETY: the stream is live (this thread owns a reference) and no other thread calls it.
        unsafe { sys::virStreamEventRemoveCallback(self.stream.as_ptr()) };
        let _ = self.stream.abort();
    }

    /// One wake: takes the input it brings, moves what can move; false once the session ends.
    fn serve(&mut self, pending: &mut Vec<u8>, buf: &mut [u8]) -> bool {
        match self.wakes.blocking_recv() {
            None | Some(Wake::Close) => return false,
            Some(Wake::Input(bytes)) => pending.extend_from_slice(&bytes),
            Some(Wake::Io) => self.watch.woken.store(false, Ordering::SeqCst),
        }
        loop {
            match recv(&self.stream, buf) {
                Transfer::Done(n) => {
                    if !self.deliver(buf[..n].to_vec()) {
                        return false;
                    }
                }
                Transfer::WouldBlock => break,
                Transfer::Ended => return false,
            }
        }
        while !pending.is_empty() {
            match send(&self.stream, pending) {
                Transfer::Done(n) => drop(pending.drain(..n)),
                Transfer::WouldBlock => break,
                Transfer::Ended => return false,
            }
        }
        let events = if pending.is_empty() {
            READ_EVENTS
        } else {
            READ_EVENTS | sys::VIR_STREAM_EVENT_WRITABLE
        };
        self.stream.event_update_callback(events).is_ok()
    }

    /// Hands a chunk to the client; while the client is slow, the stream is not watched for
    /// data (which would have the event loop call back without end).
    fn deliver(&self, chunk: Vec<u8>) -> bool {
        match self.output.try_send(chunk) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                let quiet = READ_EVENTS & !sys::VIR_STREAM_EVENT_READABLE;
                self.stream.event_update_callback(quiet).is_ok()
                    && self.output.blocking_send(chunk).is_ok()
                    && self.stream.event_update_callback(READ_EVENTS).is_ok()
            }
        }
    }
}

fn recv(stream: &Stream, buf: &mut [u8]) -> Transfer {
    // SAFETY: the stream is live and `buf` is valid for writes of its length.
    let n =
        unsafe { sys::virStreamRecv(stream.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len()) };
    transfer(n, buf.len())
}

fn send(stream: &Stream, data: &[u8]) -> Transfer {
    // SAFETY: the stream is live and `data` is valid for reads of its length.
    let n =
        unsafe { sys::virStreamSend(stream.as_ptr(), data.as_ptr() as *const c_char, data.len()) };
    transfer(n, data.len())
}

/// libvirt's result: bytes moved, -2 for "would block", 0 (receiving) for the end, -1 an error.
fn transfer(n: c_int, len: usize) -> Transfer {
    match n {
        -2 => Transfer::WouldBlock,
        1.. => Transfer::Done(usize::try_from(n).unwrap_or(0).min(len)),
        _ => Transfer::Ended,
    }
}

/// Has libvirt's event loop wake the stream's thread on `events`.
fn watch_stream(
    stream: &Stream,
    watch: &Arc<Watch>,
    events: sys::virStreamEventType,
) -> Result<(), virt::error::Error> {
    let opaque = Arc::into_raw(Arc::clone(watch)) as *mut c_void;
    // SAFETY: the stream is live; `opaque` is a leaked Arc that libvirt hands back to
    // `release_watch` exactly once, when the callback is removed or the stream freed.
    let rc = unsafe {
        sys::virStreamEventAddCallback(
            stream.as_ptr(),
            events as c_int,
            Some(on_stream_event),
            opaque,
            Some(release_watch),
        )
    };
    if rc < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        drop(unsafe { Arc::from_raw(opaque as *const Watch) });
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

unsafe extern "C" fn on_stream_event(
    _stream: sys::virStreamPtr,
    _events: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the Watch registered in `watch_stream`, alive until `release_watch`.
    let watch = unsafe { &*(opaque as *const Watch) };
    if !watch.woken.swap(true, Ordering::SeqCst) {
        // A closed channel: the stream's thread has ended and removes this callback.
        let _ = watch.wakes.send(Wake::Io);
    }
}

unsafe extern "C" fn release_watch(opaque: *mut c_void) {
    // SAFETY: called once by libvirt; `opaque` came from Arc::into_raw in `watch_stream`.
    drop(unsafe { Arc::from_raw(opaque as *const Watch) });
}
