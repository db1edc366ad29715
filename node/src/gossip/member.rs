//! The gossip member: the one owner of this server's chitchat instance.
//!
//! It starts chitchat over the sealing transport, publishes this server's [`ServerRecord`], and
//! every gossip round turns chitchat's view into liveness *data*: for each known server
//! alive / suspect / dead with since-when, published on a tokio watch channel (receivers are
//! woken only when a state, generation or record changed; the heartbeat and highest key version
//! it also carries are refreshed silently). Per server name only the highest generation counts.
//! `Suspect`: chitchat still counts it live but no new heartbeat arrived for [`SUSPECT_AFTER`],
//! or it was never yet seen alive. `Dead`: the failure detector says so (or chitchat forgot it
//! after its grace period: the member keeps it listed as dead since then).
//!
//! Seeds: chitchat's own seed list is fixed when it starts; the servers of a cluster change.
//! The member keeps its own seed list ([`GossipControl::set_seeds`]) and every [`SEED_EVERY`]
//! opens a round with each seed that is not live in its view, so a server that joined after
//! this one started is found even if nobody gossips to it first.
//!
//! Every change of state is logged (`gossip: server NAME is dead`, `... is alive again`), so a
//! run's logs say whether a server was ever marked dead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::{spawn_chitchat, ChitchatHandle, Heartbeat};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::record::{RecordError, ServerRecord, RECORD_KEY};
use super::seal::SealKey;
use super::transport::SealedTransport;
use super::{chitchat_config, GOSSIP_INTERVAL};
use crate::types::ServerId;

/// No new heartbeat for this long makes a live server `Suspect`.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(1);
/// How often seeds that are not live are gossiped to.
pub const SEED_EVERY: Duration = Duration::from_secs(1);
/// How long chitchat remembers a dead server before it forgets it (its default is 24 h, and
/// every digest carries the dead).
pub const FORGET_DEAD_AFTER: Duration = Duration::from_secs(60);

/// A server's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveState {
    /// Heartbeats arrive.
    Alive,
    /// Late, or not confirmed yet.
    Suspect,
    /// The failure detector gave up on it.
    Dead,
}

impl LiveState {
    /// `alive`, `suspect` or `dead` (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            LiveState::Alive => "alive",
            LiveState::Suspect => "suspect",
            LiveState::Dead => "dead",
        }
    }
}

/// One server as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLiveness {
    /// Its state.
    pub state: LiveState,
    /// When it entered that state (ms since 1970, this member's clock).
    pub since_unix_ms: u64,
    /// The generation this is about.
    pub generation: u64,
    /// Its last published record.
    pub record: Option<ServerRecord>,
    /// Its heartbeat counter as last seen (refreshed without waking receivers).
    #[serde(default)]
    pub heartbeat: u64,
    /// The highest version of its keys as last seen (refreshed without waking receivers):
    /// within one generation it never goes backwards.
    #[serde(default)]
    pub max_version: u64,
}

/// Options of a member beyond its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberOptions {
    /// How long a dead server is remembered by chitchat ([`FORGET_DEAD_AFTER`]).
    pub forget_after: Duration,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions {
            forget_after: FORGET_DEAD_AFTER,
        }
    }
}

/// Every known server, by name.
pub type Liveness = BTreeMap<ServerId, ServerLiveness>;

/// Why the member could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The record is not publishable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// chitchat did not start (the socket could not be bound).
    #[error("gossip did not start: {0}")]
    Start(String),
}

#[derive(Debug)]
enum Command {
    SetRecord(String),
    SetSeeds(Vec<SocketAddr>),
    Shutdown,
}

/// What other tasks may tell a running member (cheap to clone).
#[derive(Debug, Clone)]
pub struct GossipControl {
    commands: mpsc::UnboundedSender<Command>,
}

impl GossipControl {
    /// Publishes a new record (same name and generation).
    pub fn set_record(&self, record: &ServerRecord) -> Result<(), GossipError> {
        let _ = self.commands.send(Command::SetRecord(record.encode()?));
        Ok(())
    }

    /// Replaces the seed list (the other servers' gossip addresses).
    pub fn set_seeds(&self, seeds: Vec<SocketAddr>) {
        let _ = self.commands.send(Command::SetSeeds(seeds));
    }
}

/// A running member. Dropping it without [`GossipMember::shutdown`] leaves the task running.
#[derive(Debug)]
pub struct GossipMember {
    liveness: watch::Receiver<Liveness>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl GossipMember {
    /// Starts gossip as `record.name` in `record.generation`, listening on `listen`.
    pub async fn start(
        record: ServerRecord,
        cluster_id: &str,
        key: SealKey,
        listen: SocketAddr,
        seeds: &[SocketAddr],
        transport: Option<SealedTransport>,
    ) -> Result<Self, GossipError> {
        Self::start_with(
            record,
            cluster_id,
            key,
            listen,
            seeds,
            transport,
            MemberOptions::default(),
        )
        .await
    }

    /// [`GossipMember::start`] with options.
    pub async fn start_with(
        record: ServerRecord,
        cluster_id: &str,
        key: SealKey,
        listen: SocketAddr,
        seeds: &[SocketAddr],
        transport: Option<SealedTransport>,
        options: MemberOptions,
    ) -> Result<Self, GossipError> {
        let value = record.encode()?;
        let transport = transport
            .unwrap_or_else(|| SealedTransport::new(key, record.name.0.clone(), record.generation));
        let mut cfg = chitchat_config(&record.name.0, record.generation, cluster_id, listen, seeds);
        cfg.failure_detector_config.dead_node_grace_period = options.forget_after;
        let handle = spawn_chitchat(cfg, vec![(RECORD_KEY.to_owned(), value)], &transport)
            .await
            .map_err(|e| GossipError::Start(e.to_string()))?;
        let (tx, rx) = watch::channel(Liveness::new());
        let (ctx, crx) = mpsc::unbounded_channel();
        let seeds = Seeds {
            own: listen,
            addrs: seeds.to_vec(),
        };
        let task = tokio::spawn(run(handle, tx, crx, seeds));
        Ok(GossipMember {
            liveness: rx,
            commands: ctx,
            task,
        })
    }

    /// The liveness channel (the current value is the latest snapshot).
    pub fn liveness(&self) -> watch::Receiver<Liveness> {
        self.liveness.clone()
    }

    /// Publishes a new record (same name and generation).
    pub fn set_record(&self, record: &ServerRecord) -> Result<(), GossipError> {
        self.control().set_record(record)
    }

    /// A handle for other tasks (records, seeds).
    pub fn control(&self) -> GossipControl {
        GossipControl {
            commands: self.commands.clone(),
        }
    }

    /// Stops gossip and waits for the task.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.task.await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the tracker remembers per server name.
struct Seen {
    generation: u64,
    heartbeat: Heartbeat,
    heartbeat_at: Instant,
    ever_alive: bool,
}

/// The member's own seed list.
struct Seeds {
    own: SocketAddr,
    addrs: Vec<SocketAddr>,
}

async fn run(
    handle: ChitchatHandle,
    tx: watch::Sender<Liveness>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut seeds: Seeds,
) {
    let mut tick = tokio::time::interval(GOSSIP_INTERVAL);
    let mut seed_tick = tokio::time::interval(SEED_EVERY);
    let mut seen: HashMap<ServerId, Seen> = HashMap::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::SetRecord(v)) => {
                    handle.with_chitchat(|c| c.self_node_state().set(RECORD_KEY, &v)).await;
                }
                Some(Command::SetSeeds(addrs)) => seeds.addrs = addrs,
                Some(Command::Shutdown) | None => break,
            },
            _ = tick.tick() => {
                let view = observe(&handle).await;
                let now = Instant::now();
                tx.send_if_modified(|live| update(live, &mut seen, view, now));
            }
            _ = seed_tick.tick() => {
                let live: HashSet<SocketAddr> = handle
                    .with_chitchat(|c| c.live_nodes().map(|id| id.gossip_advertise_addr).collect())
                    .await;
                for a in &seeds.addrs {
                    if *a != seeds.own && !live.contains(a) {
                        let _ = handle.gossip(*a);
                    }
                }
            }
        }
    }
    let _ = handle.shutdown().await;
}

/// One node of chitchat's view.
struct Observed {
    name: ServerId,
    generation: u64,
    heartbeat: Heartbeat,
    max_version: u64,
    live: bool,
    record: Option<ServerRecord>,
}

async fn observe(handle: &ChitchatHandle) -> Vec<Observed> {
    handle
        .with_chitchat(|c| {
            let live: HashSet<_> = c.live_nodes().cloned().collect();
            c.node_states()
                .iter()
                .map(|(id, st)| Observed {
                    name: ServerId(id.node_id.to_string()),
                    generation: id.generation_id,
                    heartbeat: st.heartbeat(),
                    max_version: st.max_version(),
                    live: live.contains(id),
                    record: st
                        .get(RECORD_KEY)
                        .and_then(|v| ServerRecord::decode(v).ok()),
                })
                .collect()
        })
        .await
}

fn update(
    live: &mut Liveness,
    seen: &mut HashMap<ServerId, Seen>,
    view: Vec<Observed>,
    now: Instant,
) -> bool {
    // Highest generation per name.
    let mut top: BTreeMap<ServerId, Observed> = BTreeMap::new();
    for o in view {
        if top.get(&o.name).is_none_or(|t| o.generation > t.generation) {
            top.insert(o.name.clone(), o);
        }
    }
    let mut changed = false;
    let ms = now_ms();
    for (name, o) in top.iter_mut() {
        let fresh = Seen {
            generation: o.generation,
            heartbeat: o.heartbeat,
            heartbeat_at: now,
            ever_alive: false,
        };
        let s = seen.entry(name.clone()).or_insert(fresh);
        if s.generation != o.generation {
            *s = Seen {
                generation: o.generation,
                heartbeat: o.heartbeat,
                heartbeat_at: now,
                ever_alive: false,
            };
        } else if s.heartbeat != o.heartbeat {
            s.heartbeat = o.heartbeat;
            s.heartbeat_at = now;
        }
        let state = if o.live {
            s.ever_alive = true;
            if now.duration_since(s.heartbeat_at) > SUSPECT_AFTER {
                LiveState::Suspect
            } else {
                LiveState::Alive
            }
        } else if s.ever_alive {
            LiveState::Dead
        } else {
            LiveState::Suspect
        };
        let next = Next {
            state,
            generation: o.generation,
            record: o.record.take(),
            heartbeat: o.heartbeat.into(),
            max_version: o.max_version,
        };
        changed |= set(live, name, next, ms);
    }
    // Forgotten by chitchat (grace period over): still listed, as dead.
    let gone: Vec<ServerId> = live
        .keys()
        .filter(|k| !top.contains_key(*k))
        .cloned()
        .collect();
    for name in gone {
        let Some(l) = live.get(&name) else { continue };
        let next = Next {
            state: LiveState::Dead,
            generation: l.generation,
            record: None,
            heartbeat: l.heartbeat,
            max_version: l.max_version,
        };
        changed |= set(live, &name, next, ms);
    }
    changed
}

/// What one round says about one server.
struct Next {
    state: LiveState,
    generation: u64,
    record: Option<ServerRecord>,
    heartbeat: u64,
    max_version: u64,
}

fn log_transition(name: &ServerId, from: Option<LiveState>, next: &Next) {
    match (from, next.state) {
        (Some(a), b) if a == b => {}
        (_, LiveState::Dead) => {
            tracing::warn!(server = %name.0, generation = next.generation, "gossip: server {} is dead", name.0)
        }
        (Some(LiveState::Dead), LiveState::Alive) => {
            tracing::info!(server = %name.0, generation = next.generation, "gossip: server {} is alive again", name.0)
        }
        (_, LiveState::Alive) => {
            tracing::info!(server = %name.0, generation = next.generation, "gossip: server {} is alive", name.0)
        }
        (_, LiveState::Suspect) => {
            tracing::debug!(server = %name.0, generation = next.generation, "gossip: server {} is suspect", name.0)
        }
    }
}

/// Records `next` for `name`; true when receivers must be woken (state, generation or record
/// changed). Heartbeat and version are refreshed either way.
fn set(live: &mut Liveness, name: &ServerId, next: Next, ms: u64) -> bool {
    match live.get_mut(name) {
        Some(l) => {
            l.heartbeat = next.heartbeat;
            l.max_version = next.max_version;
            let same = l.state == next.state
                && l.generation == next.generation
                && (next.record.is_none() || l.record == next.record);
            if same {
                return false;
            }
            if l.state != next.state || l.generation != next.generation {
                log_transition(name, Some(l.state), &next);
                l.since_unix_ms = ms;
            }
            l.state = next.state;
            l.generation = next.generation;
            if next.record.is_some() {
                l.record = next.record;
            }
            true
        }
        None => {
            log_transition(name, None, &next);
            live.insert(
                name.clone(),
                ServerLiveness {
                    state: next.state,
                    since_unix_ms: ms,
                    generation: next.generation,
                    record: next.record,
                    heartbeat: next.heartbeat,
                    max_version: next.max_version,
                },
            );
            true
        }
    }
}
