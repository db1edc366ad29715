//! What each server publishes in gossip, and its boot generation.
//!
//! The record is one small JSON value under one chitchat key ([`RECORD_KEY`]), capped at
//! [`MAX_RECORD_BYTES`] so datagrams stay far below the UDP limit (a digest plus a few records).
//! The generation grows on every start, persisted in a file so a clock going backwards never
//! makes it shrink.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::rpc::join::Member;
use crate::types::ServerId;

/// The chitchat key holding a server's record.
pub const RECORD_KEY: &str = "server";
/// A record larger than this is refused before it is published.
pub const MAX_RECORD_BYTES: usize = 2048;

/// A small summary of a server's state (not full lists).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// The Raft role, once quarryd runs Raft (`leader`, `follower`, `learner`).
    pub raft_role: Option<String>,
    /// Containers running.
    pub containers: u32,
    /// Memory reserved by slices, in bytes.
    pub memory_reserved: u64,
}

/// A server's published record: what gossip carries of the cluster's record of it
/// ([`crate::rpc::join::ServerRecord`]: name, address, ports, memory, tags, Raft id; built
/// from its [`Member`] by [`ServerRecord::of`], the one conversion), plus its boot generation
/// and a status summary. JSON, so a field added later (with `#[serde(default)]`) is ignored
/// by older servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The server's name (also its host name in the hosts block).
    pub name: ServerId,
    /// Its cluster address.
    pub address: IpAddr,
    /// HTTP API port.
    pub api_port: u16,
    /// Node RPC port.
    pub rpc_port: u16,
    /// Gossip port.
    pub gossip_port: u16,
    /// Memory offered to the grid, in bytes.
    pub memory: u64,
    /// Placement tags.
    pub tags: Vec<String>,
    /// Its Raft id, once it has one.
    pub raft_id: Option<u64>,
    /// Its boot generation.
    pub generation: u64,
    /// The status summary.
    pub status: StatusSummary,
    /// The quarryd build it runs (`0.1.0 (commit ...)`); empty from a build that did not say.
    #[serde(default)]
    pub build: String,
    /// The state versions it supports, lowest and highest ([`crate::version`]); a build that
    /// did not say supports v1 only.
    #[serde(default = "v1_only")]
    pub state_versions: (u32, u32),
}

fn v1_only() -> (u32, u32) {
    (1, 1)
}

/// Why a record or generation could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record encodes larger than [`MAX_RECORD_BYTES`].
    #[error("server record of {0} bytes exceeds {MAX_RECORD_BYTES}: fewer or shorter tags")]
    TooLarge(usize),
    /// A published record does not decode.
    #[error("server record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// The generation file could not be read or written.
    #[error("generation file {path}: {source}")]
    Generation {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ServerRecord {
    /// The record server `me` (Raft id `raft_id`) publishes in boot `generation`, with its
    /// Raft `role` if it runs Raft.
    pub fn of(me: &Member, raft_id: u64, generation: u64, role: Option<String>) -> ServerRecord {
        ServerRecord {
            name: ServerId(me.name.clone()),
            address: me.address,
            api_port: me.api_port,
            rpc_port: me.rpc_port,
            gossip_port: me.gossip_port,
            memory: me.memory,
            tags: me.tags.clone(),
            raft_id: Some(raft_id),
            generation,
            status: StatusSummary {
                raft_role: role,
                ..StatusSummary::default()
            },
            build: crate::version::build(),
            state_versions: crate::version::SUPPORTED,
        }
    }

    /// The value published under [`RECORD_KEY`], or why it is refused.
    pub fn encode(&self) -> Result<String, RecordError> {
        let text = serde_json::to_string(self)?;
        if text.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(text.len()));
        }
        Ok(text)
    }

    /// A record read from gossip.
    pub fn decode(text: &str) -> Result<Self, RecordError> {
        Ok(serde_json::from_str(text)?)
    }
}

/// The next boot generation: above the one stored in `path` and at least the clock in
/// milliseconds since 1970, stored back (temp file + rename) before it is returned.
pub fn next_generation(path: &Path) -> Result<u64, RecordError> {
    let err = |source| RecordError::Generation {
        path: path.display().to_string(),
        source,
    };
    let stored = match std::fs::read_to_string(path) {
        Ok(t) => t.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(e)),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let next = now_ms.max(stored.saturating_add(1));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, next.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tags: usize) -> ServerRecord {
        ServerRecord {
            name: ServerId("server-with-a-long-name-042".into()),
            address: "2001:db8::1234:5678".parse().expect("ip"),
            api_port: 7700,
            rpc_port: 7701,
            gossip_port: 7702,
            memory: 64 << 30,
            tags: (0..tags).map(|i| format!("tag-number-{i}")).collect(),
            raft_id: Some(u64::MAX),
            generation: u64::MAX,
            status: StatusSummary {
                raft_role: Some("follower".into()),
                containers: 10_000,
                memory_reserved: 64 << 30,
            },
            build: "0.1.0 (commit 0123456789ab)".into(),
            state_versions: (1, 2),
        }
    }

    /// The record as builds before the cluster version decoded it.
    #[derive(Debug, Deserialize, Serialize)]
    struct OldRecord {
        name: ServerId,
        address: IpAddr,
        api_port: u16,
        rpc_port: u16,
        gossip_port: u16,
        memory: u64,
        tags: Vec<String>,
        raft_id: Option<u64>,
        generation: u64,
        status: StatusSummary,
    }

    #[test]
    fn old_and_new_servers_read_each_others_records() {
        let new = record(2);
        let old: OldRecord = serde_json::from_str(&new.encode().expect("encode")).expect("old");
        assert_eq!(old.name, new.name, "an older server skips the new keys");
        let from_old = ServerRecord::decode(&serde_json::to_string(&old).expect("json"))
            .expect("new reads old");
        assert_eq!(
            from_old.state_versions,
            (1, 1),
            "a silent server supports v1 only"
        );
        assert_eq!(from_old.build, "");
        assert_eq!(from_old.status, new.status);
    }

    #[test]
    fn a_full_record_stays_far_below_the_datagram_limit() {
        let text = record(16).encode().expect("encode");
        assert!(text.len() < 1024, "{} bytes", text.len());
        assert_eq!(ServerRecord::decode(&text).expect("decode"), record(16));
    }

    #[test]
    fn an_oversized_record_is_refused() {
        assert!(matches!(
            record(500).encode(),
            Err(RecordError::TooLarge(_))
        ));
    }

    #[test]
    fn generation_grows_on_every_start_even_if_stored_ahead_of_the_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("generation");
        let a = next_generation(&p).expect("first");
        let b = next_generation(&p).expect("second");
        assert!(b > a);
        std::fs::write(&p, (u64::MAX / 2).to_string()).expect("write ahead");
        assert_eq!(next_generation(&p).expect("third"), u64::MAX / 2 + 1);
    }
}
