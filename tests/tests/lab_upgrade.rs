//! A rolling upgrade on the lab (issue 19): three servers run quarryd built from the baseline
//! commit [`BASELINE`] (the last before the versioned state: `scripts/baseline-quarryd` builds
//! it from a scratch `git worktree` into this target directory), h3 tagged `router`; a fourth
//! runs today's quarryd and joins the old cluster (through h1, an old member, so over the old
//! join lane). The example is deployed and a client loops GETs through the router. Each old
//! server in turn is stopped, replaced by today's quarryd and started again, the leader last.
//!
//! - Today's server joins the old cluster and takes part (healthy, a grid block).
//! - The client sees zero failed requests from the first deploy to the end.
//! - The state is intact: the stack at the same revision, its env, the four servers.
//! - While one server is old, the cluster version stays 1; after the last one it moves to 2
//!   (the leader switches it on once every member advertises v2), and a deploy, which from v2
//!   on is proposed as a `CompactStack` (a v2-only command), is accepted and served.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_tests::{poll, Host};
use serde_json::Value;
use support::cluster::{example_copy, http_get_host, start_on_engine, text, Cluster};
use support::secs;

/// The baseline: main before issue 19's first change.
const BASELINE: &str = "876314f";
const DOMAIN: &str = "guestbook.test";
const PATH: &str = "/cgi-bin/index.cgi";

/// quarryd of [`BASELINE`], built by `scripts/baseline-quarryd` into this target directory.
fn baseline_quarryd() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(root.join("scripts/baseline-quarryd"));
    support::without_cargo_env(&mut cmd);
    let out = cmd
        .arg(BASELINE)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", support::target_dir())
        .output()
        .expect("run scripts/baseline-quarryd");
    assert!(
        out.status.success(),
        "building quarryd {BASELINE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    PathBuf::from(path)
}

/// Good answers, and every failure with its time (seconds since the client started).
type Tally = (u64, Vec<(f64, String)>);

/// A client looping GETs through the router.
struct Client {
    ok: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
}

impl Client {
    fn start(router: String) -> Client {
        let ok = Arc::new(Mutex::new((0, Vec::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (ok.clone(), stop.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let r = http_get_host(&router, Some(DOMAIN), PATH);
                let mut o = o.lock().expect("tally");
                match r {
                    Ok(body) if body.contains("visit") => o.0 += 1,
                    Ok(body) => o.1.push((secs(t0), body)),
                    Err(e) => o.1.push((secs(t0), e)),
                }
                drop(o);
                // About 20 a second: the servers keep the cores.
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Client { ok, stop }
    }

    fn tally(&self) -> Tally {
        self.ok.lock().expect("tally").clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn status(c: &Cluster, h: &Host) -> Result<Value, String> {
    c.cli.json(h, &["status"])
}

/// What must survive the upgrade: the stack's name and revision, its env, the servers.
fn picture(c: &Cluster, h: &Host) -> (Vec<(String, u64)>, Value, Vec<String>) {
    let stacks = c.cli.json(h, &["stacks"]).unwrap_or_else(|e| c.fail(e));
    let stacks = stacks["stacks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or("").to_owned(),
                        s["revision"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let env = c
        .cli
        .json(h, &["env", "-s", "guestbook"])
        .unwrap_or_else(|e| c.fail(e));
    let servers = c.cli.json(h, &["servers"]).unwrap_or_else(|e| c.fail(e));
    let mut names: Vec<String> = servers["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    (stacks, env["env"].clone(), names)
}

#[test]
fn a_rolling_upgrade_from_the_baseline_serves_throughout_keeps_the_state_and_moves_the_cluster_version(
) {
    let t0 = Instant::now();
    let mut report = Vec::new();
    let old = baseline_quarryd();
    let today = support::quarryd();
    report.push(format!("quarryd {BASELINE} built: {:.1}s", secs(t0)));

    // The baseline refuses settings it does not know (min_free_disk came after it): its
    // servers start with no lab settings, and get them with today's build.
    let c = Cluster::up_with(
        Some(3),
        vec![
            (old.clone(), ""),
            (old.clone(), ""),
            (old.clone(), ""),
            (today.clone(), support::LAB_CONFIG),
        ],
    );
    let hosts = c.hosts();
    let dir = example_copy(&c.lab.dir().join("v1").join("guestbook"), |y| y.to_owned());
    let out = c.cli.run(hosts[0], &["deploy", &dir.display().to_string()]);
    assert!(
        out.status.success(),
        "deploy: {}\n{}",
        text(&out),
        c.lab.logs_tail(40)
    );
    c.cli.ok(
        hosts[0],
        &["env", "set", "-s", "guestbook", "UPGRADE_MARK=kept"],
    );
    let router = format!("{}:80", c.router_host().addr());
    poll(
        "the domain to answer through the router",
        Duration::from_secs(30),
        || http_get_host(&router, Some(DOMAIN), PATH),
    )
    .unwrap_or_else(|e| c.fail(e));
    let before = picture(&c, hosts[0]);
    let v = status(&c, hosts[0]).unwrap_or_else(|e| c.fail(e));
    assert!(
        v["cluster_version"].is_null(),
        "{BASELINE} says no cluster version: {v}"
    );
    let h4 = status(&c, hosts[3]).unwrap_or_else(|e| c.fail(e));
    assert_eq!(
        h4["cluster_version"], 1,
        "h4, today's build, in the old cluster: {h4}"
    );
    report.push(format!(
        "h1-h3 on {BASELINE} and h4 on today's build (joined through h1), the example served: {:.1}s",
        secs(t0)
    ));
    let client = Client::start(router.clone());

    // The old servers, followers first, the leader (if old) last.
    let leader = c.leader(hosts[0]).unwrap_or_else(|| c.fail("no leader"));
    let mut order: Vec<&Host> = hosts[..3]
        .iter()
        .copied()
        .filter(|h| h.name() != leader)
        .collect();
    if leader != hosts[3].name() {
        order.push(c.host_named(&leader));
    }
    for (i, h) in order.iter().enumerate() {
        let t = Instant::now();
        let s = status(&c, h).unwrap_or_else(|e| c.fail(e));
        assert!(
            s["commit"].as_str().unwrap_or("").is_empty(),
            "{} runs {BASELINE} until now: {s}",
            h.name()
        );
        h.stop("quarryd").unwrap_or_else(|e| c.fail(e));
        let router_tag = if h.name() == c.router_host().name() {
            "tags = [\"router\"]\n"
        } else {
            ""
        };
        support::write_config(h, router_tag);
        start_on_engine(&c.lab, h, &today);
        // Today's build answers with its commit, and the cluster is whole again.
        poll(
            &format!(
                "{} to run today's quarryd, 4 healthy servers and a leader",
                h.name()
            ),
            Duration::from_secs(60),
            || {
                let s = status(&c, h)?;
                if s["commit"].as_str().unwrap_or("").is_empty() {
                    return Err(format!("not today's build yet: {s}"));
                }
                let v = c.cli.json(h, &["servers"])?;
                let all = v["servers"].as_array().cloned().unwrap_or_default();
                let ok = all.len() == 4 && all.iter().all(|x| x["health"] == "ok");
                if ok && c.leader(h).is_some() {
                    Ok(s)
                } else {
                    Err(format!("{v}"))
                }
            },
        )
        .unwrap_or_else(|e| c.fail(e));
        if i + 1 < order.len() {
            let s = status(&c, h).unwrap_or_else(|e| c.fail(e));
            assert_eq!(
                s["cluster_version"],
                1,
                "{} old servers upgraded of 3: the cluster version stays 1: {s}",
                i + 1
            );
        }
        let (ok, failures) = client.tally();
        assert!(
            failures.is_empty(),
            "failed requests through the router while {} was upgraded: {failures:?}",
            h.name()
        );
        report.push(format!(
            "{} upgraded in {:.1}s, {ok} answers so far, 0 failed",
            h.name(),
            secs(t)
        ));
    }

    // Every member now says v2: the leader switches the cluster version on.
    let t = Instant::now();
    poll(
        "the cluster version to move to 2 on every server",
        Duration::from_secs(30),
        || {
            let vs: Vec<Value> = hosts
                .iter()
                .map(|h| status(&c, h).map(|s| s["cluster_version"].clone()))
                .collect::<Result<_, _>>()?;
            if vs.iter().all(|v| v == 2) {
                Ok(())
            } else {
                Err(format!("{vs:?}"))
            }
        },
    )
    .unwrap_or_else(|e| c.fail(e));
    report.push(format!(
        "cluster version 1 -> 2 in {:.1}s after the last upgrade",
        secs(t)
    ));
    let after = picture(&c, hosts[1]);
    assert_eq!(before, after, "the state across the upgrade");
    assert_eq!(after.1["UPGRADE_MARK"], "kept", "{:?}", after.1);

    // A deploy now goes as a CompactStack, which only v2 knows: accepted, and served.
    let changed = example_copy(&c.lab.dir().join("v2").join("guestbook"), |y| y.to_owned());
    std::fs::write(changed.join("web/www/health"), "ok, upgraded\n").expect("health");
    let out = c
        .cli
        .run(hosts[1], &["deploy", &changed.display().to_string()]);
    assert!(
        out.status.success(),
        "a deploy after the switch: {}\n{}",
        text(&out),
        c.lab.logs_tail(40)
    );
    let stacks = c
        .cli
        .json(hosts[2], &["stacks"])
        .unwrap_or_else(|e| c.fail(e));
    let revision = stacks["stacks"][0]["revision"].as_u64().unwrap_or(0);
    assert!(revision > before.0[0].1, "a new revision: {stacks}");
    poll(
        "answers after the v2 deploy",
        Duration::from_secs(30),
        || {
            let (ok, _) = client.tally();
            http_get_host(&router, Some(DOMAIN), PATH).map(|_| ok)
        },
    )
    .unwrap_or_else(|e| c.fail(e));
    let (ok, failures) = client.tally();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    report.push(format!(
        "a deploy after the switch (revision {revision}) accepted; {ok} answers through the router in all, 0 failed"
    ));
    drop(client);
    c.lab.close().expect("lab cleaned up");
    report.push(format!("total {:.1}s", secs(t0)));
    eprintln!("lab_upgrade:\n  {}", report.join("\n  "));
}
