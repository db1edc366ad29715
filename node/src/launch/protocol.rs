//! What servers ask each other about stacks, inside the Control lane's
//! [`ControlRequest::Launch`](crate::cluster::ControlRequest::Launch) (rpc codec), and what the
//! API answers about them (JSON).
//!
//! Work requests are served by any server (builds, image transfers, image lists, removals);
//! the others only by the leader, which answers [`LaunchAnswer::NotLeader`] elsewhere.
//! No type here uses serde attributes the rpc codec cannot carry (flatten, internal tags,
//! skipped fields).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::routing::RouteTable;
use crate::source::SourceHash;

/// A request about stacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LaunchRequest {
    /// Build images from a stored source (any server).
    Build(BuildJob),
    /// Send images from this server's engine to server `to` over the Bulk lane (any server).
    SendImages {
        /// The image references.
        images: Vec<String>,
        /// The receiving server's name.
        to: String,
    },
    /// The images this server's engine has of a stack (any server).
    HasImages {
        /// The stack.
        stack: String,
    },
    /// Remove images from this server's engine (any server).
    RemoveImages {
        /// The image references.
        images: Vec<String>,
    },
    /// Deploy a stored source (leader): answered once it is checked and placed, before the
    /// images are built.
    Deploy {
        /// The source.
        source: SourceHash,
        /// The servers storing it.
        holders: Vec<String>,
        /// The stack's name unless quarry.yml names it.
        default_name: String,
    },
    /// Scale a node (leader), answered as a deploy is.
    Scale {
        /// The stack.
        stack: String,
        /// The node.
        node: String,
        /// The replicas wanted.
        replicas: u32,
    },
    /// A deploy's progress from line `since` on (leader).
    Progress {
        /// The deploy.
        id: String,
        /// The first line wanted.
        since: usize,
    },
    /// A server's containers and their health (leader; soft state).
    Report(ServerReport),
    /// Every container of a stack, or of all stacks, across the servers (leader).
    Ps {
        /// The stack, or all.
        stack: Option<String>,
    },
    /// The stacks with their status (leader).
    Stacks,
    /// Serve this table (a server tagged `router`), sent by the leader of `term`: answered
    /// [`LaunchAnswer::Done`] once nginx serves it.
    Route {
        /// The sender's leader term.
        term: u64,
        /// What to serve.
        table: RouteTable,
    },
    /// What the routers serve (leader).
    Routes,
    /// Hand leadership to voter `server` (leader): answered once it leads.
    Lead {
        /// The server.
        server: String,
    },
}

/// A build on one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildJob {
    /// The stack.
    pub stack: String,
    /// Its source.
    pub source: SourceHash,
    /// Servers that store the source, to fetch it from if this one does not.
    pub holders: Vec<String>,
    /// Image tag -> build directory (relative to quarry.yml).
    pub images: BTreeMap<String, String>,
}

/// The answer to a [`LaunchRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LaunchAnswer {
    /// Built; the build's output lines.
    Built(Vec<String>),
    /// Sent: the stream's length and the images now on the receiver.
    Sent {
        /// Bytes.
        bytes: u64,
        /// Images.
        images: Vec<String>,
    },
    /// Image references.
    Images(Vec<String>),
    /// Done.
    Done,
    /// A deploy or scale was accepted.
    Accepted(Accepted),
    /// A deploy's progress.
    Progress(DeployView),
    /// Containers.
    Ps(PsView),
    /// Stacks.
    Stacks(Vec<StackEntry>),
    /// The routers' tables.
    Routes(RoutesView),
    /// This server does not lead: ask the leader.
    NotLeader,
    /// Failed; the words say why and what to do.
    Failed(String),
}

/// A deploy (or scale) the leader took on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Its id (for `GET /v1/deploys/ID`).
    pub id: String,
    /// The stack.
    pub stack: String,
    /// The stack revision it makes.
    pub revision: u64,
    /// The launch instructions, as `quarry plan` prints them.
    pub plan: String,
    /// Where new containers go: one line each.
    pub placements: Vec<String>,
    /// The servers storing the source.
    pub holders: Vec<String>,
}

/// How far a deploy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployView {
    /// Its id.
    pub id: String,
    /// The stack.
    pub stack: String,
    /// What it does now.
    pub phase: String,
    /// Progress lines from the `since` asked for.
    pub lines: Vec<String>,
    /// The number of the next line.
    pub next: usize,
    /// Finished (well or not).
    pub done: bool,
    /// Why it failed. With phase `outcome unknown` its commit timed out or lost its leader
    /// and may still happen (the words say what to check); otherwise nothing was committed
    /// when it fails before `committed`.
    pub failed: Option<String>,
    /// The stack revision committed, once it is.
    pub committed: Option<u64>,
}

/// One container as its server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// The stack.
    pub stack: String,
    /// The node.
    pub node: String,
    /// Its kind.
    pub kind: String,
    /// The replica.
    pub replica: u32,
    /// The node revision.
    pub revision: u64,
    /// The slice.
    pub slice: String,
    /// The container id (full).
    pub id: String,
    /// The container name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
    /// Docker's status word.
    pub status: String,
    /// `healthy`, `starting`, `unhealthy: ...`, `none` (nothing to probe), `-` (not running).
    pub health: String,
    /// Where its main port answers (server address:host port).
    pub address: Option<String>,
    /// The image.
    pub image: String,
}

/// What a server tells the leader every round (soft state, never committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReport {
    /// The server.
    pub server: String,
    /// Why its engine cannot be used, if so.
    pub engine: Option<String>,
    /// Whether its view of the state was fresh (ReadIndex) this round.
    pub fresh: bool,
    /// Its quarry containers.
    pub containers: Vec<ContainerReport>,
    /// Slice -> why its container is not there yet (waiting for an image, a failed create).
    pub problems: BTreeMap<String, String>,
}

/// One row of `quarry ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRow {
    /// The stack.
    pub stack: String,
    /// The node.
    pub node: String,
    /// Its kind.
    pub kind: String,
    /// The replica.
    pub replica: u32,
    /// The server its placement names.
    pub server: String,
    /// The node revision.
    pub revision: u64,
    /// `running`, `stopped`, `pending` (not there yet), `retiring` (replaced, stops once its
    /// replacement is healthy), `stopping` (no longer desired), `disabled`, `unknown` (its
    /// server did not report).
    pub state: String,
    /// As reported (see [`ContainerReport::health`]).
    pub health: String,
    /// Its committed address (server address:host port of the main port).
    pub address: Option<String>,
    /// The container id, once it exists.
    pub container: Option<String>,
    /// Why it is not running, when known.
    pub note: Option<String>,
}

/// `GET /v1/ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsView {
    /// The rows, by stack, node, revision, replica.
    pub rows: Vec<PsRow>,
    /// Servers whose report is missing or old, with how old.
    pub silent: Vec<String>,
}

/// One entry of `GET /v1/stacks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackEntry {
    /// The stack.
    pub name: String,
    /// `live`, `deploying`, `disabled` or `failed`.
    pub status: String,
    /// Why it is failed or deploying, when it is.
    pub reason: Option<String>,
    /// Its revision.
    pub revision: u64,
    /// Its source (short hash).
    pub source: Option<String>,
    /// Node -> "running/desired".
    pub nodes: BTreeMap<String, String>,
    /// Its domains.
    pub domains: Vec<String>,
    /// The last deploy that failed on this leader, if the stack has not deployed since.
    pub last_failure: Option<String>,
}

/// What the routers serve, as the leader knows it (`quarry routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesView {
    /// The table the leader computes now from the committed routes and the reports.
    pub table: RouteTable,
    /// Each server tagged `router`.
    pub routers: Vec<RouterEntry>,
}

/// One router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterEntry {
    /// The server.
    pub server: String,
    /// Whether the table it last acknowledged is the current one.
    pub current: bool,
    /// Seconds since it last acknowledged a table (none yet: `None`).
    pub acked_secs_ago: Option<u64>,
    /// The last error pushing to it, if the last push failed.
    pub error: Option<String>,
}
