//! `quarry status`, `servers`, `grid` and `env` against a running quarryd server on loopback
//! (started in-process through the same `daemon::run` the `quarryd run` command calls).

use std::path::Path;
use std::process::{Command, Output};

use quarry_node::config::Config;
use quarry_node::daemon::{self, Secrets};
use quarry_node::router::{Nginx, StopOnDrop};

fn config(dir: &Path, name: &str) -> Config {
    let mut c = Config::default();
    c.name = Some(name.to_owned());
    c.address = "127.0.0.1".parse().expect("ip");
    c.api_listen = c.address;
    c.api_port = 0;
    c.rpc_port = 0;
    c.memory = Some("3G".to_owned());
    // 32 MB free for a deploy, not the 1 GB default: a CI disk may be nearly full.
    c.min_free_disk = "32M".to_owned();
    c.tags = vec!["router".to_owned()];
    // A router listens on a free loopback port, not on the host's port 80.
    c.router_listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    c.paths.data = dir.join(name).join("data");
    c.paths.secrets = dir.join(name).join("secrets");
    c.paths.api_socket = dir.join(name).join("api.sock");
    // Gossip on a free port; the managed hosts block in a file of the test's own.
    c.gossip_port = 0;
    c.paths.hosts_file = dir.join(name).join("hosts");
    c
}

fn quarry(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quarry"));
    cmd.args(args)
        .env_remove("QUARRY_ADDR")
        .env_remove("QUARRY_TOKEN")
        .env("HOME", "/nonexistent-home")
        .env_remove("XDG_CONFIG_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run quarry")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_servers_talk_to_a_running_server_with_the_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let c1 = config(dir.path(), "h1");
    let init = daemon::init(&c1).expect("init");
    // h1 is a router: its nginx outlives the server by design, so the test stops it.
    let _nginx = StopOnDrop(Nginx::new(&c1.paths.data.join("router")));
    let r1 = daemon::run(&c1).await.expect("run");
    let c2 = config(dir.path(), "h2");
    daemon::join(&c2, r1.rpc.local_addr(), &init.token)
        .await
        .expect("join");
    let token = Secrets::of(&c1).admin_token().expect("token");
    let node = format!("http://{}", r1.api.tcp_addr());
    // Wait until h1 leads and both records are in (h2 joined but does not run: a learner).
    let api = quarry_node::api::client::Endpoint::Tcp(r1.api.tcp_addr().to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = quarry_node::api::client::get(&api, "/v1/servers", Some(&token))
            .await
            .expect("servers");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let roles: Vec<_> = v["servers"]
            .as_array()
            .map(|a| a.iter().map(|s| s["role"].clone()).collect())
            .unwrap_or_default();
        if roles == ["voter", "learner"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "h1 voter and h2 learner not within 20 s: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let out = tokio::task::spawn_blocking({
        let (node, token) = (node.clone(), token.clone());
        move || {
            let env = [
                ("QUARRY_ADDR", node.as_str()),
                ("QUARRY_TOKEN", token.as_str()),
            ];
            (
                quarry(&["servers"], &env),
                quarry(&["servers", "--json"], &env),
                quarry(&["status"], &env),
                quarry(&["status", "--node", &node], &[]),
                quarry(&["status", "--node", &node, "--token", "qra_wrong"], &[]),
                quarry(&["status", "--node", "http://127.0.0.1:1"], &[]),
                quarry(&["servers"], &[]),
                quarry(&["grid"], &env),
                quarry(&["env", "set", "A=1", "B=two"], &env),
                quarry(&["env", "-s", "shop", "set", "A=stack"], &env),
                quarry(&["env", "unset", "B"], &env),
                quarry(&["env"], &env),
                quarry(&["env", "-s", "shop", "--json"], &env),
                quarry(&["env", "set", "1BAD=x"], &env),
                quarry(&["servers", "remove", "h9"], &env),
                quarry(&["servers", "remove", "h2"], &env),
                quarry(&["servers"], &env),
            )
        }
    })
    .await
    .expect("cli");
    let (servers, json, status, no_token, wrong, unreachable, unconfigured, grid) =
        (out.0, out.1, out.2, out.3, out.4, out.5, out.6, out.7);
    let (set, set_stack, unset, env, env_stack, bad, remove_unknown, remove, after) = (
        out.8, out.9, out.10, out.11, out.12, out.13, out.14, out.15, out.16,
    );

    assert!(servers.status.success(), "{}", text(&servers));
    let table = String::from_utf8_lossy(&servers.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("MEMORY"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("h1 ")
            && lines[1].contains("voter*")
            && lines[1].contains("127.0.0.1")
            && lines[1].contains("3G")
            && lines[1].contains("router"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("h2 ") && lines[2].contains("learner"),
        "{table}"
    );
    assert!(table.contains("2 servers: 1 voters, 1 learners"), "{table}");

    assert!(json.status.success(), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(2), "{v}");

    assert!(status.status.success(), "{}", text(&status));
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(
        s.contains("server   h1")
            && s.contains("role     leader")
            && s.contains("leader   h1")
            && s.contains("voters   h1")
            && s.contains("learners h2")
            && s.contains("health   ok"),
        "{s}"
    );

    assert!(grid.status.success(), "{}", text(&grid));
    let g = String::from_utf8_lossy(&grid.stdout);
    assert!(
        g.contains("Grid of the cluster") && g.contains("h1") && g.contains("h2"),
        "{g}"
    );

    for o in [&set, &set_stack, &unset] {
        assert!(o.status.success(), "{}", text(o));
    }
    assert_eq!(
        String::from_utf8_lossy(&env.stdout),
        "A=1\n",
        "{}",
        text(&env)
    );
    let v: serde_json::Value = serde_json::from_slice(&env_stack.stdout).expect("json");
    assert_eq!(v["env"]["A"], "stack", "{v}");
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("env name \"1BAD\""),
        "{}",
        text(&bad)
    );
    assert_eq!(remove_unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&remove_unknown.stderr).contains("no server h9"),
        "{}",
        text(&remove_unknown)
    );
    assert!(remove.status.success(), "{}", text(&remove));
    let left = String::from_utf8_lossy(&after.stdout);
    assert!(!left.contains("h2 "), "{left}");

    assert_eq!(no_token.status.code(), Some(1), "{}", text(&no_token));
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("set QUARRY_TOKEN"),
        "{}",
        text(&no_token)
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong admin token"),
        "{}",
        text(&wrong)
    );
    assert_eq!(unreachable.status.code(), Some(1), "{}", text(&unreachable));
    let e = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        e.contains("cannot reach") && e.contains("is quarryd running"),
        "{e}"
    );
    // With nothing configured (and no local socket on this machine) it says how to configure.
    if !Path::new("/run/quarry/api.sock").exists() {
        assert!(
            String::from_utf8_lossy(&unconfigured.stderr).contains("--node"),
            "{}",
            text(&unconfigured)
        );
    }

    // The local socket needs no token.
    let sock = format!("unix:{}", c1.paths.api_socket.display());
    let local = tokio::task::spawn_blocking(move || quarry(&["status", "--node", &sock], &[]))
        .await
        .expect("cli");
    assert!(local.status.success(), "{}", text(&local));
    r1.stop().await;
}
