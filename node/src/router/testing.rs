//! What the router tests share: a GET through nginx and a backend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// `GET /` with `Host: host` through nginx at `addr`: the whole answer.
pub(crate) fn get(addr: SocketAddr, host: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to nginx");
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// A backend on loopback answering every request `200 from-backend`; its address.
pub(crate) fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-backend");
        }
    });
    addr
}
