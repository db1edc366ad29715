//! `quarryd init`, `join` and `run` as library calls: files and modes, the API's token rule,
//! a second server joining the first over loopback as a Raft learner, writes through either,
//! a restart from disk, and the Raft lane refusing a peer without a cluster certificate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use std::time::Duration;

use quarry_node::api::client::{self, Endpoint};
use quarry_node::config::Config;
use quarry_node::daemon::{self, DaemonError, Running, Secrets};
use quarry_node::pki;
use quarry_node::rpc::{client as rpc_client, Lane, RpcError};
use serde_json::Value;

fn config(dir: &Path, name: &str) -> Config {
    let mut c = Config::default();
    c.name = Some(name.to_owned());
    c.address = "127.0.0.1".parse().expect("ip");
    c.api_listen = c.address;
    c.api_port = 0;
    // A fixed RPC port: the cluster records it, and a restart must come back at it.
    c.rpc_port = free_port();
    c.memory = Some("2G".to_owned());
    c.paths.data = dir.join(name).join("data");
    c.paths.secrets = dir.join(name).join("secrets");
    c.paths.api_socket = dir.join(name).join("api.sock");
    c
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
}

#[test]
fn init_creates_root_only_secrets_and_refuses_a_second_init() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), "h1");
    let done = daemon::init(&cfg).expect("init");
    assert_eq!(mode(&cfg.paths.secrets), 0o700);
    for f in [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "gossip.key",
        "join.secret",
        "admin.token",
    ] {
        assert_eq!(mode(&cfg.paths.secrets.join(f)), 0o600, "{f}");
    }
    assert_eq!(done.admin_token_path, cfg.paths.secrets.join("admin.token"));
    let node = std::fs::read_to_string(cfg.paths.data.join("node.json")).expect("node.json");
    assert!(
        node.contains("\"raft_id\": 1"),
        "the founder is Raft id 1: {node}"
    );
    let s = Secrets::of(&cfg);
    assert_eq!(
        s.join_token().expect("token"),
        done.token,
        "`quarryd token` prints init's token"
    );
    let before = std::fs::read(cfg.paths.secrets.join("ca.key")).expect("ca key");
    let e = daemon::init(&cfg).expect_err("second init");
    assert!(matches!(e, DaemonError::AlreadyInitialized(_)), "{e}");
    assert!(e.to_string().contains("quarryd run"), "{e}");
    assert_eq!(
        std::fs::read(cfg.paths.secrets.join("ca.key")).expect("ca key"),
        before,
        "untouched"
    );
}

/// GET `path` on `running`'s TCP API with `token`, as JSON (status, body).
async fn get(running: &Running, path: &str, token: Option<&str>) -> (u16, Value) {
    let tcp = Endpoint::Tcp(running.api.tcp_addr().to_string());
    let r = client::get(&tcp, path, token).await.expect("answer");
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// Poll `path` until `ok` holds for its JSON, or fail with the last answer.
async fn wait_for(
    running: &Running,
    path: &str,
    token: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = get(running, path, Some(token)).await;
        if code == 200 && ok(&v) {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within 20 s; last answer to {path}: HTTP {code} {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(v: &Value, role: &str) -> Vec<String> {
    v["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| role.is_empty() || s["role"] == role)
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_api_with_the_token_on_tcp_and_without_it_on_the_local_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), "h1");
    daemon::init(&cfg).expect("init");
    let token = Secrets::of(&cfg).admin_token().expect("admin token");
    let running = daemon::run(&cfg).await.expect("run");
    assert_eq!(
        mode(&cfg.paths.api_socket),
        0o600,
        "the local socket is root-only"
    );

    let (code, _) = get(&running, "/v1/health", None).await;
    assert_eq!(code, 200, "health needs no token");
    for path in ["/v1/status", "/v1/servers", "/v1/grid", "/v1/env"] {
        let (code, v) = get(&running, path, None).await;
        assert_eq!(code, 401, "{path} without token: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .contains("needs the admin token"),
            "{v}"
        );
        let (code, v) = get(&running, path, Some("qra_wrong")).await;
        assert_eq!(code, 401);
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .contains("wrong admin token"),
            "{v}"
        );
    }
    let v = wait_for(&running, "/v1/status", &token, "h1 leads", |v| {
        v["raft"]["leader"] == "h1"
    })
    .await;
    assert_eq!(v["name"], "h1");
    assert_eq!(v["raft"]["voters"], serde_json::json!(["h1"]), "{v}");
    assert_eq!(v["health"], "ok", "{v}");

    // The founder's record (from its first run) and its grid block.
    let v = wait_for(&running, "/v1/grid", &token, "h1's block", |v| {
        v["grid"]["blocks"]["h1"]["size"] == 2u64 << 30
    })
    .await;
    assert!(v["grid"]["version"].as_u64().unwrap_or(0) >= 1, "{v}");

    let sock = Endpoint::Unix(cfg.paths.api_socket.clone());
    let r = client::get(&sock, "/v1/servers", None)
        .await
        .expect("servers");
    assert_eq!(r.status, 200, "the local socket needs no token");
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["servers"][0]["name"], "h1");
    assert_eq!(v["servers"][0]["memory"], 2u64 << 30);
    assert_eq!(v["servers"][0]["role"], "voter");

    // No cluster certificate, no Raft (or any member) lane on the real daemon either.
    let no_cert =
        pki::join_client_config(Secrets::of(&cfg).join_token().expect("token").ca).expect("tls");
    for lane in [Lane::Raft, Lane::Control] {
        let e = rpc_client::dial(running.rpc.local_addr(), no_cert.clone(), lane)
            .await
            .expect_err("refused");
        assert!(
            matches!(e, RpcError::Refused { .. })
                && e.to_string()
                    .contains("needs a certificate from this cluster's CA"),
            "{lane:?}: {e}"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_joins_as_a_learner_writes_go_through_either_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let c1 = config(dir.path(), "h1");
    let init = daemon::init(&c1).expect("init");
    let token = Secrets::of(&c1).admin_token().expect("token");
    let r1 = daemon::run(&c1).await.expect("run h1");
    wait_for(&r1, "/v1/servers", &token, "h1 recorded", |v| {
        names(v, "voter") == ["h1"]
    })
    .await;

    let c2 = config(dir.path(), "h2");
    // A wrong secret: refused, nothing stored.
    let mut bad = init.token.clone();
    bad.secret[5] ^= 0xff;
    let e = daemon::join(&c2, r1.rpc.local_addr(), &bad)
        .await
        .expect_err("wrong secret");
    assert!(e.to_string().contains("wrong join secret"), "{e}");
    assert!(
        !c2.paths.secrets.join("node.pem").exists(),
        "nothing stored on refusal"
    );

    let joined = daemon::join(&c2, r1.rpc.local_addr(), &init.token)
        .await
        .expect("join");
    assert_eq!(joined.raft_id, 2);
    assert_eq!(
        joined
            .servers
            .iter()
            .map(|s| s.member.name.as_str())
            .collect::<Vec<_>>(),
        ["h1", "h2"]
    );
    for f in [
        "ca.pem",
        "ca.key",
        "join.secret",
        "node.pem",
        "node.key",
        "gossip.key",
        "admin.token",
    ] {
        assert_eq!(mode(&c2.paths.secrets.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        Secrets::of(&c2).join_token().expect("token"),
        init.token,
        "the joiner can admit others: it holds the CA and the join secret"
    );
    let e = daemon::join(&c2, r1.rpc.local_addr(), &init.token)
        .await
        .expect_err("joined twice");
    assert!(matches!(e, DaemonError::AlreadyInitialized(_)), "{e}");

    // The joined server runs as a learner (2 servers: 1 voter); both list both.
    let r2 = daemon::run(&c2).await.expect("run h2");
    let h2_rpc = r2.rpc.local_addr().port();
    for r in [&r1, &r2] {
        wait_for(
            r,
            "/v1/servers",
            &token,
            "h1 voter, h2 learner (its record up to date)",
            |v| {
                names(v, "voter") == ["h1"]
                    && names(v, "learner") == ["h2"]
                    && v["servers"][1]["rpc_port"] == h2_rpc
                    && v["servers"][1]["health"] == "ok"
            },
        )
        .await;
    }

    // A write through the learner is forwarded to the leader; a read on either sees it.
    let h2 = Endpoint::Tcp(r2.api.tcp_addr().to_string());
    let w = client::request(
        &h2,
        "POST",
        "/v1/env",
        Some(br#"{"set": {"GREETING": "hello"}}"#),
        Some(&token),
    )
    .await
    .expect("post");
    assert_eq!(w.status, 200, "{}", String::from_utf8_lossy(&w.body));
    for r in [&r1, &r2] {
        let (code, v) = get(r, "/v1/env", Some(&token)).await;
        assert_eq!(
            (code, &v["env"]["GREETING"]),
            (200, &Value::from("hello")),
            "{v}"
        );
    }
    let w = client::request(
        &h2,
        "POST",
        "/v1/env",
        Some(br#"{"set": {"1BAD": "x"}}"#),
        Some(&token),
    )
    .await
    .expect("post");
    assert_eq!(w.status, 400, "{}", String::from_utf8_lossy(&w.body));

    // Both stop; both come back from their data directories with the state.
    r2.stop().await;
    r1.stop().await;
    let r1 = daemon::run(&c1).await.expect("rerun h1");
    let r2 = daemon::run(&c2).await.expect("rerun h2");
    for r in [&r1, &r2] {
        wait_for(r, "/v1/env", &token, "the env back from disk", |v| {
            v["env"]["GREETING"] == "hello"
        })
        .await;
        wait_for(
            r,
            "/v1/servers",
            &token,
            "the servers back from disk",
            |v| names(v, "voter") == ["h1"] && names(v, "learner") == ["h2"],
        )
        .await;
    }
    r2.stop().await;
    r1.stop().await;
}
