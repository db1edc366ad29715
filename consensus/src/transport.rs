//! How Raft messages leave and reach a node.
//!
//! A node hands every outgoing message to its [`Transport`] and never waits: `send` must not
//! block (a slow or dead peer must never stall the loop), so an implementation queues,
//! drops, or both. Delivery is unreliable by contract; Raft retries what matters. Inbound
//! traffic reaches the node as [`Inbound`] values on the channel given to
//! [`crate::start`], together with the feedback raft-rs wants from a transport: that a
//! peer is unreachable, and whether a snapshot reached its peer.
//!
//! This leaves room for the TCP transport: a message of type `MsgSnapshot` can be routed to a
//! separate bulk connection and streamed in chunks, its outcome reported back as
//! [`Inbound::SnapshotStatus`], while heartbeats and appends keep their own connection.

use raft::eraftpb::Message;

/// Capacity of a node's inbound channel: what does not fit is dropped, like a full socket.
pub const INBOX_CAPACITY: usize = 4096;

/// What a transport delivers to a node.
#[derive(Debug)]
pub enum Inbound {
    /// A Raft message from a peer.
    Message(Message),
    /// The peer could not be reached (raft-rs slows replication to it down).
    Unreachable(u64),
    /// A snapshot sent to `to` was delivered (`ok`) or lost.
    SnapshotStatus { to: u64, ok: bool },
}

/// The sending half of a transport. `send` never blocks.
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` to `msg.to`, or drops it.
    fn send(&self, msg: Message);
}

/// A node's inbound channel.
pub fn inbox() -> (
    tokio::sync::mpsc::Sender<Inbound>,
    tokio::sync::mpsc::Receiver<Inbound>,
) {
    tokio::sync::mpsc::channel(INBOX_CAPACITY)
}
