//! A VNC client just far enough to prove a tunnel reaches QEMU's VNC server: the RFB 3.8
//! handshake, security None, ClientInit, and one FramebufferUpdate of the whole screen.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `tunnel` (a command that prints the address it listens on, then serves viewers),
/// asserts a FramebufferUpdate through it, and stops it.
pub fn expect_framebuffer_update_through(tunnel: &mut Command) {
    let mut tunnel = tunnel.stdout(Stdio::piped()).spawn().unwrap();
    let address = printed_address(&mut tunnel);
    expect_framebuffer_update(&address);
    tunnel.kill().unwrap();
    tunnel.wait().unwrap();
}

/// The `127.0.0.1:PORT` a tunnel command prints on its first stdout line.
pub fn printed_address(tunnel: &mut Child) -> String {
    let mut line = String::new();
    std::io::BufReader::new(tunnel.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.split_whitespace()
        .find(|word| word.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

/// Connects to `address` and asserts the handshake and a FramebufferUpdate.
fn expect_framebuffer_update(address: &str) {
    let mut rfb = std::net::TcpStream::connect(address).unwrap();
    rfb.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write = rfb.try_clone().unwrap();
    let mut read = |n: usize| {
        let mut buf = vec![0u8; n];
        rfb.read_exact(&mut buf).unwrap();
        buf
    };
    assert_eq!(read(12), b"RFB 003.008\n");
    write.write_all(b"RFB 003.008\n").unwrap();
    let count = read(1)[0] as usize;
    let types = read(count);
    assert!(types.contains(&1), "security type None offered: {types:?}");
    write.write_all(&[1]).unwrap();
    assert_eq!(read(4), [0, 0, 0, 0], "SecurityResult OK");
    write.write_all(&[1]).unwrap(); // ClientInit, shared
    let init = read(24);
    let (width, height) = (&init[0..2], &init[2..4]);
    let name_length = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    read(name_length);
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend_from_slice(width);
    request.extend_from_slice(height);
    write.write_all(&request).unwrap();
    assert_eq!(read(1), [0], "a FramebufferUpdate answers the request");
}
