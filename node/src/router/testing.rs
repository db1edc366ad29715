//! What the router tests share: a GET through nginx, and a guard that stops it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::Nginx;

/// `GET /` with `Host: host` through nginx at `addr`: the whole answer.
pub(crate) fn get(addr: SocketAddr, host: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to nginx");
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Stops nginx even when the test fails.
pub(crate) struct Guard(pub(crate) Nginx);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.stop_and_remove();
    }
}
