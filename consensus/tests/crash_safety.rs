//! Crash safety: a node "crashes" (its storage refuses to go on, as a killed process would)
//! before and after each write of its `Ready` handling, restarts from its file, and the
//! invariants hold: its storage opens (no hard state past the log), no acknowledged write is
//! lost, and all nodes end with one state. Negative control: the same run with the hard state
//! written before the entries is caught.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Cluster;
use quarry_consensus::storage::{CrashStage, StoreError, WritePoint};
use quarry_consensus::NodeError;
use tokio::time::Instant;

const ROUNDS: u64 = 12;
const PUTS_PER_ROUND: usize = 12;

/// Which write of which node crashes, and at which stage.
struct Plan {
    target: u64,
    armed: bool,
    /// Crash at the n-th write of the target from arming (1 = the next one), or at the first
    /// write after it that has the planned stage.
    countdown: u64,
    stage: CrashStage,
    last_seq: u64,
    fired: Vec<WritePoint>,
}

fn hook(plan: &Arc<Mutex<Plan>>, id: u64) -> quarry_consensus::storage::CrashHook {
    let plan = plan.clone();
    Arc::new(move |p: &WritePoint| {
        let mut plan = plan.lock().unwrap();
        if plan.target != id || !plan.armed {
            return false;
        }
        if p.seq != plan.last_seq {
            plan.last_seq = p.seq;
            plan.countdown = plan.countdown.saturating_sub(1);
        }
        if plan.countdown == 0 && p.stage == plan.stage {
            plan.armed = false;
            plan.fired.push(p.clone());
            return true;
        }
        false
    })
}

struct Outcome {
    crashes: usize,
    fired: Vec<WritePoint>,
    /// The first restart that failed, and why.
    refused: Option<NodeError>,
    acked: Vec<(u64, u64)>,
}

async fn run(stage: CrashStage, hs_first: bool, seed: u64) -> Outcome {
    let plan = Arc::new(Mutex::new(Plan {
        target: 0,
        armed: false,
        countdown: 0,
        stage,
        last_seq: u64::MAX,
        fired: Vec::new(),
    }));
    let p2 = plan.clone();
    let mut c = Cluster::with_config(
        3,
        seed,
        Arc::new(move |cfg| {
            cfg.snapshot_every = 15;
            cfg.storage.crash_hook = Some(hook(&p2, cfg.id));
            cfg.storage.unsafe_hard_state_first = hs_first;
        }),
    );
    c.wait_for_leader(Duration::from_secs(10)).await;
    let mut acked = Vec::new();
    let mut seq = 0u64;
    let mut refused = None;
    'rounds: for round in 0..ROUNDS {
        let leader = c.wait_for_leader(Duration::from_secs(20)).await;
        let follower = (1..=3).find(|&x| x != leader).unwrap();
        let target = if round % 3 == 2 { leader } else { follower };
        if target == follower && round % 3 == 0 {
            // Let it lag so that it gets entries and a commit index in one Ready.
            c.net.isolate(target);
            for _ in 0..4 {
                seq += 1;
                if c.put(1, seq, seq, seq).await.is_ok() {
                    acked.push((seq, seq));
                }
            }
        }
        {
            let mut p = plan.lock().unwrap();
            p.target = target;
            p.countdown = 1 + round % 3;
            p.armed = true;
            p.last_seq = u64::MAX;
        }
        c.net.heal();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut crashed = false;
        for _ in 0..PUTS_PER_ROUND {
            if Instant::now() > deadline {
                break;
            }
            seq += 1;
            if c.put(1, seq, seq, seq).await.is_ok() {
                acked.push((seq, seq));
            }
            if let Some(r) = c.reap(target).await {
                assert!(
                    matches!(r, Err(NodeError::Store(StoreError::InjectedCrash { .. }))),
                    "node {target} stopped for another reason: {r:?}"
                );
                crashed = true;
                break;
            }
        }
        plan.lock().unwrap().armed = false;
        if !crashed {
            continue;
        }
        if let Err(e) = c.try_start_node(target) {
            refused = Some(e);
            break 'rounds;
        }
    }
    let fired = plan.lock().unwrap().fired.clone();
    let crashes = fired.len();
    if refused.is_none() {
        c.net.heal();
        let leader = c.wait_for_leader(Duration::from_secs(20)).await;
        seq += 1;
        c.put(1, seq, 0, seq).await.expect("a final write");
        acked.push((0, seq));
        let commit = c.handle(leader).status().await.unwrap().commit;
        c.wait_applied(commit, Duration::from_secs(30)).await;
        let want = c.local_map(leader).await;
        for &(k, v) in &acked {
            assert_eq!(want.get(&k), Some(&v), "acknowledged write {k}={v} lost");
        }
        for id in 1..=3 {
            assert_eq!(c.local_map(id).await, want, "node {id} has another state");
        }
    }
    Outcome {
        crashes,
        fired,
        refused,
        acked,
    }
}

fn check_correct(stage: CrashStage) {
    for seed in [11, 12] {
        let o = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(stage, false, seed));
        eprintln!(
            "seed {seed} {stage:?}: {} crashes, {} writes acknowledged; crashed writes: {:?}",
            o.crashes,
            o.acked.len(),
            o.fired
                .iter()
                .map(|p| format!(
                    "{:?} snapshot {} entries {:?} commit {} last {}",
                    p.kind, p.snapshot, p.entries, p.commit, p.last_index_before
                ))
                .collect::<Vec<_>>()
        );
        assert!(
            o.refused.is_none(),
            "seed {seed}: a restart was refused: {:?}",
            o.refused
        );
        assert!(
            o.crashes as u64 >= ROUNDS / 2,
            "seed {seed}: only {} of {ROUNDS} planned crashes happened",
            o.crashes
        );
        assert!(
            o.acked.len() >= 20,
            "seed {seed}: only {} writes acknowledged",
            o.acked.len()
        );
    }
}

#[test]
fn crash_before_each_write_loses_no_acknowledged_write() {
    check_correct(CrashStage::BeforeCommit);
}

#[test]
fn crash_after_each_write_loses_no_acknowledged_write() {
    check_correct(CrashStage::AfterCommit);
}

#[test]
fn hard_state_before_entries_is_caught_after_a_crash() {
    let o = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(run(CrashStage::Between, true, 11));
    match o.refused {
        Some(NodeError::Store(StoreError::Corrupt { what, .. })) => {
            assert!(what.contains("points past"), "{what}")
        }
        other => panic!(
            "writing the hard state first was not caught ({} crashes): {other:?}",
            o.crashes
        ),
    }
}
