//! Gossip, the hosts block and the self-healing quorum with real quarryd on 4 lab hosts (3
//! voters, 1 learner; `heal_grace` 4 s, dead servers forgotten by gossip after 5 s):
//!
//! - every hosts file's managed block lists exactly the live members; a voter's host cut off
//!   drops out of the others' blocks within 10 s;
//! - past the grace period the learner is a voter and the cut voter a learner (one change),
//!   writes work, `quarry status` says what happened; healed, the old voter is a learner with
//!   its own Raft id, and no two servers claim one id;
//! - two rogue processes on a lab host gossip all along, one in plaintext with the right
//!   cluster id, one sealed with another key: their names never appear in any server's view,
//!   and every server counted their datagrams as not sealed;
//! - datagrams sniffed from a member (AF_PACKET in its namespace) that is then removed and
//!   stopped, replayed from its own address after gossip's grace period: it never shows alive
//!   again, every server counted the replays, and no key's version goes backwards.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quarry_tests::{poll, Host, Lab, ProcessSpec};
use serde_json::Value;
use support::{admin_token, quarryd_in, secs, start, token_of, with_role, Cli};

const ROGUE: &str = env!("CARGO_BIN_EXE_gossip-rogue");

/// The managed block of a host's hosts file: (name, address) lines, sorted.
fn block(h: &Host) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(h.hosts_file()).unwrap_or_default();
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# BEGIN quarry") {
            inside = true;
        } else if line.starts_with("# END quarry") {
            inside = false;
        } else if inside {
            let mut w = line.split_whitespace();
            if let (Some(addr), Some(name)) = (w.next(), w.next()) {
                out.push((name.to_owned(), addr.to_owned()));
            }
        }
    }
    out.sort();
    out
}

/// The block listing exactly `hosts`.
fn block_of(hosts: &[&Host]) -> Vec<(String, String)> {
    let mut v: Vec<_> = hosts
        .iter()
        .map(|h| (h.name(), h.addr().to_string()))
        .collect();
    v.sort();
    v
}

/// Waits until the blocks of `on` list exactly `live`; the time it took.
fn blocks_become(lab: &Lab, on: &[&Host], live: &[&Host], limit: Duration) -> Duration {
    let t = Instant::now();
    let want = block_of(live);
    for h in on {
        poll(
            &format!("the hosts block of {} listing {want:?}", h.name()),
            limit,
            || {
                let b = block(h);
                (b == want).then_some(()).ok_or_else(|| format!("{b:?}"))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));
    }
    t.elapsed()
}

/// Every name in a `servers --json` answer: members and gossip-only ones.
fn names_in(v: &Value) -> Vec<String> {
    ["servers", "others"]
        .iter()
        .flat_map(|k| v[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

/// `quarry servers --json` on `h`, checked: no rogue ever appears in it.
fn servers(cli: &Cli, h: &Host) -> Result<Value, String> {
    let v = cli.json(h, &["servers"])?;
    let rogues: Vec<String> = names_in(&v)
        .into_iter()
        .filter(|n| n.starts_with("rogue"))
        .collect();
    assert!(
        rogues.is_empty(),
        "{rogues:?} appear in the view of {}: {v}",
        h.name()
    );
    Ok(v)
}

/// What `v` says about `name` (member or not).
fn entry<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    ["servers", "others"]
        .iter()
        .filter_map(|k| v[*k].as_array())
        .flatten()
        .find(|s| s["name"] == name)
}

fn state_of(v: &Value, name: &str) -> String {
    entry(v, name)
        .and_then(|e| {
            e["liveness"]["state"]
                .as_str()
                .or_else(|| e["state"].as_str())
        })
        .unwrap_or("unseen")
        .to_owned()
}

/// (generation, max_version) of every server in `v`, by name.
fn versions(v: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for s in v["servers"].as_array().into_iter().flatten() {
        let l = &s["liveness"];
        if let (Some(n), Some(g), Some(m)) = (
            s["name"].as_str(),
            l["generation"].as_u64(),
            l["max_version"].as_u64(),
        ) {
            out.insert(n.to_owned(), (g, m));
        }
    }
    for s in v["others"].as_array().into_iter().flatten() {
        if let (Some(n), Some(g), Some(m)) = (
            s["name"].as_str(),
            s["generation"].as_u64(),
            s["max_version"].as_u64(),
        ) {
            out.insert(n.to_owned(), (g, m));
        }
    }
    out
}

fn seal_counter(cli: &Cli, h: &Host, key: &str) -> u64 {
    cli.json(h, &["status"])
        .ok()
        .and_then(|s| s["gossip"][key].as_u64())
        .unwrap_or(0)
}

#[test]
fn gossip_heals_the_quorum_keeps_hosts_and_shuts_rogues_and_replays_out() {
    let t0 = Instant::now();
    let bin = support::quarryd();
    let cli_bin = support::quarry_bin();
    let lab = Lab::new(4).expect("lab");
    let hosts: Vec<&Host> = lab.hosts().iter().collect();
    let mut report = Vec::new();
    for h in &hosts {
        support::write_config(h, "heal_grace = \"4s\"\ngossip_forget_after = \"5s\"\n");
    }

    // 4 servers: h1 founds, h2..h4 join through h1; 3 voters and a learner.
    let (ok, out, err) = quarryd_in(hosts[0], &bin, &["init"]);
    assert!(ok, "init on h1: {out}{err}");
    let token = token_of(&out);
    start(&lab, hosts[0], &bin);
    let cli = Cli::new(cli_bin, admin_token(hosts[0]));
    let through = hosts[0].addr().to_string();
    for h in &hosts[1..] {
        let (ok, out, err) = quarryd_in(h, &bin, &["join", &through, "--token", &token]);
        assert!(
            ok,
            "join of {}: {out}{err}\n{}",
            h.name(),
            lab.logs_tail(20)
        );
        start(&lab, h, &bin);
    }
    let long = Duration::from_secs(40);
    let formed = poll("3 voters, 1 learner, all alive", long, || {
        let v = servers(&cli, hosts[0])?;
        let alive = names_in(&v).iter().all(|n| state_of(&v, n) == "alive");
        if with_role(&v, "voter").len() == 3 && with_role(&v, "learner").len() == 1 && alive {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));
    let took = blocks_become(&lab, &hosts, &hosts, long);
    report.push(format!(
        "4 servers formed, every hosts block lists 4 at {:.1}s (+{:.1}s)",
        secs(t0),
        took.as_secs_f64()
    ));

    let status = cli.json(hosts[0], &["status"]).expect("status");
    let cluster_id = status["gossip"]["cluster_id"]
        .as_str()
        .expect("gossip cluster id")
        .to_owned();
    let leader = status["raft"]["leader"]
        .as_str()
        .expect("leader")
        .to_owned();
    let learner = with_role(&formed, "learner")[0].clone();
    let victim = with_role(&formed, "voter")
        .into_iter()
        .find(|n| *n != leader)
        .expect("a voter that does not lead");
    let by_name = |n: &str| *hosts.iter().find(|h| h.name() == n).expect("host");
    let (leader_h, victim_h, learner_h) = (by_name(&leader), by_name(&victim), by_name(&learner));
    let raft_id_of = |v: &Value, n: &str| entry(v, n).and_then(|e| e["raft_id"].as_u64());
    let victim_id = raft_id_of(&formed, &victim).expect("victim raft id");
    let learner_id = raft_id_of(&formed, &learner).expect("learner raft id");

    // Rogues on the leader's host, gossiping to every member until the end of the test.
    let seeds: Vec<String> = hosts.iter().map(|h| format!("{}:7702", h.addr())).collect();
    let not_sealed_before: Vec<u64> = hosts
        .iter()
        .map(|h| seal_counter(&cli, h, "not_sealed"))
        .collect();
    for (mode, name, port) in [
        ("plain", "rogue-plain", 7790),
        ("badkey", "rogue-key", 7791),
    ] {
        let listen = format!("{}:{port}", leader_h.addr());
        let spec = ProcessSpec::new(name, ROGUE)
            .args([mode, &cluster_id, name, &listen, "120"])
            .args(&seeds);
        leader_h.spawn(spec).expect("spawn rogue");
    }

    // Cut a voter off: it leaves the others' blocks within 10 s; past the grace period the
    // learner votes in its place.
    let others: Vec<&Host> = hosts
        .iter()
        .copied()
        .filter(|h| h.name() != victim)
        .collect();
    let cut_at = Instant::now();
    lab.cut(victim_h.index()).expect("cut");
    let dropped = blocks_become(&lab, &others, &others, Duration::from_secs(10));
    report.push(format!(
        "{victim} cut -> out of every other hosts block after {:.1}s",
        dropped.as_secs_f64()
    ));
    assert!(dropped < Duration::from_secs(10), "{dropped:?}");
    let replaced = poll(
        &format!("{learner} a voter in {victim}'s place"),
        Duration::from_secs(30),
        || {
            let v = servers(&cli, leader_h)?;
            let voters = with_role(&v, "voter");
            if voters.contains(&learner)
                && !voters.contains(&victim)
                && with_role(&v, "learner") == [victim.clone()]
                && state_of(&v, &victim) == "dead"
            {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
    let heal_took = cut_at.elapsed();
    report.push(format!(
        "{learner} promoted, {victim} demoted {:.1}s after the cut (grace 4 s)",
        heal_took.as_secs_f64()
    ));
    assert!(
        heal_took > Duration::from_secs(4),
        "replaced before the grace period: {heal_took:?}"
    );
    assert_eq!(with_role(&replaced, "voter").len(), 3, "{replaced}");
    for (i, h) in others.iter().enumerate() {
        cli.ok(h, &["env", "set", &format!("AFTER_HEAL_{i}=yes")]);
    }
    let env = cli.json(learner_h, &["env"]).expect("env")["env"].clone();
    assert_eq!(env["AFTER_HEAL_2"], "yes", "{env}");
    let said = cli.ok(learner_h, &["status"]);
    let line = format!("healed   voter {victim} (raft {victim_id}) dead since ");
    assert!(
        said.contains(&line)
            && said.contains(&format!("replaced by {learner} (raft {learner_id}) at ")),
        "quarry status does not say what happened:\n{said}"
    );
    eprintln!("{said}{}", cli.ok(leader_h, &["servers"]));
    let leader_log = leader_h.log("quarryd");
    assert!(
        leader_log.contains(&format!("voter {victim} (raft {victim_id}) dead for")),
        "the leader's log does not record the replacement"
    );

    // Heal: the old voter is back as a learner, with its own id; every block lists 4 again.
    let healed_at = Instant::now();
    lab.heal(victim_h.index()).expect("heal");
    let back = poll(&format!("{victim} back as a learner"), long, || {
        let s = cli.json(victim_h, &["status"])?;
        let v = servers(&cli, leader_h)?;
        let learners = s["raft"]["learners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if s["raft"]["id"] == victim_id
            && learners == [Value::from(victim.clone())]
            && with_role(&v, "learner") == [victim.clone()]
            && state_of(&v, &victim) == "alive"
            && s["health"] == "ok"
        {
            Ok(v)
        } else {
            Err(format!("status {s}\nservers {v}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
    let mut ids: Vec<u64> = back["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["raft_id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 4, "{back}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "two servers claim one Raft id: {back}");
    blocks_become(&lab, &hosts, &hosts, Duration::from_secs(10));
    report.push(format!(
        "{victim} healed -> learner, in every block again after {:.1}s",
        secs(healed_at)
    ));

    // The rogues never got in (checked on every answer above, and here on every server);
    // every server dropped their datagrams unread.
    for (i, h) in hosts.iter().enumerate() {
        servers(&cli, h).expect("servers");
        let now = seal_counter(&cli, h, "not_sealed");
        assert!(
            now > not_sealed_before[i],
            "{} counted no rogue datagram ({now})",
            h.name()
        );
    }
    report.push("rogues (plaintext, wrong key) never in any view".to_owned());

    // Capture what the healed server sends, remove it, stop it, wait out gossip's grace
    // period, replay: it never comes back alive, and no version goes backwards.
    let capture = lab.dir().join("captured.txt");
    let from = format!("{}:7702", victim_h.addr());
    let out = victim_h
        .exec(&[ROGUE, "capture", &from, &capture.display().to_string(), "2"])
        .expect("capture");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let captured: usize = said
        .trim()
        .strip_prefix("captured ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("capture: {said}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(captured > 0, "no datagram captured from {from}");
    cli.ok(leader_h, &["servers", "remove", &victim]);
    let remaining: Vec<&Host> = others.clone();
    poll("3 voters left after the removal", long, || {
        let v = servers(&cli, leader_h)?;
        (with_role(&v, "voter").len() == 3 && v["servers"].as_array().map(Vec::len) == Some(3))
            .then_some(())
            .ok_or_else(|| v.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)));
    victim_h.stop("quarryd").expect("stop the removed server");
    blocks_become(&lab, &remaining, &remaining, Duration::from_secs(10));
    let forget_ms = 5_000 + 1_000;
    let before: Vec<BTreeMap<String, (u64, u64)>> = remaining
        .iter()
        .map(|h| {
            poll(
                &format!("{victim} dead for more than 6 s on {}", h.name()),
                Duration::from_secs(20),
                || {
                    let v = servers(&cli, h)?;
                    let e = entry(&v, &victim).cloned().unwrap_or(Value::Null);
                    let since = e["since_unix_ms"].as_u64().unwrap_or(u64::MAX);
                    let now = v["now_unix_ms"].as_u64().unwrap_or(0);
                    if e["state"] == "dead" && now.saturating_sub(since) > forget_ms {
                        Ok(versions(&v))
                    } else {
                        Err(v.to_string())
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(20)))
        })
        .collect();
    let replayed_before: Vec<u64> = remaining
        .iter()
        .map(|h| seal_counter(&cli, h, "replayed"))
        .collect();
    let out = victim_h
        .exec(&[
            ROGUE,
            "replay",
            &capture.display().to_string(),
            &from,
            "3",
            "300",
        ])
        .expect("replay");
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // For 4 s after the replay, on every server: the removed one is never alive, and no
    // (generation, version) goes backwards.
    let watch_until = Instant::now() + Duration::from_secs(4);
    let mut looks = 0;
    while Instant::now() < watch_until {
        for (i, h) in remaining.iter().enumerate() {
            let v = servers(&cli, h).expect("servers");
            let st = state_of(&v, &victim);
            assert!(
                st == "dead" || st == "unseen",
                "{victim} is {st} again on {} after the replay: {v}",
                h.name()
            );
            for (name, now) in versions(&v) {
                if let Some(was) = before[i].get(&name) {
                    assert!(
                        now >= *was,
                        "{name}'s (generation, version) went back from {was:?} to {now:?} on {}",
                        h.name()
                    );
                }
            }
            looks += 1;
        }
    }
    for (i, h) in remaining.iter().enumerate() {
        let now = seal_counter(&cli, h, "replayed");
        assert!(
            now > replayed_before[i],
            "{} counted none of the replayed datagrams ({now})",
            h.name()
        );
    }
    report.push(format!(
        "{captured} datagrams of {victim} replayed 3 times after removal: refused, {looks} looks"
    ));

    for name in ["rogue-plain", "rogue-key"] {
        leader_h.stop(name).expect("stop rogue");
    }
    lab.close().expect("lab cleaned up");
    report.push(format!("total {:.1}s", secs(t0)));
    eprintln!("quarryd_gossip:\n  {}", report.join("\n  "));
}
