//! Shared by the lab self-tests: probes between hosts and the "nothing left" checks.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::time::Duration;

use quarry_tests::registry::{self, RunState};
use quarry_tests::{Host, Lab, ProcessSpec};

/// The `lab` binary, which carries the TCP/UDP echo probes.
pub const LAB_BIN: &str = env!("CARGO_BIN_EXE_lab");

/// Starts TCP and UDP echo servers named `tcp-echo`/`udp-echo` on `port` in host `h`, and
/// waits until both listen.
pub fn serve_echo(h: &Host, port: u16) {
    for proto in ["tcp", "udp"] {
        let name = format!("{proto}-echo");
        h.spawn(ProcessSpec::new(&name, LAB_BIN).args([
            "probe",
            &format!("{proto}-serve"),
            &port.to_string(),
        ]))
        .expect("spawn echo server");
        h.wait_for_log(&name, "listening", Duration::from_secs(10))
            .expect("echo server listening");
    }
}

/// Whether `from` gets an echo back from `to`:`port` over `proto` within `ms` milliseconds.
pub fn reaches(from: &Host, to: &Host, proto: &str, port: u16, ms: u64) -> bool {
    let out = from
        .exec(&[
            LAB_BIN,
            "probe",
            proto,
            &format!("{}:{port}", to.addr()),
            &ms.to_string(),
        ])
        .expect("run probe");
    out.status.success()
}

/// The lab's part of the whole machine: namespaces and links with lab names, DOCKER-USER
/// rules with a lab comment, mounts under the lab's directories, run directories. (The rest
/// of the machine is shared with other users and changes under us.)
pub fn lab_state() -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let lab_name = |n: &str| registry::run_of_name(n).is_some();
    for l in run(&["ip", "netns", "list"]).lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if lab_name(name) {
            s.insert(format!("netns {name}"));
        }
    }
    for l in run(&["ip", "-o", "link", "show"]).lines() {
        if let Some(name) = l.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if lab_name(name) {
                s.insert(format!("link {name}"));
            }
        }
    }
    for l in run(&["iptables", "-w", "-S", "DOCKER-USER"]).lines() {
        if l.contains("quarry-lab-") {
            s.insert(format!("rule {l}"));
        }
    }
    for l in std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
    {
        if let Some(point) = l.split_whitespace().nth(1) {
            if point.starts_with(registry::BASE_DIR) || point.contains("/netns/ql") {
                s.insert(format!("mount {point}"));
            }
        }
    }
    if let Ok(d) = std::fs::read_dir(registry::runs_dir()) {
        for e in d.flatten() {
            s.insert(format!("dir {}", e.path().display()));
        }
    }
    s
}

/// The run an item of [`lab_state`] belongs to, if any.
fn item_run(item: &str) -> Option<String> {
    let known = registry::known_runs();
    known.into_iter().find(|r| item.contains(r.as_str()))
}

/// Asserts the machine is as in `before`, except for items of other runs that are alive
/// (other tests and other people may be running labs at the same time).
pub fn assert_as_before(before: &BTreeSet<String>, ours: &[&str]) {
    let after = lab_state();
    let foreign_live = |item: &String| {
        item_run(item).is_some_and(|r| {
            !ours.contains(&r.as_str()) && registry::run_state(&r) != RunState::Dead
        })
    };
    let added: Vec<&String> = after
        .difference(before)
        .filter(|i| !foreign_live(i))
        .collect();
    let removed: Vec<&String> = before
        .difference(&after)
        .filter(|i| !foreign_live(i))
        .collect();
    // Removed items can only be other runs' (finished meanwhile) or their sweep's work.
    let removed_ours: Vec<&&String> = removed
        .iter()
        .filter(|i| ours.iter().any(|r| i.contains(r)))
        .collect();
    assert!(
        added.is_empty() && removed_ours.is_empty(),
        "the machine is not as before: added {added:#?}, removed {removed_ours:#?}"
    );
    for run in ours {
        let left = registry::leftovers(run);
        assert!(left.is_empty(), "run {run} left behind: {left:#?}");
    }
}

/// Drops a lab and asserts nothing of it is left.
pub fn close_and_check(lab: Lab) {
    let run = lab.run_id().to_string();
    lab.close().expect("lab closes cleanly");
    let left = registry::leftovers(&run);
    assert!(left.is_empty(), "run {run} left behind: {left:#?}");
}
