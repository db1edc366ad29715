//! Clusters over real TCP on loopback, every link through a fault-injecting proxy
//! (`common/tcpnet.rs`): each test is named after the rule it checks.

mod common;
#[path = "common/tcpnet.rs"]
mod tcpnet;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{pad_bytes, Kv, KvCommand};
use quarry_consensus::{MemberChange, Role};
use tcpnet::{put_via, LinkState, TcpCluster};
use tokio::time::Instant;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn seq_map(keys: std::ops::Range<u64>) -> BTreeMap<u64, u64> {
    keys.map(|k| (k, k)).collect()
}

async fn killed_leader_is_replaced_and_restarted_node_catches_up_without_loss(n: u64) {
    let mut c = TcpCluster::new(n, n).await;
    for id in 1..=n {
        c.start_node(id).await;
    }
    let old = c.wait_for_leader(SECS(10)).await;
    for i in 0..20 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    c.kill(old).await;
    let new = c.wait_for_leader(SECS(10)).await;
    assert_ne!(new, old);
    for i in 20..40 {
        c.put(i, i, SECS(10))
            .await
            .expect("write acknowledged after failover");
    }
    c.start_node(old).await;
    for id in 1..=n {
        c.wait_has(id, &seq_map(0..40), SECS(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_three_nodes_killed_leader_is_replaced_without_loss() {
    killed_leader_is_replaced_and_restarted_node_catches_up_without_loss(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_five_nodes_killed_leader_is_replaced_without_loss() {
    killed_leader_is_replaced_and_restarted_node_catches_up_without_loss(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_five_nodes_commit_while_a_peer_accepts_but_never_reads() {
    let mut c = TcpCluster::new(5, 5).await;
    // Connections to node 5 are accepted and never read.
    c.set_links_to(5, LinkState::Stall);
    for id in 1..=4 {
        c.start_node(id).await;
    }
    c.wait_for_leader(SECS(10)).await;
    let started = Instant::now();
    for i in 0..300 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    assert!(
        started.elapsed() < SECS(60),
        "300 writes took {:?} with a stalled peer",
        started.elapsed()
    );
    for id in 1..=4 {
        c.wait_has(id, &seq_map(0..300), SECS(20)).await;
    }
}

/// A partition made by the proxies (black holes both ways): the minority's leader commits
/// nothing and learns it within two election timeouts, the majority moves on, and after the
/// heal there is one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_minority_partition_commits_nothing_and_heals_into_one_history() {
    let mut c = TcpCluster::new(5, 5).await;
    for id in 1..=5 {
        c.start_node(id).await;
    }
    let old = c.wait_for_leader(SECS(10)).await;
    c.put(0, 0, SECS(10)).await.expect("write before the cut");
    let follower = if old == 1 { 2 } else { 1 };
    let minority = [old, follower];
    let majority: Vec<u64> = (1..=5).filter(|x| !minority.contains(x)).collect();
    c.partition(&minority, &majority).await;

    let limit = c.config(old).election_timeout() * 2 + Duration::from_millis(500);
    let t0 = Instant::now();
    let r = c
        .handle(old)
        .propose(KvCommand::Put { key: 1, value: 1 })
        .await;
    assert!(r.is_err(), "the minority leader committed: {r:?}");
    loop {
        let st = c.handle(old).status().await.unwrap();
        if st.role != Role::Leader {
            break;
        }
        assert!(
            t0.elapsed() < limit,
            "the minority leader did not step down within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = c.wait_for_leader_among(&majority, SECS(10)).await;
    assert!(majority.contains(&new));
    let majority_handles: BTreeMap<_, _> = c
        .handles()
        .into_iter()
        .filter(|(id, _)| majority.contains(id))
        .collect();
    for i in 2..12 {
        put_via(&majority_handles, i, i, SECS(10))
            .await
            .expect("write on the majority side");
    }

    c.heal();
    c.wait_for_leader(SECS(20)).await;
    c.put(12, 12, SECS(10)).await.expect("write after heal");
    let mut want = seq_map(2..13);
    want.insert(0, 0);
    for id in 1..=5 {
        c.wait_has(id, &want, SECS(20)).await;
        let m = c.map(id).await;
        assert_eq!(m.get(&1), None, "node {id} applied the minority's proposal");
        assert_eq!(m, want, "node {id} has another history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_all_nodes_restarted_from_disk_keep_every_acknowledged_write() {
    let mut c = TcpCluster::new(3, 3).await;
    c.snapshot_every = 25;
    for id in 1..=3 {
        c.start_node(id).await;
    }
    c.wait_for_leader(SECS(10)).await;
    for i in 0..60 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.start_node(id).await;
    }
    c.wait_for_leader(SECS(10)).await;
    c.put(60, 60, SECS(10)).await.expect("write after restart");
    for id in 1..=3 {
        c.wait_has(id, &seq_map(0..61), SECS(20)).await;
        assert_eq!(c.map(id).await.len(), 61);
    }
}

/// The log is compacted while a follower is down, so it can only catch up through the
/// snapshot lane; the snapshot (over 5 MiB) travels in several chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_follower_behind_a_compacted_log_catches_up_by_a_chunked_snapshot() {
    let mut c = TcpCluster::new(3, 3).await;
    c.snapshot_every = 10;
    for id in 1..=3 {
        c.start_node(id).await;
    }
    let leader = c.wait_for_leader(SECS(10)).await;
    let behind = if leader == 1 { 2 } else { 1 };
    c.kill(behind).await;
    let pad = 5 * quarry_consensus::tcp::SNAPSHOT_CHUNK as u64 + 4321;
    c.handle(leader)
        .propose(KvCommand::Pad { len: pad })
        .await
        .expect("pad acknowledged");
    for i in 0..30 {
        c.put(i, i, SECS(10)).await.expect("write acknowledged");
    }
    c.start_node(behind).await;
    c.wait_has(behind, &seq_map(0..30), SECS(20)).await;
    let got = c
        .handle(behind)
        .read(move |kv: &Kv| kv.pad == pad_bytes(pad))
        .await;
    assert_eq!(
        got,
        Ok(true),
        "the follower's pad differs from the leader's"
    );
}

/// `n` founders and a joiner `n + 1`, under a steady load of 4 writers: the joiner is added
/// as a learner, promoted once caught up, handed the leadership, and the first leader is
/// removed. Every acknowledged write is in the final state of every member.
async fn membership_changes_under_write_load_lose_no_acknowledged_write(n: u64) {
    let joiner = n + 1;
    let mut c = TcpCluster::new(joiner, n).await;
    for id in 1..=joiner {
        c.start_node(id).await;
    }
    let founders: Vec<u64> = (1..=n).collect();
    let first = c.wait_for_leader_among(&founders, SECS(10)).await;
    let handles = c.handles();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (handles, stop, acked) = (handles.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = w * 1_000_000 + seq;
                if put_via(&handles, key, seq, SECS(10)).await.is_ok() {
                    acked.lock().unwrap().insert(key, seq);
                }
            }
        }));
    }
    let acked_now = || acked.lock().unwrap().len();
    let wait_progress = |from: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + SECS(10);
            while acked.lock().unwrap().len() < from + 20 {
                assert!(Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_progress(0).await;

    let mut all = founders.clone();
    all.push(joiner);
    let h = c.handle(first);
    let (voters, learners) = h
        .change_membership(vec![MemberChange::AddLearner(joiner)])
        .await
        .expect("learner added");
    assert_eq!((voters, learners), (founders.clone(), vec![joiner]));
    // Promote once caught up.
    let deadline = Instant::now() + SECS(10);
    loop {
        let st = h.status().await.unwrap();
        if st
            .progress
            .get(&joiner)
            .is_some_and(|p| p.matched >= st.commit)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner did not catch up: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_progress(acked_now()).await;
    let (voters, _) = h
        .change_membership(vec![MemberChange::AddVoter(joiner)])
        .await
        .expect("learner promoted");
    assert_eq!(voters, all);
    wait_progress(acked_now()).await;
    assert_eq!(h.transfer_leader(joiner).await, Ok(()));
    wait_progress(acked_now()).await;
    let stay: Vec<u64> = all.iter().copied().filter(|&x| x != first).collect();
    let (voters, _) = c
        .handle(joiner)
        .change_membership(vec![MemberChange::Remove(first)])
        .await
        .expect("first leader removed");
    assert_eq!(voters, stay);
    wait_progress(acked_now()).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    c.kill(first).await;
    let acked = acked.lock().unwrap().clone();
    for &id in &stay {
        c.wait_has(id, &acked, SECS(20)).await;
    }
    let leader = c.wait_for_leader_among(&stay, SECS(10)).await;
    let st = c.handle(leader).status().await.unwrap();
    assert_eq!(st.voters, stay);
    eprintln!(
        "{n}+1 nodes: {} writes acknowledged during the changes, all present",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_three_nodes_membership_changes_under_write_load_lose_no_acknowledged_write() {
    membership_changes_under_write_load_lose_no_acknowledged_write(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_five_nodes_membership_changes_under_write_load_lose_no_acknowledged_write() {
    membership_changes_under_write_load_lose_no_acknowledged_write(5).await;
}
