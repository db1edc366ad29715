//! Nothing of a lab is left behind: after a normal run, after a test that panics midway, and
//! after its process dies without any cleanup (the next lab sweeps it). Concurrent labs, in
//! threads and in processes, never share a subnet.

mod common;

use std::process::Command;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::{assert_as_before, lab_state, LAB_BIN};
use quarry_tests::registry::{self, RunState};
use quarry_tests::sweep;
use quarry_tests::{busybox_context, poll, Lab, ProcessSpec};

/// Set in the environment of the child process that aborts.
const CHILD_ENV: &str = "QUARRY_LAB_TEST_CHILD";

/// Builds a lab with everything a lab can hold: engines with a running container, sshd, a
/// spawned process, a partition and a cut host.
fn busy_lab() -> Lab {
    let lab = Lab::builder(3).docker([1]).sshd([2]).build().expect("lab");
    let ctx = lab.dir().join("image");
    busybox_context(&ctx).expect("context");
    let h1 = lab.host(1);
    h1.build_image(&ctx, "quarry-lab-bb:1").expect("build");
    h1.docker(&[
        "run",
        "-d",
        "--name",
        "idle",
        "quarry-lab-bb:1",
        "sleep",
        "600",
    ])
    .expect("container");
    lab.host(3)
        .spawn(ProcessSpec::new("echo", LAB_BIN).args(["probe", "tcp-serve", "7272"]))
        .expect("spawn");
    lab.partition(&[1], &[2]).expect("partition");
    lab.cut(3).expect("cut");
    lab
}

#[test]
fn a_dropped_lab_leaves_the_machine_as_before() {
    let before = lab_state();
    let lab = busy_lab();
    let run = lab.run_id().to_string();
    assert!(!sweep::leftovers(&run).is_empty(), "a live lab is visible");
    drop(lab);
    assert_as_before(&before, &[&run]);
}

#[test]
fn a_test_that_panics_midway_leaves_nothing() {
    let before = lab_state();
    let (tx, rx) = mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let lab = busy_lab();
        tx.send(lab.run_id().to_string()).expect("send run id");
        panic!("the test fails midway while holding its lab");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let run = rx.recv().expect("run id");
    assert_as_before(&before, &[&run]);
}

/// Not a test on its own: the child process of
/// `a_lab_whose_process_died_is_swept_by_the_next_lab`. It builds a busy lab, prints its run
/// id and aborts, so no destructor runs.
#[test]
#[ignore = "child process of a_lab_whose_process_died_is_swept_by_the_next_lab"]
fn child_builds_a_lab_and_dies_without_cleanup() {
    // `cargo test -- --ignored` must not abort the whole binary: only run as the child.
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let lab = busy_lab();
    println!("RUN={}", lab.run_id());
    std::process::abort();
}

#[test]
fn a_lab_whose_process_died_is_swept_by_the_next_lab() {
    let before = lab_state();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "child_builds_a_lab_and_dies_without_cleanup",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the child aborts");
    // The test harness prints "test NAME ... " before the child's own output, on one line.
    let dead = stdout
        .split("RUN=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!(
                "child printed no run id; stdout {stdout}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    let left = sweep::leftovers(&dead);
    assert!(
        left.iter().any(|l| l.starts_with("namespace"))
            && left.iter().any(|l| l.starts_with("process"))
            && left.iter().any(|l| l.starts_with("iptables rule")),
        "the aborted child left its lab behind: {left:#?}"
    );
    assert_eq!(registry::run_state(&dead), RunState::Dead);

    let next = Lab::new(1).expect("the next lab sweeps first");
    // Another test thread's lab may be sweeping the same run at the same moment: wait for
    // whichever finishes.
    poll("the dead run to be swept", Duration::from_secs(60), || {
        let left = sweep::leftovers(&dead);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:#?}"))
        }
    })
    .expect("swept");
    let next_run = next.run_id().to_string();
    drop(next);
    assert_as_before(&before, &[&dead, &next_run]);
}

#[test]
fn concurrent_labs_in_threads_and_processes_get_distinct_subnets() {
    let before = lab_state();
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                Lab::new(2).expect("lab")
            })
        })
        .collect();
    barrier.wait();
    let procs: Vec<_> = (0..2)
        .map(|_| {
            Command::new(LAB_BIN)
                .args(["up", "1"])
                .output()
                .expect("lab up")
        })
        .collect();
    let labs: Vec<Lab> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let mut subnets: Vec<String> = labs.iter().map(Lab::subnet).collect();
    let mut runs: Vec<String> = labs.iter().map(|l| l.run_id().to_string()).collect();
    for p in &procs {
        let stdout = String::from_utf8_lossy(&p.stdout);
        assert!(
            p.status.success(),
            "lab up: {stdout} {}",
            String::from_utf8_lossy(&p.stderr)
        );
        let first: Vec<&str> = stdout
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // "lab RUN  subnet 10.77.N.0/24  bridge ..."
        runs.push(first[1].to_string());
        subnets.push(first[3].to_string());
    }
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), subnets.len(), "subnets shared: {subnets:?}");

    // Hosts of different labs are on different bridges: they do not see each other.
    let a = labs[0].host(1);
    let b = labs[1].host(1);
    let ping = a
        .exec(&[LAB_BIN, "probe", "udp", &format!("{}:9", b.addr()), "300"])
        .expect("probe");
    assert!(!ping.status.success(), "labs are isolated from each other");

    for run in &runs[3..] {
        assert_eq!(
            registry::run_state(run),
            RunState::Kept,
            "`lab up` keeps its run"
        );
        let down = Command::new(LAB_BIN)
            .args(["down", run])
            .output()
            .expect("lab down");
        assert!(
            down.status.success(),
            "{}",
            String::from_utf8_lossy(&down.stdout)
        );
    }
    drop(labs);
    let ours: Vec<&str> = runs.iter().map(String::as_str).collect();
    assert_as_before(&before, &ours);
}
