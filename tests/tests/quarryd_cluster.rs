//! A cluster of real quarryd processes, one per lab host: grown from 1 to 5 servers, each
//! joining through a different member; every server crashed and restarted; the leader's host
//! cut off and healed; then shrunk back to 1 with `quarry servers remove`, the leader's own
//! server first (each removed server stopped once Raft has taken it out). At every size,
//! `quarry servers` on every running server lists all of them with the voter/learner split of
//! the rule (1 voter for 1–2 servers, 3 for 3–4, 5 from 5 on).

mod support;

use std::time::{Duration, Instant};

use quarry_tests::{poll, Host, Lab};
use serde_json::Value;
use support::{admin_token, quarryd_in, secs, start, token_of, with_role, Cli};

fn voters_for(n: usize) -> usize {
    match n {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

/// Wait until every host in `on` lists exactly `names`, with the rule's voter count, every
/// server in Raft's configuration and healthy as the leader sees it. Returns one answer.
fn settled(lab: &Lab, cli: &Cli, on: &[&Host], names: &[String], limit: Duration) -> Value {
    let what = format!(
        "{} servers listed by {} with {} voters",
        names.len(),
        on.iter().map(|h| h.name()).collect::<Vec<_>>().join(","),
        voters_for(names.len())
    );
    let mut last = Value::Null;
    for h in on {
        last = poll(&what, limit, || {
            let v = cli.json(h, &["servers"])?;
            let listed: Vec<String> = v["servers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let voters = with_role(&v, "voter").len();
            let learners = with_role(&v, "learner").len();
            let healthy = v["servers"]
                .as_array()
                .is_some_and(|a| a.iter().all(|s| s["health"] == "ok"));
            if listed == names
                && voters == voters_for(names.len())
                && voters + learners == names.len()
                && healthy
            {
                Ok(v)
            } else {
                Err(format!("{} said {v}", h.name()))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(25)));
    }
    last
}

/// The leader's name as `h` sees it, if any.
fn leader_seen_by(cli: &Cli, h: &Host) -> Option<String> {
    let v = cli.json(h, &["status"]).ok()?;
    v["raft"]["leader"].as_str().map(str::to_owned)
}

fn host_named<'a>(lab: &'a Lab, name: &str) -> &'a Host {
    lab.hosts()
        .iter()
        .find(|h| h.name() == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

fn env_of(cli: &Cli, h: &Host) -> Result<Value, String> {
    cli.json(h, &["env"]).map(|v| v["env"].clone())
}

#[test]
fn a_cluster_grows_to_five_fails_over_restarts_and_shrinks_back() {
    let t0 = Instant::now();
    let bin = support::quarryd();
    let cli_bin = support::quarry_bin();
    let lab = Lab::new(5).expect("lab");
    let hosts: Vec<&Host> = lab.hosts().iter().collect();
    let mut report = Vec::new();

    // 1 server.
    let (ok, out, err) = quarryd_in(hosts[0], &bin, &["init"]);
    assert!(ok, "init on h1: {out}{err}");
    let token = token_of(&out);
    start(&lab, hosts[0], &bin);
    let cli = Cli::new(cli_bin, admin_token(hosts[0]));
    let long = Duration::from_secs(30);
    let mut names = vec!["h1".to_owned()];
    settled(&lab, &cli, &hosts[..1], &names, long);

    // Grow to 5, each joining through the server that joined last (h2 through h1, h3 through
    // h2, ...): any member admits. After each, every running server lists all of them.
    for i in 1..5 {
        let t = Instant::now();
        let through = hosts[i - 1].addr().to_string();
        let (ok, out, err) = quarryd_in(hosts[i], &bin, &["join", &through, "--token", &token]);
        assert!(
            ok,
            "join of h{} through h{i}: {out}{err}\n{}",
            i + 1,
            lab.logs_tail(25)
        );
        start(&lab, hosts[i], &bin);
        names.push(hosts[i].name());
        settled(&lab, &cli, &hosts[..=i], &names, long);
        report.push(format!("join h{} -> settled {:.1}s", i + 1, secs(t)));
    }
    let five = cli.ok(hosts[2], &["servers"]);
    eprintln!(
        "{five}\n{}\n{}",
        cli.ok(hosts[3], &["status"]),
        cli.ok(hosts[1], &["grid"])
    );
    assert!(five.contains("5 servers: 5 voters, 0 learners"), "{five}");
    let grid = cli.json(hosts[4], &["grid"]).expect("grid");
    let blocks = grid["grid"]["blocks"].as_object().map(|b| b.len());
    assert_eq!(blocks, Some(5), "one grid block per server: {grid}");

    // A write through one server, read on another.
    cli.ok(hosts[3], &["env", "set", "BEFORE=cut"]);
    assert_eq!(env_of(&cli, hosts[1]).expect("env")["BEFORE"], "cut");

    let before = env_of(&cli, hosts[1]).expect("env");
    let before_restart = settled(&lab, &cli, &hosts, &names, long);
    let grid_before = cli.json(hosts[0], &["grid"]).expect("grid")["grid"].clone();

    // Crash every server and start them again: the state comes back from disk.
    let restart_at = Instant::now();
    for h in &hosts {
        h.kill("quarryd").expect("kill");
    }
    for h in &hosts {
        h.restart("quarryd").expect("restart");
    }
    let after_restart = settled(&lab, &cli, &hosts, &names, long);
    for h in &hosts {
        assert_eq!(env_of(&cli, h).expect("env"), before, "env on {}", h.name());
    }
    assert_eq!(
        cli.json(hosts[4], &["grid"]).expect("grid")["grid"],
        grid_before,
        "the grid, version included, is back"
    );
    let raft_ids = |v: &Value| -> Vec<Value> {
        v["servers"]
            .as_array()
            .map(|a| a.iter().map(|s| s["raft_id"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(raft_ids(&after_restart), raft_ids(&before_restart));
    report.push(format!(
        "all 5 crashed and restarted -> settled {:.1}s",
        secs(restart_at)
    ));

    // Cut the leader's host off: a new leader within 3 s; writes through the others work.
    let old = leader_seen_by(&cli, hosts[0]).expect("a leader");
    let old_host = host_named(&lab, &old);
    let others: Vec<&Host> = hosts.iter().copied().filter(|h| h.name() != old).collect();
    let cut_at = Instant::now();
    lab.cut(old_host.index()).expect("cut");
    let new = poll(
        "a new leader after the cut",
        Duration::from_secs(10),
        || {
            let seen: Vec<Option<String>> =
                others.iter().map(|h| leader_seen_by(&cli, h)).collect();
            let agreed = seen
                .iter()
                .flatten()
                .find(|l| **l != old && seen.iter().flatten().filter(|m| m == l).count() >= 3)
                .cloned();
            agreed.ok_or_else(|| format!("leaders seen: {seen:?}"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(25)));
    let failover = cut_at.elapsed();
    report.push(format!(
        "leader {old} cut -> {new} leads after {:.2}s",
        failover.as_secs_f64()
    ));
    assert!(
        failover < Duration::from_secs(3),
        "a new leader took {failover:?}"
    );
    for (i, h) in others.iter().enumerate() {
        cli.ok(h, &["env", "set", &format!("DURING_{i}=yes")]);
    }
    let during = env_of(&cli, others[0]).expect("env");
    assert_eq!(during["DURING_3"], "yes", "{during}");

    // Heal: the old leader comes back as a follower with the same state.
    let healed_at = Instant::now();
    lab.heal(old_host.index()).expect("heal");
    poll(
        "the old leader back as a follower with the same state",
        long,
        || {
            let s = cli.json(old_host, &["status"])?;
            let env = env_of(&cli, old_host)?;
            if s["raft"]["role"] == "follower"
                && s["raft"]["leader"] == new.as_str()
                && env == during
            {
                Ok(())
            } else {
                Err(format!("status {s}, env {env}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(25)));
    report.push(format!(
        "healed {old} follows again after {:.1}s",
        secs(healed_at)
    ));
    settled(&lab, &cli, &hosts, &names, long);

    // Shrink back to 1: first the leader's own server (its leadership is handed over first),
    // then the last one each time; asking another server each time. Each removed
    // server says so and is then stopped; the voters follow the rule at every size.
    let mut remaining: Vec<&Host> = hosts.clone();
    let mut handed_over = 0;
    while remaining.len() > 1 {
        let t = Instant::now();
        let leader = leader_seen_by(&cli, remaining[0]).expect("a leader");
        let gone = if remaining.len() == hosts.len() {
            host_named(&lab, &leader)
        } else {
            *remaining.last().expect("a server")
        };
        let ask = *remaining
            .iter()
            .find(|h| h.name() != gone.name() && h.name() != leader)
            .unwrap_or(&remaining[0]);
        let out = cli.ok(ask, &["servers", "remove", &gone.name()]);
        assert!(out.contains("removed"), "{out}");
        let removed_after = secs(t);
        names.retain(|n| *n != gone.name());
        remaining.retain(|h| h.name() != gone.name());
        settled(&lab, &cli, &remaining, &names, long);
        let said = cli
            .json(gone, &["status"])
            .expect("status of the removed server");
        assert!(
            said["health"]
                .as_str()
                .unwrap_or("")
                .contains("was removed from the cluster"),
            "{said}"
        );
        gone.stop("quarryd").expect("stop the removed server");
        let led = gone.name() == leader;
        handed_over += usize::from(led);
        report.push(format!(
            "removed {}{} in {removed_after:.1}s -> settled {:.1}s",
            gone.name(),
            if led {
                " (the leader: handed over)"
            } else {
                ""
            },
            secs(t)
        ));
    }
    assert!(
        handed_over >= 1,
        "the cut made another server lead: {report:?}"
    );
    let last = cli.ok(remaining[0], &["status"]);
    assert!(
        last.contains(&format!("voters   {}", remaining[0].name())) && last.contains("learners -"),
        "{last}"
    );
    lab.close().expect("lab cleaned up");
    report.push(format!("total {:.1}s", secs(t0)));
    eprintln!("quarryd_cluster:\n  {}", report.join("\n  "));
}
