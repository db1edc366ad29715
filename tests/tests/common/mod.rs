//! Shared by the lab self-tests: probes between hosts and the "nothing left" checks.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::time::Duration;

use quarry_tests::{registry, sweep};
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

/// Asserts the lab's part of the machine is as in `before` as far as runs `ours` go: none of
/// their namespaces, links, rules, mounts or directories exist, and
/// [`sweep::leftovers`] (which also looks at processes, cgroups, `/etc/netns` and subnet
/// claims) finds nothing of them. Items of other runs are ignored: other tests and other
/// people may be running labs on this machine at the same time.
pub fn assert_as_before(before: &BTreeSet<String>, ours: &[&str]) {
    let is_ours = |item: &&String| ours.iter().any(|r| item.contains(r));
    assert!(
        !before.iter().any(|i| is_ours(&i)),
        "runs {ours:?} existed before the test"
    );
    let after = lab_state();
    let left: Vec<&String> = after.iter().filter(is_ours).collect();
    assert!(left.is_empty(), "the machine is not as before: {left:#?}");
    for run in ours {
        let left = sweep::leftovers(run);
        assert!(left.is_empty(), "run {run} left behind: {left:#?}");
    }
}

/// Drops a lab and asserts nothing of it is left.
pub fn close_and_check(lab: Lab) {
    let run = lab.run_id().to_string();
    lab.close().expect("lab closes cleanly");
    let left = sweep::leftovers(&run);
    assert!(left.is_empty(), "run {run} left behind: {left:#?}");
}
