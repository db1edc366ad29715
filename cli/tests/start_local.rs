//! `quarry start` / `ps` / `stop` against the real local Docker and a real nginx, on copies of
//! the bundled example under unique stack names (so the tests run side by side). Every test
//! removes its containers, network, nginx, files and images on the way out, also when it fails.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::*;

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
