//! Raft over the RPC port's Raft lane (mutual TLS): the [`Transport`] a node sends with, and
//! the router that turns what the lane receives into the node's inbound messages.
//!
//! ```text
//!  Raft task --send(msg)--> RpcTransport --RaftLink (one per peer, bounded queue)--> peer
//!                              \--MsgSnapshot: a Bulk lane request, answered once delivered
//!  peer --Raft lane--> RpcServer --RaftInbound{from: cert name, bytes}--> route() --> inbox
//!  peer --Bulk lane--> RpcServer --SnapshotService (same checks)----------------> inbox
//! ```
//!
//! Invariants:
//! - `send` never blocks: each peer's link has a bounded queue ([`crate::rpc::client::RAFT_QUEUE`]);
//!   a full queue drops the message and tells Raft the peer is unreachable, as does a failed
//!   dial or write. Snapshots go on the Bulk lane (DESIGN.md: large transfers never delay a
//!   heartbeat), one at a time per peer, as a request the receiver answers once the snapshot
//!   is in its node's inbox; that answer, or its absence, is the outcome Raft hears
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

use crate::rpc::server::{BoxFuture, RaftInbound, RequestHandler};
use crate::rpc::{Dialer, Lane, RaftLink, RpcError};

/// The first byte of a Bulk lane request carrying a Raft snapshot message (protobuf after it).
pub const BULK_RAFT_SNAPSHOT: u8 = 0;
/// How long delivering one snapshot may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

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
            let mut request = Vec::with_capacity(bytes.len() + 1);
            request.push(BULK_RAFT_SNAPSHOT);
            request.extend_from_slice(&bytes);
            let delivered = async {
                let mut lane = dialer.requests(addr, Lane::Bulk).await?;
                lane.call(&request).await
            };
            let r = tokio::time::timeout(SNAPSHOT_TIMEOUT, delivered)
                .await
                .unwrap_or_else(|_| Err(RpcError::Remote("no answer within 60 s".to_owned())));
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

/// Decode a Raft message that arrived from the member named `from` (its certificate) and
/// check it: the Raft id it claims must be that member's, and it must be for `me`.
fn check(me: u64, peers: &Peers, from: &str, bytes: &[u8]) -> Result<Message, String> {
    let msg = quarry_consensus::codec::decode_message(bytes)
        .map_err(|e| format!("undecodable raft message from {from}: {e}"))?;
    match peers.get(msg.from) {
        Some(p) if p.name == from => {}
        other => {
            return Err(format!(
                "raft message dropped: {from}'s certificate does not match raft id {} (known as \
                 {:?})",
                msg.from,
                other.map(|p| p.name)
            ))
        }
    }
    if msg.to != me {
        return Err(format!("raft message for node {} dropped", msg.to));
    }
    peers.heard(msg.from);
    Ok(msg)
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
        match check(me, &peers, &m.from, &m.bytes) {
            Ok(msg) => {
                if inbox.is_closed() {
                    return;
                }
                let _ = inbox.try_send(Inbound::Message(msg));
            }
            Err(e) => tracing::debug!("{e}"),
        }
    }
}

/// The Bulk lane's handler: Raft snapshots, checked like Raft lane messages, answered once
/// they are in the node's inbox.
#[derive(Debug)]
pub struct SnapshotService {
    me: u64,
    peers: Arc<Peers>,
    inbox: mpsc::Sender<Inbound>,
}

impl SnapshotService {
    /// Deliver to node `me`'s `inbox`, checking senders against `peers`.
    pub fn new(me: u64, peers: Arc<Peers>, inbox: mpsc::Sender<Inbound>) -> SnapshotService {
        SnapshotService { me, peers, inbox }
    }
}

impl RequestHandler for SnapshotService {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            match request.split_first() {
                Some((&BULK_RAFT_SNAPSHOT, bytes)) => {
                    let msg = check(self.me, &self.peers, &peer, bytes)?;
                    self.inbox
                        .send(Inbound::Message(msg))
                        .await
                        .map_err(|_| "this server's Raft has stopped".to_owned())?;
                    Ok(Vec::new())
                }
                _ => Err("unknown bulk request".to_owned()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Arc<Peers> {
        let p = |name: &str, port: u16| PeerAddr {
            name: name.to_owned(),
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
        };
        Peers::new(BTreeMap::from([(1, p("h1", 1)), (2, p("h2", 2))]))
    }

    fn message(from: u64, to: u64) -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        quarry_consensus::codec::encode_pb(&m).expect("encode")
    }

    #[test]
    fn a_message_is_delivered_only_from_the_member_its_raft_id_belongs_to() {
        let peers = book();
        let msg = check(1, &peers, "h2", &message(2, 1)).expect("h2 speaks as 2");
        assert_eq!((msg.from, msg.to), (2, 1));
        assert!(peers.heard_within(2, Duration::from_secs(1)));
        // h2's certificate claiming to be raft id 1 (h1), or an id nobody has: dropped.
        let e = check(2, &peers, "h2", &message(1, 2)).expect_err("h2 posing as h1");
        assert!(e.contains("does not match raft id 1"), "{e}");
        assert!(check(1, &peers, "h2", &message(7, 1)).is_err());
        // Not for this node, or not a message at all: dropped.
        assert!(check(1, &peers, "h2", &message(2, 3)).is_err());
        assert!(check(1, &peers, "h2", b"\xff\xff garbage").is_err());
        assert!(!peers.heard_within(1, Duration::from_secs(1)));
    }
}
