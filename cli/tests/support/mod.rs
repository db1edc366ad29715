//! What the tests of `quarry start` and of a local engine shared with a cluster use: copies
//! of the bundled example under unique stack names, the local Docker and HTTP through a
//! router, and a one-server cluster run in-process.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DOMAIN: &str = "guestbook.test";

/// One stack of the example under its own name, QUARRY_HOME and router port.
pub struct Stack {
    pub name: String,
    pub dir: PathBuf,
    pub home: tempfile::TempDir,
    _src: tempfile::TempDir,
    pub listen: SocketAddr,
}

pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guestbook")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read example") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(e.path()).expect("meta");
        if meta.is_dir() {
            copy_dir(&e.path(), &target);
        } else if meta.file_type().is_symlink() {
            let link = std::fs::read_link(e.path()).expect("readlink");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Stack {
    pub fn new(tag: &str) -> Stack {
        let src = tempfile::tempdir().expect("tempdir");
        let dir = src.path().join("guestbook");
        copy_dir(&example_dir(), &dir);
        let name = format!("qt-{tag}-{}", std::process::id());
        let yml = dir.join("quarry.yml");
        let text = std::fs::read_to_string(&yml).expect("read quarry.yml");
        let text = text.replacen("name: guestbook", &format!("name: {name}"), 1);
        assert!(
            text.contains(&format!("name: {name}")),
            "example names its stack"
        );
        std::fs::write(&yml, text).expect("write quarry.yml");
        Stack {
            name,
            dir,
            home: tempfile::tempdir().expect("tempdir"),
            _src: src,
            listen: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
        }
    }

    pub fn quarry(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .env("QUARRY_HOME", self.home.path())
            .env("QUARRY_LISTEN", self.listen.to_string())
            .output()
            .expect("run quarry")
    }

    pub fn start(&self) -> Output {
        self.start_with_timeout(60)
    }

    pub fn start_with_timeout(&self, health_timeout_s: u32) -> Output {
        let dir = self.dir.to_str().expect("utf-8 path");
        self.quarry(&[
            "start",
            dir,
            "--json",
            "--health-timeout",
            &health_timeout_s.to_string(),
        ])
    }

    pub fn container(&self, node: &str, replica: u64) -> Value {
        let ps = self.ps();
        ps["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["node"] == node && c["replica"] == replica)
            .cloned()
            .unwrap_or_else(|| panic!("no {node} replica {replica} in {ps}"))
    }

    pub fn start_ok(&self) -> Value {
        let out = self.start();
        assert!(
            out.status.success(),
            "quarry start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("start --json is JSON")
    }

    pub fn ps(&self) -> Value {
        let out = self.quarry(&["ps", "-s", &self.name, "--json"]);
        assert!(
            out.status.success(),
            "quarry ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ps --json is JSON")
    }

    /// Container ids of the stack, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.ps()["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn get(&self) -> Result<(u16, String), String> {
        get(self.listen, DOMAIN)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let out = self.quarry(&["stop", "-s", &self.name]);
        if !out.status.success() {
            eprintln!(
                "cleanup: quarry stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let images = docker(&[
            "images",
            "-q",
            "--filter",
            &format!("label=quarry.stack={}", self.name),
        ]);
        let images: Vec<&str> = images.split_whitespace().collect();
        if !images.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(images);
            docker(&args);
        }
    }
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP/1.0 GET of `/` through the router: (status, body).
pub fn get(addr: SocketAddr, host: &str) -> Result<(u16, String), String> {
    get_path(addr, host, "/")
}

/// One HTTP/1.0 GET of `path` through the router: (status, body).
pub fn get_path(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `hello from web-r1-0: visit 7` -> ("web-r1-0", 7).
pub fn visit(body: &str) -> Option<(String, u64)> {
    let rest = body.trim().strip_prefix("hello from ")?;
    let (who, n) = rest.split_once(": visit ")?;
    Some((who.to_owned(), n.trim().parse().ok()?))
}

/// Whether a process exists and has not exited (an exited nginx master is re-parented to pid 1,
/// which on some machines is slow to reap it: a zombie counts as gone).
pub fn process_runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < end {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not happen within {deadline:?}; last seen: {last}");
}

/// A one-server cluster on loopback (in-process, the same `daemon::run` as `quarryd run`),
/// its reconciler on this machine's Docker; the runtime keeps serving it while the test
/// blocks on commands.
pub struct Server {
    running: Option<quarry_node::daemon::Running>,
    rt: tokio::runtime::Runtime,
    env: Vec<(String, String)>,
    /// Where its router listens (a server tagged `router`).
    pub router: Option<SocketAddr>,
    /// Its cluster's id (the `quarry.origin` of what it makes).
    pub cluster_id: String,
    _nginx: Option<quarry_node::router::StopOnDrop>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server publishing on `host_ports` (apart from `quarry start`'s 20000-29999 and from
    /// the other tests' servers: none sees the ports the others take meanwhile); a router
    /// when `router`.
    pub fn start(host_ports: (u16, u16), router: bool) -> Server {
        use quarry_node::daemon::{self, Secrets};
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = quarry_node::config::Config::default();
        c.name = Some("h1".to_owned());
        c.address = "127.0.0.1".parse().expect("ip");
        c.api_listen = c.address;
        c.api_port = 0;
        c.rpc_port = 0;
        c.gossip_port = 0;
        c.memory = Some("2G".to_owned());
        // The machine's disk may be nearly full on CI (292 MB free was seen): ask a deploy for
        // 32 MB, not the 1 GB default, so the tests check quarry, not the machine.
        c.min_free_disk = "32M".to_owned();
        c.host_ports = host_ports;
        c.paths.data = dir.path().join("data");
        c.paths.secrets = dir.path().join("secrets");
        c.paths.api_socket = dir.path().join("api.sock");
        c.paths.hosts_file = dir.path().join("hosts");
        let mut nginx = None;
        if router {
            c.tags = vec!["router".to_owned()];
            c.router_listen = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            // Its nginx outlives the server by design: the test stops it.
            nginx = Some(quarry_node::router::StopOnDrop(
                quarry_node::router::Nginx::new(&c.paths.data.join("router")),
            ));
        }
        daemon::init(&c).expect("init");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = rt.block_on(daemon::run(&c)).expect("run");
        let env = vec![
            (
                "QUARRY_ADDR".to_owned(),
                format!("http://{}", running.api.tcp_addr()),
            ),
            (
                "QUARRY_TOKEN".to_owned(),
                Secrets::of(&c).admin_token().expect("token"),
            ),
        ];
        let mut server = Server {
            running: Some(running),
            rt,
            env,
            router: router.then_some(c.router_listen),
            cluster_id: String::new(),
            _nginx: nginx,
            _dir: dir,
        };
        let v: Value = serde_json::from_slice(&server.quarry(&["status", "--json"]).stdout)
            .expect("status --json");
        server.cluster_id = v["gossip"]["cluster_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no cluster_id in {v}"))
            .to_owned();
        server
    }

    pub fn quarry_any(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", "/nonexistent-home")
            .output()
            .expect("run quarry")
    }

    pub fn quarry(&self, args: &[&str]) -> Output {
        let out = self.quarry_any(args);
        assert!(
            out.status.success(),
            "quarry {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Server {
    /// Stops the server, then removes what its reconciler made (once it no longer runs, so
    /// nothing is made again).
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
        let label = format!("label=quarry.origin={}", self.cluster_id);
        for (kind, list) in [("container", "-aq"), ("network", "-q")] {
            let ids = docker(&[kind, "ls", list, "--filter", &label]);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec![kind, "rm"];
                if kind == "container" {
                    args.push("-f");
                }
                args.extend(ids);
                docker(&args);
            }
        }
    }
}

/// The stack's containers `origin` made, running or not: (id, running), sorted.
pub fn made_by(stack: &str, origin: &str) -> Vec<(String, bool)> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=quarry.stack={stack}"),
        "--filter",
        &format!("label=quarry.origin={origin}"),
        "--format",
        "{{.ID}} {{.State}}",
    ]);
    let mut v: Vec<(String, bool)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_owned(), state == "running"))
        .collect();
    v.sort();
    v
}
