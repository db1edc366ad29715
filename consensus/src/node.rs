//! The owner task: one task owns the `RawNode`, its storage and the state machine, and
//! selects over the tick, inbound messages and client requests, handling `Ready` after each
//! wake-up. See the crate docs for the order and the invariants.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{ConfChangeV2, Entry, EntryType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slog::Drain;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::codec;
use crate::handle::{
    Handle, Membership, NodeState, PeerProgress, ReadFn, Request, Role, Stats, Status,
};
use crate::machine::{Replica, StateMachine};
use crate::membership;
use crate::storage::{DiskStorage, StorageOptions, StoreError};
use crate::transport::{Inbound, Transport};
use crate::{ClientError, NodeError};

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable: ReadIndex through the leader, answered once applied up to that index.
    ReadIndex,
    /// BROKEN ON PURPOSE: answer from the local state at once, even on a lagging follower.
    /// Only for the linearizability checker's negative control.
    UnsafeLocal,
}

/// A node's configuration. [`NodeConfig::new`] gives the production defaults.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    /// The voters of a brand-new cluster (ignored once the storage exists).
    pub voters: Vec<u64>,
    /// The node's storage directory (see [`crate::storage`]).
    pub data_dir: PathBuf,
    /// One Raft tick (100 ms).
    pub tick: Duration,
    /// Ticks between leader heartbeats (1).
    pub heartbeat_tick: usize,
    /// Base election timeout in ticks (10 = 1 s); raft-rs draws each timeout from
    /// `[election_tick, 2 * election_tick)`.
    pub election_tick: usize,
    /// Tests only: draw this node's election timeout once, from this seed, instead of
    /// raft-rs's unseeded per-term draw, so that runs replay exactly.
    pub election_seed: Option<u64>,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// How long a proposal or read may wait before failing with `Timeout`.
    pub request_timeout: Duration,
    pub read_mode: ReadMode,
    pub storage: StorageOptions,
}

impl NodeConfig {
    pub fn new(id: u64, voters: Vec<u64>, data_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            voters,
            data_dir,
            tick: Duration::from_millis(100),
            heartbeat_tick: 1,
            election_tick: 10,
            election_seed: None,
            snapshot_every: 10_000,
            request_timeout: Duration::from_secs(5),
            read_mode: ReadMode::ReadIndex,
            storage: StorageOptions::default(),
        }
    }

    /// The base election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_tick as u32
    }
}

struct Pending<O> {
    term: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<O, ClientError>>,
}

struct ReadWait<S> {
    f: ReadFn<S>,
    deadline: Instant,
}

/// A membership change proposed here, waiting for its entry (and the leave, if joint).
struct MemberWait {
    index: u64,
    term: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<Membership, ClientError>>,
}

/// A leader transfer asked here, waiting to see `to` lead.
struct TransferWait {
    to: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), ClientError>>,
}

/// The owner task; it ends with the fault that stopped the node, if any.
pub type NodeTask = JoinHandle<Result<(), NodeError>>;

/// Starts a node: opens (or creates) its storage, restores its state machine from the latest
/// snapshot, and spawns its owner task on the current tokio runtime. Messages for the node
/// must be delivered to the sender of `inbox` (see [`crate::transport::inbox`]).
///
/// After the owner task of a node was aborted, its last storage commit may still be finishing
/// on the blocking pool for a moment: starting it again at once may fail with a storage error
/// for which [`crate::storage::StoreError::is_already_open`] holds; retry shortly.
pub fn start<S: StateMachine, T: Transport>(
    cfg: NodeConfig,
    machine: S,
    transport: T,
    inbox: mpsc::Receiver<Inbound>,
) -> Result<(Handle<S>, NodeTask), NodeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| NodeError::Raft(raft::Error::Io(e)))?;
    let mut storage = DiskStorage::open(&cfg.data_dir, &cfg.voters, cfg.storage.clone())?;
    let mut replica = Replica::new(machine);
    storage.bootstrap(replica.snapshot()?)?;
    let snap_index = storage.snapshot_metadata().index;
    if snap_index > 0 {
        let snap = storage.load_snapshot()?;
        replica.restore(snap_index, &snap.data)?;
    }
    let mut rc = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        applied: snap_index,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    };
    let mut nonce_rng = match cfg.election_seed {
        Some(seed) => StdRng::seed_from_u64(seed ^ cfg.id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        None => StdRng::from_os_rng(),
    };
    if cfg.election_seed.is_some() {
        let t = cfg.election_tick + nonce_rng.random_range(0..cfg.election_tick);
        rc.min_election_tick = t;
        rc.max_election_tick = t + 1;
    }
    rc.validate()?;
    let logger = slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!("raft" => cfg.id));
    let raw = RawNode::new(&rc, storage, &logger)?;
    let (tx, rx) = mpsc::channel(1024);
    replica.applied = snap_index;
    let (published, state) = watch::channel(node_state(&raw, snap_index));
    let handle = Handle::new(cfg.id, tx, state, cfg.request_timeout + cfg.tick * 2);
    let runner = Runner {
        raw,
        replica,
        transport: Arc::new(transport),
        inbox,
        requests: rx,
        proposals: BTreeMap::new(),
        reads_inflight: BTreeMap::new(),
        reads_ready: Vec::new(),
        member_wait: None,
        transfer_wait: None,
        published,
        read_nonce: nonce_rng.random(),
        next_read: 0,
        cfg,
    };
    Ok((handle, tokio::spawn(runner.run())))
}

struct Runner<S: StateMachine, T> {
    cfg: NodeConfig,
    raw: RawNode<DiskStorage>,
    replica: Replica<S>,
    transport: Arc<T>,
    inbox: mpsc::Receiver<Inbound>,
    requests: mpsc::Receiver<Request<S>>,
    /// Proposals in this node's log, by index, waiting to be applied.
    proposals: BTreeMap<u64, Pending<S::Output>>,
    /// Reads waiting for their ReadIndex, by read id.
    reads_inflight: BTreeMap<u64, ReadWait<S>>,
    /// Reads with a read index, waiting for the machine to apply up to it.
    reads_ready: Vec<(u64, ReadWait<S>)>,
    member_wait: Option<MemberWait>,
    transfer_wait: Option<TransferWait>,
    /// The applied index, role, leader and term, as last published.
    published: watch::Sender<NodeState>,
    /// Distinguishes this incarnation's read ids from a previous one's late answers.
    read_nonce: u64,
    next_read: u64,
}

/// Runs a blocking write (an fsync). On a multi-threaded runtime the worker hands its other
/// tasks to another thread meanwhile, so the node's transport and the other tasks keep
/// running while the disk works; on a current-thread runtime (the tests' paused clock) it
/// just runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    if multi_thread() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn multi_thread() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// What the node's watch says now.
fn node_state(raw: &RawNode<DiskStorage>, applied: u64) -> NodeState {
    let r = &raw.raft;
    NodeState {
        applied,
        role: role_of(r.state),
        leader: (r.leader_id != 0).then_some(r.leader_id),
        term: r.term,
    }
}

fn role_of(s: StateRole) -> Role {
    match s {
        StateRole::Leader => Role::Leader,
        StateRole::Candidate => Role::Candidate,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Follower => Role::Follower,
    }
}

/// How many queued messages or requests one wake-up takes before handling `Ready`.
const BATCH: usize = 256;

impl<S: StateMachine, T: Transport> Runner<S, T> {
    async fn run(mut self) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire();
                }
                Some(m) = self.inbox.recv() => {
                    self.on_inbound(m);
                    for _ in 0..BATCH {
                        match self.inbox.try_recv() {
                            Ok(m) => self.on_inbound(m),
                            Err(_) => break,
                        }
                    }
                }
                r = self.requests.recv() => {
                    let Some(r) = r else { break };
                    if !self.on_request(r)? {
                        return Ok(());
                    }
                    for _ in 0..BATCH {
                        match self.requests.try_recv() {
                            Ok(r) => if !self.on_request(r)? { return Ok(()) },
                            Err(_) => break,
                        }
                    }
                }
            }
            self.handle_ready().await?;
            self.check_transfer();
            self.publish();
        }
        self.raw.mut_store().flush()?;
        Ok(())
    }

    fn on_inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Message(m) => {
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(node = self.cfg.id, "step: {e}");
                }
            }
            Inbound::Unreachable(id) => self.raw.report_unreachable(id),
            Inbound::SnapshotStatus { to, ok } => self.raw.report_snapshot(
                to,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
        }
    }

    /// The error for a request this node cannot serve as leader.
    fn not_leader(&self) -> ClientError {
        let leader = self.raw.raft.leader_id;
        if leader == 0 || leader == self.cfg.id {
            ClientError::NoQuorum
        } else {
            ClientError::NotLeader {
                leader: Some(leader),
            }
        }
    }

    /// Handles one request; `Ok(false)` means stop.
    fn on_request(&mut self, r: Request<S>) -> Result<bool, NodeError> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        match r {
            Request::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader
                    || self.raw.propose(vec![], data).is_err()
                {
                    let _ = reply.send(Err(self.not_leader()));
                } else {
                    let index = self.raw.raft.raft_log.last_index();
                    let term = self.raw.raft.term;
                    self.proposals.insert(
                        index,
                        Pending {
                            term,
                            deadline,
                            reply,
                        },
                    );
                }
            }
            Request::Read { f } => match self.cfg.read_mode {
                ReadMode::UnsafeLocal => f(Ok(&self.replica.sm)),
                ReadMode::ReadIndex => {
                    if self.raw.raft.leader_id == 0 {
                        f(Err(ClientError::NoQuorum));
                    } else {
                        let id = self.next_read;
                        self.next_read += 1;
                        let mut ctx = self.read_nonce.to_be_bytes().to_vec();
                        ctx.extend_from_slice(&id.to_be_bytes());
                        self.raw.read_index(ctx);
                        self.reads_inflight.insert(id, ReadWait { f, deadline });
                    }
                }
            },
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::Stats { reply } => {
                let (writes, entries) = self.raw.store().write_stats();
                let _ = reply.send(Stats { writes, entries });
            }
            Request::ChangeMembership { changes, reply } => {
                let r = self.propose_membership(&changes);
                match r {
                    Ok((index, term)) => {
                        self.member_wait = Some(MemberWait {
                            index,
                            term,
                            deadline,
                            reply,
                        })
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::TransferLeader { to, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                } else if to == self.cfg.id {
                    let _ = reply.send(Ok(()));
                } else if !self.raw.raft.prs().conf().voters().contains(to) {
                    let _ = reply.send(Err(ClientError::InvalidMembership(format!(
                        "node {to} is not a voter: leadership can only go to a voter"
                    ))));
                } else if let Some(t) = &self.transfer_wait {
                    let _ = reply.send(Err(ClientError::InvalidMembership(format!(
                        "a leader transfer to {} is already in progress",
                        t.to
                    ))));
                } else {
                    self.raw.transfer_leader(to);
                    self.transfer_wait = Some(TransferWait {
                        to,
                        deadline,
                        reply,
                    });
                }
            }
            Request::Shutdown { reply } => {
                self.raw.mut_store().flush()?;
                let _ = reply.send(());
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks and proposes a membership change; its (index, term) in the log.
    fn propose_membership(
        &mut self,
        changes: &[crate::MemberChange],
    ) -> Result<(u64, u64), ClientError> {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if self.member_wait.is_some()
            || r.pending_conf_index > r.raft_log.applied
            || membership::is_joint(&r.prs().conf().to_conf_state())
        {
            return Err(ClientError::MembershipChangeInProgress);
        }
        let cc = membership::validate(r.prs(), self.cfg.id, changes)?;
        if self.raw.propose_conf_change(vec![], cc).is_err() {
            return Err(self.not_leader());
        }
        Ok((self.raw.raft.raft_log.last_index(), self.raw.raft.term))
    }

    /// Publish the applied index, role, leader and term if one of them changed.
    fn publish(&self) {
        let now = node_state(&self.raw, self.replica.applied);
        self.published.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    fn status(&self) -> Status {
        let r = &self.raw.raft;
        let (voters, learners) = membership::members(&r.prs().conf().to_conf_state());
        let progress = if r.state == StateRole::Leader {
            r.prs()
                .iter()
                .map(|(&id, pr)| {
                    (
                        id,
                        PeerProgress {
                            matched: pr.matched,
                            recent_active: pr.recent_active,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: self.cfg.id,
            role: role_of(r.state),
            leader: (r.leader_id != 0).then_some(r.leader_id),
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.replica.applied,
            voters,
            learners,
            progress,
        }
    }

    /// Fails what waited too long.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&i, _)| i)
            .collect();
        for i in late {
            if let Some(p) = self.proposals.remove(&i) {
                let _ = p.reply.send(Err(ClientError::Timeout));
            }
        }
        let late: Vec<u64> = self
            .reads_inflight
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&i, _)| i)
            .collect();
        for i in late {
            if let Some(r) = self.reads_inflight.remove(&i) {
                (r.f)(Err(ClientError::Timeout));
            }
        }
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .partition(|(_, r)| r.deadline <= now);
        self.reads_ready = keep;
        for (_, r) in late {
            (r.f)(Err(ClientError::Timeout));
        }
        if self.member_wait.as_ref().is_some_and(|w| w.deadline <= now) {
            if let Some(w) = self.member_wait.take() {
                let _ = w.reply.send(Err(ClientError::Timeout));
            }
        }
        self.check_transfer();
    }

    /// Answers a leader transfer once this node sees the new leader, or at its deadline.
    fn check_transfer(&mut self) {
        let Some(t) = &self.transfer_wait else { return };
        let r = if self.raw.raft.leader_id == t.to {
            Ok(())
        } else if t.deadline <= Instant::now() {
            Err(ClientError::Timeout)
        } else {
            return;
        };
        if let Some(t) = self.transfer_wait.take() {
            let _ = t.reply.send(r);
        }
    }

    /// Handles `Ready`s until raft-rs has nothing more (bounded: a busy node still gets back
    /// to its tick and inbox).
    async fn handle_ready(&mut self) -> Result<(), NodeError> {
        self.maybe_leave_joint();
        for _ in 0..4 {
            if !self.raw.has_ready() {
                break;
            }
            self.handle_one_ready().await?;
        }
        Ok(())
    }

    /// Handles one `Ready` in raft-rs's documented order; see the crate docs.
    async fn handle_one_ready(&mut self) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        let soft = rd.ss().map(|ss| (ss.leader_id, ss.raft_state));

        // 1. A leader's messages may leave before its own write (Raft thesis §10.2.1).
        let sent = self.send(rd.take_messages());

        // 2. Snapshot, entries, hard state: one atomic, fsynced write. A hard state whose
        //    only change is the commit index promises nothing to anyone: it waits in memory
        //    for the next write (see the storage docs), which saves an fsync per commit.
        //    Only once the write is durable do the messages that promise it leave (votes,
        //    append acknowledgements: `persisted_messages`).
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        let hs = rd.hs().cloned();
        let old = self.raw.store().hard_state();
        let vote_or_term = hs
            .as_ref()
            .is_some_and(|h| h.term != old.term || h.vote != old.vote);
        if snapshot.is_some() || !rd.entries().is_empty() || vote_or_term {
            let persisted = rd.take_persisted_messages();
            self.persist(
                snapshot.as_ref(),
                rd.entries(),
                hs.as_ref(),
                sent,
                persisted,
            )
            .await?;
        } else {
            if let Some(h) = hs {
                self.raw.mut_store().set_commit(h.commit);
            }
            self.send(rd.take_persisted_messages());
        }

        // 3. Apply the snapshot, then the committed entries (durable by construction).
        if let Some(s) = snapshot {
            let index = s.get_metadata().index;
            self.replica.restore(index, &s.data)?;
            let lost: Vec<u64> = self.proposals.range(..=index).map(|(&i, _)| i).collect();
            for i in lost {
                if let Some(p) = self.proposals.remove(&i) {
                    let _ = p.reply.send(Err(self.not_leader()));
                }
            }
        }
        self.apply(rd.take_committed_entries())?;
        for rs in rd.take_read_states() {
            self.on_read_state(rs.index, &rs.request_ctx);
        }

        // 4. Advance.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply_to(self.replica.applied);
        self.raw.mut_store().set_applied(self.replica.applied);

        if let Some((leader, role)) = soft {
            self.on_soft_state(leader, role);
        }
        self.serve_reads();
        self.maybe_compact()
    }

    /// Persists a `Ready` (see [`DiskStorage::persist_ready`]), then hands `persisted` (the
    /// messages that promise durability: votes, append acknowledgements) to the transport.
    ///
    /// On a multi-threaded runtime the write runs on the blocking pool while this task waits,
    /// and `persisted` leave from there as soon as the fsync returned, without waiting for
    /// this task to be scheduled again (a follower's acknowledgement is on the commit's
    /// critical path). When step 1 handed messages to the transport (a leader's appends), the
    /// task first yields once, so that the transport's writers, woken on this worker, put
    /// them on the wire before the write starts: the followers' writes then overlap the
    /// leader's.
    async fn persist(
        &mut self,
        snapshot: Option<&raft::eraftpb::Snapshot>,
        entries: &[Entry],
        hs: Option<&raft::eraftpb::HardState>,
        sent: bool,
        persisted: Vec<raft::eraftpb::Message>,
    ) -> Result<(), NodeError> {
        if !multi_thread() || self.cfg.storage.unsafe_hard_state_first {
            self.raw.mut_store().persist_ready(snapshot, entries, hs)?;
            self.send(persisted);
            return Ok(());
        }
        if sent {
            tokio::task::yield_now().await;
        }
        let w = self.raw.mut_store().begin_ready(snapshot, entries, hs)?;
        let transport = self.transport.clone();
        let w = tokio::task::spawn_blocking(move || {
            let w = w.commit();
            if w.is_ok() {
                for m in persisted {
                    transport.send(m);
                }
            }
            w
        })
        .await
        .map_err(|e| {
            StoreError::Io(std::io::Error::other(format!(
                "the storage commit did not finish: {e}"
            )))
        })?;
        Ok(self.raw.mut_store().end_ready(w)?)
    }

    /// Hands `msgs` to the transport; whether there were any.
    fn send(&self, msgs: Vec<raft::eraftpb::Message>) -> bool {
        let any = !msgs.is_empty();
        for m in msgs {
            self.transport.send(m);
        }
        any
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        for e in entries {
            if e.index <= self.replica.applied {
                continue;
            }
            let out = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => Some(self.replica.apply(e.index, &e.data)?),
                EntryType::EntryConfChange => {
                    let cc = codec::decode_conf_change(&e.data)?;
                    let mut single = raft::eraftpb::ConfChangeSingle::default();
                    single.set_change_type(cc.get_change_type());
                    single.node_id = cc.node_id;
                    let mut v2 = ConfChangeV2::default();
                    v2.mut_changes().push(single);
                    self.apply_conf_change(e.index, v2)?;
                    None
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = codec::decode_conf_change_v2(&e.data)?;
                    self.apply_conf_change(e.index, cc)?;
                    None
                }
            };
            self.replica.applied = e.index;
            self.on_applied_for_membership(&e);
            // Anything pending below this index can no longer be ours.
            while let Some(entry) = self.proposals.first_entry() {
                if *entry.key() > e.index {
                    break;
                }
                let (i, p) = entry.remove_entry();
                let r = match (&out, i == e.index && p.term == e.term) {
                    (Some(out), true) => out.clone(),
                    _ => Err(self.not_leader()),
                };
                let _ = p.reply.send(r);
            }
        }
        Ok(())
    }

    /// Applies a committed conf change and makes the new configuration durable. One already
    /// in the configuration the storage restored (at or below its index) is skipped. A change
    /// raft refuses is ignored, the same way on every node (the configuration is the same).
    fn apply_conf_change(&mut self, index: u64, cc: ConfChangeV2) -> Result<(), NodeError> {
        if index <= self.raw.store().conf_state().0 {
            return Ok(());
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.raw.mut_store().set_conf_state(index, cs)?,
            Err(e) => tracing::warn!(node = self.cfg.id, index, "conf change ignored: {e}"),
        }
        Ok(())
    }

    /// Answers the membership change waiting here once `e` settles it.
    fn on_applied_for_membership(&mut self, e: &Entry) {
        let Some(w) = &self.member_wait else { return };
        if e.index < w.index {
            return;
        }
        let conf_entry = e.get_entry_type() != EntryType::EntryNormal;
        let r = if e.index == w.index && e.term != w.term {
            Err(self.not_leader())
        } else if e.index == w.index && !conf_entry {
            // raft-rs replaced the change with an empty entry: it refused it.
            Err(ClientError::MembershipChangeInProgress)
        } else if conf_entry {
            let cs = self.raw.raft.prs().conf().to_conf_state();
            if membership::is_joint(&cs) {
                return;
            }
            Ok(membership::members(&cs))
        } else {
            return;
        };
        if let Some(w) = self.member_wait.take() {
            let _ = w.reply.send(r);
        }
    }

    /// A leader in a joint configuration with no leave pending proposes the leave (raft-rs
    /// does it on applying the joint entry, but not if leadership changed in between).
    fn maybe_leave_joint(&mut self) {
        let r = &self.raw.raft;
        let conf = r.prs().conf();
        if r.state == StateRole::Leader
            && *conf.auto_leave()
            && membership::is_joint(&conf.to_conf_state())
            && r.pending_conf_index <= r.raft_log.applied
            && r.lead_transferee.is_none()
        {
            let _ = self
                .raw
                .propose_conf_change(vec![], ConfChangeV2::default());
        }
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        if ctx.len() != 16 || ctx[..8] != self.read_nonce.to_be_bytes() {
            return;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&ctx[8..]);
        if let Some(w) = self.reads_inflight.remove(&u64::from_be_bytes(id)) {
            self.reads_ready.push((index, w));
        }
    }

    fn serve_reads(&mut self) {
        if self.reads_ready.is_empty() {
            return;
        }
        let applied = self.replica.applied;
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.reads_ready = wait;
        for (_, r) in ready {
            (r.f)(Ok(&self.replica.sm));
        }
    }

    fn on_soft_state(&mut self, _leader: u64, role: StateRole) {
        if role != StateRole::Leader {
            // Their fate is unknown now: the entries may or may not commit under a new leader.
            let err = self.not_leader();
            for (_, p) in std::mem::take(&mut self.proposals) {
                let _ = p.reply.send(Err(err.clone()));
            }
            if let Some(w) = self.member_wait.take() {
                let _ = w.reply.send(Err(err.clone()));
            }
        }
        // A read index asked of a former leader may never be answered.
        let err = self.not_leader();
        for (_, r) in std::mem::take(&mut self.reads_inflight) {
            (r.f)(Err(err.clone()));
        }
    }

    /// Takes a snapshot and compacts the log every `snapshot_every` entries, or as soon as
    /// raft-rs wanted to send a snapshot the storage could not serve (one from before a
    /// new member joined does not name it, and the member would refuse it).
    fn maybe_compact(&mut self) -> Result<(), NodeError> {
        let snap = self.raw.store().snapshot_metadata().index;
        let applied = self.replica.applied;
        let wanted = self.raw.store().take_snapshot_wanted();
        if applied <= snap || (applied < snap + self.cfg.snapshot_every && !wanted) {
            return Ok(());
        }
        let data = self.replica.snapshot()?;
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let store = self.raw.mut_store();
        blocking(|| store.compact(applied, cs, data))?;
        Ok(())
    }
}
