//! A TCP proxy that cuts every connection idle (no byte either way) for longer than its
//! limit, as the load balancers and proxies in front of API servers do.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct IdleProxy {
    pub address: SocketAddr,
    cut: Arc<AtomicUsize>,
    /// The client side of every connection, to sever them all at once.
    clients: Arc<Mutex<Vec<TcpStream>>>,
}

/// One proxied connection: when either side last sent, and whether it has ended.
struct Link {
    last: Mutex<Instant>,
    over: AtomicBool,
}

impl IdleProxy {
    /// Listens on `listen` (port 0: any) and forwards each connection to `upstream`.
    pub fn start(listen: &str, upstream: SocketAddr, idle: Duration) -> Self {
        let listener = TcpListener::bind(listen).unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&cut);
        let clients = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::clone(&clients);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                accepted.lock().unwrap().push(client.try_clone().unwrap());
                let link = Arc::new(Link {
                    last: Mutex::new(Instant::now()),
                    over: AtomicBool::new(false),
                });
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (link, cut) = (Arc::clone(&link), Arc::clone(&counted));
                    std::thread::spawn(move || forward(from, to, &link, idle, &cut));
                }
            }
        });
        Self {
            address,
            cut,
            clients,
        }
    }

    /// Severs every connection, as a proxy restarting or a network failing would.
    pub fn sever_all(&self) {
        for client in self.clients.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
        }
    }

    /// How many connections it has cut for idling.
    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either ends or the link idles past `idle`; then closes both.
fn forward(mut from: TcpStream, mut to: TcpStream, link: &Link, idle: Duration, cut: &AtomicUsize) {
    from.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 16384];
    while !link.over.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                *link.last.lock().unwrap() = Instant::now();
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let quiet = link.last.lock().unwrap().elapsed();
                if quiet > idle && !link.over.swap(true, Ordering::SeqCst) {
                    cut.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(_) => break,
        }
    }
    link.over.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
