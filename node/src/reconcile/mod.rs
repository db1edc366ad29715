//! The reconciler: desired containers (data, from wherever: the local quarry.yml or the
//! cluster's replicated state) against Docker's containers of the stack, converged.
//!
//! [`diff`] is pure. [`converge`] is the shell that executes a diff on the local engine, in
//! the order DESIGN.md asks for:
//!
//! 1. replace (remove, then recreate) containers whose slice is desired with other settings;
//! 2. services: create and start the new ones, start stopped ones, wait until healthy;
//! 3. web and worker replicas the same way; kept replicas are probed too;
//! 4. the caller switches the router to the healthy replicas;
//! 5. [`converge::Converger::retire`] stops and removes what is no longer desired.
//!
//! A new replica that does not get healthy in time fails the run: every container created
//! in it is removed again and nothing old was touched (the old revision keeps serving).
//!
//! In the cluster ([`crate::launch`]) each server runs the same diff over the placed
//! containers that name it, publishing on its cluster address
//! ([`Converger::publish_on`]), and converges with [`Converger::start_now`]: nothing waits
//! for health there (it is watched and reported to the leader on its own) and nothing is
//! rolled back (a failed container is tried again next round); only the caller decides when
//! its view is fresh enough to retire anything.

pub mod converge;
pub mod diff;

pub use converge::{Converger, ReconcileError, StartReport, UpReport};
pub use diff::{current_state, diff, Diff, NodeMeta, ObservedContainer, RunState};
