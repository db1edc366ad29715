//! The RPC listener's limits on connections that have not authenticated, with real sockets
//! and TLS on loopback: the handshake-and-hello timeout, the pre-auth frame limit, and the
//! cap on unauthenticated connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quarry_node::pki::{self, ClusterCa, NodeIdentity};
use quarry_node::rpc::codec::{MAX_FRAME, MAX_PREAUTH_FRAME};
use quarry_node::rpc::join::{Admission, JoinAuthority, JoinService, Member};
use quarry_node::rpc::server::{
    BoxFuture, ListenerLimits, RequestHandler, HANDSHAKE_TIMEOUT, MAX_UNAUTHENTICATED,
};
use quarry_node::rpc::{codec, Dialer, Handlers, Hello, Lane, RpcServer, PROTOCOL};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

struct Echo;
impl RequestHandler for Echo {
    fn handle(&self, _peer: String, req: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move { Ok(req) })
    }
}

struct NoAdmission;
impl JoinAuthority for NoAdmission {
    fn admit(&self, _member: Member) -> BoxFuture<'_, Result<Admission, String>> {
        Box::pin(async { Err("not in this test".to_owned()) })
    }
}

struct Listener {
    ca: ClusterCa,
    server: RpcServer,
}

async fn listen(limits: ListenerLimits) -> Listener {
    let ca = ClusterCa::generate("limits").expect("ca");
    let a: NodeIdentity = ca.issue("server-a").expect("a");
    let handlers = Handlers {
        control: Some(Arc::new(Echo)),
        join: Some(Arc::new(JoinService::new(
            ca.clone(),
            pki::random_bytes(),
            [9; 32],
            "qra_test".to_owned(),
            Arc::new(NoAdmission),
        ))),
        ..Handlers::default()
    };
    let server = RpcServer::bind_with("127.0.0.1:0".parse().expect("addr"), &a, handlers, limits)
        .await
        .expect("bind");
    Listener { ca, server }
}

/// Wait until the server closes `s` (a read gives EOF or an error), at most `within`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration, what: &str) {
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: the server did not close the connection within {within:?}"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {} // TLS records (an alert) before the close
        }
    }
}

/// TLS without a certificate, as a joiner dials (no hello yet).
async fn stranger_tls(l: &Listener) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = pki::join_client_config(l.ca.digest()).expect("tls");
    let tcp = TcpStream::connect(l.server.local_addr())
        .await
        .expect("tcp");
    tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from(pki::SERVER_NAME).expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

fn short() -> ListenerLimits {
    ListenerLimits {
        handshake_timeout: Duration::from_millis(300),
        ..ListenerLimits::default()
    }
}

#[test]
fn the_production_limits_are_the_documented_ones() {
    let d = ListenerLimits::default();
    assert_eq!(d.handshake_timeout, HANDSHAKE_TIMEOUT);
    assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(5));
    assert_eq!((d.max_unauthenticated, MAX_UNAUTHENTICATED), (256, 256));
    assert_eq!(MAX_PREAUTH_FRAME, 64 << 10);
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_dropped_after_the_handshake_timeout() {
    let l = listen(short()).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(l.server.local_addr())
        .await
        .expect("tcp");
    closed_within(&mut silent, Duration::from_secs(5), "no TLS").await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    // TLS done but no hello: the same timeout covers both.
    let mut no_hello = stranger_tls(&l).await;
    closed_within(&mut no_hello, Duration::from_secs(5), "no hello").await;
    // A joiner's hello but no join request: closed after the same time again.
    let mut no_request = stranger_tls(&l).await;
    codec::send(
        &mut no_request,
        &Hello {
            version: PROTOCOL,
            lane: Lane::Join,
        },
    )
    .await
    .expect("hello");
    closed_within(&mut no_request, Duration::from_secs(5), "no join request").await;
}

#[tokio::test]
async fn a_16_mib_length_prefix_before_authentication_is_refused_from_its_header() {
    // A long timeout: a close within it is the frame limit's doing, not the timeout's.
    let l = listen(ListenerLimits {
        handshake_timeout: Duration::from_secs(60),
        ..ListenerLimits::default()
    })
    .await;
    let within = Duration::from_secs(5);
    // As the hello of a stranger: the four bytes of the prefix and nothing more.
    let mut s = stranger_tls(&l).await;
    s.write_all(&MAX_FRAME.to_be_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    closed_within(&mut s, within, "16 MiB hello").await;
    // Just above the pre-auth limit, as a joiner's request after its hello.
    let mut s = stranger_tls(&l).await;
    codec::send(
        &mut s,
        &Hello {
            version: PROTOCOL,
            lane: Lane::Join,
        },
    )
    .await
    .expect("hello");
    s.write_all(&(MAX_PREAUTH_FRAME + 1).to_be_bytes())
        .await
        .expect("write");
    s.flush().await.expect("flush");
    closed_within(&mut s, within, "64 KiB + 1 join request").await;
}

#[tokio::test]
async fn the_257th_unauthenticated_connection_is_closed_and_slots_free_up() {
    let l = listen(ListenerLimits {
        handshake_timeout: Duration::from_secs(60),
        ..ListenerLimits::default()
    })
    .await;
    let addr: SocketAddr = l.server.local_addr();
    let b = l.ca.issue("server-b").expect("b");
    let dialer = Dialer::new(&b).expect("dialer");
    // A member connected before the flood keeps working through it.
    let mut lane = dialer.requests(addr, Lane::Control).await.expect("lane");
    let mut held = Vec::new();
    for _ in 0..MAX_UNAUTHENTICATED {
        held.push(TcpStream::connect(addr).await.expect("tcp"));
    }
    // Accepted in order: by the time the 257th is closed, the 256 hold every slot.
    let mut extra = TcpStream::connect(addr).await.expect("tcp");
    closed_within(&mut extra, Duration::from_secs(5), "the 257th").await;
    assert_eq!(lane.call(b"still").await.expect("call"), b"still");
    // The held ones are still open (a read would block, not end).
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), held[0].read(&mut buf))
            .await
            .is_err(),
        "the first connection is still held open"
    );
    drop(held);
    // Their slots free up once the server sees them closed: a new lane opens.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match dialer.requests(addr, Lane::Control).await {
            Ok(mut r) => {
                assert_eq!(r.call(b"x").await.expect("call"), b"x");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("not yet: {e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("no lane within 5 s of closing the 256 connections: {e}"),
        }
    }
}
