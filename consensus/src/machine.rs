//! The replicated state machine interface, and the session table that makes a retried
//! proposal apply once.
//!
//! A machine defines one serde command enum (encoded by variant position: add variants at the
//! end, never reorder, so old log entries keep their meaning).
//!
//! Record formats (the state version): every log entry and snapshot starts with a format byte.
//! Format 1 is the bytes every build reads. A machine that grows says so with
//! [`StateMachine::FORMAT`] (the highest format it reads) and marks each command that only
//! newer decoders know with a higher format ([`StateMachine::format_of`]); everything else is
//! still written as format 1, byte for byte what older builds wrote, so an older server reads
//! what a newer one writes until the machine switches the newer format on (a committed
//! command of its own, once every member supports it). A server that meets a record above its
//! `FORMAT` stops with "this server understands state up to v1; the entry is v2: upgrade
//! quarryd on this server" instead of misreading it. `apply` must be deterministic:
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

    /// The highest record format (state version) this build of the machine reads. Entries
    /// and snapshots above it are refused with a message that says to upgrade.
    const FORMAT: u8 = codec::FORMAT_V1;

    /// The record format a command needs: [`codec::FORMAT_V1`] unless only decoders of a
    /// newer state version know it (a variant added later). Never above [`Self::FORMAT`].
    fn format_of(_command: &Self::Command) -> u8 {
        codec::FORMAT_V1
    }

    /// A log entry's bytes: the command's format byte, then the proposal envelope (the
    /// idempotency key and the command).
    fn encode_entry(
        key: Option<IdempotencyKey>,
        command: &Self::Command,
    ) -> Result<Vec<u8>, MachineError> {
        Ok(codec::encode_as(Self::format_of(command), &(key, command))?)
    }

    /// Reads a log entry written by [`StateMachine::encode_entry`] of this build or an older
    /// one; one of a newer state version is refused with what to do.
    fn decode_entry(bytes: &[u8]) -> Result<(Option<IdempotencyKey>, Self::Command), MachineError> {
        codec::decode_upto(Self::FORMAT, bytes).map_err(|e| match e {
            CodecError::Newer { found, known } => MachineError(format!(
                "this server understands state up to v{known}; the entry is v{found}: upgrade \
                 quarryd on this server"
            )),
            e => e.into(),
        })
    }

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
        let (key, command) = S::decode_entry(data)?;
        let Some(key) = key else {
            return Ok(Ok(self.sm.apply(index, command)));
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
        let out = self.sm.apply(index, command);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine of state version 1: a counter.
    #[derive(Default)]
    struct V1(u64);
    impl StateMachine for V1 {
        type Command = u64;
        type Output = u64;
        fn apply(&mut self, _: u64, c: u64) -> u64 {
            self.0 += c;
            self.0
        }
        fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
            Ok(codec::encode(&self.0)?)
        }
        fn restore(&mut self, b: &[u8]) -> Result<(), MachineError> {
            self.0 = codec::decode(b)?;
            Ok(())
        }
    }

    /// The same machine grown to state version 2: commands of 100 and more are new.
    #[derive(Default)]
    struct V2(V1);
    impl StateMachine for V2 {
        type Command = u64;
        type Output = u64;
        const FORMAT: u8 = 2;
        fn format_of(c: &u64) -> u8 {
            if *c >= 100 {
                2
            } else {
                1
            }
        }
        fn apply(&mut self, i: u64, c: u64) -> u64 {
            self.0.apply(i, c)
        }
        fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
            self.0.snapshot()
        }
        fn restore(&mut self, b: &[u8]) -> Result<(), MachineError> {
            self.0.restore(b)
        }
    }

    #[test]
    fn an_old_build_reads_format_1_entries_of_a_new_one_and_refuses_newer_ones() {
        let key = Some(IdempotencyKey { client: 1, seq: 1 });
        let old = V2::encode_entry(key, &5).unwrap();
        assert_eq!(
            old,
            V1::encode_entry(key, &5).unwrap(),
            "format 1: same bytes"
        );
        assert_eq!(old, codec::encode(&(key, 5u64)).unwrap());
        let mut r = Replica::new(V1::default());
        assert_eq!(r.apply(1, &old).unwrap().unwrap(), 5);

        let new = V2::encode_entry(None, &100).unwrap();
        assert_eq!(new[0], 2);
        let e = r.apply(2, &new).unwrap_err();
        assert_eq!(
            e.to_string(),
            "state machine: this server understands state up to v1; the entry is v2: upgrade \
             quarryd on this server"
        );
        let mut r2 = Replica::new(V2::default());
        assert_eq!(r2.apply(1, &old).unwrap().unwrap(), 5);
        assert_eq!(r2.apply(2, &new).unwrap().unwrap(), 105);
    }
}
