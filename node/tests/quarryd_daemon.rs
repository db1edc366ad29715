//! `quarryd init`, `join` and `run` as library calls: files and modes, the API's token rule,
//! and a second server joining the first over loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use quarry_node::api::client::{self, Endpoint};
use quarry_node::config::Config;
use quarry_node::daemon::{self, DaemonError, Secrets};

fn config(dir: &Path, name: &str) -> Config {
    let mut c = Config::default();
    c.name = Some(name.to_owned());
    c.address = "127.0.0.1".parse().expect("ip");
    c.api_listen = c.address;
    c.api_port = 0;
    c.rpc_port = 0;
    c.memory = Some("2G".to_owned());
    c.paths.data = dir.join(name).join("data");
    c.paths.secrets = dir.join(name).join("secrets");
    c.paths.api_socket = dir.join(name).join("api.sock");
    c
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

#[tokio::test]
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
    let tcp = Endpoint::Tcp(running.api.tcp_addr().to_string());

    let r = client::get(&tcp, "/v1/health", None).await.expect("health");
    assert_eq!(r.status, 200, "health needs no token");
    for path in ["/v1/status", "/v1/servers"] {
        let r = client::get(&tcp, path, None).await.expect("answer");
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 401, "{path} without token: {body}");
        assert!(body.contains("needs the admin token"), "{body}");
        let r = client::get(&tcp, path, Some("qra_wrong"))
            .await
            .expect("answer");
        assert_eq!(r.status, 401);
        assert!(String::from_utf8_lossy(&r.body).contains("wrong admin token"));
    }
    let r = client::get(&tcp, "/v1/status", Some(&token))
        .await
        .expect("status");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["name"], "h1");
    assert!(v["raft"].is_null(), "no Raft yet: {v}");

    let sock = Endpoint::Unix(cfg.paths.api_socket.clone());
    let r = client::get(&sock, "/v1/servers", None)
        .await
        .expect("servers");
    assert_eq!(r.status, 200, "the local socket needs no token");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["servers"][0]["name"], "h1");
    assert_eq!(v["servers"][0]["memory"], 2u64 << 30);
    running.api.stop();
    running.rpc.stop();
}

#[tokio::test]
async fn a_second_server_joins_through_the_first_and_both_list_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let c1 = config(dir.path(), "h1");
    let init = daemon::init(&c1).expect("init");
    let r1 = daemon::run(&c1).await.expect("run h1");

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

    let members = daemon::join(&c2, r1.rpc.local_addr(), &init.token)
        .await
        .expect("join");
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["h1", "h2"]
    );
    for f in [
        "ca.pem",
        "node.pem",
        "node.key",
        "gossip.key",
        "admin.token",
    ] {
        assert_eq!(mode(&c2.paths.secrets.join(f)), 0o600, "{f}");
    }
    assert!(
        !c2.paths.secrets.join("ca.key").exists(),
        "the CA key stays with the first server"
    );
    assert_eq!(
        Secrets::of(&c2).gossip_key().expect("gossip"),
        Secrets::of(&c1).gossip_key().expect("gossip"),
        "the joiner received the cluster's gossip key"
    );
    let e = daemon::join(&c2, r1.rpc.local_addr(), &init.token)
        .await
        .expect_err("joined twice");
    assert!(matches!(e, DaemonError::AlreadyInitialized(_)), "{e}");

    // The joined server runs, and the cluster's admin token works on it.
    let r2 = daemon::run(&c2).await.expect("run h2");
    let token = Secrets::of(&c1).admin_token().expect("token");
    for (running, c) in [(&r1, &c1), (&r2, &c2)] {
        let tcp = Endpoint::Tcp(running.api.tcp_addr().to_string());
        let r = client::get(&tcp, "/v1/servers", Some(&token))
            .await
            .expect("servers");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        let names: Vec<_> = v["servers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|s| s["name"].clone())
            .collect();
        assert_eq!(names, ["h1", "h2"], "{}", c.paths.data.display());
    }
    for r in [r1, r2] {
        r.api.stop();
        r.rpc.stop();
    }
}
