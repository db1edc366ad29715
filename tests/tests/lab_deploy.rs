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
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use quarry_node::api::client::{self, Endpoint};
use quarry_tests::{poll, Host, Lab, ProcessSpec};
use serde_json::Value;
use support::{admin_token, flags, quarryd_in, secs, token_of, Cli};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/guestbook");

fn docker_socket(h: &Host) -> String {
    h.docker_host()
        .expect("engine")
        .trim_start_matches("unix://")
        .to_owned()
}

/// Start `quarryd run` in `h` on its own engine, and wait until it serves.
fn start(lab: &Lab, h: &Host, bin: &Path) {
    let spec = ProcessSpec::new("quarryd", bin)
        .args(flags(h))
        .arg("--docker-socket")
        .arg(docker_socket(h))
        .arg("run");
    h.spawn(spec).expect("spawn quarryd run");
    h.wait_for_log("quarryd", "quarryd running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A stack's containers on an engine (full ids).
fn engine_containers(h: &Host, stack: &str) -> BTreeSet<String> {
    h.docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=quarry.stack={stack}"),
    ])
    .expect("docker ps")
    .lines()
    .map(str::to_owned)
    .collect()
}

/// A stack's images on an engine, and the images its running containers use.
fn engine_images(h: &Host, stack: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let label = format!("label=quarry.stack={stack}");
    let has = h
        .docker(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            &label,
        ])
        .expect("docker images");
    let runs = h
        .docker(&["ps", "--format", "{{.Image}}", "--filter", &label])
        .expect("docker ps");
    let set = |s: String| s.lines().map(str::to_owned).collect();
    (set(has), set(runs))
}

fn ps_rows(cli: &Cli, h: &Host, stack: &str) -> Result<Vec<Value>, String> {
    let v = cli.json(h, &["ps", "-s", stack])?;
    Ok(v["rows"].as_array().cloned().unwrap_or_default())
}

/// (server, container id) of every row, and whether every row runs healthy.
fn ps_containers(rows: &[Value]) -> (BTreeSet<(String, String)>, bool) {
    let ids = rows
        .iter()
        .filter_map(|r| {
            Some((
                r["server"].as_str()?.to_owned(),
                r["container"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let healthy = rows
        .iter()
        .all(|r| r["state"] == "running" && (r["health"] == "healthy" || r["health"] == "none"));
    (ids, healthy)
}

/// What the engines run of `stack`, as (server, id).
fn engines(lab: &Lab, stack: &str) -> BTreeSet<(String, String)> {
    lab.hosts()
        .iter()
        .flat_map(|h| {
            engine_containers(h, stack)
                .into_iter()
                .map(move |id| (h.name(), id))
        })
        .collect()
}

/// Wait until `quarry ps` lists exactly what the engines run, every row running and healthy,
/// with `want` rows per node; returns the rows.
fn converged(
    lab: &Lab,
    cli: &Cli,
    h: &Host,
    stack: &str,
    want: &[(&str, usize)],
    limit: Duration,
) -> Vec<Value> {
    poll(
        &format!("quarry ps of {stack} to match the engines with {want:?}"),
        limit,
        || {
            let rows = ps_rows(cli, h, stack)?;
            let (ids, healthy) = ps_containers(&rows);
            let on_engines = engines(lab, stack);
            let counts: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r["node"].as_str().unwrap_or("").to_owned())
                    .or_default() += 1;
                m
            });
            let counted = want
                .iter()
                .all(|(n, c)| counts.get(*n).copied() == Some(*c))
                && counts.len() == want.len();
            if healthy && counted && ids == on_engines && ids.len() == rows.len() {
                Ok(rows)
            } else {
                Err(format!(
                    "ps rows {rows:?}\nengines run {on_engines:?}\ncounts {counts:?}"
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(40)))
}

/// GET http://addr/path from this machine: the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_owned())
    } else {
        Err(format!("{addr}{path} answered {head:?} {body:?}"))
    }
}

/// The visit number in a guestbook answer (`hello from web-r1-0: visit 7`).
fn visit(body: &str) -> Option<u64> {
    body.trim().rsplit("visit ").next()?.trim().parse().ok()
}

/// Every web replica answers on its committed address, and the counter rises across them.
fn counter_rises(lab: &Lab, rows: &[Value]) -> Vec<u64> {
    let webs: Vec<String> = rows
        .iter()
        .filter(|r| r["node"] == "web")
        .filter_map(|r| r["address"].as_str().map(str::to_owned))
        .collect();
    assert!(!webs.is_empty(), "no web replica in {rows:?}");
    let mut seen = Vec::new();
    for _ in 0..2 {
        for a in &webs {
            let body = poll(
                &format!("web replica at {a} to count a visit"),
                Duration::from_secs(20),
                || http_get(a, "/cgi-bin/index.cgi"),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
            let n = visit(&body).unwrap_or_else(|| panic!("no visit number in {body:?}"));
            seen.push(n);
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the counter rises across replicas: {seen:?}"
    );
    seen
}

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

/// Copy the example to `dir` (links to the static busybox become copies), changing
/// quarry.yml with `edit`.
fn example_copy(dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read example") {
            let e = e.expect("entry");
            let target = to.join(e.file_name());
            if std::fs::metadata(e.path()).expect("meta").is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).expect("copy");
            }
        }
    }
    copy(Path::new(EXAMPLE), dir);
    let yml = std::fs::read_to_string(dir.join("quarry.yml")).expect("yml");
    std::fs::write(dir.join("quarry.yml"), edit(&yml)).expect("write yml");
    dir.to_owned()
}

fn leader_of(cli: &Cli, h: &Host) -> Option<String> {
    cli.json(h, &["status"]).ok()?["raft"]["leader"]
        .as_str()
        .map(str::to_owned)
}

/// A deploy's progress, asked of `h`'s API.
fn progress(h: &Host, token: &str, id: &str) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ep = Endpoint::Tcp(format!("{}:7700", h.addr()));
    let reply = rt
        .block_on(client::get(&ep, &format!("/v1/deploys/{id}"), Some(token)))
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
    if reply.status == 200 {
        Ok(v)
    } else {
        Err(format!("{}: {v}", reply.status))
    }
}

#[test]
fn deploys_run_on_the_grid_scale_refuse_bad_stacks_and_survive_the_receiver_cut_off() {
    let t0 = Instant::now();
    let bin = support::quarryd();
    let cli_bin = support::quarry_bin();
    let lab = Lab::builder(3).docker([1, 2, 3]).build().expect("lab");
    let hosts: Vec<&Host> = lab.hosts().iter().collect();
    let mut report = Vec::new();

    // The cluster: h1 founds it, h2 and h3 join.
    let (ok, out, err) = quarryd_in(hosts[0], &bin, &["init"]);
    assert!(ok, "init: {out}{err}");
    let join_token = token_of(&out);
    start(&lab, hosts[0], &bin);
    let token = admin_token(hosts[0]);
    let cli = Cli::new(cli_bin, token.clone());
    // Each server joins once the previous one is in (voters follow the rule: 1, then 3).
    for (i, h) in hosts.iter().enumerate() {
        if i > 0 {
            let (ok, out, err) = quarryd_in(
                h,
                &bin,
                &["join", &hosts[0].addr().to_string(), "--token", &join_token],
            );
            assert!(ok, "join {}: {out}{err}", h.name());
            start(&lab, h, &bin);
        }
        let n = i + 1;
        let voters = if n < 3 { 1 } else { 3 };
        poll(
            &format!("{n} servers, {voters} voters, all healthy, {n} grid blocks"),
            Duration::from_secs(30),
            || {
                let v = cli.json(hosts[0], &["servers"])?;
                let s = v["servers"].as_array().cloned().unwrap_or_default();
                let ok = s.len() == n
                    && s.iter().filter(|x| x["role"] == "voter").count() == voters
                    && s.iter().all(|x| x["health"] == "ok");
                let blocks = cli.json(hosts[0], &["grid"])?["grid"]["blocks"]
                    .as_object()
                    .map(|b| b.len());
                if ok && blocks == Some(n) {
                    Ok(())
                } else {
                    Err(format!("{v}"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
    }
    report.push(format!("cluster of 3 up in {:.1}s", secs(t0)));
    let host_named = |n: &str| *hosts.iter().find(|h| h.name() == n).expect("host");
    let leader = leader_of(&cli, hosts[0]).expect("a leader");
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
        &lab,
        &cli,
        hosts[2],
        "guestbook",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(30),
    );
    let web_servers: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["node"] == "web")
        .filter_map(|r| r["server"].as_str())
        .collect();
    assert_eq!(
        web_servers.len(),
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
    let visits = counter_rises(&lab, &rows);
    images_only_where_they_run(&lab, "guestbook");
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
        &lab,
        &cli,
        hosts[0],
        "guestbook",
        &[("kv", 1), ("web", 3), ("ticker", 1)],
        Duration::from_secs(30),
    );
    let web_servers: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["node"] == "web")
        .filter_map(|r| r["server"].as_str())
        .collect();
    assert_eq!(web_servers.len(), 3, "three web replicas on three servers");
    counter_rises(&lab, &rows);
    let out = cli.run(hosts[1], &["scale", "-s", "guestbook", "web=1"]);
    assert!(out.status.success(), "scale down: {}", text(&out));
    let rows = converged(
        &lab,
        &cli,
        hosts[1],
        "guestbook",
        &[("kv", 1), ("web", 1), ("ticker", 1)],
        Duration::from_secs(30),
    );
    counter_rises(&lab, &rows);
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
        &lab,
        &cli,
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
    let seen = counter_rises(&lab, &rows);
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
            let left = engines(&lab, "guestbook");
            let rows = ps_rows(&cli, hosts[0], "guestbook")?;
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
        &lab,
        &cli,
        hosts[2],
        "guestbook",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(30),
    );
    assert_eq!(addresses(&rows), before, "the same addresses after enable");
    report.push(format!("disable and enable: {:.1}s", secs(t)));

    // 3. Bad deploys: a clear message, nothing changed.
    let t = Instant::now();
    let before = cluster_picture(&lab, &cli, hosts[0]);
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
            cluster_picture(&lab, &cli, hosts[(i + 1) % 3]),
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
    let leader = leader_of(&cli, hosts[0]).expect("a leader");
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
            let v = progress(ask, &token, &id)?;
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
    let lines = progress(ask, &token, &id).expect("progress")["lines"].to_string();
    assert!(
        lines.contains(&format!("built on {leader}")),
        "the leader built from its copy: {lines}"
    );
    lab.heal(receiver.index()).expect("heal");
    let done = poll("the deploy done", Duration::from_secs(90), || {
        let v = progress(ask, &token, &id)?;
        if v["done"] == true {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(40)));
    assert!(done["failed"].is_null(), "{done}");
    let rows = converged(
        &lab,
        &cli,
        hosts[0],
        "guestbook2",
        &[("kv", 1), ("web", 2), ("ticker", 1)],
        Duration::from_secs(60),
    );
    counter_rises(&lab, &rows);
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

    lab.close().expect("lab cleaned up");
    report.push(format!("total {:.1}s", secs(t0)));
    eprintln!("lab_deploy:\n  {}", report.join("\n  "));
}
