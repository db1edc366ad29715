//! Who votes: the rule and the pure planner the leader's reconciler runs.
//!
//! The rule (DESIGN.md), counted on the *committed* server records: 1 voter while the cluster
//! has 1–2 servers, 3 with 3–4, 5 from 5 on; every other server is a learner, so every server
//! holds the state.
//!
//! [`plan`] turns what the leader sees (the committed servers, Raft's current configuration and
//! each peer's replication progress) into one step: nothing, one joint configuration change
//! (promotions, demotions, new learners and removals together, one `ConfChangeV2`), or a
//! leadership transfer when the leader's own server is being removed (a leader never removes
//! itself; its successor does).
//!
//! Preferences, in order: keep the current voters; promote only learners that have caught up
//! (active, and within [`CATCH_UP_LAG`] entries of the commit index); never go to an even
//! number of voters on the way up (2 voters need both; 1 is as safe and cheaper), so growing
//! from 1 to 3 waits until two learners have caught up; when there are too many voters,
//! demote inactive ones first, then the highest ids, never the leader.
//!
//! Left out: replacing a voter that is down but still a member (the self-healing quorum that
//! gossip's liveness will drive). Until then a dead voter stays a voter until it is removed.

use std::collections::{BTreeMap, BTreeSet};

/// How far behind the commit index a learner may be and still count as caught up.
pub const CATCH_UP_LAG: u64 = 64;

/// The voter count for a cluster of `servers` servers.
pub fn voters_for(servers: usize) -> usize {
    match servers {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

/// A peer's replication progress, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The highest log index known to be on the peer.
    pub matched: u64,
    /// Whether the leader heard from it within the last election timeout.
    pub active: bool,
}

/// What the leader sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The leader's Raft id.
    pub leader: u64,
    /// Whether the leader's record was removed (it is leaving). A leader that is not among
    /// `servers` and was not removed has simply not applied its own record yet (the founder's
    /// first moments): nothing is done then.
    pub leader_removed: bool,
    /// The Raft ids of the committed server records.
    pub servers: BTreeSet<u64>,
    /// Raft's current voters.
    pub voters: BTreeSet<u64>,
    /// Raft's current learners.
    pub learners: BTreeSet<u64>,
    /// Progress per peer (the leader's own entry is ignored).
    pub progress: BTreeMap<u64, Progress>,
    /// The commit index.
    pub commit: u64,
}

/// One change of a joint configuration change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Make (or keep) this id a voter.
    AddVoter(u64),
    /// Make this id a learner (a new one, or a demoted voter).
    AddLearner(u64),
    /// Take this id out of the configuration.
    Remove(u64),
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The configuration is as it should be (or cannot improve yet).
    Keep,
    /// Apply these changes as one joint change.
    Change(Vec<Change>),
    /// The leader's server is leaving: hand leadership to this voter first.
    TransferLeader(u64),
}

impl View {
    fn caught_up(&self, id: u64) -> bool {
        id == self.leader
            || self
                .progress
                .get(&id)
                .is_some_and(|p| p.active && p.matched + CATCH_UP_LAG >= self.commit)
    }

    fn active(&self, id: u64) -> bool {
        id == self.leader || self.progress.get(&id).is_some_and(|p| p.active)
    }
}

/// The largest allowed voter count (1, 3 or 5) that is at most `n`.
fn odd_floor(n: usize) -> usize {
    match n {
        0 => 0,
        1..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

/// The next step toward the rule. Pure.
pub fn plan(v: &View) -> Step {
    let leader_stays = v.servers.contains(&v.leader);
    if v.servers.is_empty() || (!leader_stays && !v.leader_removed) {
        return Step::Keep; // the leader's own record (the founder's) is not applied yet
    }
    let want = voters_for(v.servers.len());

    // Voters that stay candidates for the new voter set: current voters still in the server
    // set; the leader always while it is a member.
    let mut keep: Vec<u64> = v
        .voters
        .iter()
        .copied()
        .filter(|id| v.servers.contains(id))
        .collect();
    if leader_stays && !keep.contains(&v.leader) {
        keep.push(v.leader);
    }
    let eligible: Vec<u64> = v
        .servers
        .iter()
        .copied()
        .filter(|id| !keep.contains(id) && v.learners.contains(id) && v.caught_up(*id))
        .collect();

    let target = if keep.len() >= want {
        want
    } else {
        // Growing: only to an odd count that the caught-up learners can fill now.
        odd_floor((keep.len() + eligible.len()).min(want)).max(keep.len().min(want))
    };

    let mut voters: Vec<u64> = keep.clone();
    if voters.len() > target {
        // Demote: inactive first, then highest ids; never the leader.
        voters.sort_by_key(|id| (*id == v.leader, v.active(*id), std::cmp::Reverse(*id)));
        voters.reverse();
        voters.truncate(target);
    } else {
        voters.extend(eligible.iter().take(target - voters.len()));
    }
    let voters: BTreeSet<u64> = voters.into_iter().collect();

    if !leader_stays {
        // Hand over to a caught-up voter of the new set that already votes; until there is
        // one, grow the new set (the leader stays a voter meanwhile).
        if let Some(&to) = voters
            .iter()
            .find(|id| v.voters.contains(id) && v.caught_up(**id))
        {
            return Step::TransferLeader(to);
        }
    }

    let mut changes = Vec::new();
    for &id in &v.servers {
        let is_voter = v.voters.contains(&id);
        let is_learner = v.learners.contains(&id);
        if voters.contains(&id) {
            if !is_voter {
                changes.push(Change::AddVoter(id));
            }
        } else if !is_learner {
            changes.push(Change::AddLearner(id)); // new, or a demoted voter
        }
    }
    for &id in v.voters.iter().chain(&v.learners) {
        if !v.servers.contains(&id) && id != v.leader {
            changes.push(Change::Remove(id));
        }
    }
    if changes.is_empty() {
        Step::Keep
    } else {
        changes.sort();
        changes.dedup();
        Step::Change(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// A view where every listed peer is active and caught up.
    fn view(leader: u64, servers: &[u64], voters: &[u64], learners: &[u64]) -> View {
        View {
            leader,
            leader_removed: !servers.contains(&leader),
            servers: set(servers),
            voters: set(voters),
            learners: set(learners),
            progress: servers
                .iter()
                .chain(voters)
                .chain(learners)
                .map(|&id| {
                    (
                        id,
                        Progress {
                            matched: 100,
                            active: true,
                        },
                    )
                })
                .collect(),
            commit: 100,
        }
    }

    /// Apply a step's changes to the view's configuration, as Raft would.
    fn apply(v: &mut View, step: &Step) {
        let Step::Change(cs) = step else { return };
        for c in cs {
            match *c {
                Change::AddVoter(id) => {
                    v.learners.remove(&id);
                    v.voters.insert(id);
                }
                Change::AddLearner(id) => {
                    v.voters.remove(&id);
                    v.learners.insert(id);
                }
                Change::Remove(id) => {
                    v.voters.remove(&id);
                    v.learners.remove(&id);
                }
            }
        }
    }

    #[test]
    fn the_rule_is_one_three_five() {
        let counts: Vec<usize> = (1..=8).map(voters_for).collect();
        assert_eq!(counts, [1, 1, 3, 3, 5, 5, 5, 5]);
    }

    #[test]
    fn a_new_server_becomes_a_learner_and_two_servers_keep_one_voter() {
        let v = view(1, &[1, 2], &[1], &[]);
        assert_eq!(plan(&v), Step::Change(vec![Change::AddLearner(2)]));
        let v = view(1, &[1, 2], &[1], &[2]);
        assert_eq!(plan(&v), Step::Keep);
    }

    #[test]
    fn growing_to_three_promotes_two_caught_up_learners_at_once() {
        let v = view(1, &[1, 2, 3], &[1], &[2, 3]);
        assert_eq!(
            plan(&v),
            Step::Change(vec![Change::AddVoter(2), Change::AddVoter(3)])
        );
    }

    #[test]
    fn a_third_server_not_yet_a_learner_joins_as_one_before_anyone_is_promoted() {
        // 3 joined; 2 has caught up, 3 is not in the configuration yet: never 2 voters, and
        // never a voter straight from outside the configuration.
        let v = view(1, &[1, 2, 3], &[1], &[2]);
        assert_eq!(plan(&v), Step::Change(vec![Change::AddLearner(3)]));
    }

    #[test]
    fn a_learner_that_lags_or_is_silent_is_not_promoted() {
        let mut v = view(1, &[1, 2, 3], &[1], &[2, 3]);
        v.progress.insert(
            3,
            Progress {
                matched: 100 - CATCH_UP_LAG - 1,
                active: true,
            },
        );
        assert_eq!(plan(&v), Step::Keep);
        v.progress.insert(
            3,
            Progress {
                matched: 100,
                active: false,
            },
        );
        assert_eq!(plan(&v), Step::Keep);
    }

    #[test]
    fn growing_one_to_five_and_shrinking_back_follows_the_rule_at_every_size() {
        let mut v = view(1, &[1], &[1], &[]);
        for n in 2..=5u64 {
            v.servers.insert(n);
            v.progress.insert(
                n,
                Progress {
                    matched: 100,
                    active: true,
                },
            );
            // At most two steps: add as learner, then promote.
            for _ in 0..2 {
                let s = plan(&v);
                apply(&mut v, &s);
            }
            assert_eq!(plan(&v), Step::Keep, "settled at {n} servers");
            assert_eq!(v.voters.len(), voters_for(n as usize), "{n} servers: {v:?}");
            assert_eq!(v.voters.len() + v.learners.len(), n as usize);
        }
        for n in (2..=5u64).rev() {
            v.servers.remove(&n);
            let s = plan(&v);
            apply(&mut v, &s);
            assert_eq!(plan(&v), Step::Keep, "settled at {} servers", n - 1);
            assert_eq!(v.voters.len(), voters_for(n as usize - 1), "{v:?}");
            assert!(!v.voters.contains(&n) && !v.learners.contains(&n));
        }
        assert_eq!(v.voters, set(&[1]));
    }

    #[test]
    fn shrinking_demotes_inactive_voters_first_and_never_the_leader() {
        // 5 voters, server 5 leaves: 4 servers want 3 voters; 3 is silent.
        let mut v = view(4, &[1, 2, 3, 4], &[1, 2, 3, 4, 5], &[]);
        v.progress.get_mut(&3).expect("3").active = false;
        assert_eq!(
            plan(&v),
            Step::Change(vec![Change::AddLearner(3), Change::Remove(5)])
        );
    }

    #[test]
    fn current_voters_are_kept_over_learners() {
        let v = view(2, &[1, 2, 3, 4, 5, 6], &[1, 2, 3, 4, 5], &[6]);
        assert_eq!(plan(&v), Step::Keep);
    }

    #[test]
    fn a_leader_whose_server_leaves_hands_over_before_it_is_removed() {
        let v = view(1, &[2, 3], &[1, 2, 3], &[]);
        // 2 servers remain: one voter; 1 leads and is leaving: transfer to a caught-up voter.
        assert_eq!(plan(&v), Step::TransferLeader(2));
        // Sole voter leaving: first promote a successor (the leader stays a voter meanwhile).
        let v = view(1, &[2, 3, 4], &[1], &[2, 3, 4]);
        assert_eq!(
            plan(&v),
            Step::Change(vec![
                Change::AddVoter(2),
                Change::AddVoter(3),
                Change::AddVoter(4)
            ])
        );
    }

    #[test]
    fn nothing_is_done_before_any_server_is_committed() {
        let v = view(1, &[], &[1], &[]);
        assert_eq!(plan(&v), Step::Keep);
    }

    #[test]
    fn a_joiner_admitted_before_the_founders_record_does_not_unseat_the_founder() {
        // Only the joiner's record is applied; the founder leads and was never removed.
        let mut v = view(1, &[2], &[1], &[2]);
        v.leader_removed = false;
        assert_eq!(plan(&v), Step::Keep);
    }
}
