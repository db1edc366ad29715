//! The cluster: Raft-replicated state, membership, and the write and read paths of quarryd.
//!
//! # The state
//!
//! [`ClusterState`] (`state.rs`) holds the servers (name, Raft id, addresses, ports,
//! hostname, memory, tags, settings), the global env, the stacks (their env and current
//! state), the grid with its version, and the routes. It changes only by applying a typed
//! [`Command`]; apply is pure and deterministic, and a refused command ([`Refusal`]) changes
//! nothing. Commands that change the grid carry the grid version they were computed on, and a
//! stale one is refused: the leader computes on its copy, proposes the result, and a change
//! computed on a grid that moved on in between never applies. [`ClusterMachine`] runs it
//! under `quarry_consensus` and publishes the server list on a watch channel.
//!
//! # The paths
//!
//! ```text
//!  write (API on any server) --> Cluster::write --leader here?--> propose (idempotency key)
//!                                      \--else: Control lane --> leader's ControlService
//!                                       (NotLeader / no answer: retry, same key, until 8 s)
//!  read  (API on any server) --> Cluster::read --> ReadIndex (raft forwards it to the leader)
//!  Raft  <--> RpcTransport / route: the RPC port's Raft lane, mutual TLS (transport.rs)
//! ```
//!
//! A write applies at most once however often it is retried (the idempotency key stays the
//! same across retries); reads are linearizable; both say, when they give up, whether no
//! leader could be found ("no leader yet (N of M voters reachable) — retry in a few seconds")
//! or the leader did not answer.
//!
//! # Membership
//!
//! The committed server records are the membership. A joiner is admitted through any member
//! ([`crate::rpc::join`]): the member forwards the admission to the leader, which commits the
//! record (a new Raft id), has its reconciler add the id as a learner, and answers once Raft
//! lists it. The joiner starts Raft with no voters and waits for the leader. The leader's
//! reconciler (`tasks.rs`) moves the configuration toward the rule — 1 voter for 1–2 servers,
//! 3 for 3–4, 5 from 5 on, learners for the rest — with one joint `ConfChangeV2` at a time,
//! promoting only learners that have caught up (`membership.rs`, pure). Removing a server
//! (`quarry servers remove NAME`) deletes its record; the reconciler then takes it out of
//! Raft (handing leadership over first if it leads) and its grid block goes. The removed
//! server keeps running until its operator stops it — Raft may need its vote to take it out
//! (the hand-over passes through two voters) — and its status says it was removed.
//!
//! The self-healing quorum (`heal.rs`): a voter dead in the leader's gossip view and
//! unreachable over RPC for longer than `heal_grace` is demoted to a learner while the
//! healthiest caught-up learner is promoted, in one joint change; the leader logs it and
//! records it in the state ([`VoterReplacement`], shown by `quarry status`). The old server
//! keeps its record and Raft id: back, it is a learner.
//!
//! # Invariants
//!
//! - Raft ids are never reused; Raft id 1 is the founder's.
//! - A Raft message is delivered only if its claimed sender matches the certificate's member
//!   name; Raft peer addresses come from the records.
//! - The voter count only ever takes the values 1, 3 and 5 on the way up, and a voter is
//!   never demoted while it leads.
//!
//! # Left out
//!
//! Resizing a server's block when its memory changes; the read-only on-disk mirror of the
//! state. Stacks' commands (deploy, scale, retire, enable/disable, in `stacks.rs`) are
//! computed by [`crate::launch`] and only checked and recorded here.

mod control;
pub mod heal;
mod machine;
pub mod membership;
mod node;
mod stacks;
mod state;
#[cfg(test)]
pub(crate) use state::tests as state_tests;
mod tasks;
pub mod transport;
mod versions;
mod view;

use crate::rpc::join::{Admission, JoinAuthority, Member};
use crate::rpc::server::BoxFuture;

pub use control::{ControlAnswer, ControlRequest, ControlService, LeaderView, PeerHealth};
pub use machine::{ClusterMachine, Replacements, ServerMap, Watches};
pub use node::{
    check_command, Cluster, ClusterError, GossipLink, MAX_COMMAND, READ_DEADLINE, WRITE_DEADLINE,
};
pub use state::{
    check_env_key, check_server_name, check_stack_name, default_grid_options, ClusterState,
    Command, CompactChange, GridOp, GridResult, Outcome, Refusal, RouteTarget, ServerRecord,
    StackChange, StackRecord, VoterReplacement, FOUNDER_RAFT_ID, MAX_REPLACEMENTS,
};
pub use tasks::{
    address_book, follow_servers, grid_ops_for, keep_record, read_env_dir, read_peers, reconcile,
    write_peers, RECONCILE_EVERY,
};
pub use transport::{PeerAddr, Peers, RpcTransport};

impl JoinAuthority for Cluster {
    fn admit(&self, member: Member) -> BoxFuture<'_, Result<Admission, String>> {
        Box::pin(Cluster::admit(self, member))
    }

    fn cluster_version(&self) -> u32 {
        self.cluster_version_now()
    }
}
