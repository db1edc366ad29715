//! The crate's errors: what a client hears, and what stops a node.

use crate::codec::CodecError;
use crate::machine::MachineError;
use crate::storage::StoreError;

/// Why a proposal or a read did not succeed.
///
/// Only a success is definite. After any error a proposal may or may not have been applied
/// (it may have entered the log before leadership was lost), so a client that must know
/// retries with the same [`crate::IdempotencyKey`]: it applies at most once. Reads have no
/// effect and can always be retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// This node is not the leader; `leader` is the node it believes leads: send it there.
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// No leader is known: this node cannot reach a quorum. Try another node, or later.
    #[error("no quorum: no leader is known to this node")]
    NoQuorum,
    /// Not applied (or not answered) within the request timeout.
    #[error("timed out")]
    Timeout,
    /// The node stopped before answering.
    #[error("the node stopped")]
    Stopped,
    /// A request older than the client's latest one: it applied before, its output is gone.
    #[error("request {seq} of client {client} is older than its latest ({latest})")]
    StaleRequest { client: u64, seq: u64, latest: u64 },
    /// A membership change is still in flight (this node's, or one raft has not applied or
    /// left yet): wait for it to finish (see `Status`) and ask again.
    #[error("a membership change is already in progress: wait for it to finish, then retry")]
    MembershipChangeInProgress,
    /// The membership change or leader transfer cannot be made as asked; the text says why.
    #[error("invalid membership request: {0}")]
    InvalidMembership(String),
    /// The command could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
}

/// A fault that stops a node (the disk, a log entry it cannot understand, raft itself).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Machine(#[from] MachineError),
}
