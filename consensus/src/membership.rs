//! Membership changes, the pure part: turning [`MemberChange`]s into one `ConfChangeV2`,
//! checking it against the current configuration before it is proposed, and reading the
//! members out of a configuration.
//!
//! A change is checked here with raft-rs's own [`raft::Changer`] on the leader's
//! configuration, exactly as every node will apply it, so an invalid change is refused to the
//! caller instead of being committed and ignored. The leader never removes or demotes itself
//! (raft-rs 0.7 does not handle a leader leaving its own configuration): transfer leadership
//! first, then ask the new leader.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use raft::{Changer, ProgressTracker};

use crate::handle::{MemberChange, Membership};
use crate::ClientError;

/// The `ConfChangeV2` for `changes` (transition `Auto`: simple for one change, joint with an
/// automatic leave for several).
pub(crate) fn conf_change(changes: &[MemberChange]) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    for c in changes {
        let (t, id) = match *c {
            MemberChange::AddVoter(id) => (ConfChangeType::AddNode, id),
            MemberChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
            MemberChange::Remove(id) => (ConfChangeType::RemoveNode, id),
        };
        let mut s = ConfChangeSingle::default();
        s.set_change_type(t);
        s.node_id = id;
        cc.mut_changes().push(s);
    }
    cc
}

/// Checks that `changes`, proposed by leader `leader` on configuration `prs`, will apply.
pub(crate) fn validate(
    prs: &ProgressTracker,
    leader: u64,
    changes: &[MemberChange],
) -> Result<ConfChangeV2, ClientError> {
    let invalid = |s: String| Err(ClientError::InvalidMembership(s));
    if changes.is_empty() {
        return invalid("no change asked".into());
    }
    for c in changes {
        match *c {
            MemberChange::AddVoter(0) | MemberChange::AddLearner(0) | MemberChange::Remove(0) => {
                return invalid("node id 0 is reserved".into())
            }
            MemberChange::Remove(id) | MemberChange::AddLearner(id) if id == leader => {
                return invalid(format!(
                    "{c:?} would remove or demote the leader itself: transfer leadership to \
                     another voter first, then ask the new leader"
                ))
            }
            _ => {}
        }
    }
    let cc = conf_change(changes);
    let mut changer = Changer::new(prs);
    let checked = match cc.enter_joint() {
        Some(auto_leave) => changer.enter_joint(auto_leave, &cc.changes),
        None => changer.simple(&cc.changes),
    };
    match checked {
        Ok(_) => Ok(cc),
        Err(e) => invalid(format!("{changes:?}: {e}")),
    }
}

/// Whether a configuration is joint (an outgoing voter set is still in force).
pub(crate) fn is_joint(cs: &ConfState) -> bool {
    !cs.voters_outgoing.is_empty()
}

/// The (voters, learners) of a configuration, sorted; while joint, the voters are the union.
pub(crate) fn members(cs: &ConfState) -> Membership {
    let mut voters: Vec<u64> = cs
        .voters
        .iter()
        .chain(&cs.voters_outgoing)
        .copied()
        .collect();
    voters.sort_unstable();
    voters.dedup();
    let mut learners: Vec<u64> = cs
        .learners
        .iter()
        .chain(&cs.learners_next)
        .copied()
        .collect();
    learners.sort_unstable();
    learners.dedup();
    (voters, learners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[u64], learners: &[u64]) -> ProgressTracker {
        let mut prs = ProgressTracker::new(256);
        let changes = voters
            .iter()
            .map(|&v| MemberChange::AddVoter(v))
            .chain(learners.iter().map(|&l| MemberChange::AddLearner(l)));
        for c in changes {
            let cc = conf_change(&[c]);
            let (cfg, ch) = Changer::new(&prs).simple(&cc.changes).unwrap();
            prs.apply_conf(cfg, ch, 10);
        }
        prs
    }

    #[test]
    fn one_change_is_simple_and_several_are_joint() {
        let prs = tracker(&[1, 2, 3], &[]);
        let cc = validate(&prs, 1, &[MemberChange::AddLearner(4)]).unwrap();
        assert_eq!(cc.enter_joint(), None);
        let cc = validate(
            &prs,
            1,
            &[MemberChange::AddVoter(4), MemberChange::Remove(3)],
        )
        .unwrap();
        assert_eq!(cc.enter_joint(), Some(true));
    }

    #[test]
    fn changes_that_cannot_apply_are_refused() {
        let prs = tracker(&[1], &[2]);
        for bad in [
            vec![],
            vec![MemberChange::Remove(1)],
            vec![MemberChange::AddLearner(1)],
            vec![MemberChange::AddVoter(0)],
        ] {
            assert!(
                matches!(
                    validate(&prs, 1, &bad),
                    Err(ClientError::InvalidMembership(_))
                ),
                "{bad:?} was accepted"
            );
        }
        // The leader is 2 here: removing the only voter leaves none.
        assert!(validate(&prs, 2, &[MemberChange::Remove(1)]).is_err());
    }

    #[test]
    fn members_of_a_joint_configuration_are_the_union() {
        let cs = ConfState {
            voters: vec![1, 4],
            voters_outgoing: vec![1, 2, 3],
            learners: vec![5],
            learners_next: vec![3],
            ..Default::default()
        };
        assert!(is_joint(&cs));
        assert_eq!(members(&cs), (vec![1, 2, 3, 4], vec![3, 5]));
    }
}
