//! Cluster deploys on the lab: three servers, each with its own `dockerd` and `quarryd`.
//!
//! - `quarry deploy` of the example through a non-leader: every replica runs on the server the
//!   grid chose (web replicas on different servers), each web replica answers on its
//!   committed address and the counter kept by the service rises across replicas; the
//!   stack's images exist only on the servers that run them.
//! - `quarry scale` up and down: `quarry ps` matches, container for container, what the three
//!   engines run (asked through their own sockets).
//! - Bad deploys (no quarry.yml, an invalid file, a failing build, a tag no server has, memory
//!   larger than any server): a clear message, and nothing changed in the cluster (stacks,
//!   grid version, every engine's containers).
//! - The server that received a deploy cut off right after the deploy was accepted: the leader
//!   builds from its copy of the source and commits while that server is away; once back, the
//!   server fetches its images and runs its replicas, and its other stack's containers were
//!   never touched.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use quarry_tests::{poll, Host, Lab};
use serde_json::Value;
use support::cluster::{
    converged, counter_rises, engine_containers, engine_images, engines, example_copy, http_get,
    leader_of, progress, ps_rows, text, Cluster, EXAMPLE,
};
use support::{secs, Cli};

/// Each server holds exactly the stack's images its containers run.
fn images_only_where_they_run(lab: &Lab, stack: &str) {
    for h in lab.hosts() {
        let (has, runs) = engine_images(h, stack);
        assert_eq!(has, runs, "{}: images of {stack} vs what runs", h.name());
    }
}

/// The cluster's stacks and grid version: what a refused deploy must leave as it was.
fn cluster_picture(lab: &Lab, cli: &Cli, h: &Host) -> (Value, Value, Vec<BTreeSet<String>>) {
    let stacks = cli.json(h, &["stacks"]).expect("stacks");
    let stacks: Value = stacks["stacks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| serde_json::json!([s["name"], s["revision"], s["source"]]))
                .collect()
        })
        .unwrap_or_default();
    let grid = cli.json(h, &["grid"]).expect("grid")["grid"]["version"].clone();
    let running = lab
        .hosts()
        .iter()
        .map(|h| engine_containers(h, "guestbook"))
        .collect();
    (stacks, grid, running)
}

/// The servers the web replicas of `rows` (`quarry ps` rows) run on.
fn web_servers(rows: &[Value]) -> BTreeSet<&str> {
    rows.iter()
        .filter(|r| r["node"] == "web")
        .filter_map(|r| r["server"].as_str())
        .collect()
}

#[test]
fn deploys_run_on_the_grid_scale_refuse_bad_stacks_and_survive_the_receiver_cut_off() {
    let t0 = Instant::now();
    let cluster = Cluster::up(3, None);
    let (lab, cli, token) = (&cluster.lab, &cluster.cli, &cluster.token);
    let hosts = cluster.hosts();
    let mut report = Vec::new();
    report.push(format!("cluster of 3 up in {:.1}s", secs(t0)));
    let host_named = |n: &str| cluster.host_named(n);
    let leader = leader_of(cli, hosts[0]).expect("a leader");
    let others: Vec<&Host> = hosts
        .iter()
        .copied()
        .filter(|h| h.name() != leader)
        .collect();

    // 1. The example, deployed through a non-leader.
    let t = Instant::now();
    let out = cli.run(others[0], &["deploy", EXAMPLE]);
    eprintln!("quarry deploy {EXAMPLE}:\n{}", text(&out));
    assert!(
        out.status.success(),
        "deploy through {}: {}\n{}",
        others[0].name(),
        text(&out),
        lab.logs_tail(40)
    );
    report.push(format!(
        "deploy of the example through {} (leader {leader}): {:.1}s",
        others[0].name(),
        secs(t)
    ));
    let rows = converged(
        lab,
        cli,
        hosts[2],
        "guestbook",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(30),
    );
    let spread = web_servers(&rows);
    assert_eq!(
        spread.len(),
        2,
        "web replicas on different servers: {rows:?}"
    );
    for r in &rows {
        // The replica runs on the server the grid chose, published on that server's address.
        let server = host_named(r["server"].as_str().expect("server"));
        let id = r["container"].as_str().expect("id");
        assert!(
            engine_containers(server, "guestbook").contains(id),
            "{r} runs on {}",
            server.name()
        );
        if let Some(a) = r["address"].as_str() {
            assert!(
                a.starts_with(&format!("{}:", server.addr())),
                "{r}: its address is on its server"
            );
        }
    }
    let grid = cli.json(hosts[1], &["grid"]).expect("grid");
    for r in &rows {
        let slice_on = grid["grid"]["slices"]
            .as_object()
            .and_then(|s| {
                s.iter().find(|(id, _)| {
                    id.starts_with(&format!(
                        "guestbook.{}.r{}.{}",
                        r["node"].as_str().unwrap_or(""),
                        r["revision"],
                        r["replica"]
                    ))
                })
            })
            .map(|(_, s)| s["block"].clone());
        assert_eq!(
            slice_on.as_ref(),
            Some(&r["server"]),
            "{r} vs the grid {grid}"
        );
    }
    let visits = counter_rises(lab, &rows);
    images_only_where_they_run(lab, "guestbook");
    report.push(format!(
        "web answers on its committed addresses, visits {visits:?}"
    ));
    let stacks = cli.ok(hosts[1], &["stacks"]);
    assert!(
        stacks.contains("guestbook") && stacks.contains("live"),
        "{stacks}"
    );

    // 2. Scale up and down; ps matches the engines container for container.
    let t = Instant::now();
    let out = cli.run(hosts[2], &["scale", "-s", "guestbook", "web=3"]);
    assert!(out.status.success(), "scale up: {}", text(&out));
    let rows = converged(
        lab,
        cli,
        hosts[0],
        "guestbook",
        &[("kv", 1), ("web", 3), ("ticker", 1)],
        Duration::from_secs(30),
    );
    let spread = web_servers(&rows);
    assert_eq!(spread.len(), 3, "three web replicas on three servers");
    counter_rises(lab, &rows);
    let out = cli.run(hosts[1], &["scale", "-s", "guestbook", "web=1"]);
    assert!(out.status.success(), "scale down: {}", text(&out));
    let rows = converged(
        lab,
        cli,
        hosts[1],
        "guestbook",
        &[("kv", 1), ("web", 1), ("ticker", 1)],
        Duration::from_secs(30),
    );
    counter_rises(lab, &rows);
    report.push(format!(
        "scale 2 -> 3 -> 1 with ps = engines: {:.1}s",
        secs(t)
    ));

    // `quarry plan` against the cluster: the example asks for 2 web replicas, 1 run.
    let plan = cli.ok(hosts[0], &["plan", EXAMPLE]);
    assert!(
        plan.contains("against the cluster") && plan.contains("SCALE") && plan.contains("web"),
        "{plan}"
    );
    let grid = cli.ok(hosts[2], &["grid", "-s", "guestbook"]);
    assert!(grid.contains("guestbook.web.r1."), "{grid}");

    // A changed web tree: web and ticker DEPLOYed (new image), kv left alone; the old
    // replicas retire once the new ones are healthy; the counter goes on; each server keeps
    // the images it runs and those the previous revision ran there.
    let t = Instant::now();
    let ran: BTreeMap<String, BTreeSet<String>> = lab
        .hosts()
        .iter()
        .map(|h| (h.name(), engine_images(h, "guestbook").1))
        .collect();
    let kv_before: Vec<Value> = rows.iter().filter(|r| r["node"] == "kv").cloned().collect();
    let changed = example_copy(&lab.dir().join("changed").join("guestbook"), |y| {
        y.replace("GREETING: hello", "GREETING: bonjour")
    });
    std::fs::write(changed.join("web/www/health"), "ok, changed\n").expect("health");
    let out = cli.run(hosts[0], &["deploy", &changed.display().to_string()]);
    assert!(out.status.success(), "changed deploy: {}", text(&out));
    let rows = converged(
        lab,
        cli,
        hosts[1],
        "guestbook",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(30),
    );
    for r in &rows {
        let want = if r["node"] == "kv" { 1 } else { 2 };
        assert_eq!(r["revision"], want, "{r}");
    }
    let kv_after: Vec<Value> = rows.iter().filter(|r| r["node"] == "kv").cloned().collect();
    assert_eq!(kv_after, kv_before, "kv kept as it ran");
    let seen = counter_rises(lab, &rows);
    assert!(
        seen[0] > *visits.last().expect("visits"),
        "the count goes on: {seen:?}"
    );
    let body = http_get(
        rows.iter()
            .find(|r| r["node"] == "web")
            .and_then(|r| r["address"].as_str())
            .expect("web address"),
        "/cgi-bin/index.cgi",
    )
    .expect("web answers");
    assert!(body.starts_with("bonjour from web-r2-"), "{body}");
    for h in lab.hosts() {
        let (has, runs) = engine_images(h, "guestbook");
        let keep: BTreeSet<String> = runs.union(&ran[&h.name()]).cloned().collect();
        assert_eq!(
            has,
            keep,
            "{}: images it runs or the last revision ran",
            h.name()
        );
    }
    report.push(format!(
        "a changed web deployed, old replicas retired: {:.1}s",
        secs(t)
    ));

    // Disable and enable: containers stop everywhere, then come back on the same addresses.
    let t = Instant::now();
    let addresses = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .filter_map(|r| r["address"].as_str().map(str::to_owned))
            .collect()
    };
    let before = addresses(&rows);
    cli.ok(hosts[2], &["disable", "-s", "guestbook"]);
    poll(
        "guestbook's containers gone",
        Duration::from_secs(30),
        || {
            let left = engines(lab, "guestbook");
            let rows = ps_rows(cli, hosts[0], "guestbook")?;
            if left.is_empty() && rows.iter().all(|r| r["state"] == "disabled") {
                Ok(())
            } else {
                Err(format!("engines {left:?}, ps {rows:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
    let stacks = cli.json(hosts[0], &["stacks"]).expect("stacks");
    assert_eq!(stacks["stacks"][0]["status"], "disabled", "{stacks}");
    cli.ok(hosts[1], &["enable", "-s", "guestbook"]);
    let rows = converged(
        lab,
        cli,
        hosts[2],
        "guestbook",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(30),
    );
    assert_eq!(addresses(&rows), before, "the same addresses after enable");
    report.push(format!("disable and enable: {:.1}s", secs(t)));

    // 3. Bad deploys: a clear message, nothing changed.
    let t = Instant::now();
    let before = cluster_picture(lab, cli, hosts[0]);
    let scratch = lab.dir().join("bad");
    let empty = scratch.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let invalid = scratch.join("invalid");
    std::fs::create_dir_all(&invalid).expect("mkdir");
    std::fs::write(
        invalid.join("quarry.yml"),
        "name: guestbook\nnodes:\n  web:\n    kind: webb\n    image: x\n",
    )
    .expect("yml");
    let failing = example_copy(&scratch.join("failing"), |y| y.to_owned());
    let dockerfile = failing.join("web/Dockerfile");
    let d = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    std::fs::write(&dockerfile, format!("{d}RUN [\"/bin/false\"]\n")).expect("Dockerfile");
    let tagged = example_copy(&scratch.join("tagged"), |y| {
        y.replace("    scale: 2\n", "    scale: 2\n    tags: [gpu]\n")
    });
    let huge = example_copy(&scratch.join("huge"), |y| {
        y.replace(
            "    scale: 2\n    memory: 32M",
            "    scale: 2\n    memory: 640G",
        )
    });
    let cases: [(&str, &Path, &[&str]); 5] = [
        ("no quarry.yml", &empty, &["no quarry.yml"]),
        ("an invalid file", &invalid, &["quarry.yml:4", "webb"]),
        (
            "a failing build",
            &failing,
            &["building", "nothing was deployed"],
        ),
        (
            "a tag no server has",
            &tagged,
            &["tagged [gpu]", "no server carries"],
        ),
        (
            "memory larger than any server",
            &huge,
            &["640G", "more than any server"],
        ),
    ];
    for (i, (what, dir, says)) in cases.iter().enumerate() {
        let through = hosts[i % 3];
        let out = cli.run(through, &["deploy", &dir.display().to_string()]);
        let said = text(&out);
        assert!(!out.status.success(), "{what} was deployed: {said}");
        for s in *says {
            assert!(said.contains(s), "{what}: the message lacks {s:?}:\n{said}");
        }
        assert_eq!(
            cluster_picture(lab, cli, hosts[(i + 1) % 3]),
            before,
            "{what} changed the cluster"
        );
        eprintln!("bad deploy ({what}) refused:\n{}", said.trim());
    }
    report.push(format!(
        "5 bad deploys refused, nothing changed: {:.1}s",
        secs(t)
    ));

    // 4. A second stack through a non-leader R, which is cut off once the deploy is accepted.
    let t = Instant::now();
    let leader = leader_of(cli, hosts[0]).expect("a leader");
    let receiver = *hosts
        .iter()
        .find(|h| h.name() != leader)
        .expect("a non-leader");
    let steady = engine_containers(receiver, "guestbook");
    let second = example_copy(&scratch.join("guestbook2"), |y| {
        y.replace("name: guestbook", "name: guestbook2")
            .replace("guestbook.test", "guestbook2.test")
    });
    let out = cli.run(
        receiver,
        &[
            "deploy",
            "--detach",
            "--json",
            &second.display().to_string(),
        ],
    );
    assert!(out.status.success(), "deploy of guestbook2: {}", text(&out));
    let accepted: Value = serde_json::from_slice(&out.stdout).expect("accepted json");
    lab.cut(receiver.index()).expect("cut the receiver");
    let id = accepted["id"].as_str().expect("deploy id").to_owned();
    let holders: Vec<&str> = accepted["holders"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        holders.len() == 2 && holders.contains(&receiver.name().as_str()),
        "the source is on the receiver and one more server: {accepted}"
    );
    let ask = host_named(&leader);
    let committed = poll(
        "the deploy committed while its receiver is cut off",
        Duration::from_secs(60),
        || {
            let v = progress(ask, token, &id)?;
            if v["failed"].is_string() {
                return Ok(v);
            }
            if v["committed"].is_u64() {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(40)));
    assert!(committed["failed"].is_null(), "{committed}");
    let lines = progress(ask, token, &id).expect("progress")["lines"].to_string();
    assert!(
        lines.contains(&format!("built on {leader}")),
        "the leader built from its copy: {lines}"
    );
    lab.heal(receiver.index()).expect("heal");
    let done = poll("the deploy done", Duration::from_secs(90), || {
        let v = progress(ask, token, &id)?;
        if v["done"] == true {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(40)));
    assert!(done["failed"].is_null(), "{done}");
    let rows = converged(
        lab,
        cli,
        hosts[0],
        "guestbook2",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(60),
    );
    counter_rises(lab, &rows);
    assert_eq!(
        engine_containers(receiver, "guestbook"),
        steady,
        "the receiver's other containers were left alone while it was away"
    );
    report.push(format!(
        "receiver {} cut after acceptance: committed from {leader}'s copy, done {:.1}s",
        receiver.name(),
        secs(t)
    ));

    cluster.lab.close().expect("lab cleaned up");
    report.push(format!("total {:.1}s", secs(t0)));
    eprintln!("lab_deploy:\n  {}", report.join("\n  "));
}
