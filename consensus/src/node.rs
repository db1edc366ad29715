//! The owner task: one task owns the `RawNode`, its storage and the state machine, and
//! selects over the tick, inbound messages and client requests, handling `Ready` after each
//! wake-up. See the crate docs for the order and the invariants.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use raft::eraftpb::{Entry, EntryType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slog::Drain;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::codec;
use crate::handle::{Handle, ReadFn, Request, Role, Status};
use crate::machine::{Replica, StateMachine};
use crate::storage::{RedbStorage, StorageOptions};
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
    /// Directory of the node's `raft.redb`.
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

/// The owner task; it ends with the fault that stopped the node, if any.
pub type NodeTask = JoinHandle<Result<(), NodeError>>;

/// Starts a node: opens (or creates) its storage, restores its state machine from the latest
/// snapshot, and spawns its owner task on the current tokio runtime. Messages for the node
/// must be delivered to the sender of `inbox` (see [`crate::transport::inbox`]).
pub fn start<S: StateMachine, T: Transport>(
    cfg: NodeConfig,
    machine: S,
    transport: T,
    inbox: mpsc::Receiver<Inbound>,
) -> Result<(Handle<S>, NodeTask), NodeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| NodeError::Raft(raft::Error::Io(e)))?;
    let storage = RedbStorage::open(
        &cfg.data_dir.join("raft.redb"),
        &cfg.voters,
        cfg.storage.clone(),
    )?;
    let mut replica = Replica::new(machine);
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
    let handle = Handle::new(cfg.id, tx, cfg.request_timeout + cfg.tick * 2);
    replica.applied = snap_index;
    let runner = Runner {
        raw,
        replica,
        transport,
        inbox,
        requests: rx,
        proposals: BTreeMap::new(),
        reads_inflight: BTreeMap::new(),
        reads_ready: Vec::new(),
        read_nonce: nonce_rng.random(),
        next_read: 0,
        cfg,
    };
    Ok((handle, tokio::spawn(runner.run())))
}

struct Runner<S: StateMachine, T> {
    cfg: NodeConfig,
    raw: RawNode<RedbStorage>,
    replica: Replica<S>,
    transport: T,
    inbox: mpsc::Receiver<Inbound>,
    requests: mpsc::Receiver<Request<S>>,
    /// Proposals in this node's log, by index, waiting to be applied.
    proposals: BTreeMap<u64, Pending<S::Output>>,
    /// Reads waiting for their ReadIndex, by read id.
    reads_inflight: BTreeMap<u64, ReadWait<S>>,
    /// Reads with a read index, waiting for the machine to apply up to it.
    reads_ready: Vec<(u64, ReadWait<S>)>,
    /// Distinguishes this incarnation's read ids from a previous one's late answers.
    read_nonce: u64,
    next_read: u64,
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
            self.handle_ready()?;
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
            Request::Shutdown { reply } => {
                self.raw.mut_store().flush()?;
                let _ = reply.send(());
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn status(&self) -> Status {
        let r = &self.raw.raft;
        let conf = r.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        Status {
            id: self.cfg.id,
            role: match r.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate => Role::Candidate,
                StateRole::PreCandidate => Role::PreCandidate,
                StateRole::Follower => Role::Follower,
            },
            leader: (r.leader_id != 0).then_some(r.leader_id),
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.replica.applied,
            voters,
            learners,
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
    }

    /// Handles one `Ready` in raft-rs's documented order; see the crate docs.
    fn handle_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        let soft = rd.ss().map(|ss| (ss.leader_id, ss.raft_state));

        // 1. A leader's messages may leave before its own write (Raft thesis §10.2.1).
        self.send(rd.take_messages());

        // 2. Snapshot, entries, hard state: one atomic, fsynced write.
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        if snapshot.is_some() || !rd.entries().is_empty() || rd.hs().is_some() {
            let hs = rd.hs().cloned();
            self.raw
                .mut_store()
                .persist_ready(snapshot.as_ref(), rd.entries(), hs.as_ref())?;
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

        // 4. Only now may the messages that promise durability leave (votes, append acks).
        self.send(rd.take_persisted_messages());

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

    fn send(&self, msgs: Vec<raft::eraftpb::Message>) {
        for m in msgs {
            self.transport.send(m);
        }
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
                    self.raw.apply_conf_change(&cc)?;
                    None
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = codec::decode_conf_change_v2(&e.data)?;
                    self.raw.apply_conf_change(&cc)?;
                    None
                }
            };
            self.replica.applied = e.index;
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
        }
        // A read index asked of a former leader may never be answered.
        let err = self.not_leader();
        for (_, r) in std::mem::take(&mut self.reads_inflight) {
            (r.f)(Err(err.clone()));
        }
    }

    fn maybe_compact(&mut self) -> Result<(), NodeError> {
        let snap = self.raw.store().snapshot_metadata().index;
        let applied = self.replica.applied;
        if applied < snap + self.cfg.snapshot_every {
            return Ok(());
        }
        let data = self.replica.snapshot()?;
        let cs = self.raw.raft.prs().conf().to_conf_state();
        self.raw.mut_store().compact(applied, cs, data)?;
        Ok(())
    }
}
