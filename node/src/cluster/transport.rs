//! Raft over the RPC port's Raft lane (mutual TLS): the [`Transport`] a node sends with, and
//! the router that turns what the lane receives into the node's inbound messages.
//!
//! ```text
//!  Raft task --send(msg)--> RpcTransport --RaftLink (one per peer, bounded queue)--> peer
//!                              \--MsgSnapshot: a connection of its own, fate reported back
//!  peer --Raft lane--> RpcServer --RaftInbound{from: cert name, bytes}--> route() --> inbox
//! ```
//!
//! Invariants:
//! - `send` never blocks: each peer's link has a bounded queue ([`crate::rpc::client::RAFT_QUEUE`]);
//!   a full queue drops the message and tells Raft the peer is unreachable, as does a failed
//!   dial or write. Snapshots go on a connection of their own, one at a time per peer, so they
//!   never sit in front of heartbeats, and their outcome is reported
//!   ([`Inbound::SnapshotStatus`]).
//! - Peer addresses come from the replicated server records ([`Peers::set`]); before a new
//!   server has applied any, from the servers its admission named (the peers file).
//! - A received message is delivered only if the Raft id it claims to come from belongs to the
//!   member named by the sender's certificate, and it is addressed to this node: a member
//!   cannot speak for another.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use quarry_consensus::transport::{Inbound, Transport};
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::rpc::server::RaftInbound;
use crate::rpc::{Dialer, RaftLink};

/// Where a Raft peer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// Its member name (its certificate's common name).
    pub name: String,
    /// Its RPC address.
    pub addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The address book (Raft id -> name and RPC address) and when each peer was last heard.
#[derive(Debug, Default)]
pub struct Peers {
    book: RwLock<BTreeMap<u64, PeerAddr>>,
    seen: Mutex<HashMap<u64, Instant>>,
}

impl Peers {
    /// A book with these entries.
    pub fn new(book: BTreeMap<u64, PeerAddr>) -> Arc<Peers> {
        Arc::new(Peers {
            book: RwLock::new(book),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Replace the whole book.
    pub fn set(&self, book: BTreeMap<u64, PeerAddr>) {
        *self.book.write().unwrap_or_else(|p| p.into_inner()) = book;
    }

    /// The whole book.
    pub fn all(&self) -> BTreeMap<u64, PeerAddr> {
        self.book.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One peer.
    pub fn get(&self, id: u64) -> Option<PeerAddr> {
        self.book
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn heard(&self, id: u64) {
        lock(&self.seen).insert(id, Instant::now());
    }

    /// Whether a message from `id` arrived within `within`.
    pub fn heard_within(&self, id: u64, within: Duration) -> bool {
        lock(&self.seen)
            .get(&id)
            .is_some_and(|t| t.elapsed() <= within)
    }
}

struct Link {
    addr: SocketAddr,
    link: RaftLink,
}

/// The sending half: one [`RaftLink`] per peer, made on the first message to it and remade
/// when the peer's address changes.
pub struct RpcTransport {
    dialer: Dialer,
    peers: Arc<Peers>,
    inbox: mpsc::Sender<Inbound>,
    links: Mutex<HashMap<u64, Link>>,
    snapshots: Arc<Mutex<HashSet<u64>>>,
}

impl std::fmt::Debug for RpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTransport").finish_non_exhaustive()
    }
}

impl RpcTransport {
    /// A transport dialing with `dialer` at the addresses in `peers`; feedback for Raft
    /// (unreachable peers, snapshot outcomes) goes to `inbox`, the node's own channel.
    pub fn new(dialer: Dialer, peers: Arc<Peers>, inbox: mpsc::Sender<Inbound>) -> Self {
        RpcTransport {
            dialer,
            peers,
            inbox,
            links: Mutex::new(HashMap::new()),
            snapshots: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    fn send_snapshot(&self, to: u64, addr: SocketAddr, bytes: Vec<u8>) {
        if !lock(&self.snapshots).insert(to) {
            // One snapshot at a time per peer; Raft asks again after this one's outcome.
            let _ = self
                .inbox
                .try_send(Inbound::SnapshotStatus { to, ok: false });
            return;
        }
        let dialer = self.dialer.clone();
        let inbox = self.inbox.clone();
        let inflight = self.snapshots.clone();
        tokio::spawn(async move {
            let r = dialer.raft_once(addr, &bytes).await;
            if let Err(e) = &r {
                tracing::info!(peer = to, %addr, "raft snapshot not delivered: {e}");
            }
            lock(&inflight).remove(&to);
            let _ = inbox.try_send(Inbound::SnapshotStatus { to, ok: r.is_ok() });
        });
    }
}

impl Transport for RpcTransport {
    fn send(&self, msg: Message) {
        let to = msg.to;
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let unreachable = || {
            let report = if snapshot {
                Inbound::SnapshotStatus { to, ok: false }
            } else {
                Inbound::Unreachable(to)
            };
            let _ = self.inbox.try_send(report);
        };
        let Some(peer) = self.peers.get(to) else {
            tracing::debug!(peer = to, "no address for raft peer");
            unreachable();
            return;
        };
        let bytes = match quarry_consensus::codec::encode_pb(&msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("raft message not encodable: {e}");
                unreachable();
                return;
            }
        };
        if snapshot {
            self.send_snapshot(to, peer.addr, bytes);
            return;
        }
        let mut links = lock(&self.links);
        let stale = links.get(&to).is_none_or(|l| l.addr != peer.addr);
        if stale {
            let inbox = self.inbox.clone();
            let link = self.dialer.raft_link_reporting(
                peer.addr,
                Arc::new(move || {
                    let _ = inbox.try_send(Inbound::Unreachable(to));
                }),
            );
            links.insert(
                to,
                Link {
                    addr: peer.addr,
                    link,
                },
            );
        }
        if !links[&to].link.send(bytes) {
            drop(links);
            unreachable();
        }
    }
}

/// Deliver what the Raft lane receives to the node `me`'s inbox, checking each message's
/// claimed sender against the certificate's member name. Runs until the lane's channel closes.
pub async fn route(
    me: u64,
    mut lane: mpsc::Receiver<RaftInbound>,
    peers: Arc<Peers>,
    inbox: mpsc::Sender<Inbound>,
) {
    while let Some(m) = lane.recv().await {
        let msg = match quarry_consensus::codec::decode_message(&m.bytes) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(peer = %m.from, "undecodable raft message dropped: {e}");
                continue;
            }
        };
        match peers.get(msg.from) {
            Some(p) if p.name == m.from => {}
            other => {
                tracing::debug!(
                    peer = %m.from,
                    claimed = msg.from,
                    known_as = ?other.map(|p| p.name),
                    "raft message dropped: the sender's certificate does not match the raft id it claims"
                );
                continue;
            }
        }
        if msg.to != me {
            tracing::debug!(to = msg.to, "raft message for another node dropped");
            continue;
        }
        peers.heard(msg.from);
        if inbox.is_closed() {
            return;
        }
        let _ = inbox.try_send(Inbound::Message(msg));
    }
}
