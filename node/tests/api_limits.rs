//! The API's body limits through its real HTTP layer (axum on loopback TCP and on the local
//! socket): an oversized JSON body is 413 naming the size and the limit, a deeply nested one
//! 400, and the server goes on answering.

use std::sync::{Arc, Mutex};

use quarry_node::api::limits::{MAX_JSON_BODY, MAX_JSON_DEPTH};
use quarry_node::api::{
    ApiFailure, ApiServer, ClusterView, EnvChange, EnvView, GridView, Servers, Status,
};
use quarry_node::rpc::server::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "qra_limits";

/// Records env changes; everything else is not served.
#[derive(Default)]
struct Recorder(Mutex<Vec<EnvChange>>);

fn unserved<T: Send + 'static>() -> BoxFuture<'static, Result<T, ApiFailure>> {
    Box::pin(async {
        Err(ApiFailure {
            status: 501,
            message: "not in this test".to_owned(),
        })
    })
}

impl ClusterView for Recorder {
    fn name(&self) -> String {
        "limits".to_owned()
    }
    fn status(&self) -> BoxFuture<'_, Status> {
        Box::pin(std::future::pending())
    }
    fn servers(&self) -> BoxFuture<'_, Result<Servers, ApiFailure>> {
        unserved()
    }
    fn remove_server(&self, _name: String) -> BoxFuture<'_, Result<(), ApiFailure>> {
        unserved()
    }
    fn grid(&self) -> BoxFuture<'_, Result<GridView, ApiFailure>> {
        unserved()
    }
    fn env(&self, _stack: Option<String>) -> BoxFuture<'_, Result<EnvView, ApiFailure>> {
        unserved()
    }
    fn set_env(&self, change: EnvChange) -> BoxFuture<'_, Result<(), ApiFailure>> {
        self.0.lock().expect("recorder").push(change);
        Box::pin(async { Ok(()) })
    }
}

/// One raw HTTP/1.1 exchange over TCP: the request is written while the answer is read (a
/// server that refuses a body from its length answers before reading it).
async fn exchange(addr: std::net::SocketAddr, head: String, body: Vec<u8>) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(head.as_bytes()).await;
        let _ = w.write_all(&body).await;
        let _ = w.flush().await;
        w // kept open until the answer is read
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), r.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s");
    assert!(
        read.is_ok() || !raw.is_empty(),
        "no answer: {read:?} after {} bytes",
        raw.len()
    );
    drop(writer);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn post(path: &str, len: Option<usize>, chunked: bool) -> String {
    let mut h = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\n"
    );
    if let Some(n) = len {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    if chunked {
        h.push_str("Transfer-Encoding: chunked\r\n");
    }
    h.push_str("\r\n");
    h
}

async fn start() -> (ApiServer, Arc<Recorder>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let view = Arc::new(Recorder::default());
    let api = ApiServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        &dir.path().join("api.sock"),
        TOKEN.to_owned(),
        view.clone(),
    )
    .await
    .expect("start");
    (api, view, dir)
}

#[tokio::test]
async fn a_json_body_above_the_limit_is_413_naming_its_size_and_the_limit() {
    let (api, view, _dir) = start().await;
    let addr = api.tcp_addr();
    // Announced: refused from the header, naming the announced size.
    let n = 2 * MAX_JSON_BODY;
    let (status, text) = exchange(addr, post("/v1/env", Some(n), false), vec![b' '; n]).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains(&n.to_string()) && text.contains(&MAX_JSON_BODY.to_string()),
        "names the size and the limit: {text}"
    );
    // Chunked (no length announced): refused once the cap is passed.
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", 512 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 512 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = exchange(addr, post("/v1/env", None, true), chunked).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("more than"), "{text}");
    // The same on the scale endpoint.
    let (status, text) = exchange(
        addr,
        post("/v1/stacks/shop/scale", Some(n), false),
        vec![b' '; n],
    )
    .await;
    assert_eq!(status, 413, "{text}");
    // The CLI's client gets the 413 too (it writes the body while the server has answered).
    let reply = quarry_node::api::client::request(
        &quarry_node::api::client::Endpoint::Tcp(addr.to_string()),
        "POST",
        "/v1/env",
        Some(&vec![b' '; 4 * MAX_JSON_BODY]),
        Some(TOKEN),
    )
    .await
    .expect("an answer, not a broken connection");
    assert_eq!(
        reply.status,
        413,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // A body within the limit still goes through.
    let ok = br#"{"set": {"A": "1"}}"#.to_vec();
    let (status, text) = exchange(addr, post("/v1/env", Some(ok.len()), false), ok).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(view.0.lock().expect("recorder").len(), 1);
    api.stop();
}

#[tokio::test]
async fn a_deeply_nested_json_body_is_400_and_the_server_goes_on() {
    let (api, view, _dir) = start().await;
    let addr = api.tcp_addr();
    // 100,000 levels in 200 KB: under the size cap, far over the depth limit.
    for depth in [MAX_JSON_DEPTH + 1, 100_000] {
        let body = format!("{{\"set\": {}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        let (status, text) = exchange(addr, post("/v1/env", Some(body.len()), false), body).await;
        assert_eq!(status, 400, "depth {depth}: {text}");
        assert!(
            text.contains("MAX_JSON_DEPTH") && text.contains(&MAX_JSON_DEPTH.to_string()),
            "{text}"
        );
    }
    // A body that is not an env change is 400 saying what was expected.
    let bad = br#"{"set": 7}"#.to_vec();
    let (status, text) = exchange(addr, post("/v1/env", Some(bad.len()), false), bad).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("is not an env change"), "{text}");
    assert!(view.0.lock().expect("recorder").is_empty());
    // Through the local socket too (no token there).
    let reply = quarry_node::api::client::request(
        &quarry_node::api::client::Endpoint::Unix(api.socket().to_owned()),
        "POST",
        "/v1/env",
        Some(format!("{}{}", "{\"a\":".repeat(1000), "}".repeat(1000)).as_bytes()),
        None,
    )
    .await
    .expect("answer");
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    api.stop();
}
