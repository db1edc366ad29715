//! The gossip member: the one owner of this server's chitchat instance.
//!
//! It starts chitchat over the sealing transport, publishes this server's [`ServerRecord`], and
//! every gossip round turns chitchat's view into liveness *data*: for each known server
//! alive / suspect / dead with since-when, published on a tokio watch channel (sent only when
//! something changed). Per server name only the highest generation counts. `Suspect`: chitchat
//! still counts it live but no new heartbeat arrived for [`SUSPECT_AFTER`], or it was never yet
//! seen alive. `Dead`: the failure detector says so (or chitchat forgot it after its grace
//! period: the member keeps it listed as dead since then).

use std::collections::{BTreeMap, HashMap};
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

enum Command {
    SetRecord(String),
    Shutdown,
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
        let value = record.encode()?;
        let transport = transport
            .unwrap_or_else(|| SealedTransport::new(key, record.name.0.clone(), record.generation));
        let cfg = chitchat_config(&record.name.0, record.generation, cluster_id, listen, seeds);
        let handle = spawn_chitchat(cfg, vec![(RECORD_KEY.to_owned(), value)], &transport)
            .await
            .map_err(|e| GossipError::Start(e.to_string()))?;
        let (tx, rx) = watch::channel(Liveness::new());
        let (ctx, crx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(handle, tx, crx));
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
        let _ = self.commands.send(Command::SetRecord(record.encode()?));
        Ok(())
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

async fn run(
    handle: ChitchatHandle,
    tx: watch::Sender<Liveness>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut tick = tokio::time::interval(GOSSIP_INTERVAL);
    let mut seen: HashMap<ServerId, Seen> = HashMap::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::SetRecord(v)) => {
                    handle.with_chitchat(|c| c.self_node_state().set(RECORD_KEY, &v)).await;
                }
                Some(Command::Shutdown) | None => break,
            },
            _ = tick.tick() => {
                let view = observe(&handle).await;
                let now = Instant::now();
                tx.send_if_modified(|live| update(live, &mut seen, view, now));
            }
        }
    }
    let _ = handle.shutdown().await;
}

/// One node of chitchat's view: name, generation, heartbeat, live?, dead?, record.
type Observed = (ServerId, u64, Heartbeat, bool, bool, Option<ServerRecord>);

async fn observe(handle: &ChitchatHandle) -> Vec<Observed> {
    handle
        .with_chitchat(|c| {
            let live: Vec<_> = c.live_nodes().cloned().collect();
            let dead: Vec<_> = c.dead_nodes().cloned().collect();
            c.node_states()
                .iter()
                .map(|(id, st)| {
                    let record = st
                        .get(RECORD_KEY)
                        .and_then(|v| ServerRecord::decode(v).ok());
                    (
                        ServerId(id.node_id.to_string()),
                        id.generation_id,
                        st.heartbeat(),
                        live.contains(id),
                        dead.contains(id),
                        record,
                    )
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
        if top.get(&o.0).is_none_or(|t| o.1 > t.1) {
            top.insert(o.0.clone(), o);
        }
    }
    let mut changed = false;
    let ms = now_ms();
    for (name, (_, generation, heartbeat, is_live, _is_dead, record)) in &top {
        let s = seen.entry(name.clone()).or_insert(Seen {
            generation: *generation,
            heartbeat: *heartbeat,
            heartbeat_at: now,
            ever_alive: false,
        });
        if s.generation != *generation {
            *s = Seen {
                generation: *generation,
                heartbeat: *heartbeat,
                heartbeat_at: now,
                ever_alive: false,
            };
        } else if s.heartbeat != *heartbeat {
            s.heartbeat = *heartbeat;
            s.heartbeat_at = now;
        }
        let state = if *is_live {
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
        changed |= set(live, name, state, *generation, record.clone(), ms);
    }
    // Forgotten by chitchat (grace period over): still listed, as dead.
    let gone: Vec<ServerId> = live
        .keys()
        .filter(|k| !top.contains_key(*k))
        .cloned()
        .collect();
    for name in gone {
        let (generation, record) = live
            .get(&name)
            .map(|l| (l.generation, l.record.clone()))
            .unwrap_or((0, None));
        changed |= set(live, &name, LiveState::Dead, generation, record, ms);
    }
    changed
}

fn set(
    live: &mut Liveness,
    name: &ServerId,
    state: LiveState,
    generation: u64,
    record: Option<ServerRecord>,
    ms: u64,
) -> bool {
    match live.get_mut(name) {
        Some(l)
            if l.state == state
                && l.generation == generation
                && (record.is_none() || l.record == record) =>
        {
            false
        }
        Some(l) => {
            if l.state != state || l.generation != generation {
                l.since_unix_ms = ms;
            }
            l.state = state;
            l.generation = generation;
            if record.is_some() {
                l.record = record;
            }
            true
        }
        None => {
            live.insert(
                name.clone(),
                ServerLiveness {
                    state,
                    since_unix_ms: ms,
                    generation,
                    record,
                },
            );
            true
        }
    }
}
