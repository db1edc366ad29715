//! The leader's background work, whenever this server applies an entry (Raft's watch), the
//! soft state says something changed (a report that says something new, a router's
//! acknowledgement: [`super::soft::Owner::changed`]) and on a slow [`SAFETY_TICK`]: the
//! routers' table (computed by
//! [`routing::table`] from the committed routes and the servers' reports, pushed to every
//! server tagged `router`, acknowledged once nginx serves it), and each stack's rollout
//! ([`routing::verdict`]): retire the replaced replicas once the new ones are ready and every
//! live router has switched, or roll the deploy back.
//!
//! A new leader has no reports: it pushes no table and judges no rollout before it has led
//! for [`WARM_UP`] (every live server reports each second), so a leader change never sends
//! the routers an empty table. All of this is soft state, rebuilt by the next leader.
//!
//! The committed state is read (ReadIndex) only when this server applied an entry since the
//! last read; a round with nothing due (every router has the table, nothing rolls out) asks
//! Raft nothing, and one that acts on a view it did not read this tick confirms its
//! leadership with ReadIndex first. What the round needs of the soft state (the table, what
//! is due, the rollout's verdict) its owner task computes from its own copy.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quarry_consensus::Role;

use super::protocol::{LaunchAnswer, LaunchRequest};
use super::routing::RouteTable;
use super::soft::{routers, unexpected, Answer, Msg, SILENT};
use super::Launch;
use crate::cluster::{ClusterState, Command};

/// How often the leader looks when nothing woke it (an entry applied, a report that says
/// something new, a router's acknowledgement): for the timed parts (a table's refresh, a
/// silent server, a rollout's limit, a failed push tried again), all of them seconds.
const SAFETY_TICK: Duration = Duration::from_secs(1);
/// How long a new leader gathers reports before it routes or judges.
const WARM_UP: Duration = Duration::from_secs(3);
/// How long one push may take (nginx waits for old workers to drain).
const PUSH_LIMIT: Duration = Duration::from_secs(30);

impl Launch {
    /// The leader's background work (see the module docs). Runs until the process ends; acts
    /// only while this server leads.
    pub async fn lead(self: Arc<Self>) {
        let mut raft = self.cluster.handle().watch();
        // The state as read (ReadIndex) at the applied index noted before the read: read again
        // only once this server applied something since, never cloned on an idle tick.
        let mut copy: Option<(u64, Arc<ClusterState>)> = None;
        loop {
            tokio::select! {
                r = raft.changed() => if r.is_err() { return }, // Raft stopped
                _ = self.soft.changed() => {}
                _ = tokio::time::sleep(SAFETY_TICK) => {}
            }
            let now = *raft.borrow_and_update();
            if now.role != Role::Leader {
                copy = None;
                self.soft.tell(Msg::LeadershipLost);
                continue;
            }
            let since = match self.soft.ask(Msg::LeadershipGained).await {
                Ok(Answer::Since(at)) => at,
                Ok(_) | Err(_) => continue,
            };
            if since.elapsed() < WARM_UP {
                continue;
            }
            let fresh = copy.as_ref().is_some_and(|(at, _)| *at == now.applied);
            if !fresh {
                match self.cluster.read(|s: &ClusterState| s.clone()).await {
                    Ok(s) => copy = Some((now.applied, Arc::new(s))),
                    Err(e) => {
                        tracing::debug!("lead: {e}");
                        continue;
                    }
                }
            }
            let Some((_, state)) = copy.clone() else {
                continue;
            };
            let (table, due, rolling) = match self
                .soft
                .ask(Msg::Round {
                    state: state.clone(),
                })
                .await
            {
                Ok(Answer::Round {
                    table,
                    due,
                    rolling,
                }) => (table, due, rolling),
                Ok(other) => {
                    tracing::warn!("lead: {}", unexpected(other));
                    continue;
                }
                Err(_) => return, // the soft state stopped: quarryd ends
            };
            if !due && !rolling {
                continue; // nothing to act on: no need to confirm the view
            }
            // About to act on a view not read this round: confirm leadership first.
            if fresh {
                if let Err(e) = self.cluster.read(|_: &ClusterState| ()).await {
                    tracing::debug!("lead: not confirmed: {e}");
                    continue;
                }
            }
            self.push_routes(&state, now.term, table).await;
            if let Err(e) = self.rollouts(state).await {
                tracing::debug!("rollout: {e}");
            }
        }
    }

    /// Send `table` to every router that has not acknowledged it (or not lately), each in
    /// its own task, one push per router at a time.
    async fn push_routes(self: &Arc<Self>, state: &ClusterState, term: u64, table: RouteTable) {
        let routers = routers(state);
        let push = match self
            .soft
            .ask(Msg::PushRoutes {
                routers,
                table: table.clone(),
            })
            .await
        {
            Ok(Answer::Push(p)) => p,
            Ok(_) | Err(_) => return,
        };
        for r in push {
            let (this, table) = (self.clone(), table.clone());
            tokio::spawn(async move {
                let req = LaunchRequest::Route {
                    term,
                    table: table.clone(),
                };
                let answer = this.ask(&r, req, PUSH_LIMIT).await;
                let msg = match answer {
                    Ok(LaunchAnswer::Done) => Msg::RouterAcked { router: r, table },
                    Ok(LaunchAnswer::Failed(e)) | Err(e) => {
                        tracing::warn!(router = %r, "table not applied: {e}");
                        Msg::RouterFailed {
                            router: r,
                            error: e,
                        }
                    }
                    Ok(other) => Msg::RouterFailed {
                        router: r,
                        error: format!("answered {other:?}"),
                    },
                };
                this.soft.tell(msg);
            });
        }
    }

    /// The routers heard from lately (this one always): those a rollout waits for.
    fn live_routers(&self, state: &ClusterState) -> BTreeSet<String> {
        routers(state)
            .into_iter()
            .filter(|r| {
                *r == self.me()
                    || state
                        .servers
                        .get(r)
                        .is_some_and(|s| self.cluster.peers().heard_within(s.raft_id, SILENT))
            })
            .collect()
    }

    /// Judge every stack whose deploy is rolling out; commit at most one decision per round
    /// (each moves the grid).
    async fn rollouts(&self, state: Arc<ClusterState>) -> Result<(), String> {
        let live = self.live_routers(&state);
        let command = match self.soft.ask(Msg::Judge { state, live }).await? {
            Answer::Judged(c) => c,
            other => return Err(unexpected(other)),
        };
        let Some(command) = command else {
            return Ok(());
        };
        let (stack, revision) = match &command {
            Command::Retire {
                stack, revision, ..
            } => (stack.clone(), *revision),
            Command::Rollback {
                stack,
                revision,
                reason,
                ..
            } => {
                tracing::warn!(stack = %stack, revision, "rolling back: {reason}");
                (stack.clone(), *revision)
            }
            _ => (String::new(), 0),
        };
        self.cluster
            .write(command)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(stack = %stack, revision, "rollout step committed");
        Ok(())
    }
}
