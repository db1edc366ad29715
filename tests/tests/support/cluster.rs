//! A quarry cluster on the lab, for the tests and benchmarks that deploy the example: three
//! servers (each with its own `dockerd` and `quarryd`, optionally one tagged `router`), and
//! what they check it with: the engines' containers and images, `quarry ps`, HTTP from this
//! machine, copies of the example, the leader, a deploy's progress.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use quarry_node::api::client::{self, Endpoint};
use quarry_tests::{poll, Host, Lab, ProcessSpec};
use serde_json::Value;

use super::{admin_token, flags, quarryd_in, secs, token_of, Cli};

/// The example stack, checked in.
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/guestbook");

/// A running cluster of quarryd on a lab, every host with its own engine.
pub struct Cluster {
    /// The lab (close it at the end to check nothing is left).
    pub lab: Lab,
    /// The quarryd binary.
    pub bin: PathBuf,
    /// The CLI with the admin token.
    pub cli: Cli,
    /// The admin token.
    pub token: String,
    /// The join token `quarryd init` printed.
    pub join_token: String,
    /// The host tagged `router` (1-based), if any.
    pub router: Option<usize>,
}

impl Cluster {
    /// `n` servers with an engine each: h1 founds the cluster, the others join one at a time
    /// (each in, healthy and with its grid block before the next); host `router` (1-based)
    /// carries the tag `router` in its quarryd.toml. Returns once all are voters or learners as
    /// the rule says (1 voter below 3 servers, 3 from 3).
    pub fn up(n: usize, router: Option<usize>) -> Cluster {
        Cluster::up_with(router, vec![(super::quarryd(), super::LAB_CONFIG); n])
    }

    /// [`Cluster::up`] with one quarryd binary per server, in order, each with the base of its
    /// quarryd.toml (an older build knows fewer settings: for an upgrade). The founder's
    /// binary is kept as the cluster's.
    pub fn up_with(router: Option<usize>, servers: Vec<(PathBuf, &str)>) -> Cluster {
        let t0 = Instant::now();
        let n = servers.len();
        let bins: Vec<PathBuf> = servers.iter().map(|(b, _)| b.clone()).collect();
        let bin = bins[0].clone();
        let cli_bin = super::quarry_bin();
        let lab = Lab::builder(n)
            .docker(1..=n)
            .build()
            .expect("lab (needs root)");
        for (i, h) in lab.hosts().iter().enumerate() {
            let tags = if router == Some(i + 1) {
                "tags = [\"router\"]\n"
            } else {
                ""
            };
            let path = h.config_dir().join("quarryd.toml");
            std::fs::write(&path, format!("{}{tags}", servers[i].1))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let hosts: Vec<&Host> = lab.hosts().iter().collect();
        let (ok, out, err) = quarryd_in(hosts[0], &bin, &["init"]);
        assert!(ok, "init: {out}{err}");
        let join_token = token_of(&out);
        start_on_engine(&lab, hosts[0], &bin);
        let token = admin_token(hosts[0]);
        let cli = Cli::new(cli_bin, token.clone());
        for (i, h) in hosts.iter().enumerate() {
            if i > 0 {
                let (ok, out, err) = quarryd_in(
                    h,
                    &bins[i],
                    &["join", &hosts[0].addr().to_string(), "--token", &join_token],
                );
                assert!(ok, "join {}: {out}{err}", h.name());
                start_on_engine(&lab, h, &bins[i]);
            }
            let k = i + 1;
            let voters = if k < 3 {
                1
            } else if k < 5 {
                3
            } else {
                5
            };
            poll(
                &format!("{k} servers, {voters} voters, all healthy, {k} grid blocks"),
                Duration::from_secs(30),
                || {
                    let v = cli.json(hosts[0], &["servers"])?;
                    let s = v["servers"].as_array().cloned().unwrap_or_default();
                    let ok = s.len() == k
                        && s.iter().filter(|x| x["role"] == "voter").count() == voters
                        && s.iter().all(|x| x["health"] == "ok");
                    let blocks = cli.json(hosts[0], &["grid"])?["grid"]["blocks"]
                        .as_object()
                        .map(|b| b.len());
                    if ok && blocks == Some(k) {
                        Ok(())
                    } else {
                        Err(format!("{v}"))
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
        }
        eprintln!("cluster of {n} up in {:.1}s", secs(t0));
        Cluster {
            lab,
            bin,
            cli,
            token,
            join_token,
            router,
        }
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> Vec<&Host> {
        self.lab.hosts().iter().collect()
    }

    /// The host called `name`.
    pub fn host_named(&self, name: &str) -> &Host {
        self.lab
            .hosts()
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The router host.
    pub fn router_host(&self) -> &Host {
        self.lab.host(self.router.expect("a cluster with a router"))
    }

    /// Panics with `e` and the tail of every log.
    pub fn fail(&self, e: impl std::fmt::Display) -> ! {
        panic!("{e}\n{}", self.lab.logs_tail(40))
    }

    /// The leader, as `ask` sees it.
    pub fn leader(&self, ask: &Host) -> Option<String> {
        leader_of(&self.cli, ask)
    }

    /// Moves Raft leadership to `name` (`quarry servers lead`) and waits until every server
    /// names it.
    pub fn lead(&self, name: &str) {
        let hosts = self.hosts();
        poll(
            &format!("every server to name {name} the leader"),
            Duration::from_secs(30),
            || {
                let seen: Vec<Option<String>> = hosts.iter().map(|h| self.leader(h)).collect();
                if seen.iter().all(|l| l.as_deref() == Some(name)) {
                    return Ok(());
                }
                let out = self.cli.run(hosts[0], &["servers", "lead", name]);
                Err(format!("leaders {seen:?}; servers lead: {}", text(&out)))
            },
        )
        .unwrap_or_else(|e| self.fail(e));
    }
}

/// The path of host `h`'s engine socket.
pub fn docker_socket(h: &Host) -> String {
    h.docker_host()
        .expect("engine")
        .trim_start_matches("unix://")
        .to_owned()
}

/// Start `quarryd run` in `h` on its own engine, and wait until it serves.
pub fn start_on_engine(lab: &Lab, h: &Host, bin: &Path) {
    let spec = ProcessSpec::new("quarryd", bin)
        .args(flags(h))
        .arg("--docker-socket")
        .arg(docker_socket(h))
        .arg("run");
    h.spawn(spec).expect("spawn quarryd run");
    h.wait_for_log("quarryd", "quarryd running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs_tail(30)));
}

/// A command's stdout and stderr, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A stack's running containers on an engine (full ids).
pub fn engine_containers(h: &Host, stack: &str) -> BTreeSet<String> {
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
pub fn engine_images(h: &Host, stack: &str) -> (BTreeSet<String>, BTreeSet<String>) {
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

/// `quarry ps -s STACK --json` rows, asked of `h`.
pub fn ps_rows(cli: &Cli, h: &Host, stack: &str) -> Result<Vec<Value>, String> {
    let v = cli.json(h, &["ps", "-s", stack])?;
    Ok(v["rows"].as_array().cloned().unwrap_or_default())
}

/// (server, container id) of every row, and whether every row runs healthy.
pub fn ps_containers(rows: &[Value]) -> (BTreeSet<(String, String)>, bool) {
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
pub fn engines(lab: &Lab, stack: &str) -> BTreeSet<(String, String)> {
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
pub fn converged(
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

/// GET http://addr/path from this machine with this Host header (the address itself when
/// `None`): the body of a 200 answer; anything else (no connection, another status, a
/// timeout) is an `Err` saying what happened.
pub fn http_get_host(addr: &str, host: Option<&str>, path: &str) -> Result<String, String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    // Longer than the example's own retries of its service (about 5 s).
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let host = host.unwrap_or(addr);
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_owned())
    } else {
        let status = head.lines().next().unwrap_or("no status line");
        Err(format!(
            "{host} via {addr}{path}: {status:?} {:?}",
            body.trim()
        ))
    }
}

/// GET http://addr/path from this machine: the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    http_get_host(addr, None, path)
}

/// The visit number in a guestbook answer (`hello from web-r1-0: visit 7`).
pub fn visit(body: &str) -> Option<u64> {
    body.trim().rsplit("visit ").next()?.trim().parse().ok()
}

/// Every web replica answers on its committed address, and the counter rises across them.
pub fn counter_rises(lab: &Lab, rows: &[Value]) -> Vec<u64> {
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

/// Copy the example to `dir` (links to the static busybox become copies), changing
/// quarry.yml with `edit`.
pub fn example_copy(dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
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

/// The leader, as `h`'s `quarry status` names it.
pub fn leader_of(cli: &Cli, h: &Host) -> Option<String> {
    cli.json(h, &["status"]).ok()?["raft"]["leader"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// A deploy's progress, asked of `h`'s API.
pub fn progress(h: &Host, token: &str, id: &str) -> Result<Value, String> {
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
