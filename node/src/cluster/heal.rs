//! The self-healing quorum's eyes: which servers the leader considers down.
//!
//! A voter is *down* once it has been, without a break for longer than the grace period
//! (`heal_grace` in quarryd.toml, [`DEFAULT_HEAL_GRACE`]), both
//! - not alive in this leader's gossip view (dead, late, or never seen), and
//! - unreachable over RPC: Raft's replication to it is inactive and no Raft message came from
//!   it for [`UNREACHABLE_AFTER`].
//!
//! Either condition lapsing restarts its clock, and the clock lives in the leader's reconciler
//! only: a new leader starts from zero (it never inherits a half-run grace period), and a
//! server that stops leading forgets it. A learner is down as soon as gossip says it is dead
//! (no grace: that only keeps it from being promoted). The planner (`membership.rs`) replaces
//! down voters by caught-up learners; the reconciler logs each replacement and records it in
//! the state ([`VoterReplacement`]) for `quarry status`.
//!
//! [`DownTracker`] is the pure part (time is passed in).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quarry_consensus::Status;

use super::membership::View;
use super::node::Cluster;
use super::state::VoterReplacement;
use crate::gossip::member::{LiveState, Liveness};
use crate::types::ServerId;

/// The default grace period before a down voter is replaced.
pub const DEFAULT_HEAL_GRACE: Duration = Duration::from_secs(120);
/// No Raft message for this long (and inactive replication) makes a peer unreachable.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// Since when each voter has looked down without a break.
#[derive(Debug, Default)]
pub struct DownTracker {
    since: BTreeMap<u64, (Instant, u64)>,
}

impl DownTracker {
    /// One look at the voters: `looks_down` says, per voter, whether it looks down now; `now`
    /// and `now_ms` are the monotonic and wall clocks. Returns the voters that have looked down
    /// for longer than `grace`. Voters not listed are forgotten.
    pub fn observe(
        &mut self,
        now: Instant,
        now_ms: u64,
        grace: Duration,
        looks_down: &BTreeMap<u64, bool>,
    ) -> BTreeSet<u64> {
        self.since
            .retain(|id, _| looks_down.get(id).copied().unwrap_or(false));
        for (&id, &down) in looks_down {
            if down {
                self.since.entry(id).or_insert((now, now_ms));
            }
        }
        self.since
            .iter()
            .filter(|(_, (t, _))| now.duration_since(*t) > grace)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Since when (wall clock, ms) `id` has looked down, if it does.
    pub fn since_ms(&self, id: u64) -> Option<u64> {
        self.since.get(&id).map(|(_, ms)| *ms)
    }

    /// Forget everything (this server no longer leads).
    pub fn clear(&mut self) {
        self.since.clear();
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The leader's healing state: the grace period and the tracker.
#[derive(Debug)]
pub(super) struct Heal {
    grace: Duration,
    tracker: DownTracker,
}

impl Heal {
    pub(super) fn new(grace: Duration) -> Heal {
        Heal {
            grace,
            tracker: DownTracker::default(),
        }
    }

    pub(super) fn clear(&mut self) {
        self.tracker.clear();
    }

    /// The servers the leader considers down now (see the module).
    pub(super) fn down(
        &mut self,
        c: &Cluster,
        status: &Status,
        view: &View,
        liveness: &Liveness,
    ) -> BTreeSet<u64> {
        let state_of = |id: u64| liveness.get(&ServerId(c.name_of(id))).map(|l| l.state);
        let looks_down: BTreeMap<u64, bool> = view
            .voters
            .iter()
            .filter(|&&id| id != status.id)
            .map(|&id| {
                let not_alive = state_of(id) != Some(LiveState::Alive);
                let inactive = !status.progress.get(&id).is_some_and(|p| p.recent_active);
                let silent = !c.peers().heard_within(id, UNREACHABLE_AFTER);
                (id, not_alive && inactive && silent)
            })
            .collect();
        let mut down = self
            .tracker
            .observe(Instant::now(), now_ms(), self.grace, &looks_down);
        down.extend(
            view.learners
                .iter()
                .filter(|&&id| state_of(id) == Some(LiveState::Dead)),
        );
        down
    }

    /// The record of `dead` replaced by `by`: dead since gossip's verdict (or since the
    /// tracker's clock started, when gossip has no verdict).
    pub(super) fn record(
        &self,
        c: &Cluster,
        liveness: &Liveness,
        dead: u64,
        by: u64,
    ) -> VoterReplacement {
        let dead_name = c.name_of(dead);
        let gossip_since = liveness
            .get(&ServerId(dead_name.clone()))
            .filter(|l| l.state == LiveState::Dead)
            .map(|l| l.since_unix_ms);
        let at = now_ms();
        VoterReplacement {
            dead: dead_name,
            dead_raft_id: dead,
            dead_since_unix_ms: gossip_since
                .or_else(|| self.tracker.since_ms(dead))
                .unwrap_or(at),
            by: c.name_of(by),
            by_raft_id: by,
            at_unix_ms: at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looks(pairs: &[(u64, bool)]) -> BTreeMap<u64, bool> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_voter_is_down_only_after_looking_down_longer_than_the_grace_without_a_break() {
        let grace = Duration::from_secs(5);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = DownTracker::default();
        assert!(t
            .observe(at(0), 1000, grace, &looks(&[(2, true), (3, false)]))
            .is_empty());
        assert!(t
            .observe(at(5), 6000, grace, &looks(&[(2, true), (3, false)]))
            .is_empty());
        assert_eq!(
            t.observe(at(6), 7000, grace, &looks(&[(2, true), (3, true)])),
            BTreeSet::from([2])
        );
        assert_eq!(t.since_ms(2), Some(1000));
        assert_eq!(t.since_ms(3), Some(7000));
        // 2 answers once: its clock starts again.
        assert!(t
            .observe(at(7), 8000, grace, &looks(&[(2, false), (3, true)]))
            .is_empty());
        assert!(t
            .observe(at(8), 9000, grace, &looks(&[(2, true), (3, true)]))
            .is_empty());
        assert_eq!(t.since_ms(2), Some(9000));
        assert_eq!(
            t.observe(at(12), 13000, grace, &looks(&[(2, true), (3, true)])),
            BTreeSet::from([3])
        );
        // A voter no longer listed (demoted, removed) is forgotten; so is everything on clear.
        assert!(t
            .observe(at(20), 21000, grace, &looks(&[(2, true)]))
            .contains(&2));
        assert_eq!(t.since_ms(3), None);
        t.clear();
        assert!(t
            .observe(at(30), 31000, grace, &looks(&[(2, true)]))
            .is_empty());
    }
}
