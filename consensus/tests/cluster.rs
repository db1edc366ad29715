//! In-process cluster tests: each is named after the rule it checks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Kv, KvCommand};
use quarry_consensus::storage::{DiskStorage, StorageOptions};
use quarry_consensus::{ClientError, IdempotencyKey, Role};
use tokio::time::Instant;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(start_paused = true)]
async fn election_yields_one_leader_that_all_nodes_follow() {
    let c = Cluster::new(3, 1);
    let leader = c.wait_for_leader(SECS(10)).await;
    let st = c.statuses().await;
    let leaders: Vec<u64> = st
        .values()
        .filter(|s| s.role == Role::Leader)
        .map(|s| s.id)
        .collect();
    assert_eq!(leaders, vec![leader]);
    for s in st.values() {
        assert_eq!(s.leader, Some(leader));
        assert_eq!(s.voters, vec![1, 2, 3]);
        assert!(s.learners.is_empty());
        assert!(s.term >= 1);
    }
}

#[tokio::test(start_paused = true)]
async fn replication_applies_every_acknowledged_write_on_every_node() {
    let c = Cluster::new(3, 2);
    c.wait_for_leader(SECS(10)).await;
    for i in 0..20 {
        c.put(1, i + 1, i % 5, i).await.expect("write acknowledged");
    }
    let leader = c.wait_for_leader(SECS(10)).await;
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(commit, SECS(10)).await;
    let want = c.local_map(leader).await;
    assert_eq!(want.len(), 5);
    assert_eq!(want[&4], 19);
    for id in 1..=3 {
        assert_eq!(c.local_map(id).await, want, "node {id}");
    }
}

#[tokio::test(start_paused = true)]
async fn killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut c = Cluster::new(3, 3);
    let old = c.wait_for_leader(SECS(10)).await;
    for i in 0..10 {
        c.put(1, i + 1, i, i).await.expect("write acknowledged");
    }
    c.kill(old).await;
    let rest: Vec<u64> = c.running();
    let new = c.wait_for_leader_among(&rest, SECS(10)).await;
    assert_ne!(new, old);
    for i in 10..20 {
        c.put(1, i + 1, i, i)
            .await
            .expect("write acknowledged after failover");
    }
    c.start_node(old);
    let commit = c.handle(new).status().await.unwrap().commit;
    c.wait_applied(commit, SECS(20)).await;
    for id in 1..=3 {
        let m = c.local_map(id).await;
        for i in 0..20 {
            assert_eq!(m.get(&i), Some(&i), "node {id} lost acknowledged write {i}");
        }
    }
}

/// Also checks the heal: one history afterwards.
#[tokio::test(start_paused = true)]
async fn minority_leader_commits_nothing_and_answers_no_quorum_within_two_election_timeouts() {
    let c = Cluster::new(5, 4);
    let old = c.wait_for_leader(SECS(10)).await;
    c.put(1, 1, 0, 100).await.expect("write before the cut");
    let follower = if old == 1 { 2 } else { 1 };
    let minority = [old, follower];
    let majority: Vec<u64> = (1..=5).filter(|x| !minority.contains(x)).collect();
    c.net.partition(&[&minority, &majority]);
    let limit = c.config(old).election_timeout() * 2;

    // Proposals made at the old leader after the cut, at several moments.
    let h = c.handle(old);
    for (n, wait_ms) in [0u64, 400, 900].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let t0 = Instant::now();
        let r = h
            .propose(KvCommand::Put {
                key: 1,
                value: 900 + n as u64,
            })
            .await;
        let took = t0.elapsed();
        assert!(
            matches!(
                r,
                Err(ClientError::NoQuorum) | Err(ClientError::NotLeader { .. })
            ),
            "proposal {n} at the minority leader: {r:?}"
        );
        assert!(
            took <= limit,
            "proposal {n} answered after {took:?} > {limit:?}"
        );
    }
    let r = h.read(|kv: &Kv| kv.map.clone()).await;
    assert!(
        r.is_err(),
        "a linearizable read on the minority side succeeded: {r:?}"
    );

    // The majority moves on.
    let new = c.wait_for_leader_among(&majority, SECS(10)).await;
    c.put(1, 2, 2, 200)
        .await
        .expect("write on the majority side");

    // Heal: one history, the minority's proposals gone.
    c.net.heal();
    let leader = c.wait_for_leader(SECS(20)).await;
    assert!(majority.contains(&leader) || leader == new || minority.contains(&leader));
    c.put(1, 3, 3, 300).await.expect("write after heal");
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(commit, SECS(20)).await;
    let want = c.local_map(leader).await;
    assert_eq!(
        want.get(&1),
        None,
        "a proposal from the minority was applied"
    );
    assert_eq!((want[&0], want[&2], want[&3]), (100, 200, 300));
    for id in 1..=5 {
        assert_eq!(c.local_map(id).await, want, "node {id} has another history");
    }
}

#[tokio::test(start_paused = true)]
async fn all_nodes_killed_and_restarted_from_disk_recover_the_same_state() {
    let mut c = Cluster::new(3, 5);
    c.wait_for_leader(SECS(10)).await;
    for i in 0..30 {
        c.put(1, i + 1, i % 7, i).await.expect("write acknowledged");
    }
    let leader = c.wait_for_leader(SECS(10)).await;
    let before = c.local_map(leader).await;
    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    let leader = c.wait_for_leader(SECS(20)).await;
    c.put(2, 1, 100, 1).await.expect("write after restart");
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(commit, SECS(20)).await;
    let mut want = before.clone();
    want.insert(100, 1);
    for id in 1..=3 {
        assert_eq!(c.local_map(id).await, want, "node {id}");
    }
}

#[tokio::test(start_paused = true)]
async fn lagging_node_catches_up_through_a_snapshot() {
    // Nodes 1 and 2 compact every 10 entries; node 3 never compacts by itself, so a
    // snapshot in its storage can only have come from the leader.
    let c = Cluster::with_config(
        3,
        6,
        Arc::new(|cfg| {
            cfg.snapshot_every = if cfg.id == 3 { 1_000_000 } else { 10 };
        }),
    );
    let mut c = c;
    let leader = c.wait_for_leader(SECS(10)).await;
    if leader == 3 {
        c.kill(3).await;
        c.wait_for_leader_among(&[1, 2], SECS(10)).await;
        c.start_node(3);
    }
    c.net.isolate(3);
    for i in 0..40 {
        c.put(1, i + 1, i, i).await.expect("write acknowledged");
    }
    c.net.heal();
    let leader = c.wait_for_leader(SECS(20)).await;
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(commit, SECS(20)).await;
    let want = c.local_map(leader).await;
    assert_eq!(c.local_map(3).await, want);
    c.stop(3).await;
    let s = DiskStorage::open(
        &c.dir.path().join("n3"),
        &[1, 2, 3],
        StorageOptions::default(),
    )
    .unwrap();
    assert!(
        s.snapshot_metadata().index >= 10,
        "node 3 caught up without a snapshot (snapshot index {})",
        s.snapshot_metadata().index
    );
}

#[tokio::test(start_paused = true)]
async fn retried_proposal_with_the_same_key_applies_once() {
    let mut c = Cluster::new(3, 7);
    let leader = c.wait_for_leader(SECS(10)).await;
    let key = IdempotencyKey { client: 42, seq: 1 };
    let incr = KvCommand::Incr { key: 5 };
    let within = SECS(20);
    assert_eq!(
        c.propose_key(Some(key), incr.clone(), within).await,
        Ok(Some(1))
    );
    assert_eq!(
        c.propose_key(Some(key), incr.clone(), within).await,
        Ok(Some(1))
    );
    // Even through another leader.
    c.kill(leader).await;
    let rest = c.running();
    c.wait_for_leader_among(&rest, SECS(10)).await;
    assert_eq!(
        c.propose_key(Some(key), incr.clone(), within).await,
        Ok(Some(1))
    );
    let next = IdempotencyKey { client: 42, seq: 2 };
    assert_eq!(
        c.propose_key(Some(next), incr.clone(), within).await,
        Ok(Some(2))
    );
    assert_eq!(
        c.propose_key(Some(key), incr.clone(), within).await,
        Err(ClientError::StaleRequest {
            client: 42,
            seq: 1,
            latest: 2
        })
    );
    let l = c.wait_for_leader(SECS(10)).await;
    assert_eq!(c.local_map(l).await.get(&5), Some(&2));
}

#[tokio::test(start_paused = true)]
async fn proposal_at_a_follower_is_refused_with_the_leader_hint() {
    let c = Cluster::new(3, 8);
    let leader = c.wait_for_leader(SECS(10)).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let r = c
        .handle(follower)
        .propose(KvCommand::Put { key: 1, value: 1 })
        .await;
    assert_eq!(
        r,
        Err(ClientError::NotLeader {
            leader: Some(leader)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn proposal_that_cannot_commit_in_time_fails_with_timeout() {
    let c = Cluster::with_config(
        3,
        9,
        Arc::new(|cfg| cfg.request_timeout = Duration::from_millis(300)),
    );
    let leader = c.wait_for_leader(SECS(10)).await;
    c.net.isolate(leader);
    // Within 300 ms the leader has not yet noticed it lost its quorum (that takes over one
    // election timeout), so the proposal sits uncommitted until its deadline.
    let r = c
        .handle(leader)
        .propose(KvCommand::Put { key: 1, value: 1 })
        .await;
    assert_eq!(r, Err(ClientError::Timeout));
}

#[tokio::test(start_paused = true)]
async fn read_at_a_follower_sees_every_acknowledged_write() {
    let c = Cluster::new(3, 10);
    let leader = c.wait_for_leader(SECS(10)).await;
    let follower = if leader == 1 { 2 } else { 1 };
    for i in 0..5 {
        c.put(1, i + 1, 7, i).await.expect("write acknowledged");
        let v = c
            .handle(follower)
            .read(|kv: &Kv| kv.map.get(&7).copied())
            .await;
        assert_eq!(v, Ok(Some(i)), "a read right after write {i} missed it");
    }
}

#[tokio::test(start_paused = true)]
async fn isolated_follower_does_not_disrupt_the_leader_on_return_with_pre_vote() {
    let c = Cluster::new(3, 11);
    let leader = c.wait_for_leader(SECS(10)).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let term = c.handle(leader).status().await.unwrap().term;
    c.net.isolate(follower);
    tokio::time::sleep(SECS(10)).await;
    let st = c.handle(follower).status().await.unwrap();
    assert_eq!(st.term, term, "the isolated follower raised its term");
    assert_ne!(st.role, Role::Leader);
    c.net.heal();
    c.put(1, 1, 1, 1).await.expect("write after heal");
    let after = c.wait_for_leader(SECS(10)).await;
    assert_eq!(after, leader, "the returning follower deposed the leader");
    assert_eq!(c.handle(leader).status().await.unwrap().term, term);
}

#[tokio::test(start_paused = true)]
async fn concurrent_proposals_share_fsynced_writes() {
    let c = Cluster::new(3, 12);
    let leader = c.wait_for_leader(SECS(10)).await;
    let h = c.handle(leader);
    let before = h.stats().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..4u64 {
        for p in 0..64u64 {
            let h = h.clone();
            tasks.spawn(async move {
                h.propose(KvCommand::Put {
                    key: p,
                    value: round,
                })
                .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().expect("proposal acknowledged");
        }
    }
    let after = h.stats().await.unwrap();
    let (writes, entries) = (after.writes - before.writes, after.entries - before.entries);
    eprintln!("leader: {entries} entries in {writes} fsynced writes");
    assert!(entries >= 256, "{entries} entries for 256 proposals");
    assert!(
        entries >= 16 * writes,
        "256 concurrent proposals took {writes} writes ({entries} entries): not batched"
    );
}
