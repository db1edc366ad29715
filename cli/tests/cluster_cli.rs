//! `quarry status` and `quarry servers` against a running quarryd server on loopback (started
//! in-process through the same `daemon::run` the `quarryd run` command calls).

use std::path::Path;
use std::process::{Command, Output};

use quarry_node::config::Config;
use quarry_node::daemon::{self, Secrets};

fn config(dir: &Path, name: &str) -> Config {
    let mut c = Config::default();
    c.name = Some(name.to_owned());
    c.address = "127.0.0.1".parse().expect("ip");
    c.api_listen = c.address;
    c.api_port = 0;
    c.rpc_port = 0;
    c.memory = Some("3G".to_owned());
    c.tags = vec!["router".to_owned()];
    c.paths.data = dir.join(name).join("data");
    c.paths.secrets = dir.join(name).join("secrets");
    c.paths.api_socket = dir.join(name).join("api.sock");
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
    let r1 = daemon::run(&c1).await.expect("run");
    let c2 = config(dir.path(), "h2");
    daemon::join(&c2, r1.rpc.local_addr(), &init.token)
        .await
        .expect("join");
    let token = Secrets::of(&c1).admin_token().expect("token");
    let node = format!("http://{}", r1.api.tcp_addr());

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
            )
        }
    })
    .await
    .expect("cli");
    let (servers, json, status, no_token, wrong, unreachable, unconfigured) = out;

    assert!(servers.status.success(), "{}", text(&servers));
    let table = String::from_utf8_lossy(&servers.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("MEMORY"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("h1 ")
            && lines[1].contains("127.0.0.1")
            && lines[1].contains("3G")
            && lines[1].contains("router"),
        "{table}"
    );
    assert!(lines[2].starts_with("h2 "), "{table}");

    assert!(json.status.success(), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(2), "{v}");

    assert!(status.status.success(), "{}", text(&status));
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(
        s.contains("server   h1") && s.contains("raft     not running"),
        "{s}"
    );

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
    r1.api.stop();
    r1.rpc.stop();
}
