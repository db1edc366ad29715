//! `quarry start` / `ps` / `stop` against the real local Docker and a real nginx, on copies of
//! the bundled example under unique stack names (so the tests run side by side). Every test
//! removes its containers, network, nginx, files and images on the way out, also when it fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

const DOMAIN: &str = "guestbook.test";

/// One stack of the example under its own name, QUARRY_HOME and router port.
struct Stack {
    name: String,
    dir: PathBuf,
    home: tempfile::TempDir,
    _src: tempfile::TempDir,
    listen: SocketAddr,
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guestbook")
}

fn copy_dir(from: &Path, to: &Path) {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Stack {
    fn new(tag: &str) -> Stack {
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

    fn quarry(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .env("QUARRY_HOME", self.home.path())
            .env("QUARRY_LISTEN", self.listen.to_string())
            .output()
            .expect("run quarry")
    }

    fn start(&self) -> Output {
        self.start_with_timeout(60)
    }

    fn start_with_timeout(&self, health_timeout_s: u32) -> Output {
        let dir = self.dir.to_str().expect("utf-8 path");
        self.quarry(&[
            "start",
            dir,
            "--json",
            "--health-timeout",
            &health_timeout_s.to_string(),
        ])
    }

    fn container(&self, node: &str, replica: u64) -> Value {
        let ps = self.ps();
        ps["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["node"] == node && c["replica"] == replica)
            .cloned()
            .unwrap_or_else(|| panic!("no {node} replica {replica} in {ps}"))
    }

    fn start_ok(&self) -> Value {
        let out = self.start();
        assert!(
            out.status.success(),
            "quarry start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("start --json is JSON")
    }

    fn ps(&self) -> Value {
        let out = self.quarry(&["ps", "-s", &self.name, "--json"]);
        assert!(
            out.status.success(),
            "quarry ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ps --json is JSON")
    }

    /// Container ids of the stack, sorted.
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.ps()["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    fn get(&self) -> Result<(u16, String), String> {
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

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP/1.0 GET of `/` through the router: (status, body).
fn get(addr: SocketAddr, host: &str) -> Result<(u16, String), String> {
    get_path(addr, host, "/")
}

/// One HTTP/1.0 GET of `path` through the router: (status, body).
fn get_path(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
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
fn visit(body: &str) -> Option<(String, u64)> {
    let rest = body.trim().strip_prefix("hello from ")?;
    let (who, n) = rest.split_once(": visit ")?;
    Some((who.to_owned(), n.trim().parse().ok()?))
}

/// Whether a process exists and has not exited (an exited nginx master is re-parented to pid 1,
/// which on some machines is slow to reap it: a zombie counts as gone).
fn process_runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
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

#[test]
fn start_routes_by_domain_and_counts_in_the_service_across_both_replicas_then_stop_leaves_nothing()
{
    let s = Stack::new("count");
    let report = s.start_ok();
    assert_eq!(report["urls"][0]["domain"], DOMAIN, "{report}");
    assert_eq!(report["urls"][0]["healthy_replicas"], 2, "{report}");
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    for _ in 0..8 {
        let (status, body) = s.get().expect("request through nginx");
        assert_eq!(status, 200, "{body}");
        let (who, n) = visit(&body).unwrap_or_else(|| panic!("not a visit: {body:?}"));
        assert!(n > last, "the count rises: {n} after {last}");
        last = n;
        seen.insert(who);
    }
    assert_eq!(seen.len(), 2, "both replicas answered: {seen:?}");
    let ps = s.ps();
    let containers = ps["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 4, "{ps}");
    for c in containers {
        assert_eq!(c["state"], "running", "{c}");
        assert!(c["health"] == "healthy" || c["health"] == "none", "{c}");
    }
    let pid = ps["router"]["pid"].as_u64().expect("router pid") as u32;

    let out = s.quarry(&["stop", "-s", &s.name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=quarry.stack={}", s.name),
    ]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=quarry-{}", s.name),
    ]);
    assert!(nets.trim().is_empty(), "network left: {nets}");
    assert!(!process_runs(pid), "nginx {pid} still runs");
    let files: Vec<_> = std::fs::read_dir(s.home.path())
        .expect("home")
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .collect();
    assert!(files.is_empty(), "stack files left: {files:?}");
}

#[test]
fn second_start_changes_nothing_no_docker_event_same_nginx() {
    let s = Stack::new("idem");
    let first = s.start_ok();
    let ids = s.ids();
    let pid = first["router"]["pid"].as_u64().expect("pid");
    let since = docker(&["info", "--format", "{{.SystemTime}}"]);
    let since = since.trim().to_owned();
    let second = s.start_ok();
    let until = docker(&["info", "--format", "{{.SystemTime}}"]);
    assert_eq!(second["changed"], false, "{second}");
    assert_eq!(second["router"]["action"], "unchanged", "{second}");
    assert_eq!(second["router"]["pid"].as_u64(), Some(pid));
    assert_eq!(s.ids(), ids);
    let events = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        until.trim(),
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    let ours: Vec<&str> = events
        .lines()
        .filter(|l| l.contains(&format!("quarry-{}-", s.name)))
        .filter(|l| {
            ["create", "start", "kill", "die", "stop", "destroy"]
                .iter()
                .any(|a| l.starts_with(a))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "docker events during the second start: {ours:?}"
    );
    // And `quarry plan`, reading the same local state by default, has nothing to do.
    let dir = s.dir.to_str().expect("utf-8 path");
    let out = s.quarry(&["plan", dir, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --json is JSON");
    assert_eq!(
        plan["plan"]["instructions"].as_array().map(Vec::len),
        Some(0),
        "plan after start must be empty: {plan}"
    );
}

#[test]
fn web_replica_killed_from_the_host_answers_again_through_nginx_within_5s() {
    let s = Stack::new("kill");
    s.start_ok();
    let ps = s.ps();
    let web0 = ps["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["node"] == "web" && c["replica"] == 0)
        .cloned()
        .expect("web replica 0");
    let pid = web0["pid"].as_i64().expect("pid");
    let host = web0["host"]
        .as_str()
        .expect("host")
        .split(':')
        .next()
        .expect("alias")
        .to_owned();
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let t0 = Instant::now();
    poll(
        "replica 0 answering through nginx again",
        Duration::from_secs(5),
        || {
            let (status, body) = s.get()?;
            match visit(&body) {
                Some((who, _)) if status == 200 && who == host => Ok(()),
                _ => Err(format!("{status} {body}")),
            }
        },
    );
    eprintln!(
        "replica back through nginx {:?} after kill -9",
        t0.elapsed()
    );
    let after = s.ps();
    let again = after["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["node"] == "web" && c["replica"] == 0)
        .cloned()
        .expect("web replica 0 listed");
    assert_eq!(again["state"], "running", "{again}");
    assert_eq!(again["address"], web0["address"], "same address");
    assert_eq!(again["id"], web0["id"], "same container");
    assert_ne!(again["pid"], web0["pid"], "a new process");

    // `docker kill` is a manual stop: Docker leaves it down, the next `quarry start` restarts it.
    let web1 = s.container("web", 1);
    docker(&["kill", web1["name"].as_str().expect("name")]);
    poll(
        "docker kill stopping replica 1",
        Duration::from_secs(10),
        || {
            let c = s.container("web", 1);
            (c["state"] == "stopped")
                .then_some(())
                .ok_or_else(|| c.to_string())
        },
    );
    let report = s.start_ok();
    assert_eq!(report["changed"], true, "{report}");
    let back = s.container("web", 1);
    assert_eq!(back["state"], "running", "{back}");
    assert_eq!(back["id"], web1["id"], "the same container, started again");
    assert_eq!(back["address"], web1["address"], "on the same address");
}

#[test]
fn web_image_change_redeploys_with_zero_failed_requests() {
    let s = Stack::new("deploy");
    s.start_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let listen = s.listen;
    let client = {
        let (stop, ok) = (stop.clone(), ok.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match get(listen, DOMAIN) {
                    Ok((200, body)) if visit(&body).is_some() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        })
    };
    poll(
        "the client's first answers",
        Duration::from_secs(10),
        || {
            (ok.load(Ordering::Relaxed) >= 5)
                .then_some(())
                .ok_or_else(|| "fewer than 5".to_owned())
        },
    );
    std::fs::write(s.dir.join("web/www/version"), "2\n").expect("change the web image");
    let during = ok.load(Ordering::Relaxed);
    let report = s.start_ok();
    let served = ok.load(Ordering::Relaxed) - during;
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().expect("client thread");
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    eprintln!("{served} requests served through nginx during the redeploy, none failed");
    assert!(served > 0, "requests were served during the redeploy");
    let web: Vec<&Value> = report["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter(|c| c["node"] == "web")
        .collect();
    assert_eq!(web.len(), 2, "old replicas gone: {report}");
    assert!(web.iter().all(|c| c["revision"] == 2), "{report}");
    let (_, body) = s.get().expect("request");
    assert!(body.contains("web-r2-"), "the new revision answers: {body}");
}

#[test]
fn broken_yml_or_failing_build_changes_nothing_of_the_running_stack() {
    let s = Stack::new("broken");
    s.start_ok();
    let ids = s.ids();
    let yml = s.dir.join("quarry.yml");
    let good = std::fs::read_to_string(&yml).expect("read");
    std::fs::write(&yml, good.replace("scale: 2", "scale: 0")).expect("write");
    let out = s.start();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken quarry.yml fails");
    assert!(
        err.contains("quarry.yml:") && err.contains("nothing was started"),
        "{err}"
    );
    assert_eq!(s.ids(), ids);

    std::fs::write(&yml, &good).expect("restore");
    let dockerfile = s.dir.join("web/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).expect("read");
    std::fs::write(&dockerfile, format!("{text}RUN [\"/bin/false\"]\n")).expect("write");
    let out = s.start();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failing build fails");
    assert!(err.contains("quarry: building"), "{err}");
    assert_eq!(s.ids(), ids, "nothing replaced");
    let (status, body) = s.get().expect("still served");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("web-r1-"), "{body}");

    // A new revision that never gets healthy: removed again, the old one keeps serving.
    std::fs::write(&dockerfile, &text).expect("restore");
    std::fs::write(&yml, good.replace("http: /health", "http: /no-such-page")).expect("write");
    let out = s.start_with_timeout(3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unhealthy deploy fails");
    assert!(err.contains("not healthy within 3 s"), "{err}");
    assert_eq!(
        s.ids(),
        ids,
        "the new replicas were removed, the old ones untouched"
    );
    let (status, body) = s.get().expect("still served");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("web-r1-"), "{body}");

    // A new revision that crashes at once: reported with its output long before the timeout.
    let crashing = good.replace(
        r#"command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]"#,
        r#"command: ["/bin/sh", "-c", "echo boom-from-web >&2; exit 3"]"#,
    );
    assert_ne!(crashing, good, "the example runs httpd on 8080");
    std::fs::write(&yml, crashing).expect("write");
    let t = Instant::now();
    let out = s.start_with_timeout(60);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a crashing deploy fails");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "failed fast: {:?}",
        t.elapsed()
    );
    assert!(
        err.contains("boom-from-web"),
        "the crash's output is shown: {err}"
    );
    assert_eq!(s.ids(), ids, "the crashing replicas were removed");
    let (status, body) = s.get().expect("still served");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn start_after_an_edit_applies_exactly_what_plan_shows() {
    let s = Stack::new("plan");
    s.start_ok();
    let state = s.ps()["state"].clone();
    let state_file = s.home.path().join("state.json");
    std::fs::write(&state_file, state.to_string()).expect("write state");
    let yml = s.dir.join("quarry.yml");
    let text = std::fs::read_to_string(&yml).expect("read");
    let edited = text
        .replace("scale: 2", "scale: 3")
        .replace("TICK_EVERY: \"5\"", "TICK_EVERY: \"7\"");
    assert_ne!(edited, text, "the example has scale: 2 and TICK_EVERY");
    std::fs::write(&yml, edited).expect("write");
    let dir = s.dir.to_str().expect("utf-8");
    let out = s.quarry(&[
        "plan",
        dir,
        "--json",
        "--state",
        state_file.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned: Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    let report = s.start_ok();
    assert_eq!(
        report["plan"], planned["plan"]["instructions"],
        "start applied the plan shown"
    );
    let ops: Vec<&str> = report["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .map(|i| i["op"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ops, ["SCALE", "DEPLOY"], "{report}");
    let mut running: Vec<String> = report["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| {
            format!(
                "{}.r{}.{}",
                c["node"].as_str().unwrap_or(""),
                c["revision"],
                c["replica"]
            )
        })
        .collect();
    running.sort();
    assert_eq!(
        running,
        ["kv.r1.0", "ticker.r2.0", "web.r1.0", "web.r1.1", "web.r1.2"]
    );
}

#[test]
fn docker_unreachable_is_a_one_line_error() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["start", example_dir().to_str().expect("utf-8")])
        .env("QUARRY_HOME", home.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .expect("run quarry");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("quarry: cannot reach the Docker engine") && last.contains("start it"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

/// A one-server cluster on loopback (in-process, the same `daemon::run` as `quarryd run`),
/// its reconciler on this machine's Docker; the runtime keeps serving it while the test
/// blocks on commands.
struct Server {
    running: Option<quarry_node::daemon::Running>,
    rt: tokio::runtime::Runtime,
    env: Vec<(String, String)>,
    /// Where its router listens (a server tagged `router`).
    router: Option<SocketAddr>,
    /// Its cluster's id (the `quarry.origin` of what it makes).
    cluster_id: String,
    _nginx: Option<quarry_node::router::StopOnDrop>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server publishing on `host_ports` (apart from `quarry start`'s 20000-29999 and from
    /// the other tests' servers: none sees the ports the others take meanwhile); a router
    /// when `router`.
    fn start(host_ports: (u16, u16), router: bool) -> Server {
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

    fn quarry_any(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", "/nonexistent-home")
            .output()
            .expect("run quarry")
    }

    fn quarry(&self, args: &[&str]) -> Output {
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
fn made_by(stack: &str, origin: &str) -> Vec<(String, bool)> {
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

#[test]
fn a_local_and_a_cluster_stack_of_one_name_share_an_engine_and_each_stops_only_its_own() {
    let s = Stack::new("origin");
    let server = Server::start((31000, 31499), false);
    let cluster_id = server.cluster_id.clone();

    // The cluster runs the stack; then `quarry start` runs one of the same name here.
    let dir = s.dir.to_str().expect("utf-8 path");
    server.quarry(&["deploy", dir]);
    let cluster = poll(
        "the cluster's 4 containers running",
        Duration::from_secs(60),
        || {
            let c = made_by(&s.name, &cluster_id);
            if c.len() == 4 && c.iter().all(|(_, up)| *up) {
                Ok(c)
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    s.start_ok();
    let local = made_by(&s.name, "local");
    assert_eq!(local.len(), 4, "{local:?}");
    assert!(local.iter().all(|(_, up)| *up), "{local:?}");
    assert_eq!(
        made_by(&s.name, &cluster_id),
        cluster,
        "start left the cluster's alone"
    );

    // `quarry stop` removes the local stack only.
    let out = s.quarry(&["stop", "-s", &s.name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(made_by(&s.name, "local").is_empty());
    assert_eq!(
        made_by(&s.name, &cluster_id),
        cluster,
        "the cluster's containers run on, untouched"
    );

    // And the cluster's reconciler, told to stop its stack, leaves the local one running.
    let local = {
        s.start_ok();
        made_by(&s.name, "local")
    };
    assert_eq!(local.len(), 4, "{local:?}");
    server.quarry(&["disable", "-s", &s.name]);
    poll(
        "the cluster's containers gone",
        Duration::from_secs(60),
        || {
            let c = made_by(&s.name, &cluster_id);
            if c.is_empty() {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    assert_eq!(
        made_by(&s.name, "local"),
        local,
        "the local containers run on, untouched"
    );
    let (status, body) = s.get().expect("the local router answers");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_domain_another_stack_holds_in_another_case_is_refused_naming_both_and_the_rest_goes_on() {
    let pid = std::process::id();
    let with_domain = |tag: &str, domain: &str| {
        let s = Stack::new(tag);
        let yml = s.dir.join("quarry.yml");
        let text = std::fs::read_to_string(&yml).expect("read");
        std::fs::write(
            &yml,
            text.replace("[guestbook.test]", &format!("[{domain}]")),
        )
        .expect("write");
        s
    };
    let shop = format!("Shop-{pid}.test");
    let a = with_domain("dom-a", &shop);
    let b = with_domain("dom-b", &shop.to_ascii_lowercase());
    let c = with_domain("dom-c", &format!("other-{pid}.test"));
    let server = Server::start((31500, 31999), true);
    let router = server.router.expect("a router");
    let serves = |domain: &str| {
        poll(
            &format!("{domain}'s web replicas answering through the router"),
            Duration::from_secs(60),
            // Their health page: on a loopback cluster a replica cannot reach its service at
            // the server's address (127.0.0.1 is its own), so `/` answers 502 here.
            || match get_path(router, domain, "/health") {
                Ok((200, body)) if body.trim() == "ok" => Ok(body),
                Ok((code, body)) => Err(format!("{code}: {body}")),
                Err(e) => Err(e),
            },
        )
    };

    server.quarry(&["deploy", a.dir.to_str().expect("utf-8")]);
    serves(&shop.to_ascii_lowercase());
    let refused = server.quarry_any(&["deploy", b.dir.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "domain {} of stack {} is already routed to stack {}",
            shop.to_ascii_lowercase(),
            b.name,
            a.name
        )),
        "{err}"
    );
    // The other stacks' deploys and routing go on.
    server.quarry(&["deploy", c.dir.to_str().expect("utf-8")]);
    serves(&format!("other-{pid}.test"));
    serves(&shop);
    let routes: Value =
        serde_json::from_slice(&server.quarry(&["routes", "--json"]).stdout).expect("json");
    assert_eq!(routes["left_out"], serde_json::json!([]), "{routes}");
    assert_eq!(
        routes["table"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{routes}"
    );
}
