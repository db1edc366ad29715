//! The deploy benchmark: deploy-to-serving time of the guestbook example on three lab servers
//! (each with its own `dockerd`; h3 tagged `router`), quarry against the same work done by
//! hand (`scripts/raw-deploy`: docker build on one server, `docker save | docker load` to the
//! servers that run the images, `docker run` with published ports and the env quarry injects,
//! an nginx server block and a graceful reload on the router host).
//!
//! Each run is timed from the start of `quarry deploy DIR` (or of the script) until a GET
//! through the router with the run's `Host` answers 200 (polled every 50 ms). Every run does
//! real work: a fresh stack name and domain, and a nonce file copied first by each Dockerfile
//! of the example's copy, so no build layer is a cache hit. Runs alternate, raw then quarry,
//! so a drift in the machine's load touches both sides alike; after each run its containers
//! are stopped (untimed). The by-hand nginx listens on port 8088 of the router host, beside
//! quarry's router on port 80.
//!
//! `QUARRY_BENCH=quick`: one run each (about a minute); otherwise the median of 5.
//! `QUARRY_BENCH_SIDE=raw`: the by-hand side only (no quarry cluster). Needs root (the lab).
//! The last line is one JSON object: `ratio` (quarry_s / raw_s, target at most 1.5),
//! `quarry_s`, `raw_s`, and every run's figure.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quarry_tests::{poll, Host, Lab, ProcessSpec};
use support::cluster::{docker_socket, example_copy, http_get_host, text, Cluster};

/// The by-hand router's port on the router host.
const RAW_PORT: u16 = 8088;

/// The router host (1-based).
const ROUTER: usize = 3;

/// The checked-in by-hand deploy.
const RAW_DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/raw-deploy");

/// The by-hand router's nginx.conf: the same timeouts and retries as quarry's rendered config,
/// and the sites the script writes.
const RAW_NGINX: &str = "worker_processes 1;
pid run/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    proxy_connect_timeout 2s;
    proxy_next_upstream error timeout;
    proxy_set_header Host $host;
    server {
        listen 8088 default_server;
        server_name _;
        return 404;
    }
    include sites/*.conf;
}
";

/// A copy of the example named `name` with domain `domain`, whose builds start with a nonce.
fn fresh_copy(root: &Path, name: &str, domain: &str) -> PathBuf {
    let dir = example_copy(&root.join(name), |y| {
        y.replace("name: guestbook", &format!("name: {name}"))
            .replace("guestbook.test", domain)
    });
    let nonce = format!("{name} {:?}\n", std::time::SystemTime::now());
    for build in ["kv", "web"] {
        let d = dir.join(build);
        std::fs::write(d.join("nonce"), &nonce).expect("nonce");
        let file = d.join("Dockerfile");
        let text = std::fs::read_to_string(&file).expect("Dockerfile");
        let text = text.replacen("FROM scratch\n", "FROM scratch\nCOPY nonce /nonce\n", 1);
        assert!(
            text.contains("COPY nonce"),
            "{build}/Dockerfile has no FROM scratch"
        );
        std::fs::write(&file, text).expect("Dockerfile");
    }
    dir
}

/// Times `child` (the deploy) from `t0` until `router` answers 200 for `domain`; then waits for
/// the child, which must succeed.
fn serving_time(what: &str, t0: Instant, mut child: Child, router: &str, domain: &str) -> f64 {
    let served = poll(
        &format!("{what}: {domain} to answer 200 through {router}"),
        Duration::from_secs(180),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                if !st.success() {
                    return Err(format!("the deploy exited with {st}"));
                }
            }
            http_get_host(router, Some(domain), "/cgi-bin/index.cgi")
        },
    );
    let secs = t0.elapsed().as_secs_f64();
    let out = child.wait_with_output().expect("deploy output");
    if let Err(e) = served {
        panic!("{e}\n{}", text(&out));
    }
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    secs
}

/// One by-hand deploy of a fresh copy: its deploy-to-serving time.
fn raw_run(lab: &Lab, prefix: &Path, i: usize) -> f64 {
    let name = format!("raw{i}");
    let domain = format!("raw{i}.bench.test");
    let dir = fresh_copy(&lab.dir().join("raw"), &name, &domain);
    let hosts: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| format!("{},{}", h.addr(), docker_socket(h)))
        .collect();
    let t0 = Instant::now();
    let child = Command::new("bash")
        .arg(RAW_DEPLOY)
        .arg(&dir)
        .args([&name, &domain])
        .arg(prefix)
        .args(&hosts)
        .env("RAW_ROUTER_PORT", RAW_PORT.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/raw-deploy");
    let router = format!("{}:{RAW_PORT}", lab.host(ROUTER).addr());
    let s = serving_time("raw-deploy", t0, child, &router, &domain);
    for h in lab.hosts() {
        let ids = h
            .docker(&["ps", "-q", "--filter", &format!("label=raw.stack={name}")])
            .expect("docker ps");
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            h.docker(&args).expect("docker rm");
        }
    }
    s
}

/// One quarry deploy of a fresh copy, through h1: its deploy-to-serving time.
fn quarry_run(cluster: &Cluster, i: usize) -> f64 {
    let name = format!("gb{i}");
    let domain = format!("gb{i}.bench.test");
    let dir = fresh_copy(&cluster.lab.dir().join("quarry"), &name, &domain);
    let through: &Host = cluster.lab.host(1);
    let t0 = Instant::now();
    let child = cluster
        .cli
        .command(through, &["deploy", &dir.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quarry deploy");
    let router = format!("{}:80", cluster.router_host().addr());
    let s = serving_time("quarry deploy", t0, child, &router, &domain);
    let out = cluster.cli.run(through, &["disable", "-s", &name]);
    if !out.status.success() {
        eprintln!("quarry disable -s {name}: {}", text(&out));
    }
    s
}

/// Starts the by-hand router's nginx on the router host; returns its prefix.
fn raw_router(lab: &Lab) -> PathBuf {
    let prefix = lab.dir().join("raw-router");
    for d in ["conf/sites", "logs", "run", "tmp"] {
        std::fs::create_dir_all(prefix.join(d)).expect("mkdir");
    }
    std::fs::write(prefix.join("conf/nginx.conf"), RAW_NGINX).expect("nginx.conf");
    let h = lab.host(ROUTER);
    h.spawn(
        ProcessSpec::new("raw-router", "nginx")
            .arg("-p")
            .arg(&prefix)
            .args(["-c", "conf/nginx.conf", "-g", "daemon off;"]),
    )
    .expect("spawn nginx");
    let addr = format!("{}:{RAW_PORT}", h.addr());
    poll(
        "the by-hand router to listen",
        Duration::from_secs(10),
        || match http_get_host(&addr, Some("nobody.test"), "/") {
            Err(e) if e.contains("404") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));
    prefix
}

fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| {
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    })
}

fn round2(x: Option<f64>) -> Option<f64> {
    x.map(|x| (x * 100.0).round() / 100.0)
}

fn main() {
    let quick = std::env::var("QUARRY_BENCH").is_ok_and(|v| v == "quick");
    let raw_only = std::env::var("QUARRY_BENCH_SIDE").is_ok_and(|v| v == "raw");
    let runs = if quick { 1 } else { 5 };
    let t0 = Instant::now();
    let (raw_lab, cluster) = if raw_only {
        let lab = Lab::builder(3)
            .docker(1..=3)
            .build()
            .expect("lab (needs root)");
        (Some(lab), None)
    } else {
        (None, Some(Cluster::up(3, Some(ROUTER))))
    };
    let lab: &Lab = match (&raw_lab, &cluster) {
        (Some(l), _) => l,
        (None, Some(c)) => &c.lab,
        (None, None) => unreachable!("a lab or a cluster"),
    };
    let prefix = raw_router(lab);
    eprintln!("lab ready ({:.1}s)", t0.elapsed().as_secs_f64());
    let (mut raw, mut quarry) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let r = raw_run(lab, &prefix, i);
        eprintln!("run {i}: raw-deploy serving after {r:.2}s");
        raw.push(r);
        if let Some(c) = &cluster {
            let q = quarry_run(c, i);
            eprintln!("run {i}: quarry deploy serving after {q:.2}s");
            quarry.push(q);
        }
    }
    let (raw_s, quarry_s) = (median(&raw), median(&quarry));
    let ratio = quarry_s.zip(raw_s).map(|(q, r)| q / r);
    let closed = match (raw_lab, cluster) {
        (_, Some(c)) => c.lab.close(),
        (Some(l), None) => l.close(),
        (None, None) => Ok(()),
    };
    closed.expect("lab cleaned up");
    eprintln!("total {:.1}s", t0.elapsed().as_secs_f64());
    let out = serde_json::json!({
        "ratio": round2(ratio),
        "quarry_s": round2(quarry_s),
        "raw_s": round2(raw_s),
        "mode": if quick { "quick" } else { "full" },
        "runs": runs,
        "quarry_runs_s": quarry.iter().map(|x| round2(Some(*x))).collect::<Vec<_>>(),
        "raw_runs_s": raw.iter().map(|x| round2(Some(*x))).collect::<Vec<_>>(),
    });
    println!("{out}");
}
