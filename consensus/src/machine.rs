//! The replicated state machine interface, and the session table that makes a retried
//! proposal apply once.
//!
//! A machine defines one serde command enum (encoded by variant position: add variants at the
//! end, never reorder, so old log entries keep their meaning). `apply` must be deterministic:
//! the same commands in the same order give the same state and outputs on every node, so
//! time, ids and random choices travel inside the command and are never read during apply.
//!
//! Idempotency (Raft thesis §6.3): a proposal may carry an [`IdempotencyKey`] (a client id and
//! a sequence number that the client increases by one per new request and keeps when it
//! retries). The replicated session table remembers, per client, the latest sequence applied
//! and its output; a retry of that sequence returns the remembered output without applying
//! again, an older one is refused. The table is part of the snapshot, so it is the same on
//! every node. Left out: expiry of idle sessions (the table grows with the number of client
//! ids ever used; clients should reuse their id).

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::ClientError;

/// A machine-specific failure to snapshot or restore.
#[derive(Debug, thiserror::Error)]
#[error("state machine: {0}")]
pub struct MachineError(pub String);

impl From<CodecError> for MachineError {
    fn from(e: CodecError) -> Self {
        MachineError(e.to_string())
    }
}

/// A deterministic state machine replicated by Raft.
pub trait StateMachine: Send + 'static {
    /// The machine's (versioned) command enum.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a command returns to the proposer.
    type Output: Serialize + DeserializeOwned + Clone + Send + 'static;

    /// Applies a committed command. `index` is its log index (deterministic, usable as an id).
    fn apply(&mut self, index: u64, command: Self::Command) -> Self::Output;

    /// The whole state, as bytes [`StateMachine::restore`] understands.
    fn snapshot(&self) -> Result<Vec<u8>, MachineError>;

    /// Replaces the whole state with a snapshot.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), MachineError>;
}

/// Identifies one logical request of one client across retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub client: u64,
    pub seq: u64,
}

/// What a log entry carries.
#[derive(Serialize, Deserialize)]
pub(crate) struct Proposal<C> {
    pub key: Option<IdempotencyKey>,
    pub command: C,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    seq: u64,
    output: Vec<u8>,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    sessions: &'a BTreeMap<u64, Session>,
    #[serde(with = "codec::bytes")]
    machine: Vec<u8>,
}

#[derive(Deserialize)]
struct SnapshotIn {
    sessions: BTreeMap<u64, Session>,
    #[serde(with = "codec::bytes")]
    machine: Vec<u8>,
}

/// The machine plus its session table and applied index.
#[derive(Debug)]
pub(crate) struct Replica<S> {
    pub sm: S,
    sessions: BTreeMap<u64, Session>,
    pub applied: u64,
}

impl<S: StateMachine> Replica<S> {
    pub fn new(sm: S) -> Self {
        Replica {
            sm,
            sessions: BTreeMap::new(),
            applied: 0,
        }
    }

    /// Applies one entry's data. The outer error is fatal (the entry cannot be understood);
    /// the inner one goes back to the proposer.
    pub fn apply(
        &mut self,
        index: u64,
        data: &[u8],
    ) -> Result<Result<S::Output, ClientError>, MachineError> {
        let p: Proposal<S::Command> = codec::decode(data)?;
        let Some(key) = p.key else {
            return Ok(Ok(self.sm.apply(index, p.command)));
        };
        if let Some(s) = self.sessions.get(&key.client) {
            if key.seq == s.seq {
                return Ok(Ok(codec::decode(&s.output)?));
            }
            if key.seq < s.seq {
                return Ok(Err(ClientError::StaleRequest {
                    client: key.client,
                    seq: key.seq,
                    latest: s.seq,
                }));
            }
        }
        let out = self.sm.apply(index, p.command);
        let output = codec::encode(&out)?;
        self.sessions.insert(
            key.client,
            Session {
                seq: key.seq,
                output,
            },
        );
        Ok(Ok(out))
    }

    pub fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        Ok(codec::encode(&SnapshotOut {
            sessions: &self.sessions,
            machine: self.sm.snapshot()?,
        })?)
    }

    pub fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), MachineError> {
        let s: SnapshotIn = codec::decode(data)?;
        self.sm.restore(&s.machine)?;
        self.sessions = s.sessions;
        self.applied = index;
        Ok(())
    }
}
