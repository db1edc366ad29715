//! The leader's background work, every [`TICK`] and whenever this server applies an entry
//! (Raft's watch): the routers' table (computed by
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
//! last read; a tick with nothing due (every router has the table, nothing rolls out) asks
//! Raft nothing, and one that acts on a view it did not read this tick confirms its
//! leadership with ReadIndex first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use quarry_consensus::Role;
use tokio::time::Instant;

use super::executor::{container_state, Ready};
use super::protocol::{LaunchAnswer, LaunchRequest, RouterEntry, RoutesView};
use super::routing::{self, Health, RouteTable, Verdict, SILENT_LIMIT};
use super::{lock, Launch};
use crate::cluster::{ClusterState, Command, StackRecord};
use crate::types::DesiredContainer;

/// How often the leader looks.
const TICK: Duration = Duration::from_millis(250);
/// How long a new leader gathers reports before it routes or judges.
const WARM_UP: Duration = Duration::from_secs(3);
/// A router is sent the table again after this long even if it did not change.
const REFRESH: Duration = Duration::from_secs(5);
/// How long one push may take (nginx waits for old workers to drain).
const PUSH_LIMIT: Duration = Duration::from_secs(30);
/// The tag that makes a server a router.
pub const ROUTER_TAG: &str = "router";

/// What the leader knows of one router.
#[derive(Debug, Clone, Default)]
pub(super) struct RouterAck {
    /// The table it last acknowledged, and when.
    acked: Option<(Instant, RouteTable)>,
    /// A push is in flight.
    pushing: bool,
    /// Why the last push failed.
    error: Option<String>,
}

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
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = *raft.borrow_and_update();
            if now.role != Role::Leader {
                copy = None;
                if lock(&self.leader.since).take().is_some() {
                    lock(&self.leader.routers).clear();
                    lock(&self.leader.watched).clear();
                }
                continue;
            }
            let since = *lock(&self.leader.since).get_or_insert_with(Instant::now);
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
            let table = self.route_table(&state);
            let rolling = state.stacks.values().any(|r| !r.retiring.is_empty());
            if !self.pushes_due(&state, &table) && !rolling {
                continue; // nothing to act on: no need to confirm the view
            }
            // About to act on a view not read this round: confirm leadership first.
            if fresh {
                if let Err(e) = self.cluster.read(|_: &ClusterState| ()).await {
                    tracing::debug!("lead: not confirmed: {e}");
                    continue;
                }
            }
            self.push_routes(&state, now.term, &table);
            if let Err(e) = self.rollouts(&state, since).await {
                tracing::debug!("rollout: {e}");
            }
        }
    }

    /// Whether some router is due `table` (not acknowledged lately, no push in flight).
    fn pushes_due(&self, state: &ClusterState, table: &RouteTable) -> bool {
        let acks = lock(&self.leader.routers);
        routers(state).iter().any(|r| {
            acks.get(r).is_none_or(|ack| {
                let fresh = ack
                    .acked
                    .as_ref()
                    .is_some_and(|(at, t)| t == table && at.elapsed() < REFRESH);
                !ack.pushing && !fresh
            })
        })
    }

    /// The routers' table now.
    fn route_table(&self, state: &ClusterState) -> RouteTable {
        let reports = lock(&self.leader.reports).clone();
        let ready = |stack: &str, d: &DesiredContainer| {
            let server = d.placement.as_ref().map(|p| p.server.0.as_str());
            matches!(
                container_state(&reports, server.unwrap_or(""), stack, &d.slice),
                Ready::Yes
            )
        };
        routing::table(&state.routes, &state.stacks, &ready)
    }

    /// Send `table` to every router that has not acknowledged it (or not lately), each in
    /// its own task, one push per router at a time.
    fn push_routes(self: &Arc<Self>, state: &ClusterState, term: u64, table: &RouteTable) {
        let routers = routers(state);
        let mut acks = lock(&self.leader.routers);
        acks.retain(|r, _| routers.contains(r));
        for r in routers {
            let ack = acks.entry(r.clone()).or_default();
            let fresh = ack
                .acked
                .as_ref()
                .is_some_and(|(at, t)| t == table && at.elapsed() < REFRESH);
            if ack.pushing || fresh {
                continue;
            }
            ack.pushing = true;
            let (this, table) = (self.clone(), table.clone());
            tokio::spawn(async move {
                let req = LaunchRequest::Route {
                    term,
                    table: table.clone(),
                };
                let answer = this.ask(&r, req, PUSH_LIMIT).await;
                let mut acks = lock(&this.leader.routers);
                let ack = acks.entry(r.clone()).or_default();
                ack.pushing = false;
                match answer {
                    Ok(LaunchAnswer::Done) => {
                        ack.acked = Some((Instant::now(), table));
                        ack.error = None;
                    }
                    Ok(LaunchAnswer::Failed(e)) | Err(e) => {
                        tracing::warn!(router = %r, "table not applied: {e}");
                        ack.error = Some(e);
                    }
                    Ok(other) => ack.error = Some(format!("answered {other:?}")),
                }
            });
        }
    }

    /// Whether every live router has acknowledged a table without `stack`'s retiring replicas
    /// (a silent router gets the table once back; until then it cannot be waited for).
    fn routers_switched(&self, state: &ClusterState, stack: &str, rec: &StackRecord) -> bool {
        let retiring: BTreeSet<String> = rec.retiring.iter().map(|s| s.0.clone()).collect();
        let acks = lock(&self.leader.routers);
        routers(state).iter().all(|r| {
            let live = *r == self.me()
                || state.servers.get(r).is_some_and(|s| {
                    self.cluster
                        .peers()
                        .heard_within(s.raft_id, super::leader::SILENT)
                });
            !live
                || acks
                    .get(r)
                    .and_then(|a| a.acked.as_ref())
                    .is_some_and(|(_, t)| routing::switched(t, stack, &retiring))
        })
    }

    /// Judge every stack whose deploy is rolling out; commit at most one decision per tick
    /// (each moves the grid).
    async fn rollouts(&self, state: &ClusterState, since: Instant) -> Result<(), String> {
        let reports = lock(&self.leader.reports).clone();
        let rolling: BTreeMap<&String, &StackRecord> = state
            .stacks
            .iter()
            .filter(|(_, r)| !r.retiring.is_empty())
            .collect();
        let watched: BTreeMap<String, Instant> = {
            let mut w = lock(&self.leader.watched);
            w.retain(|s, (rev, _)| rolling.get(s).is_some_and(|r| r.revision == *rev));
            for (s, r) in &rolling {
                w.entry((*s).clone())
                    .or_insert((r.revision, Instant::now()));
            }
            w.iter().map(|(s, (_, at))| (s.clone(), *at)).collect()
        };
        for (name, rec) in rolling {
            let health = |d: &DesiredContainer| {
                let server = d
                    .placement
                    .as_ref()
                    .map(|p| p.server.0.clone())
                    .unwrap_or_default();
                let heard = reports.get(&server).map(|(at, _)| *at).unwrap_or(since);
                let quiet = heard.max(since).elapsed();
                match container_state(&reports, &server, name, &d.slice) {
                    Ready::Yes => Health::Ready,
                    _ if quiet > SILENT_LIMIT => Health::Failed(format!(
                        "{server} has not reported for {}s",
                        quiet.as_secs()
                    )),
                    Ready::No(why)
                        if why.starts_with("unhealthy") || why.contains(", unhealthy") =>
                    {
                        Health::Failed(why)
                    }
                    Ready::No(why) => Health::Waiting(why),
                }
            };
            let watched = watched.get(name).map(|t| t.elapsed()).unwrap_or_default();
            let switched = self.routers_switched(state, name, rec);
            let command = match routing::verdict(rec, &health, switched, watched) {
                Verdict::Idle | Verdict::Wait(_) => continue,
                Verdict::Retire => Command::Retire {
                    stack: name.clone(),
                    revision: rec.revision,
                    grid_version: state.grid.version(),
                    slices: rec.retiring.clone(),
                },
                Verdict::RollBack(reason) => {
                    tracing::warn!(stack = %name, revision = rec.revision, "rolling back: {reason}");
                    Command::Rollback {
                        stack: name.clone(),
                        revision: rec.revision,
                        grid_version: state.grid.version(),
                        reason,
                    }
                }
            };
            self.cluster
                .write(command)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(stack = %name, revision = rec.revision, "rollout step committed");
            return Ok(());
        }
        Ok(())
    }

    /// `quarry routes`.
    pub(super) async fn routes(&self) -> Result<RoutesView, String> {
        let state = self
            .cluster
            .read(|s: &ClusterState| s.clone())
            .await
            .map_err(|e| e.to_string())?;
        let table = self.route_table(&state);
        let acks = lock(&self.leader.routers).clone();
        let routers = routers(&state)
            .into_iter()
            .map(|r| {
                let ack = acks.get(&r).cloned().unwrap_or_default();
                RouterEntry {
                    current: ack.acked.as_ref().is_some_and(|(_, t)| *t == table),
                    acked_secs_ago: ack.acked.as_ref().map(|(at, _)| at.elapsed().as_secs()),
                    error: ack.error,
                    server: r,
                }
            })
            .collect();
        Ok(RoutesView { table, routers })
    }
}

/// The servers tagged `router`.
fn routers(state: &ClusterState) -> Vec<String> {
    state
        .servers
        .iter()
        .filter(|(_, s)| s.member.tags.iter().any(|t| t == ROUTER_TAG))
        .map(|(n, _)| n.clone())
        .collect()
}
