//! The lab's network: hosts reach each other, a cut host reaches no one, a partition splits
//! exactly its two groups, the guard refuses a route that leaves the bridge, and a host's
//! processes can be killed and restarted.

mod common;

use std::time::Duration;

use common::{close_and_check, reaches, serve_echo};
use quarry_tests::{Lab, LabError, ProcessSpec};

const PORT: u16 = 7070;
/// Time a probe that should get through is given (first packets wait for ARP).
const OK_MS: u64 = 3000;
/// Time a probe that should be blocked is given before it counts as blocked.
const BLOCKED_MS: u64 = 700;

#[test]
fn three_hosts_reach_each_other_on_tcp_and_udp() {
    let lab = Lab::new(3).expect("lab");
    for h in lab.hosts() {
        serve_echo(h, PORT);
    }
    for from in lab.hosts() {
        for to in lab.hosts() {
            for proto in ["tcp", "udp"] {
                assert!(
                    reaches(from, to, proto, PORT, OK_MS),
                    "{} does not reach {} on {proto}",
                    from.name(),
                    to.name()
                );
            }
        }
    }
    // Each host has its own hostname, and names resolve through its own /etc/hosts.
    assert_eq!(lab.host(3).sh("hostname").expect("hostname"), "h3\n");
    let hosts = lab.host(1).sh("cat /etc/hosts").expect("read hosts");
    assert!(
        hosts.contains(&format!("{} h3", lab.host(3).addr())),
        "{hosts}"
    );
    close_and_check(lab);
}

#[test]
fn a_cut_host_reaches_no_one_and_no_one_reaches_it_until_healed() {
    let lab = Lab::new(3).expect("lab");
    for h in lab.hosts() {
        serve_echo(h, PORT);
    }
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    assert!(reaches(h1, h2, "tcp", PORT, OK_MS), "before the cut");
    lab.cut(1).expect("cut");
    for other in [h2, h3] {
        for proto in ["tcp", "udp"] {
            assert!(
                !reaches(h1, other, proto, PORT, BLOCKED_MS),
                "cut h1 reaches {}",
                other.name()
            );
            assert!(
                !reaches(other, h1, proto, PORT, BLOCKED_MS),
                "{} reaches cut h1",
                other.name()
            );
        }
    }
    assert!(
        reaches(h2, h3, "tcp", PORT, OK_MS),
        "h2-h3 must be untouched by h1's cut"
    );
    lab.heal(1).expect("heal");
    for other in [h2, h3] {
        assert!(
            reaches(h1, other, "tcp", PORT, OK_MS),
            "healed h1 -> {}",
            other.name()
        );
        assert!(
            reaches(other, h1, "udp", PORT, OK_MS),
            "{} -> healed h1",
            other.name()
        );
    }
    close_and_check(lab);
}

#[test]
fn a_partition_splits_exactly_the_two_groups() {
    let lab = Lab::new(4).expect("lab");
    for h in lab.hosts() {
        serve_echo(h, PORT);
    }
    let (a, b) = ([1, 2], [3]);
    lab.partition(&a, &b).expect("partition");
    for from in lab.hosts() {
        for to in lab.hosts() {
            let (i, j) = (from.index(), to.index());
            let split = (a.contains(&i) && b.contains(&j)) || (b.contains(&i) && a.contains(&j));
            let ms = if split { BLOCKED_MS } else { OK_MS };
            for proto in ["tcp", "udp"] {
                assert_eq!(
                    reaches(from, to, proto, PORT, ms),
                    !split,
                    "h{i} -> h{j} on {proto} while {a:?} | {b:?} (h4 is in neither group)"
                );
            }
        }
    }
    lab.heal_partition().expect("heal");
    assert!(
        reaches(lab.host(1), lab.host(3), "tcp", PORT, OK_MS),
        "after heal"
    );
    assert!(
        reaches(lab.host(3), lab.host(2), "udp", PORT, OK_MS),
        "after heal"
    );
    close_and_check(lab);
}

#[test]
fn the_guard_fails_loudly_when_a_host_route_leaves_the_bridge() {
    let lab = Lab::new(2).expect("lab");
    lab.guard().expect("a fresh lab passes its guard");
    // A more specific route for h2's address that does not go through the bridge. A
    // blackhole route sends nothing anywhere, so this is safe to set up on the machine.
    let target = format!("{}/32", lab.host(2).addr());
    let add = std::process::Command::new("ip")
        .args(["route", "add", "blackhole", &target])
        .status()
        .expect("ip route add");
    assert!(add.success());
    let verdict = lab.guard();
    let heal = lab.heal(2);
    let _ = std::process::Command::new("ip")
        .args(["route", "del", "blackhole", &target])
        .status();
    assert!(
        matches!(verdict, Err(LabError::Guard { .. })),
        "guard accepted a route that leaves the bridge: {verdict:?}"
    );
    assert!(
        matches!(heal, Err(LabError::Guard { .. })),
        "heal must check the guard: {heal:?}"
    );
    lab.guard()
        .expect("guard passes again once the route is gone");
    close_and_check(lab);
}

#[test]
fn a_killed_process_restarts_with_its_spec_and_its_log_keeps_every_start() {
    let lab = Lab::new(2).expect("lab");
    let (h1, h2) = (lab.host(1), lab.host(2));
    h2.spawn(
        ProcessSpec::new("svc", common::LAB_BIN)
            .args(["probe", "tcp-serve", "7171"])
            .env("QUARRY_TEST_MARK", "m1"),
    )
    .expect("spawn");
    h2.wait_for_log("svc", "listening", Duration::from_secs(10))
        .expect("listening");
    assert!(reaches(h1, h2, "tcp", 7171, OK_MS));
    let first = h2.pid("svc").expect("pid");
    let env = std::fs::read(format!("/proc/{first}/environ")).expect("environ");
    assert!(
        String::from_utf8_lossy(&env).contains("QUARRY_TEST_MARK=m1"),
        "the spec's environment reaches the process"
    );

    h2.kill("svc").expect("kill");
    assert!(!h2.is_running("svc").expect("state"));
    assert!(
        !reaches(h1, h2, "tcp", 7171, BLOCKED_MS),
        "killed server still answers"
    );

    let second = h2.restart("svc").expect("restart");
    assert_ne!(first, second);
    quarry_tests::poll(
        "svc to listen after restart",
        Duration::from_secs(10),
        || {
            let log = h2.log("svc");
            match log.matches("listening on tcp 7171").count() {
                2 => Ok(()),
                n => Err(format!("{n} `listening` lines in:\n{log}")),
            }
        },
    )
    .expect("second start logged");
    assert_eq!(h2.log("svc").matches("=== lab: start #").count(), 2);
    assert!(
        reaches(h1, h2, "tcp", 7171, OK_MS),
        "restarted server answers"
    );
    let tails = lab.logs_tail(3);
    assert!(
        tails.contains("--- h2 svc ---") && tails.contains("listening on tcp 7171"),
        "{tails}"
    );
    assert!(
        matches!(h2.kill("nope"), Err(LabError::NoProcess { .. })),
        "unknown process names are an error"
    );
    close_and_check(lab);
}
