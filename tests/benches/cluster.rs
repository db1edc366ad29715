//! The cluster benchmark: real quarryd (release build) on lab hosts.
//!
//! - `rss_mb_idle`: the largest resident set of the quarryd of an idle 3-server cluster
//!   (target < 30 MB);
//! - `election_s_p99`: the leader's host cut off -> both survivors name the same new leader
//!   (p99 over 20 cuts, 3 in quick mode; target < 3 s);
//! - `detect_dead_s_p99`: the same cuts -> both survivors' gossip says the cut server is dead
//!   (target < 5 s);
//! - `false_dead`: servers ever marked dead (by any server's gossip, from their logs) during an
//!   idle run of 5 servers, 10 minutes (20 s in quick mode; target 0).
//!
//! `QUARRY_BENCH=quick` runs the short version (about a minute). Needs root and network
//! namespaces (the lab). Timings poll the survivors' local `GET /v1/status` every 20 ms, all at
//! once (no Raft round trip). The last line is one JSON object with the figures.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use quarry_node::api::client::{self, Endpoint};
use quarry_tests::{poll, Host, Lab};
use serde_json::Value;
use support::{admin_token, quarryd_in, start, token_of};

const POLL: Duration = Duration::from_millis(20);

struct Api {
    rt: tokio::runtime::Runtime,
    token: String,
}

impl Api {
    fn get(&self, h: &Host, path: &str) -> Option<Value> {
        let ep = Endpoint::Tcp(format!("{}:7700", h.addr()));
        let r = self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(800),
                client::get(&ep, path, Some(&self.token)),
            )
            .await
        });
        match r {
            Ok(Ok(r)) if r.status == 200 => serde_json::from_slice(&r.body).ok(),
            _ => None,
        }
    }

    fn status(&self, h: &Host) -> Option<Value> {
        self.get(h, "/v1/status")
    }

    /// `/v1/status` of every host in `hs` at once (a slow answer does not delay the others'),
    /// in order.
    fn statuses(&self, hs: &[&Host]) -> Vec<Option<Value>> {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, h) in hs.iter().enumerate() {
                let ep = Endpoint::Tcp(format!("{}:7700", h.addr()));
                let token = self.token.clone();
                set.spawn(async move {
                    let r = tokio::time::timeout(
                        Duration::from_millis(800),
                        client::get(&ep, "/v1/status", Some(&token)),
                    )
                    .await;
                    let v = match r {
                        Ok(Ok(r)) if r.status == 200 => serde_json::from_slice(&r.body).ok(),
                        _ => None,
                    };
                    (i, v)
                });
            }
            let mut out = vec![None; hs.len()];
            while let Some(Ok((i, v))) = set.join_next().await {
                out[i] = v;
            }
            out
        })
    }
}

/// The quarryd process of `h` (the spawned pid, or a descendant called quarryd).
fn quarryd_pid(h: &Host) -> u32 {
    h.descendant_pid("quarryd", "quarryd").expect("quarryd pid")
}

fn rss_mb(pid: u32) -> f64 {
    let kib = quarry_tests::rss_kib(pid);
    assert!(kib > 0, "no VmRSS for pid {pid}");
    kib as f64 / 1024.0
}

fn p99(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((0.99 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Waits until every host in `on` has a leader, the same one, and sees all of `all` alive.
fn settled(lab: &Lab, api: &Api, on: &[&Host], all: &[&Host]) -> String {
    poll("a settled cluster", Duration::from_secs(60), || {
        let mut leaders = Vec::new();
        for h in on {
            let s = api
                .status(h)
                .ok_or(format!("{} does not answer", h.name()))?;
            let seen = &s["gossip"]["seen"];
            let all_alive = all.iter().all(|o| seen[o.name()]["state"] == "alive");
            if !all_alive || s["health"] != "ok" {
                return Err(format!("{}: {s}", h.name()));
            }
            leaders.push(s["raft"]["leader"].as_str().unwrap_or("").to_owned());
        }
        let first = leaders[0].clone();
        (!first.is_empty() && leaders.iter().all(|l| *l == first))
            .then_some(first)
            .ok_or(format!("leaders {leaders:?}"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)))
}

/// Distinct servers some log marked dead after the given byte offsets.
fn marked_dead(hosts: &[&Host], from: &[usize]) -> Vec<String> {
    let mut dead = Vec::new();
    for (h, off) in hosts.iter().zip(from) {
        let log = h.log("quarryd");
        for line in log.get(*off..).unwrap_or("").lines() {
            let name = line
                .split("gossip: server ")
                .nth(1)
                .and_then(|rest| rest.split_once(" is dead"))
                .map(|(n, _)| n.trim());
            if let Some(name) = name {
                let entry = format!("{name} (seen by {})", h.name());
                if !dead.contains(&entry) {
                    dead.push(entry);
                }
            }
        }
    }
    dead
}

fn main() {
    let quick = std::env::var("QUARRY_BENCH").is_ok_and(|v| v == "quick");
    let (cuts, idle) = if quick {
        (3, Duration::from_secs(20))
    } else {
        (20, Duration::from_secs(600))
    };
    let t0 = Instant::now();
    let bin = support::quarryd();
    eprintln!("quarryd built ({:.1}s)", t0.elapsed().as_secs_f64());
    let lab = Lab::new(5).expect("lab (needs root and network namespaces)");
    let hosts: Vec<&Host> = lab.hosts().iter().collect();
    let (ok, out, err) = quarryd_in(hosts[0], &bin, &["init"]);
    assert!(ok, "init: {out}{err}");
    let token = token_of(&out);
    start(&lab, hosts[0], &bin);
    let api = Api {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        token: admin_token(hosts[0]),
    };
    let through = hosts[0].addr().to_string();
    let join = |h: &Host| {
        let (ok, out, err) = quarryd_in(h, &bin, &["join", &through, "--token", &token]);
        assert!(ok, "join {}: {out}{err}\n{}", h.name(), lab.logs_tail(20));
        start(&lab, h, &bin);
    };
    for h in &hosts[1..3] {
        join(h);
    }
    let three = &hosts[..3];
    settled(&lab, &api, three, three);
    eprintln!("3 servers settled ({:.1}s)", t0.elapsed().as_secs_f64());

    // Idle RSS of the 3 quarryd, after a short quiet period (a poll of the status, not a sleep:
    // it waits for the RSS to stop growing between two looks 1 s apart, at most 10 s).
    let pids: Vec<u32> = three.iter().map(|h| quarryd_pid(h)).collect();
    let mut last = 0.0;
    let quiet = Instant::now();
    let rss = loop {
        std::thread::sleep(Duration::from_secs(1)); // sampling interval of the RSS
        let now = pids.iter().map(|p| rss_mb(*p)).fold(0.0, f64::max);
        if (now - last).abs() < 0.25 || quiet.elapsed() > Duration::from_secs(10) {
            break now;
        }
        last = now;
    };
    let each: Vec<String> = pids.iter().map(|p| format!("{:.1}", rss_mb(*p))).collect();
    eprintln!("idle RSS (MB) {each:?} -> {rss:.1}");

    // Cut the leader, measure, heal, settle; again.
    let mut elections = Vec::new();
    let mut detections = Vec::new();
    for round in 0..cuts {
        let leader = settled(&lab, &api, three, three);
        let old = *three
            .iter()
            .find(|h| h.name() == leader)
            .expect("leader host");
        let survivors: Vec<&Host> = three
            .iter()
            .copied()
            .filter(|h| h.name() != leader)
            .collect();
        let cut_at = Instant::now();
        lab.cut(old.index()).expect("cut");
        let mut elected: Option<f64> = None;
        let mut detected: Option<f64> = None;
        while elected.is_none() || detected.is_none() {
            assert!(
                cut_at.elapsed() < Duration::from_secs(30),
                "cut {round}: elected {elected:?}, detected {detected:?} after 30 s\n{}",
                lab.logs_tail(20)
            );
            let s = api.statuses(&survivors);
            let at = cut_at.elapsed().as_secs_f64();
            let leaders: Vec<&str> = s
                .iter()
                .map(|v| {
                    v.as_ref()
                        .and_then(|v| v["raft"]["leader"].as_str())
                        .unwrap_or("")
                })
                .collect();
            if elected.is_none()
                && !leaders[0].is_empty()
                && leaders[0] != leader
                && leaders.iter().all(|l| *l == leaders[0])
            {
                elected = Some(at);
            }
            let dead = s.iter().all(|v| {
                v.as_ref()
                    .is_some_and(|v| v["gossip"]["seen"][&leader]["state"] == "dead")
            });
            if detected.is_none() && dead {
                detected = Some(at);
            }
            std::thread::sleep(POLL); // polling interval
        }
        let (e, d) = (elected.unwrap_or(f64::NAN), detected.unwrap_or(f64::NAN));
        eprintln!("cut {round}: {leader} -> new leader {e:.2}s, seen dead {d:.2}s");
        elections.push(e);
        detections.push(d);
        lab.heal(old.index()).expect("heal");
    }
    settled(&lab, &api, three, three);

    // 5 servers idle: nobody may be marked dead.
    for h in &hosts[3..] {
        join(h);
    }
    settled(&lab, &api, &hosts, &hosts);
    let offsets: Vec<usize> = hosts.iter().map(|h| h.log("quarryd").len()).collect();
    eprintln!(
        "5 servers settled ({:.1}s); idle for {}s",
        t0.elapsed().as_secs_f64(),
        idle.as_secs()
    );
    let idle_end = Instant::now() + idle;
    let mut worst = String::new();
    while Instant::now() < idle_end {
        // Also look at every view now and then (the logs are the record of every change).
        for h in &hosts {
            if let Some(s) = api.status(h) {
                for (n, v) in s["gossip"]["seen"].as_object().into_iter().flatten() {
                    if v["state"] != "alive" && worst.is_empty() {
                        worst = format!("{} saw {n} {}", h.name(), v["state"]);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500)); // sampling interval
    }
    let dead = marked_dead(&hosts, &offsets);
    if !worst.is_empty() {
        eprintln!("during the idle run: {worst}");
    }
    eprintln!("marked dead during the idle run: {dead:?}");
    let mut names: Vec<&str> = dead.iter().filter_map(|d| d.split(' ').next()).collect();
    names.sort();
    names.dedup();
    let false_dead = names.len();
    lab.close().expect("lab cleaned up");
    eprintln!("total {:.1}s", t0.elapsed().as_secs_f64());
    let out = serde_json::json!({
        "mode": if quick { "quick" } else { "full" },
        "rss_mb_idle": (rss * 10.0).round() / 10.0,
        "election_s_p99": (p99(&elections) * 100.0).round() / 100.0,
        "detect_dead_s_p99": (p99(&detections) * 100.0).round() / 100.0,
        "false_dead": false_dead,
        "cuts": cuts,
        "idle_s": idle.as_secs(),
    });
    println!("{out}");
}
