//! The leader's soft state, and the one task that owns it.
//!
//! The servers' reports, the deploys' progress, the busy stacks, the last failures, since when
//! this server leads, the routers' acknowledgements and the watched rollouts live in one
//! [`Soft`]: a pure core (no I/O, no locks, no clock: every message comes with the time it is
//! handled at) whose [`Soft::handle`] takes one typed [`Msg`] and gives its [`Answer`]. One
//! tokio task ([`Owner::spawn`]) owns it and handles the messages in the order they were sent;
//! the executor, the rollout and the views tell it what happened and ask it what they need,
//! so related maps are never seen out of step (a deploy's `busy` mark and its progress are
//! made by one message, a view is computed from one copy).
//!
//! Messages that only tell ([`Owner::tell`]) never wait; a question ([`Owner::ask`]) waits for
//! the answer on a oneshot channel. The committed state a question needs (a stack's record,
//! the routes) travels inside it, read by the caller (ReadIndex) before it asks.
//!
//! # Left out
//!
//! Persistence: all of this is lost with the leader and rebuilt from the next reports (see
//! the module docs of [`crate::launch`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::protocol::{DeployView, PsView, RouterEntry, RoutesView, ServerReport, StackEntry};
use super::routing::{self, Health, RouteTable, Verdict, SILENT_LIMIT};
use crate::cluster::{ClusterState, Command, StackRecord};
use crate::types::{DesiredContainer, SliceId};

/// A report older than this is not trusted (its server is silent).
pub(super) const FRESH: Duration = Duration::from_secs(5);
/// A server Raft has not heard from for this long is taken as gone (for a build, a transfer,
/// or a router a rollout waits for).
pub(super) const SILENT: Duration = Duration::from_secs(3);
/// How many deploys' progress the leader keeps.
pub(super) const KEEP_DEPLOYS: usize = 50;
/// A router is sent the table again after this long even if it did not change.
pub(super) const REFRESH: Duration = Duration::from_secs(5);
/// The phase of a deploy whose commit's outcome is not known.
pub(super) const OUTCOME_UNKNOWN: &str = super::commit::OUTCOME_UNKNOWN;
/// The tag that makes a server a router.
pub const ROUTER_TAG: &str = "router";

/// What the leader knows of one router.
#[derive(Debug, Clone, Default)]
pub(super) struct RouterAck {
    /// The table it last acknowledged, and when.
    pub(super) acked: Option<(Instant, RouteTable)>,
    /// A push is in flight.
    pub(super) pushing: bool,
    /// Why the last push failed.
    pub(super) error: Option<String>,
}

/// One deploy's progress.
#[derive(Debug, Clone)]
pub(super) struct DeployLog {
    stack: String,
    phase: String,
    lines: Vec<String>,
    done: bool,
    failed: Option<String>,
    /// The stack revision committed, once it is.
    committed: Option<u64>,
    started: Instant,
}

/// The committed records a view is computed from: stack name -> its record (revision > 0).
pub(super) type Records = Vec<(String, StackRecord)>;

/// What the soft state is told or asked.
#[derive(Debug)]
pub(super) enum Msg {
    /// A server's report arrived.
    ReportArrived(ServerReport),
    /// A deploy was accepted: mark its stack busy and keep its progress, or (another deploy
    /// of the stack runs) refuse it. Answers [`Answer::Begun`].
    DeployAccepted {
        id: String,
        stack: String,
        line: String,
    },
    /// A deploy said a line of progress.
    DeploySaid { id: String, line: String },
    /// A deploy entered a phase.
    DeployPhase { id: String, phase: String },
    /// A deploy committed a revision of its stack.
    DeployCommitted { id: String, revision: u64 },
    /// A deploy ended (`failed`: why); its stack is free again.
    DeployFinished {
        id: String,
        stack: String,
        failed: Option<String>,
    },
    /// This server leads (again or still). Answers [`Answer::Since`].
    LeadershipGained,
    /// This server no longer leads: what only a leader keeps (routers, rollouts) goes.
    LeadershipLost,
    /// `routers` are the servers tagged `router`: forget the others and mark those due
    /// `table` as pushed. Answers [`Answer::Push`] (the routers to push to).
    PushRoutes {
        routers: Vec<String>,
        table: RouteTable,
    },
    /// A router acknowledged `table`.
    RouterAcked { router: String, table: RouteTable },
    /// A push to a router failed.
    RouterFailed { router: String, error: String },
    /// A deploy's progress from line `since`. Answers [`Answer::Progress`].
    Progress { id: String, since: usize },
    /// What one round of the leader's loop acts on. Answers [`Answer::Round`].
    Round { state: Arc<ClusterState> },
    /// Judge the rolling stacks; `live` are the routers heard from lately. Answers
    /// [`Answer::Judged`] (at most one command: each moves the grid).
    Judge {
        state: Arc<ClusterState>,
        live: BTreeSet<String>,
    },
    /// How ready a stack at `revision` is. Answers [`Answer::Readiness`].
    Readiness {
        stack: String,
        revision: u64,
        record: Option<Box<StackRecord>>,
    },
    /// `quarry ps` over `records`; `servers` are the cluster's. Answers [`Answer::Ps`].
    Ps {
        records: Records,
        servers: Vec<String>,
    },
    /// `quarry stacks` over `records`. Answers [`Answer::Stacks`].
    Stacks {
        records: Records,
        servers: Vec<String>,
    },
    /// `quarry routes`. Answers [`Answer::Routes`].
    Routes { state: Arc<ClusterState> },
}

/// The answer to one [`Msg`].
#[derive(Debug)]
pub(super) enum Answer {
    /// Told, nothing to say.
    Done,
    /// The deploy was registered, or why not.
    Begun(Result<(), String>),
    /// Since when this server leads.
    Since(Instant),
    /// The routers to push the table to.
    Push(Vec<String>),
    /// A deploy's progress (`None`: unknown here).
    Progress(Option<DeployView>),
    /// The routers' table now, whether some router is due it, whether a stack rolls out.
    Round {
        table: RouteTable,
        due: bool,
        rolling: bool,
    },
    /// The rollout decision to commit, if any.
    Judged(Option<Command>),
    /// How many containers are ready and what the others wait for.
    Readiness(usize, Vec<String>),
    Ps(PsView),
    Stacks(Vec<StackEntry>),
    Routes(RoutesView),
}

/// The leader's soft state (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Soft {
    /// Server -> its last report and when it came.
    pub(super) reports: BTreeMap<String, (Instant, ServerReport)>,
    /// Deploy id -> its progress.
    deploys: BTreeMap<String, DeployLog>,
    /// Stack -> the deploy running on it.
    pub(super) busy: BTreeMap<String, String>,
    /// Stack -> why its last deploy failed (until one succeeds).
    pub(super) failures: BTreeMap<String, String>,
    /// Since when this server leads (`None`: it does not).
    since: Option<Instant>,
    /// Router -> what it acknowledged.
    routers: BTreeMap<String, RouterAck>,
    /// Stack -> (the revision rolling out, since when this leader watches it).
    watched: BTreeMap<String, (u64, Instant)>,
    /// Something the leader's loop acts on changed since [`Soft::take_changed`]: a report
    /// that says something new, a router's acknowledgement.
    changed: bool,
}

impl Soft {
    /// Handle one message at time `now`.
    pub(super) fn handle(&mut self, now: Instant, msg: Msg) -> Answer {
        match msg {
            Msg::ReportArrived(r) => {
                let same = self
                    .reports
                    .get(&r.server)
                    .is_some_and(|(at, last)| *last == r && now.duration_since(*at) <= FRESH);
                self.changed |= !same;
                self.reports.insert(r.server.clone(), (now, r));
            }
            Msg::DeployAccepted { id, stack, line } => {
                return Answer::Begun(self.begin(now, id, stack, line))
            }
            Msg::DeploySaid { id, line } => {
                if let Some(d) = self.deploys.get_mut(&id) {
                    d.lines.push(line);
                }
            }
            Msg::DeployPhase { id, phase } => {
                if let Some(d) = self.deploys.get_mut(&id) {
                    d.phase = phase;
                }
            }
            Msg::DeployCommitted { id, revision } => {
                if let Some(d) = self.deploys.get_mut(&id) {
                    d.committed = Some(revision);
                }
            }
            Msg::DeployFinished { id, stack, failed } => {
                if let Some(d) = self.deploys.get_mut(&id) {
                    d.done = true;
                    if failed.is_none() || d.phase != OUTCOME_UNKNOWN {
                        d.phase = if failed.is_some() { "failed" } else { "done" }.to_owned();
                    }
                    d.failed = failed.clone();
                }
                match failed {
                    Some(f) => {
                        self.failures.insert(stack.clone(), f);
                    }
                    None => {
                        self.failures.remove(&stack);
                    }
                }
                self.busy.remove(&stack);
            }
            Msg::LeadershipGained => return Answer::Since(*self.since.get_or_insert(now)),
            Msg::LeadershipLost => {
                if self.since.take().is_some() {
                    self.routers.clear();
                    self.watched.clear();
                }
            }
            Msg::PushRoutes { routers, table } => {
                return Answer::Push(self.push_routes(now, routers, &table))
            }
            Msg::RouterAcked { router, table } => {
                let ack = self.routers.entry(router).or_default();
                ack.pushing = false;
                ack.acked = Some((now, table));
                ack.error = None;
                self.changed = true;
            }
            Msg::RouterFailed { router, error } => {
                let ack = self.routers.entry(router).or_default();
                ack.pushing = false;
                ack.error = Some(error);
            }
            Msg::Progress { id, since } => return Answer::Progress(self.progress(id, since)),
            Msg::Round { state } => {
                let table = self.route_table(now, &state);
                return Answer::Round {
                    due: self.pushes_due(now, &state, &table),
                    rolling: state.stacks.values().any(|r| !r.retiring.is_empty()),
                    table,
                };
            }
            Msg::Judge { state, live } => return Answer::Judged(self.judge(now, &state, &live)),
            Msg::Readiness {
                stack,
                revision,
                record,
            } => {
                let (ready, waiting) = self.readiness(now, &stack, revision, record.as_deref());
                return Answer::Readiness(ready, waiting);
            }
            Msg::Ps { records, servers } => return Answer::Ps(self.ps(now, &records, &servers)),
            Msg::Stacks { records, servers } => {
                return Answer::Stacks(self.stacks(now, &records, &servers))
            }
            Msg::Routes { state } => return Answer::Routes(self.routes(now, &state)),
        }
        Answer::Done
    }

    /// Whether something the leader's loop acts on changed since the last call (a failed
    /// push does not count: it is tried again on the loop's safety tick, not at once).
    pub(super) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn begin(
        &mut self,
        now: Instant,
        id: String,
        stack: String,
        line: String,
    ) -> Result<(), String> {
        if let Some(other) = self.busy.get(&stack) {
            return Err(format!(
                "a deploy of {stack} is running ({other}): wait until it is done (`quarry \
                 stacks`), then try again"
            ));
        }
        self.busy.insert(stack.clone(), id.clone());
        while self.deploys.len() >= KEEP_DEPLOYS {
            let oldest = self
                .deploys
                .iter()
                .filter(|(_, d)| d.done)
                .min_by_key(|(_, d)| d.started)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.deploys.remove(&id),
                None => break,
            };
        }
        self.deploys.insert(
            id,
            DeployLog {
                stack,
                phase: "accepted".to_owned(),
                lines: vec![line],
                done: false,
                failed: None,
                committed: None,
                started: now,
            },
        );
        Ok(())
    }

    fn progress(&self, id: String, since: usize) -> Option<DeployView> {
        let d = self.deploys.get(&id)?;
        Some(DeployView {
            id,
            stack: d.stack.clone(),
            phase: d.phase.clone(),
            lines: d.lines.iter().skip(since).cloned().collect(),
            next: d.lines.len(),
            done: d.done,
            failed: d.failed.clone(),
            committed: d.committed,
        })
    }

    /// The routers' table now.
    fn route_table(&self, now: Instant, state: &ClusterState) -> RouteTable {
        let ready = |stack: &str, d: &DesiredContainer| {
            let server = d.placement.as_ref().map(|p| p.server.0.as_str());
            matches!(
                container_state(&self.reports, now, server.unwrap_or(""), stack, &d.slice),
                Ready::Yes
            )
        };
        routing::table(&state.routes, &state.stacks, &ready)
    }

    /// Whether `ack` still needs `table` (not acknowledged lately, no push in flight).
    fn due(now: Instant, ack: &RouterAck, table: &RouteTable) -> bool {
        let fresh = ack
            .acked
            .as_ref()
            .is_some_and(|(at, t)| t == table && now.duration_since(*at) < REFRESH);
        !ack.pushing && !fresh
    }

    /// Whether some router is due `table`.
    fn pushes_due(&self, now: Instant, state: &ClusterState, table: &RouteTable) -> bool {
        routers(state).iter().any(|r| {
            self.routers
                .get(r)
                .is_none_or(|ack| Self::due(now, ack, table))
        })
    }

    fn push_routes(
        &mut self,
        now: Instant,
        routers: Vec<String>,
        table: &RouteTable,
    ) -> Vec<String> {
        self.routers.retain(|r, _| routers.contains(r));
        let mut push = Vec::new();
        for r in routers {
            let ack = self.routers.entry(r.clone()).or_default();
            if Self::due(now, ack, table) {
                ack.pushing = true;
                push.push(r);
            }
        }
        push
    }

    /// Whether every live router has acknowledged a table without `stack`'s retiring replicas
    /// (a silent router gets the table once back; until then it cannot be waited for).
    fn routers_switched(
        &self,
        state: &ClusterState,
        live: &BTreeSet<String>,
        stack: &str,
        rec: &StackRecord,
    ) -> bool {
        let retiring: BTreeSet<String> = rec.retiring.iter().map(|s| s.0.clone()).collect();
        routers(state).iter().all(|r| {
            !live.contains(r)
                || self
                    .routers
                    .get(r)
                    .and_then(|a| a.acked.as_ref())
                    .is_some_and(|(_, t)| routing::switched(t, stack, &retiring))
        })
    }

    /// Judge every stack whose deploy is rolling out: the first decision to commit.
    fn judge(
        &mut self,
        now: Instant,
        state: &ClusterState,
        live: &BTreeSet<String>,
    ) -> Option<Command> {
        let since = self.since.unwrap_or(now);
        let rolling: BTreeMap<&String, &StackRecord> = state
            .stacks
            .iter()
            .filter(|(_, r)| !r.retiring.is_empty())
            .collect();
        self.watched
            .retain(|s, (rev, _)| rolling.get(s).is_some_and(|r| r.revision == *rev));
        for (s, r) in &rolling {
            self.watched
                .entry((*s).clone())
                .or_insert((r.revision, now));
        }
        for (name, rec) in rolling {
            let health = |d: &DesiredContainer| {
                let server = d
                    .placement
                    .as_ref()
                    .map(|p| p.server.0.clone())
                    .unwrap_or_default();
                let heard = self
                    .reports
                    .get(&server)
                    .map(|(at, _)| *at)
                    .unwrap_or(since);
                let quiet = now.duration_since(heard.max(since));
                match container_state(&self.reports, now, &server, name, &d.slice) {
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
            let watched = self
                .watched
                .get(name)
                .map(|(_, t)| now.duration_since(*t))
                .unwrap_or_default();
            let switched = self.routers_switched(state, live, name, rec);
            match routing::verdict(rec, &health, switched, watched) {
                Verdict::Idle | Verdict::Wait(_) => continue,
                Verdict::Retire => {
                    return Some(Command::Retire {
                        stack: name.clone(),
                        revision: rec.revision,
                        grid_version: state.grid.version(),
                        slices: rec.retiring.clone(),
                    })
                }
                Verdict::RollBack(reason) => {
                    return Some(Command::Rollback {
                        stack: name.clone(),
                        revision: rec.revision,
                        grid_version: state.grid.version(),
                        reason,
                    })
                }
            }
        }
        None
    }

    /// How many of the stack's containers are ready, and what the others wait for (empty
    /// once the stack runs at `revision` with nothing left to retire).
    fn readiness(
        &self,
        now: Instant,
        stack: &str,
        revision: u64,
        rec: Option<&StackRecord>,
    ) -> (usize, Vec<String>) {
        let Some(rec) = rec else {
            return (0, vec!["the stack's record".to_owned()]);
        };
        if rec.revision != revision {
            return (0, Vec::new()); // a later change took over
        }
        let mut ready = 0;
        let mut waiting = Vec::new();
        for d in rec
            .desired
            .iter()
            .filter(|d| !rec.retiring.contains(&d.slice))
        {
            let server = d
                .placement
                .as_ref()
                .map(|p| p.server.0.clone())
                .unwrap_or_default();
            match container_state(&self.reports, now, &server, stack, &d.slice) {
                Ready::Yes => ready += 1,
                Ready::No(why) => {
                    waiting.push(format!("{} on {server} ({why})", d.container_name()))
                }
            }
        }
        if !rec.retiring.is_empty() {
            waiting.push(format!(
                "{} replaced container(s) to retire",
                rec.retiring.len()
            ));
        }
        (ready, waiting)
    }

    /// `quarry routes`.
    fn routes(&self, now: Instant, state: &ClusterState) -> RoutesView {
        let table = self.route_table(now, state);
        let routers = routers(state)
            .into_iter()
            .map(|r| {
                let ack = self.routers.get(&r).cloned().unwrap_or_default();
                RouterEntry {
                    current: ack.acked.as_ref().is_some_and(|(_, t)| *t == table),
                    acked_secs_ago: ack
                        .acked
                        .as_ref()
                        .map(|(at, _)| now.duration_since(*at).as_secs()),
                    error: ack.error,
                    server: r,
                }
            })
            .collect();
        RoutesView { table, routers }
    }
}

/// The servers tagged `router`.
pub(super) fn routers(state: &ClusterState) -> Vec<String> {
    state
        .servers
        .iter()
        .filter(|(_, s)| s.member.tags.iter().any(|t| t == ROUTER_TAG))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Whether a container runs and is healthy, as its server reports it.
pub(super) enum Ready {
    Yes,
    No(String),
}

pub(super) fn container_state(
    reports: &BTreeMap<String, (Instant, ServerReport)>,
    now: Instant,
    server: &str,
    stack: &str,
    slice: &SliceId,
) -> Ready {
    let Some((at, r)) = reports.get(server) else {
        return Ready::No("no report from it yet".to_owned());
    };
    let age = now.duration_since(*at);
    if age > FRESH {
        return Ready::No(format!("no report for {}s", age.as_secs()));
    }
    if let Some(e) = &r.engine {
        return Ready::No(format!("its engine: {e}"));
    }
    match r
        .containers
        .iter()
        .find(|c| c.stack == stack && c.slice == slice.0)
    {
        Some(c) if c.state == "running" && (c.health == "healthy" || c.health == "none") => {
            Ready::Yes
        }
        Some(c) => Ready::No(format!("{}, {}", c.status, c.health)),
        None => Ready::No(
            r.problems
                .get(&slice.0)
                .cloned()
                .unwrap_or_else(|| "not created yet".to_owned()),
        ),
    }
}

/// One message and, for a question, where its answer goes.
type Envelope = (Msg, Option<oneshot::Sender<Answer>>);

/// The owner task's address: tell it, or ask it.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    tx: mpsc::UnboundedSender<Envelope>,
    changed: Arc<Notify>,
}

const STOPPED: &str = "the leader's soft state has stopped (quarryd is shutting down)";

impl Owner {
    /// Start the task that owns a fresh [`Soft`]; it ends once every [`Owner`] is dropped.
    pub(super) fn spawn() -> Owner {
        let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        tokio::spawn(async move {
            let mut soft = Soft::default();
            while let Some((msg, reply)) = rx.recv().await {
                let answer = soft.handle(Instant::now(), msg);
                if soft.take_changed() {
                    notify.notify_one();
                }
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
        });
        Owner { tx, changed }
    }

    /// Woken once something the leader's loop acts on changed (see [`Soft::take_changed`]);
    /// a change while nobody waits is kept for the next wait.
    pub(super) async fn changed(&self) {
        self.changed.notified().await
    }

    /// Tell it something (never waits; unbounded: a message is small and handled at once).
    pub(super) fn tell(&self, msg: Msg) {
        let _ = self.tx.send((msg, None));
    }

    /// Ask it something: its answer once every message sent before is handled.
    pub(super) async fn ask(&self, msg: Msg) -> Result<Answer, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((msg, Some(tx)))
            .map_err(|_| STOPPED.to_owned())?;
        rx.await.map_err(|_| STOPPED.to_owned())
    }
}

/// An answer of another kind than the question's (a bug).
pub(super) fn unexpected(a: Answer) -> String {
    format!("the leader's soft state answered {a:?}")
}

#[cfg(test)]
#[path = "soft_tests.rs"]
mod tests;
