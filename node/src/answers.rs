//! The HTTP API's requests and answers: plain data (serde), apart from the HTTP layer
//! ([`crate::api`], which re-exports them), so that what produces them (the cluster's status
//! and server views, the stacks' views) does not depend on the web server, and the CLI decodes
//! exactly these types.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::VoterReplacement;
use crate::gossip::member::LiveState;
use crate::grid::GridState;
use crate::launch::StackEntry;
use crate::rpc::join::Member;

/// Raft's view from one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This server's Raft id.
    pub id: u64,
    /// Its role: leader, follower, candidate, precandidate; learners are followers.
    pub role: String,
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
    /// Voters' names.
    pub voters: Vec<String>,
    /// Learners' names.
    pub learners: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This server's name.
    pub name: String,
    /// Its cluster address.
    pub address: std::net::IpAddr,
    /// RPC port.
    pub rpc_port: u16,
    /// API port.
    pub api_port: u16,
    /// quarryd's version.
    pub version: String,
    /// The git commit it was built from (`unknown` without git; empty from older servers).
    #[serde(default)]
    pub commit: String,
    /// The state versions it supports, lowest and highest (`(0, 0)` from older servers).
    #[serde(default)]
    pub state_versions: (u32, u32),
    /// The cluster version in force, as applied here (`None` from older servers).
    #[serde(default)]
    pub cluster_version: Option<u32>,
    /// Raft's view; `None` if Raft has stopped on this server.
    pub raft: Option<RaftStatus>,
    /// `ok`, or what is wrong (no leader, how many voters are reachable).
    pub health: String,
    /// This server's gossip, if it runs.
    #[serde(default)]
    pub gossip: Option<GossipStatus>,
    /// The last voters the self-healing quorum replaced, oldest first.
    #[serde(default)]
    pub replacements: Vec<VoterReplacement>,
}

/// This server's gossip: where it listens and what its sealing transport counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStatus {
    /// The gossip cluster id (not secret).
    pub cluster_id: String,
    /// The address it listens on (UDP).
    pub listen: SocketAddr,
    /// This server's boot generation.
    pub generation: u64,
    /// Servers seen alive, suspect and dead (members or not).
    pub alive: usize,
    /// Late or not yet confirmed.
    pub suspect: usize,
    /// Dead.
    pub dead: usize,
    /// Datagrams sealed and sent.
    pub sent: u64,
    /// Datagrams that opened, were fresh and parsed.
    pub accepted: u64,
    /// Dropped unread: plaintext, another key, or tampered.
    pub not_sealed: u64,
    /// Dropped as replays.
    pub replayed: u64,
    /// Opened but malformed.
    pub malformed: u64,
    /// Every server this gossip knows (members or not), by name: a local view that needs no
    /// leader.
    #[serde(default)]
    pub seen: BTreeMap<String, GossipView>,
}

/// A server as this server's gossip sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipView {
    /// Alive, suspect or dead.
    pub state: LiveState,
    /// Since when (ms since 1970, the answering server's clock).
    pub since_unix_ms: u64,
    /// The boot generation this is about.
    pub generation: u64,
    /// Its heartbeat counter.
    pub heartbeat: u64,
    /// The highest version of its gossip keys (never goes backwards within a generation).
    pub max_version: u64,
}

/// A server gossip knows that is not a member (removed, or not yet committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipOnly {
    /// Its name in gossip.
    pub name: String,
    /// What gossip says.
    #[serde(flatten)]
    pub gossip: GossipView,
}

/// One entry of `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The server.
    #[serde(flatten)]
    pub member: Member,
    /// Its Raft id.
    pub raft_id: u64,
    /// `voter`, `learner`, or `none` (recorded, not yet in Raft's configuration).
    pub role: String,
    /// As the leader sees its replication: `ok`, `behind N`, `unreachable`, or `unknown`
    /// (no leader answered).
    pub health: String,
    /// Whether it leads.
    pub leader: bool,
    /// Its liveness as the answering server's gossip sees it (`None`: not seen in gossip).
    #[serde(default)]
    pub liveness: Option<GossipView>,
    /// The quarryd build it runs, as its gossip record says (empty: not said, or not seen).
    #[serde(default)]
    pub build: String,
    /// The state versions it supports, as its gossip record says (`None`: not seen).
    #[serde(default)]
    pub state_versions: Option<(u32, u32)>,
}

/// `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Servers {
    /// The servers, by name.
    pub servers: Vec<ServerEntry>,
    /// Servers gossip knows that are not members (a removed server still running...).
    #[serde(default)]
    pub others: Vec<GossipOnly>,
    /// The answering server's clock (ms since 1970), for the `since` times.
    #[serde(default)]
    pub now_unix_ms: u64,
    /// Set when no leader answered: the list is this server's last applied one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /v1/grid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridView {
    /// The grid (its version included).
    pub grid: GridState,
}

/// `GET /v1/env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvView {
    /// The stack, or none for the global env.
    pub stack: Option<String>,
    /// The variables.
    pub env: BTreeMap<String, String>,
}

/// `POST /v1/env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvChange {
    /// The stack, or none for the global env.
    #[serde(default)]
    pub stack: Option<String>,
    /// Variables to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Variables to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `POST /v1/stacks/NAME/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The node.
    pub node: String,
    /// The replicas wanted.
    pub replicas: u32,
}

/// `GET /v1/stacks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StacksView {
    /// The stacks, by name.
    pub stacks: Vec<StackEntry>,
}
