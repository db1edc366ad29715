//! The replicated cluster state and its typed commands: pure and deterministic.
//!
//! [`ClusterState::apply`] is the only way the state changes. It reads nothing but the state
//! and the command (no clock, no randomness, no I/O, no hash-map iteration), so every server
//! that applies the same commands in the same order holds the same state. A command that
//! cannot apply is *refused* ([`Refusal`]) and changes nothing: the refusal goes back to the
//! proposer, and it is the same on every server.
//!
//! Commands are one serde enum encoded by variant position: add variants at the end, never
//! reorder or remove one, so old log entries keep their meaning. A command only newer
//! state versions know says so ([`Command::format`], [`Command::needs_version`]); the state's
//! own versions and their migration are in `versions.rs` (the rule for change is in
//! [`crate::version`]; `node/tests/golden.rs` fails if a variant is inserted in the middle).
//!
//! Invariants:
//! - Server names are unique (they are the certificates' common names) and a server's Raft id
//!   is never reused: a server that joins again under its name gets a new id, so a wiped
//!   server can never pose as the voter it was.
//! - Raft id 1 is the founder's (the server that ran `quarryd init`); joiners get 2, 3, ...
//! - Every command that changes the grid names the grid version it was computed on; at any
//!   other version it is refused ([`Refusal::StaleGrid`]), and a batch of grid operations
//!   applies whole or not at all.
//! - A stack's desired containers all sit on the grid, each on the server its placement
//!   names; a deploy or scale names the stack revision it was computed on and is refused at
//!   any other ([`Refusal::StaleStack`]); the stack commands live in `stacks.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::grid::{DrainReport, Grid, GridError, GridOptions, PlaceOutcome};
use crate::rpc::join::Member;
pub use crate::rpc::join::ServerRecord;
use crate::source::SourceHash;
use crate::spec::StackFile;
use crate::types::{DesiredContainer, ServerId, SliceId, SliceSpec, StackState};

pub use super::stacks::{check_stack_name, CompactChange, StackChange};

/// The Raft id of the server that founded the cluster.
pub const FOUNDER_RAFT_ID: u64 = 1;

/// A stack as the cluster holds it.
///
/// `desired` is what every server's reconciler runs (each the containers whose placement
/// names it): the current revision's replicas and, until they are retired, the previous
/// revision's (`retiring`). Every desired container's slice is on the grid, on the server its
/// placement names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRecord {
    /// The stack's own env (above the global env, below injected addresses).
    pub env: BTreeMap<String, String>,
    /// What runs: for each node, its revision, definition and placed replicas.
    pub current: StackState,
    /// The stack's revision: how many deploys and scales were committed (0: never deployed).
    pub revision: u64,
    /// The source tree of the last deploy (stored by content hash on at least two servers).
    pub source: Option<SourceHash>,
    /// The stack file of the last deploy, scale applied (what a `quarry scale` re-plans).
    pub file: Option<StackFile>,
    /// Every container the stack runs, placed, env resolved.
    pub desired: Vec<DesiredContainer>,
    /// Slices of `desired` that stop once the replicas that replace them are healthy.
    pub retiring: Vec<SliceId>,
    /// Built image -> the servers that hold it (where a server missing it fetches it from).
    pub images: BTreeMap<String, Vec<ServerId>>,
    /// Disabled: its servers stop its containers (placements and host ports are kept).
    pub disabled: bool,
    /// While a deploy's replaced replicas still run: the stack as it was before, so a deploy
    /// whose new replicas never get healthy can be rolled back ([`Command::Rollback`]).
    pub previous: Option<Box<PreviousRevision>>,
    /// Why the last deploy was rolled back (until a deploy or scale is committed).
    pub failed: Option<String>,
}

/// A stack as it was before a deploy that replaces replicas: what a rollback restores for the
/// nodes the deploy replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRevision {
    /// The revision it was.
    pub revision: u64,
    /// Its nodes' state.
    pub current: StackState,
    /// Its stack file.
    pub file: Option<StackFile>,
    /// Its source tree.
    pub source: Option<SourceHash>,
    /// Its images' holders.
    pub images: BTreeMap<String, Vec<ServerId>>,
}

/// A voter the leader found down (dead in gossip and unreachable over RPC past the grace
/// period) and replaced by a learner, as recorded then. The times are the leader's clock,
/// carried in the command (apply reads no clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterReplacement {
    /// The replaced voter's name.
    pub dead: String,
    /// Its Raft id.
    pub dead_raft_id: u64,
    /// Since when the leader saw it down (ms since 1970).
    pub dead_since_unix_ms: u64,
    /// The learner promoted in its place.
    pub by: String,
    /// Its Raft id.
    pub by_raft_id: u64,
    /// When the change was made (ms since 1970).
    pub at_unix_ms: u64,
}

/// How many replacements the state keeps (the oldest go first).
pub const MAX_REPLACEMENTS: usize = 16;

/// Where a domain is routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    /// The stack.
    pub stack: String,
    /// Its web node.
    pub node: String,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The servers, by name.
    pub servers: BTreeMap<String, ServerRecord>,
    /// The Raft id the next joiner gets.
    pub next_raft_id: u64,
    /// The global env.
    pub env: BTreeMap<String, String>,
    /// The stacks, by name.
    pub stacks: BTreeMap<String, StackRecord>,
    /// The grid, with its version.
    pub grid: Grid,
    /// Domain -> the web node it goes to.
    pub routes: BTreeMap<String, RouteTarget>,
    /// The last voters replaced by the self-healing quorum, oldest first.
    pub replacements: Vec<VoterReplacement>,
    /// The state version in force ([`crate::version`]): 1 until every member supports 2 and
    /// the leader commits [`Command::SetClusterVersion`]. Not in v1's encoding (a v1 snapshot
    /// reads as 1); last, so v2's encoding is v1's plus this field.
    pub cluster_version: u32,
}

/// The options of the cluster's grid until an operator or the cloud sets others: servers are
/// added by hand, so the block limit is far above any hand-made cluster.
pub fn default_grid_options() -> GridOptions {
    GridOptions {
        min: 1,
        max: 1000,
        autosize: false,
        block_size: 8 << 30,
        max_block_size: 8 << 30,
    }
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            servers: BTreeMap::new(),
            next_raft_id: FOUNDER_RAFT_ID + 1,
            env: BTreeMap::new(),
            stacks: BTreeMap::new(),
            grid: Grid::new(default_grid_options()),
            routes: BTreeMap::new(),
            replacements: Vec::new(),
            cluster_version: 1,
        }
    }
}

/// One operation on the grid, re-run by `apply` exactly as the leader ran it on its copy (the
/// grid is deterministic and the version check guarantees the same starting point).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GridOp {
    /// A server's memory becomes a block.
    AddBlock {
        /// The server.
        server: ServerId,
        /// Bytes.
        memory: u64,
        /// Its tags.
        tags: Vec<String>,
    },
    /// A server's block leaves (its slices are returned, to be placed again).
    RemoveBlock {
        /// The server.
        server: ServerId,
    },
    /// Nothing new lands on the block; its unpinned slices move where there is room.
    DrainBlock {
        /// The server.
        server: ServerId,
    },
    /// The block takes slices again.
    ActivateBlock {
        /// The server.
        server: ServerId,
    },
    /// New options.
    SetOptions(GridOptions),
    /// Place a slice (best fit, spread).
    Place(SliceSpec),
    /// Remove a slice.
    RemoveSlice(SliceId),
}

/// What one grid operation gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GridResult {
    /// Done; nothing to report.
    Done,
    /// Where a slice went, or the block it needs.
    Placed(PlaceOutcome),
    /// Slices that left the grid with their block, to be placed again.
    Orphans(Vec<SliceSpec>),
    /// What a drain moved.
    Drained(DrainReport),
}

/// A command: the only way the state changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The founder records itself (Raft id 1) and the initial global env (`/etc/quarry/env`).
    Found {
        /// The founder.
        member: Member,
        /// The initial global env.
        env: BTreeMap<String, String>,
    },
    /// A joiner is admitted: it gets the next Raft id. The same name from the same address is
    /// the same server joining again (after a wipe): its record is replaced, with a new id.
    AddServer {
        /// The joiner.
        member: Member,
    },
    /// A server refreshes what it says about itself (addresses, ports, memory, tags).
    UpdateServer {
        /// Its Raft id.
        raft_id: u64,
        /// The new details (the name cannot change).
        member: Member,
    },
    /// A server leaves the cluster.
    RemoveServer {
        /// Its name.
        name: String,
    },
    /// Grid operations computed on grid version `version`.
    Grid {
        /// The version they were computed on.
        version: u64,
        /// The operations, in order.
        ops: Vec<GridOp>,
    },
    /// Set and unset env variables, globally (`stack: None`) or for one stack.
    SetEnv {
        /// The stack, or the global env.
        stack: Option<String>,
        /// Variables to set.
        set: BTreeMap<String, String>,
        /// Variables to remove.
        unset: Vec<String>,
    },
    /// Route a domain to a stack's web node, or (`None`) stop routing it.
    SetRoute {
        /// The domain.
        domain: String,
        /// Where it goes.
        target: Option<RouteTarget>,
    },
    /// The leader replaced a down voter (the Raft change is made; this records it for status).
    RecordReplacement(VoterReplacement),
    /// A deploy: a stack's new source, plan and placements, computed by the leader on grid
    /// version `change.grid_version` and stack revision `change.revision - 1`.
    Deploy(Box<StackChange>),
    /// A scale: the same source, other replica counts; otherwise as [`Command::Deploy`].
    Scale(Box<StackChange>),
    /// The replaced replicas of a stack's revision `revision` stop: their slices leave the
    /// grid (computed on grid version `grid_version`).
    Retire {
        /// The stack.
        stack: String,
        /// The stack revision the leader saw.
        revision: u64,
        /// The grid version it computed on.
        grid_version: u64,
        /// The slices, each one of the record's `retiring`.
        slices: Vec<SliceId>,
    },
    /// A deploy of stack revision `revision` failed (its new replicas never got healthy, or
    /// their server went silent): the replicas it added stop, the ones it replaced stay, and
    /// the replaced nodes, the stack env and the source are as before the deploy. The stack's
    /// revision goes up by one and the reason is kept.
    Rollback {
        /// The stack.
        stack: String,
        /// The stack revision the leader saw (the failed deploy's).
        revision: u64,
        /// The grid version it computed on.
        grid_version: u64,
        /// Why, for `quarry stacks` and the deploy's log.
        reason: String,
    },
    /// Disable a stack (its containers stop, its placements stay) or enable it again.
    SetStackEnabled {
        /// The stack.
        stack: String,
        /// Whether it runs.
        enabled: bool,
    },
    // State v2 from here (appended: every variant above keeps its position).
    /// Switch the cluster version (the state version in force) up by one: proposed by the
    /// leader once every member advertises that it supports it. Never goes down.
    SetClusterVersion(u32),
    /// A deploy or scale whose containers' envs are stored once each ([`CompactChange`]);
    /// otherwise as [`Command::Deploy`]. Needs cluster version 2.
    CompactStack(Box<CompactChange>),
}

impl Command {
    /// The record format (state version) its log entry is marked with: 1 for every command
    /// state v1 knows, so an older server reads them; 2 for those only v2 decoders know.
    pub fn format(&self) -> u8 {
        match self {
            Command::SetClusterVersion(v) => u8::try_from(*v).unwrap_or(u8::MAX).max(2),
            Command::CompactStack(_) => 2,
            _ => 1,
        }
    }

    /// The cluster version it needs to be proposed (refused before:
    /// [`Refusal::NeedsClusterVersion`]). `SetClusterVersion` is the switch itself.
    pub fn needs_version(&self) -> u32 {
        match self {
            Command::CompactStack(_) => 2,
            _ => 1,
        }
    }

    /// The command that commits a deploy (`scale`: a scale) at cluster version `version`:
    /// [`Command::CompactStack`] from v2 on, [`Command::Deploy`] or [`Command::Scale`] before.
    pub fn stack_change(change: StackChange, scale: bool, version: u32) -> Command {
        if version >= 2 {
            Command::CompactStack(Box::new(CompactChange::of(change, scale)))
        } else if scale {
            Command::Scale(Box::new(change))
        } else {
            Command::Deploy(Box::new(change))
        }
    }
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The founder is recorded.
    Founded,
    /// A server was admitted with this Raft id (`replaced`: the id it had before, if it joined
    /// again).
    ServerAdded {
        /// Its Raft id.
        raft_id: u64,
        /// The id of the record it replaced.
        replaced: Option<u64>,
    },
    /// A server's record changed (or was already so).
    ServerUpdated,
    /// A server left; this was its Raft id.
    ServerRemoved {
        /// Its Raft id.
        raft_id: u64,
    },
    /// The grid changed; its new version, and one result per operation.
    Grid {
        /// The version now.
        version: u64,
        /// Per operation.
        results: Vec<GridResult>,
    },
    /// Env changed.
    EnvSet,
    /// A route changed.
    RouteSet,
    /// A voter replacement is recorded.
    ReplacementRecorded,
    /// A deploy or scale was committed: the stack's new revision and the grid's version.
    StackChanged {
        /// The stack revision.
        revision: u64,
        /// The grid version now.
        grid_version: u64,
    },
    /// Replicas were retired; the grid's version now.
    Retired {
        /// The grid version now.
        grid_version: u64,
    },
    /// A stack was enabled or disabled.
    StackEnabled,
    /// A deploy was rolled back: the stack's revision and the grid's version now.
    RolledBack {
        /// The stack revision.
        revision: u64,
        /// The grid version now.
        grid_version: u64,
    },
    // State v2 from here.
    /// The cluster version is now this one.
    ClusterVersionSet {
        /// The cluster version.
        version: u32,
    },
}

/// Why a command was refused (nothing changed). The text says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The grid moved on since the command was computed.
    #[error(
        "the grid changed since this change was computed (it was computed on version \
         {expected}, the grid is at version {current}): compute it again on the current grid"
    )]
    StaleGrid {
        /// The version the command names.
        expected: u64,
        /// The grid's version.
        current: u64,
    },
    /// The founder is already recorded.
    #[error("the cluster already has its founder (Raft id 1)")]
    AlreadyFounded,
    /// The name belongs to another server.
    #[error(
        "the name {name:?} is taken by the server at {address}: give this server another name \
         (`name` in quarryd.toml), or remove the old one first (`quarry servers remove {name}`)"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The address of the server holding it.
        address: std::net::IpAddr,
    },
    /// No server by that name or id.
    #[error("no server {0} in the cluster: `quarry servers` lists them")]
    UnknownServer(String),
    /// The last server cannot leave.
    #[error("{0} is the cluster's only server and cannot be removed")]
    LastServer(String),
    /// A grid operation failed; no operation of the batch applied.
    #[error("grid operation {op} refused: {message}")]
    Grid {
        /// Its position in the batch (0-based).
        op: usize,
        /// The grid's words.
        message: String,
    },
    /// A name or value that is not allowed.
    #[error("{0}")]
    Invalid(String),
    /// No stack by that name has been deployed.
    #[error(
        "no stack {0} in the cluster: `quarry stacks` lists them, `quarry deploy` creates one"
    )]
    UnknownStack(String),
    /// The stack changed since this change was computed.
    #[error(
        "stack {stack} changed since this change was computed (it was computed on revision \
         {expected}, the stack is at revision {current}): compute it again"
    )]
    StaleStack {
        /// The stack.
        stack: String,
        /// The revision the change was computed on.
        expected: u64,
        /// The stack's revision.
        current: u64,
    },
    // State v2 from here.
    /// The command needs a newer cluster version than the one in force.
    #[error(
        "this needs cluster version v{needed}; the cluster runs v{current} until every server \
         runs a quarryd that supports v{needed}: upgrade the remaining servers one at a time \
         (`quarry servers` shows each one's version; the leader switches the cluster version \
         itself once all do) and retry"
    )]
    NeedsClusterVersion {
        /// The version it needs.
        needed: u32,
        /// The version in force.
        current: u32,
    },
}

/// Whether a server name is acceptable: 1 to 63 of `A-Z a-z 0-9 - _ .`.
pub fn check_server_name(name: &str) -> Result<(), Refusal> {
    crate::rpc::join::check_server_name(name).map_err(Refusal::Invalid)
}

/// Whether an env variable name is acceptable (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn check_env_key(key: &str) -> Result<(), Refusal> {
    let mut b = key.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "env name {key:?}: use letters, digits and '_', not starting with a digit"
        )))
    }
}

impl ClusterState {
    /// The server with this Raft id.
    pub fn server_by_raft_id(&self, raft_id: u64) -> Option<&ServerRecord> {
        self.servers.values().find(|s| s.raft_id == raft_id)
    }

    /// Apply one committed command. `_index` is its log index (deterministic; unused so far).
    pub fn apply(&mut self, _index: u64, command: Command) -> Result<Outcome, Refusal> {
        match command {
            Command::Found { member, env } => self.found(member, env),
            Command::AddServer { member } => self.add_server(member),
            Command::UpdateServer { raft_id, member } => self.update_server(raft_id, member),
            Command::RemoveServer { name } => self.remove_server(&name),
            Command::Grid { version, ops } => self.grid_ops(version, ops),
            Command::SetEnv { stack, set, unset } => self.set_env(stack, set, unset),
            Command::SetRoute { domain, target } => self.set_route(domain, target),
            Command::RecordReplacement(r) => {
                self.replacements.push(r);
                let over = self.replacements.len().saturating_sub(MAX_REPLACEMENTS);
                self.replacements.drain(..over);
                Ok(Outcome::ReplacementRecorded)
            }
            Command::Deploy(change) => self.change_stack(*change, false),
            Command::Scale(change) => self.change_stack(*change, true),
            Command::Retire {
                stack,
                revision,
                grid_version,
                slices,
            } => self.retire(&stack, revision, grid_version, &slices),
            Command::Rollback {
                stack,
                revision,
                grid_version,
                reason,
            } => self.rollback(&stack, revision, grid_version, reason),
            Command::SetStackEnabled { stack, enabled } => self.set_stack_enabled(&stack, enabled),
            Command::SetClusterVersion(v) => self.set_cluster_version(v),
            Command::CompactStack(c) => {
                if self.cluster_version < 2 {
                    return Err(Refusal::NeedsClusterVersion {
                        needed: 2,
                        current: self.cluster_version,
                    });
                }
                let (change, scale) = c.expand()?;
                self.change_stack(change, scale)
            }
        }
    }

    fn set_cluster_version(&mut self, v: u32) -> Result<Outcome, Refusal> {
        if v == self.cluster_version {
            return Ok(Outcome::ClusterVersionSet { version: v });
        }
        if v != self.cluster_version + 1 {
            return Err(Refusal::Invalid(format!(
                "the cluster version moves up one at a time and never down: it is v{}, not v{v}",
                self.cluster_version
            )));
        }
        self.cluster_version = v;
        Ok(Outcome::ClusterVersionSet { version: v })
    }

    fn found(&mut self, member: Member, env: BTreeMap<String, String>) -> Result<Outcome, Refusal> {
        check_server_name(&member.name)?;
        if self.server_by_raft_id(FOUNDER_RAFT_ID).is_some() {
            return Err(Refusal::AlreadyFounded);
        }
        if let Some(s) = self.servers.get(&member.name) {
            return Err(Refusal::NameTaken {
                name: member.name,
                address: s.member.address,
            });
        }
        for k in env.keys() {
            check_env_key(k)?;
        }
        self.env = env;
        self.servers.insert(
            member.name.clone(),
            ServerRecord {
                raft_id: FOUNDER_RAFT_ID,
                member,
            },
        );
        Ok(Outcome::Founded)
    }

    fn add_server(&mut self, member: Member) -> Result<Outcome, Refusal> {
        check_server_name(&member.name)?;
        let replaced = match self.servers.get(&member.name) {
            Some(s) if s.member.address != member.address => {
                return Err(Refusal::NameTaken {
                    name: member.name,
                    address: s.member.address,
                })
            }
            Some(s) => Some(s.raft_id),
            None => None,
        };
        let raft_id = self.next_raft_id;
        self.next_raft_id += 1;
        self.servers
            .insert(member.name.clone(), ServerRecord { raft_id, member });
        Ok(Outcome::ServerAdded { raft_id, replaced })
    }

    fn update_server(&mut self, raft_id: u64, member: Member) -> Result<Outcome, Refusal> {
        let Some(rec) = self.servers.get_mut(&member.name) else {
            return Err(Refusal::UnknownServer(member.name));
        };
        if rec.raft_id != raft_id {
            return Err(Refusal::UnknownServer(format!(
                "{} with Raft id {raft_id} (it was removed or joined again)",
                member.name
            )));
        }
        rec.member = member;
        Ok(Outcome::ServerUpdated)
    }

    fn remove_server(&mut self, name: &str) -> Result<Outcome, Refusal> {
        if !self.servers.contains_key(name) {
            return Err(Refusal::UnknownServer(name.to_owned()));
        }
        if self.servers.len() == 1 {
            return Err(Refusal::LastServer(name.to_owned()));
        }
        let rec = self.servers.remove(name).expect("checked above");
        Ok(Outcome::ServerRemoved {
            raft_id: rec.raft_id,
        })
    }

    fn grid_ops(&mut self, version: u64, ops: Vec<GridOp>) -> Result<Outcome, Refusal> {
        if version != self.grid.version() {
            return Err(Refusal::StaleGrid {
                expected: version,
                current: self.grid.version(),
            });
        }
        // All or nothing: run the batch on a copy, keep it only if every operation applied.
        let mut grid = self.grid.clone();
        let mut results = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let refused = |e: GridError| Refusal::Grid {
                op: i,
                message: e.to_string(),
            };
            let r = match op {
                GridOp::AddBlock {
                    server,
                    memory,
                    tags,
                } => grid
                    .add_block(server, memory, &tags)
                    .map(|_| GridResult::Done),
                GridOp::RemoveBlock { server } => grid
                    .remove_block(&server)
                    .map(|c| GridResult::Orphans(c.result)),
                GridOp::DrainBlock { server } => grid
                    .drain_block(&server)
                    .map(|c| GridResult::Drained(c.result)),
                GridOp::ActivateBlock { server } => {
                    grid.activate_block(&server).map(|_| GridResult::Done)
                }
                GridOp::SetOptions(o) => {
                    grid.set_options(o);
                    Ok(GridResult::Done)
                }
                GridOp::Place(spec) => grid.place(spec).map(|c| GridResult::Placed(c.result)),
                GridOp::RemoveSlice(id) => grid.remove_slice(&id).map(|_| GridResult::Done),
            };
            results.push(r.map_err(refused)?);
        }
        self.grid = grid;
        Ok(Outcome::Grid {
            version: self.grid.version(),
            results,
        })
    }

    fn set_env(
        &mut self,
        stack: Option<String>,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<Outcome, Refusal> {
        for k in set.keys().chain(&unset) {
            check_env_key(k)?;
        }
        let env = match stack {
            None => &mut self.env,
            Some(s) if s.is_empty() => {
                return Err(Refusal::Invalid("a stack name cannot be empty".to_owned()))
            }
            Some(s) => {
                let rec = self.stacks.entry(s.clone()).or_default();
                rec.current.name = s;
                &mut rec.env
            }
        };
        for k in unset {
            env.remove(&k);
        }
        env.extend(set);
        Ok(Outcome::EnvSet)
    }

    fn set_route(
        &mut self,
        domain: String,
        target: Option<RouteTarget>,
    ) -> Result<Outcome, Refusal> {
        let domain = domain.to_ascii_lowercase();
        if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(Refusal::Invalid(format!("{domain:?} is not a domain name")));
        }
        match target {
            Some(t) => {
                self.routes.insert(domain, t);
            }
            None => {
                self.routes.remove(&domain);
            }
        }
        Ok(Outcome::RouteSet)
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
pub(crate) mod tests;
