//! The user's side of an interactive serial console: the terminal in raw mode (restored on
//! every way out), keystrokes to the guest, its output to stdout, `Ctrl-]` to leave, as
//! `virsh console`.

use std::io::IsTerminal;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `Ctrl-]`: leaves the console.
pub const ESCAPE: u8 = 0x1d;

/// How a console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The user pressed `Ctrl-]`, or stdin ended.
    Detached,
    /// The other side closed: the guest stopped, or another session took the console over.
    Closed,
}

/// Raw mode on stdin while alive, when stdin is a terminal.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enable() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(Self(None));
        }
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(Self(Some(saved)))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

/// The user's keys: raw mode while alive, and stdin read on one thread for the whole
/// command, so that the sessions of a reconnecting console share it and lose no key.
pub struct Keyboard {
    _raw: RawMode,
    typed: tokio::sync::mpsc::Receiver<Vec<u8>>,
}

impl Keyboard {
    pub fn open() -> std::io::Result<Self> {
        Ok(Self {
            _raw: RawMode::enable()?,
            typed: stdin_chunks(),
        })
    }
}

/// stdin, read on a thread of its own: a blocking read cannot be cancelled, and a thread of
/// tokio's blocking pool would hold the runtime's shutdown until the next key.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let reader = move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdin, &mut buf) {
            if tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(reader)
    {
        tracing::error!(error = %e, "cannot read the terminal");
    }
    rx
}

/// Runs the session over `io` until the user leaves or the other side closes.
pub async fn session<Io>(io: Io, keyboard: &mut Keyboard) -> std::io::Result<Ended>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_guest, mut to_guest) = tokio::io::split(io);
    let typed = &mut keyboard.typed;
    let keystrokes = async {
        // `None`: stdin ended.
        while let Some(chunk) = typed.recv().await {
            let (before, escaped) = match chunk.iter().position(|&b| b == ESCAPE) {
                Some(at) => (&chunk[..at], true),
                None => (&chunk[..], false),
            };
            to_guest.write_all(before).await?;
            to_guest.flush().await?;
            if escaped {
                break;
            }
        }
        Ok::<_, std::io::Error>(Ended::Detached)
    };
    let output = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            let n = from_guest.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Ended::Closed);
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
    };
    tokio::select! {
        ended = keystrokes => ended,
        ended = output => ended,
    }
}
