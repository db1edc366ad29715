//! Membership changes and leader transfer on the in-memory network: each test is named after
//! the rule it checks.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Kv, KvCommand};
use quarry_consensus::storage::{DiskStorage, StorageOptions, BOOTSTRAP_INDEX};
use quarry_consensus::{ClientError, Handle, IdempotencyKey, MemberChange, Role};
use raft::Storage;
use tokio::time::Instant;

use MemberChange::{AddLearner, AddVoter, Remove};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn others(of: u64, among: &[u64]) -> Vec<u64> {
    among.iter().copied().filter(|&x| x != of).collect()
}

async fn commit_of(c: &Cluster, id: u64) -> u64 {
    c.handle(id).status().await.unwrap().commit
}

#[tokio::test(start_paused = true)]
async fn joiner_catches_up_by_snapshot_is_promoted_and_a_removed_voter_stays_quiet() {
    // Nodes 1-3 compact every 20 entries; node 4 never compacts by itself, so a snapshot in
    // its storage can only have come from the leader.
    let mut c = Cluster::with_config(
        3,
        21,
        Arc::new(|cfg| cfg.snapshot_every = if cfg.id == 4 { 1_000_000 } else { 20 }),
    );
    let leader = c.wait_for_leader(SECS(10)).await;
    for i in 0..50 {
        c.put(1, i + 1, i, i).await.expect("write acknowledged");
    }
    c.start_joiner(4);
    // Unnamed by any configuration, a joiner never campaigns.
    tokio::time::sleep(c.config(4).election_timeout() * 3).await;
    let st = c.handle(4).status().await.unwrap();
    assert_eq!(
        (st.role, st.term, st.voters.len()),
        (Role::Follower, 0, 0),
        "{st:?}"
    );

    let h = c.handle(leader);
    assert_eq!(
        h.change_membership(vec![AddLearner(4)]).await,
        Ok((vec![1, 2, 3], vec![4]))
    );
    let commit = commit_of(&c, leader).await;
    c.wait_applied_among(&[4], commit, SECS(10)).await;
    assert_eq!(c.local_map(4).await, c.local_map(leader).await);
    let progress = h.status().await.unwrap().progress;
    assert!(
        progress.get(&4).is_some_and(|p| p.matched >= commit),
        "{progress:?}"
    );
    assert!(c.handle(4).status().await.unwrap().progress.is_empty());

    assert_eq!(
        h.change_membership(vec![AddVoter(4)]).await,
        Ok((vec![1, 2, 3, 4], vec![]))
    );
    let gone = others(leader, &[1, 2, 3])[0];
    let mut stay = others(gone, &[1, 2, 3, 4]);
    stay.sort_unstable();
    assert_eq!(
        h.change_membership(vec![Remove(gone)]).await,
        Ok((stay.clone(), vec![]))
    );
    let term = h.status().await.unwrap().term;
    for i in 50..80 {
        c.put(1, i + 1, i, i)
            .await
            .expect("write after the changes");
    }
    // The removed node, still running, must not disturb the others for a while.
    tokio::time::sleep(c.config(gone).election_timeout() * 6).await;
    c.put(1, 81, 80, 80).await.expect("write after the wait");
    let st = h.status().await.unwrap();
    assert_eq!(
        (st.role, st.term),
        (Role::Leader, term),
        "the removed node disturbed the leader"
    );
    assert!(!st.progress.contains_key(&gone));
    let commit = commit_of(&c, leader).await;
    c.wait_applied_among(&stay, commit, SECS(10)).await;
    let want = c.local_map(leader).await;
    assert_eq!(want.len(), 81);
    for &id in &stay {
        assert_eq!(c.local_map(id).await, want, "node {id}");
        assert_eq!(c.handle(id).status().await.unwrap().voters, stay);
    }

    c.stop(4).await;
    let s = DiskStorage::open(&c.dir.path().join("n4"), &[], StorageOptions::default()).unwrap();
    assert!(
        s.snapshot_metadata().index > BOOTSTRAP_INDEX,
        "node 4 caught up without a snapshot"
    );
    let mut voters = s.initial_state().unwrap().conf_state.voters;
    voters.sort_unstable();
    assert_eq!(voters, stay);
}

#[tokio::test(start_paused = true)]
async fn several_changes_at_once_go_through_joint_consensus_and_leave_it() {
    let mut c = Cluster::new(3, 22);
    let leader = c.wait_for_leader(SECS(10)).await;
    c.put(1, 1, 1, 1).await.expect("write acknowledged");
    c.start_joiner(4);
    c.start_joiner(5);
    let h = c.handle(leader);
    // A second change while one is in flight is refused.
    let (first, second) = tokio::join!(
        h.change_membership(vec![AddLearner(4), AddLearner(5)]),
        h.change_membership(vec![AddLearner(6)])
    );
    assert_eq!(first, Ok((vec![1, 2, 3], vec![4, 5])));
    assert_eq!(second, Err(ClientError::MembershipChangeInProgress));

    let old = others(leader, &[1, 2, 3]);
    let (voters, learners) = h
        .change_membership(vec![
            AddVoter(4),
            AddVoter(5),
            Remove(old[0]),
            Remove(old[1]),
        ])
        .await
        .expect("joint change");
    let mut want_voters = vec![leader, 4, 5];
    want_voters.sort_unstable();
    assert_eq!((voters, learners), (want_voters.clone(), vec![]));
    let st = h.status().await.unwrap();
    assert_eq!(st.voters, want_voters, "still joint: {st:?}");
    // The old voters are gone for good: the new configuration commits without them.
    for &o in &old {
        c.kill(o).await;
    }
    c.put(1, 2, 2, 2)
        .await
        .expect("write in the new configuration");
    let commit = commit_of(&c, leader).await;
    c.wait_applied_among(&want_voters, commit, SECS(10)).await;
    let want = c.local_map(leader).await;
    for &id in &want_voters {
        assert_eq!(c.local_map(id).await, want, "node {id}");
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_changes_are_refused_and_only_the_leader_changes_membership() {
    let c = Cluster::new(3, 23);
    let leader = c.wait_for_leader(SECS(10)).await;
    let follower = others(leader, &[1, 2, 3])[0];
    let h = c.handle(leader);
    for bad in [vec![Remove(leader)], vec![AddLearner(leader)], vec![]] {
        let r = h.change_membership(bad.clone()).await;
        assert!(
            matches!(r, Err(ClientError::InvalidMembership(_))),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(
        c.handle(follower)
            .change_membership(vec![AddLearner(4)])
            .await,
        Err(ClientError::NotLeader {
            leader: Some(leader)
        })
    );
    assert!(matches!(
        h.transfer_leader(9).await,
        Err(ClientError::InvalidMembership(_))
    ));
    assert_eq!(
        c.handle(follower).transfer_leader(follower).await,
        Err(ClientError::NotLeader {
            leader: Some(leader)
        })
    );
    // Nothing changed.
    assert_eq!(h.status().await.unwrap().voters, vec![1, 2, 3]);
    c.put(1, 1, 1, 1).await.expect("write after the refusals");
}

#[tokio::test(start_paused = true)]
async fn leader_transfer_hands_leadership_to_the_chosen_voter() {
    let c = Cluster::new(3, 24);
    let leader = c.wait_for_leader(SECS(10)).await;
    c.put(1, 1, 1, 1).await.expect("write acknowledged");
    for to in others(leader, &[1, 2, 3]) {
        let from = c.wait_for_leader(SECS(10)).await;
        assert_eq!(c.handle(from).transfer_leader(to).await, Ok(()));
        assert_eq!(c.wait_for_leader(SECS(10)).await, to);
        let st = c.handle(to).status().await.unwrap();
        assert_eq!(st.role, Role::Leader);
        c.put(1, to + 10, to, to)
            .await
            .expect("write after transfer");
    }
}

/// Puts through whichever of `handles` leads, following hints, until `within` passes.
async fn put_via(
    handles: &BTreeMap<u64, Handle<Kv>>,
    key: IdempotencyKey,
    cmd: KvCommand,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut target = *handles.keys().next().unwrap();
    while Instant::now() < deadline {
        match handles[&target].propose_with_key(key, cmd.clone()).await {
            Ok(_) => return true,
            Err(ClientError::NotLeader { leader: Some(l) }) if handles.contains_key(&l) => {
                target = l
            }
            Err(_) => {
                target = handles
                    .keys()
                    .copied()
                    .find(|&x| x > target)
                    .unwrap_or(*handles.keys().next().unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    false
}

#[tokio::test(start_paused = true)]
async fn membership_changes_under_write_load_lose_no_acknowledged_write() {
    let mut c = Cluster::with_config(3, 25, Arc::new(|cfg| cfg.snapshot_every = 50));
    let first = c.wait_for_leader(SECS(10)).await;
    c.start_joiner(4);
    let handles: BTreeMap<u64, Handle<Kv>> = (1..=4).map(|id| (id, c.handle(id))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (handles, stop, acked) = (handles.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = w * 100_000 + seq;
                let ok = put_via(
                    &handles,
                    IdempotencyKey { client: w, seq },
                    KvCommand::Put { key, value: seq },
                    SECS(20),
                )
                .await;
                if ok {
                    acked.lock().unwrap().push((key, seq));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = c.wait_for_leader_among(&[1, 2, 3], SECS(10)).await;
    assert_eq!(
        c.handle(l).change_membership(vec![AddLearner(4)]).await,
        Ok((vec![1, 2, 3], vec![4]))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = c.wait_for_leader_among(&[1, 2, 3, 4], SECS(10)).await;
    assert_eq!(
        c.handle(l).change_membership(vec![AddVoter(4)]).await,
        Ok((vec![1, 2, 3, 4], vec![]))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Hand leadership to the newcomer, then remove the first leader.
    let l = c.wait_for_leader_among(&[1, 2, 3, 4], SECS(10)).await;
    assert_eq!(c.handle(l).transfer_leader(4).await, Ok(()));
    let mut stay = others(first, &[1, 2, 3, 4]);
    stay.sort_unstable();
    assert_eq!(
        c.handle(4).change_membership(vec![Remove(first)]).await,
        Ok((stay.clone(), vec![]))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    c.kill(first).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40,
        "only {} writes acknowledged",
        acked.len()
    );
    let leader = c.wait_for_leader_among(&stay, SECS(10)).await;
    let commit = commit_of(&c, leader).await;
    c.wait_applied_among(&stay, commit, SECS(10)).await;
    for &id in &stay {
        let m = c.local_map(id).await;
        let lost: Vec<_> = acked.iter().filter(|(k, v)| m.get(k) != Some(v)).collect();
        assert!(
            lost.is_empty(),
            "node {id} lost acknowledged writes {lost:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn restart_after_a_membership_change_restores_the_configuration() {
    let mut c = Cluster::new(3, 26);
    let leader = c.wait_for_leader(SECS(10)).await;
    for i in 0..10 {
        c.put(1, i + 1, i, i).await.expect("write acknowledged");
    }
    c.start_joiner(4);
    let h = c.handle(leader);
    h.change_membership(vec![AddLearner(4)]).await.unwrap();
    h.change_membership(vec![AddVoter(4)]).await.unwrap();
    let gone = others(leader, &[1, 2, 3])[0];
    let mut stay = others(gone, &[1, 2, 3, 4]);
    stay.sort_unstable();
    h.change_membership(vec![Remove(gone)]).await.unwrap();
    let commit = commit_of(&c, leader).await;
    c.wait_applied_among(&stay, commit, SECS(10)).await;
    let before = c.local_map(leader).await;
    c.kill(gone).await;
    for &id in &stay {
        c.stop(id).await;
    }
    // On disk, each member's configuration is the latest one, not the founding one.
    for &id in &stay {
        let s = DiskStorage::open(
            &c.dir.path().join(format!("n{id}")),
            &[],
            StorageOptions::default(),
        )
        .unwrap();
        let cs = s.initial_state().unwrap().conf_state;
        let voters: BTreeSet<u64> = cs.voters.iter().copied().collect();
        assert_eq!(voters, stay.iter().copied().collect(), "node {id}");
    }
    for &id in &stay {
        c.start_node(id);
    }
    for &id in &stay {
        assert_eq!(c.handle(id).status().await.unwrap().voters, stay);
    }
    let leader = c.wait_for_leader_among(&stay, SECS(20)).await;
    c.put(2, 1, 100, 1).await.expect("write after restart");
    let commit = commit_of(&c, leader).await;
    c.wait_applied_among(&stay, commit, SECS(10)).await;
    let mut want = before;
    want.insert(100, 1);
    for &id in &stay {
        assert_eq!(c.local_map(id).await, want, "node {id}");
    }
}

#[tokio::test(start_paused = true)]
async fn removed_node_that_missed_its_removal_does_not_disturb_the_cluster() {
    let c = Cluster::new(3, 27);
    let leader = c.wait_for_leader(SECS(10)).await;
    let gone = others(leader, &[1, 2, 3])[0];
    let stay = others(gone, &[1, 2, 3]);
    c.put(1, 1, 1, 1).await.expect("write acknowledged");
    // Cut off, it never hears of its removal.
    c.net.isolate(gone);
    let h = c.handle(leader);
    assert_eq!(
        h.change_membership(vec![Remove(gone)]).await,
        Ok((stay.clone(), vec![]))
    );
    let term = h.status().await.unwrap().term;
    c.net.heal();
    // It still believes it is a voter and, hearing no leader, keeps trying to campaign.
    tokio::time::sleep(c.config(gone).election_timeout() * 10).await;
    let st = c.handle(gone).status().await.unwrap();
    assert!(
        st.voters.contains(&gone),
        "it learnt of its removal: {st:?}"
    );
    assert_ne!(st.role, Role::Leader);
    c.put(1, 2, 2, 2)
        .await
        .expect("write with the removed node around");
    let now = h.status().await.unwrap();
    assert_eq!(
        (now.role, now.term),
        (Role::Leader, term),
        "the removed node disturbed the leader"
    );
    assert_eq!(c.wait_for_leader_among(&stay, SECS(10)).await, leader);
}
