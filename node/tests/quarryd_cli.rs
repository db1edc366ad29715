//! The `quarryd` binary on loopback: init, token, run, join (and `join --run`), with flags
//! overriding the config; the config's `router` tag starts the router's nginx on
//! `router_listen`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use quarry_node::api::client::{self, Endpoint};
use quarry_node::router::{Nginx, StopOnDrop};

struct Server {
    dir: PathBuf,
    name: &'static str,
    api: u16,
    rpc: u16,
    gossip: u16,
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Server {
    fn new(root: &Path, name: &'static str) -> Server {
        Server {
            dir: root.join(name),
            name,
            api: free_port(),
            rpc: free_port(),
            gossip: free_udp_port(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quarryd"));
        c.arg("--config").arg(self.dir.join("quarryd.toml"));
        c.arg("--data").arg(self.dir.join("data"));
        c.arg("--secrets").arg(self.dir.join("secrets"));
        c.arg("--socket").arg(self.dir.join("api.sock"));
        c.args([
            "--address",
            "127.0.0.1",
            "--api-listen",
            "127.0.0.1",
            "--name",
            self.name,
        ]);
        c.args([
            "--api-port",
            &self.api.to_string(),
            "--rpc-port",
            &self.rpc.to_string(),
            "--gossip-port",
            &self.gossip.to_string(),
        ]);
        c.arg("--hosts-file").arg(self.dir.join("hosts"));
        c.env("QUARRYD_CONFIG", "/nonexistent")
            .env_remove("QUARRY_JOIN_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("quarryd runs")
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Kills the `quarryd run` child when the test ends, passed or failed.
struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `api` answers `/v1/health` (20 s at most; else the log says why).
async fn serves(api: &Endpoint, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client::get(api, "/v1/health", None).await {
            Ok(r) if r.status == 200 => return,
            last if Instant::now() > deadline => panic!(
                "{what} did not serve /v1/health within 20 s; last: {last:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn init_token_run_and_join_through_the_binary() {
    let root = tempfile::tempdir().expect("tmp");
    let h1 = Server::new(root.path(), "h1");
    // The config file sets a tag and where the router listens; flags set everything else.
    std::fs::create_dir_all(&h1.dir).expect("dir");
    let router = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        h1.dir.join("quarryd.toml"),
        format!("tags = [\"router\"]\nmemory = \"1G\"\nrouter_listen = \"{router}\"\n"),
    )
    .expect("toml");
    let _nginx = StopOnDrop(Nginx::new(&h1.dir.join("data/router")));

    let init = h1.run(&["init"]);
    assert!(init.status.success(), "{}", show(&init));
    let out = String::from_utf8_lossy(&init.stdout).into_owned();
    let token = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("QRY1-"))
        .map(|t| format!("QRY1-{t}"));
    let token = token.unwrap_or_else(|| panic!("init printed no join token: {out}"));
    assert!(out.contains("admin.token"), "{out}");

    let again = h1.run(&["init"]);
    assert_eq!(again.status.code(), Some(1), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already belongs to a cluster"),
        "{}",
        show(&again)
    );

    let printed = h1.run(&["token"]);
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), token);

    let log = std::fs::File::create(root.path().join("h1.log")).expect("log");
    let _running = Running(
        h1.cmd()
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn run"),
    );
    let api = Endpoint::Tcp(format!("127.0.0.1:{}", h1.api));
    serves(&api, "quarryd run", &root.path().join("h1.log")).await;

    let h2 = Server::new(root.path(), "h2");
    let member = format!("127.0.0.1:{}", h1.rpc);
    let bad_ca = format!("QRY1-{}-{}", "ab".repeat(32), &token[70..]);
    let refused = h2.run(&["join", &member, "--token", &bad_ca]);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("does not match the join token") && e.matches("does not match").count() == 1,
        "said once, clearly: {e}"
    );
    let no_token = h2.run(&["join", &member]);
    assert_eq!(no_token.status.code(), Some(1), "{}", show(&no_token));
    let e = String::from_utf8_lossy(&no_token.stderr);
    assert!(
        e.contains("needs the cluster's join token") && e.contains("quarryd token"),
        "{}",
        show(&no_token)
    );

    // `join --run` joins and serves in one step.
    let out2 = root.path().join("h2.out");
    let _h2 = Running(
        h2.cmd()
            .args(["join", &member, "--token", &token, "--run"])
            .stdout(std::fs::File::create(&out2).expect("out"))
            .stderr(std::fs::File::create(root.path().join("h2.log")).expect("log"))
            .spawn()
            .expect("spawn join --run"),
    );
    let api2 = Endpoint::Tcp(format!("127.0.0.1:{}", h2.api));
    serves(&api2, "quarryd join --run", &root.path().join("h2.log")).await;
    let out = std::fs::read_to_string(&out2).expect("join output");
    assert!(
        out.contains("as Raft id 2") && out.contains("servers: h1, h2"),
        "{out}"
    );

    let admin = std::fs::read_to_string(h1.dir.join("secrets/admin.token")).expect("admin token");
    let r = client::get(&api, "/v1/servers", Some(admin.trim()))
        .await
        .expect("servers");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        v["servers"][0]["tags"][0], "router",
        "the config file's tags: {v}"
    );
    assert_eq!(v["servers"][0]["memory"], 1u64 << 30, "{v}");
    assert_eq!(v["servers"][1]["name"], "h2", "{v}");

    // The router tag: nginx answers on router_listen (no route yet: 404 for any domain).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = std::net::TcpStream::connect(&router).and_then(|mut s| {
            use std::io::{Read, Write};
            s.write_all(b"GET / HTTP/1.0\r\nHost: nowhere.test\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match answer {
            Ok(a) if a.starts_with("HTTP/1.1 404") => break,
            last if Instant::now() > deadline => {
                panic!("the router did not answer on {router} within 20 s: {last:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[test]
fn quarryd_version_names_the_git_commit() {
    let o = Command::new(env!("CARGO_BIN_EXE_quarryd"))
        .arg("--version")
        .output()
        .expect("quarryd --version");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        text.trim(),
        format!("quarryd {}", quarry_node::version::BUILD),
        "{text}"
    );
    let commit = quarry_node::version::COMMIT;
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
}
