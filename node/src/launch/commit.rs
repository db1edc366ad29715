//! What a deploy reports after it tried to commit its change, as pure functions of the
//! write's answer and (when that is not definite) of the stack's committed record: only a
//! refusal by the state machine means "nothing was deployed or changed".

use crate::cluster::{ClusterError, Outcome, Refusal, StackChange, StackRecord};

/// The phase of a deploy whose commit may or may not have happened (its report says what
/// to check); the leader's `finish` keeps it.
pub(super) const OUTCOME_UNKNOWN: &str = "outcome unknown";

/// What a deploy does after one attempt to commit its change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AfterCommit {
    /// Committed: the stack is at this revision.
    Committed(u64),
    /// Refused because the grid or the stack moved: compute again (why).
    Again(String),
    /// Not committed, for good: the report.
    Failed(String),
    /// Whether it committed is not known (a timeout, a leader change): what is known.
    Unknown(String),
}

/// The pure decision after attempt number `attempt` to commit `change` answered `written`.
/// Only a refusal by the state machine says for sure that nothing was committed: a write
/// that timed out or lost its leader may still commit (its entry can be in the new leader's
/// log), so it is [`AfterCommit::Unknown`], and the shell looks at the state ([`settle`]).
pub(super) fn after_commit(
    change: &StackChange,
    written: Result<Outcome, ClusterError>,
    attempt: u32,
) -> AfterCommit {
    match written {
        Ok(Outcome::StackChanged { revision, .. }) => AfterCommit::Committed(revision),
        Err(ClusterError::Refused(
            r @ (Refusal::StaleGrid { .. } | Refusal::StaleStack { .. }),
        )) if attempt < 5 => AfterCommit::Again(r.to_string()),
        Err(ClusterError::Refused(r)) => {
            AfterCommit::Failed(format!("{r}\nnothing was deployed or changed"))
        }
        // Refused before it was proposed: as definite as a refusal by the state.
        Err(e @ ClusterError::TooLarge { .. }) => {
            AfterCommit::Failed(format!("{e}\nnothing was deployed or changed"))
        }
        // Something was applied, just not what a deploy gives: never "nothing changed".
        Ok(other) => AfterCommit::Failed(format!(
            "the commit of revision {} of {} gave {other:?}: see `quarry stacks`",
            change.revision, change.stack
        )),
        Err(e) => AfterCommit::Unknown(unknown(change, &e.to_string())),
    }
}

/// The report of a commit whose outcome is not known.
fn unknown(change: &StackChange, why: &str) -> String {
    let (stack, rev) = (&change.stack, change.revision);
    format!(
        "{why}\nwhether revision {rev} of {stack} was committed is not known: the proposal may \
         still commit. In a few seconds `quarry stacks` shows it: {stack} at revision {rev} \
         from source {} means it did (its containers start as usual, `quarry ps -s {stack}`); \
         at revision {} it did not, and deploying again is safe",
        change.source.short(),
        rev.saturating_sub(1)
    )
}

/// After an unknown outcome (`why`): whether the stack's committed record `rec` shows
/// `change` (then the deploy goes on as committed), or what is known.
pub(super) fn settle(rec: Option<&StackRecord>, change: &StackChange, why: &str) -> AfterCommit {
    match rec {
        Some(r)
            if r.revision == change.revision
                && r.source.as_ref() == Some(&change.source)
                && r.file.as_ref() == Some(&change.file) =>
        {
            AfterCommit::Committed(change.revision)
        }
        Some(r) if r.revision >= change.revision => AfterCommit::Unknown(format!(
            "{why}\n{} is at revision {}, not this deploy's (revision {} from source {}): \
             another change took over; see `quarry stacks` and `quarry ps -s {}`",
            change.stack,
            r.revision,
            change.revision,
            change.source.short(),
            change.stack
        )),
        _ => AfterCommit::Unknown(unknown(change, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterState, Command};
    use crate::launch::compile::{self, PlanInputs};
    use crate::source::SourceHash;

    /// The example's first deploy, compiled on a three-server cluster.
    fn first_change() -> (ClusterState, StackChange) {
        use crate::launch::compile::tests::{cluster, source, stack, EXAMPLE};
        let s = cluster();
        let c = compile::compile(
            &PlanInputs::of(&s, "guestbook"),
            &stack(EXAMPLE, "a"),
            &source(1),
        )
        .expect("compiles");
        (s, c.change)
    }

    #[test]
    fn a_commit_whose_outcome_is_unknown_is_never_reported_as_nothing_changed() {
        let (_, change) = first_change();
        let unknown = [
            ClusterError::LeaderUnreachable {
                leader: "h2".into(),
                why: "timed out".into(),
            },
            ClusterError::NoLeader {
                reachable: 1,
                voters: 3,
            },
            ClusterError::Stopped,
            ClusterError::Failed("the write was superseded".into()),
        ];
        for e in unknown {
            let said = e.to_string();
            match after_commit(&change, Err(e), 1) {
                AfterCommit::Unknown(why) => {
                    assert!(why.contains(&said), "{why}");
                    assert!(!why.contains("nothing was"), "{why}");
                    assert!(
                        why.contains("revision 1 of guestbook")
                            && why.contains("may still commit")
                            && why.contains("quarry stacks"),
                        "says what to check: {why}"
                    );
                }
                other => panic!("{said}: reported {other:?}"),
            }
        }
    }

    #[test]
    fn a_refused_commit_is_nothing_changed_and_a_stale_one_is_computed_again() {
        let (_, change) = first_change();
        let refused = Refusal::Invalid("no".into());
        assert_eq!(
            after_commit(&change, Err(ClusterError::Refused(refused)), 1),
            AfterCommit::Failed("no\nnothing was deployed or changed".into())
        );
        let stale = || {
            Err(ClusterError::Refused(Refusal::StaleGrid {
                expected: 1,
                current: 2,
            }))
        };
        assert!(matches!(
            after_commit(&change, stale(), 1),
            AfterCommit::Again(_)
        ));
        assert!(matches!(
            after_commit(&change, stale(), 5),
            AfterCommit::Failed(why) if why.ends_with("nothing was deployed or changed")
        ));
        assert_eq!(
            after_commit(
                &change,
                Ok(Outcome::StackChanged {
                    revision: 1,
                    grid_version: 9
                }),
                1
            ),
            AfterCommit::Committed(1)
        );
    }

    #[test]
    fn an_unknown_outcome_is_settled_by_what_the_state_shows() {
        let (mut s, change) = first_change();
        let why = "the leader (h2) did not answer".to_owned();
        let before = settle(s.stacks.get("guestbook"), &change, &why);
        assert!(
            matches!(&before, AfterCommit::Unknown(m) if m.contains("may still commit")),
            "{before:?}"
        );
        s.apply(9, Command::Deploy(Box::new(change.clone())))
            .expect("commits");
        assert_eq!(
            settle(s.stacks.get("guestbook"), &change, &why),
            AfterCommit::Committed(1),
            "the proposal committed after all: the deploy goes on"
        );
        let mut another = change.clone();
        another.source = SourceHash::of(b"another");
        let other = settle(s.stacks.get("guestbook"), &another, &why);
        assert!(
            matches!(&other, AfterCommit::Unknown(m) if m.contains("not this deploy's")),
            "{other:?}"
        );
    }
}
