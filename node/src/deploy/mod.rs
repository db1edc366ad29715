//! Deploy placement: from a compiled plan and the grid to the placements the reconcilers run.
//!
//! ```text
//!   build::Plan (desired: kept replicas placed, new ones not)
//!     + Grid (servers: memory, tags; every slice of every stack)
//!     + servers' cluster addresses and host port ranges
//!     + host ports already committed on each server (all stacks)
//!        --place--> Placed { desired: every container placed, env resolved; grid; events }
//! ```
//!
//! Pure, like the grid it drives: no I/O, no clock, no randomness; the same inputs give the
//! same placements on every server, so the leader computes them and commits the result with
//! the grid version it started from ([`Placed::base_version`]).
//!
//! What happens, in the plan's order (services first):
//!
//! 1. Each new replica's slice ([`Plan::slices_to_place`]) is checked against the servers:
//!    its tags must be carried by some server ([`DeployError::NoServerWithTags`]) and its
//!    memory must fit the largest such server ([`DeployError::TooLarge`]), before anything is
//!    placed.
//! 2. The grid places it: best fit, replicas of one node's revision spread over servers
//!    where room allows ([`crate::build::replica_group`]). No room is
//!    [`DeployError::NoRoom`] (no server is created here; the cloud comes later).
//! 3. Each of its container ports gets a host port on that server, from the server's range
//!    (default 20000–29999): the first free one scanning from a point drawn from the slice id
//!    and port, so placements are spread over the range and still deterministic.
//! 4. The [`Placement`]: the server, its cluster address as `host`, and container port ->
//!    host port as both `ports` (what other containers dial) and `host_ports` (what the
//!    reconciler publishes, the router and the health checker use).
//! 5. [`build::resolve_env`] writes every service's `address:host port` into the env of every
//!    non-service container (DESIGN.md's `S_HOST`, `S_PORT`, `S_PORT_<p>_TCP_*`, `${S.host}`).
//!
//! # Invariants
//!
//! - **No host port is taken twice on a server**: a chosen port is never one committed there
//!   by any stack (`committed`), nor one a kept replica holds, nor one chosen earlier in the
//!   same call; it lies in the server's range.
//! - **An unchanged replica keeps its placement**: kept containers (placed in the plan) keep
//!   server, slice and host ports exactly; placing an unchanged stack again changes nothing
//!   (no slice placed, grid version unchanged, the same placements).
//! - **All or nothing**: an error leaves the caller's grid as it was (the work is done on a
//!   copy), so a bad deploy changes nothing in the cluster.
//!
//! # Left out
//!
//! Taking the retired slices off the grid (that happens when the old replicas stop: see
//! [`retired_slices`]); creating servers when the grid asks for one (`create` is reported as
//! [`DeployError::NoRoom`]); checking that kept replicas are on the grid (the leader's grid
//! holds every committed slice); UDP ports.

use std::collections::{BTreeMap, BTreeSet};

use crate::build::{self, Instruction, Plan, ResolveError};
use crate::grid::{human_bytes, Event, Grid, GridError, PlaceOutcome};
use crate::spec::StackFile;
use crate::types::{DesiredContainer, Placement, ServerId, SliceId, SliceSpec, StackState};

/// The default range of host ports a server publishes containers on (inclusive).
pub const DEFAULT_HOST_PORTS: (u16, u16) = (20000, 29999);

/// What placement needs to know of a server beyond its grid block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its cluster address: other servers' containers reach its published ports there.
    pub address: String,
    /// The host ports it publishes containers on, inclusive (its quarryd.toml `host_ports`).
    pub host_ports: (u16, u16),
}

/// What [`place`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The compiled plan of the deploy.
    pub plan: &'a Plan,
    /// The stack it was compiled from (for each node's tags).
    pub stack: &'a StackFile,
    /// The grid now: every server, every committed slice of every stack.
    pub grid: &'a Grid,
    /// Every server of the grid, by id.
    pub servers: &'a BTreeMap<ServerId, ServerInfo>,
    /// Host ports committed on each server by any stack ([`committed_ports`]).
    pub committed: &'a BTreeMap<ServerId, BTreeSet<u16>>,
}

/// The placements of a deploy.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Every container of the stack once the plan is applied, in the plan's order: each with
    /// its placement, env resolved. What the reconcilers run (each the ones naming it).
    pub desired: Vec<DesiredContainer>,
    /// The grid with the new slices placed.
    pub grid: Grid,
    /// The grid version placement started from: commit only if the grid is still at it.
    pub base_version: u64,
    /// The grid's events, in order (one `added` per new slice).
    pub events: Vec<Event>,
    /// The new slices, in the order placed.
    pub added: Vec<SliceId>,
}

impl Placed {
    /// The containers of one server.
    pub fn for_server<'a>(
        &'a self,
        server: &'a ServerId,
    ) -> impl Iterator<Item = &'a DesiredContainer> + 'a {
        self.desired
            .iter()
            .filter(move |c| c.placement.as_ref().is_some_and(|p| &p.server == server))
    }

    /// The stack's current state once the plan has run with these placements (what the
    /// leader commits as the stack's state).
    pub fn state_after(
        &self,
        plan: &Plan,
        stack: &StackFile,
        global_env: &BTreeMap<String, String>,
    ) -> StackState {
        let placed = Plan {
            desired: self.desired.clone(),
            ..plan.clone()
        };
        // Every container here is placed, so the fallback is never asked for.
        build::state_after(&placed, stack, global_env, |c| Placement {
            server: ServerId(String::new()),
            host: String::new(),
            ports: c.ports.iter().map(|p| (*p, *p)).collect(),
            host_ports: BTreeMap::new(),
        })
    }
}

/// Why a deploy cannot be placed; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// No server carries the tags a node asks for.
    #[error(
        "node {node} runs only on servers tagged [{tags}], and no server carries {}: give a \
         server those tags (tags in its quarryd.toml) or change `tags:` in quarry.yml \
         (servers: {servers})",
        if tags.contains(',') { "all of them" } else { "it" }
    )]
    NoServerWithTags {
        /// The node.
        node: String,
        /// Its tags, comma-separated.
        tags: String,
        /// Every server with its tags.
        servers: String,
    },
    /// A node's memory is larger than any server it may run on.
    #[error(
        "node {node} asks for {} per replica, more than any server{} has (largest: {largest} \
         with {}): lower `memory:` in quarry.yml or add a larger server",
        human_bytes(*memory), if tags.is_empty() { String::new() } else { format!(" tagged [{tags}]") },
        human_bytes(*largest_memory)
    )]
    TooLarge {
        /// The node.
        node: String,
        /// Its memory per replica, bytes.
        memory: u64,
        /// Its tags, comma-separated.
        tags: String,
        /// The largest server it may run on.
        largest: ServerId,
        /// That server's memory, bytes.
        largest_memory: u64,
    },
    /// The servers it may run on have no room left for a replica.
    #[error(
        "no room for replica {replica} of node {node} ({} with tags [{tags}]): the servers it \
         may run on have {free} free; stop or shrink something, or add a server",
        human_bytes(*memory)
    )]
    NoRoom {
        /// The node.
        node: String,
        /// The replica.
        replica: u32,
        /// Its memory, bytes.
        memory: u64,
        /// Its tags, comma-separated.
        tags: String,
        /// The free memory of each eligible server, for the message.
        free: String,
    },
    /// A server's host port range is used up.
    #[error(
        "server {server} has no free host port left in {first}-{last} for {slice}: widen \
         host_ports in its quarryd.toml or stop something on it"
    )]
    NoHostPort {
        /// The server.
        server: ServerId,
        /// The slice that needed a port.
        slice: SliceId,
        /// The range's first port.
        first: u16,
        /// The range's last port.
        last: u16,
    },
    /// The grid placed a slice on a server placement knows nothing of.
    #[error("server {0} is on the grid but its address is unknown: it has not finished joining")]
    UnknownServer(ServerId),
    /// The grid refused an operation.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// A service address could not be written into an env.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// Place a deploy (see the module docs). The input grid is not changed; the result carries
/// the new one.
pub fn place(inputs: &Inputs<'_>) -> Result<Placed, DeployError> {
    let Inputs {
        plan,
        stack,
        grid,
        servers,
        committed,
    } = *inputs;
    let specs: BTreeMap<SliceId, SliceSpec> = plan
        .slices_to_place(stack)
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    // 1. Every new slice could land somewhere, before anything is placed.
    for c in plan.desired.iter().filter(|c| c.placement.is_none()) {
        if let Some(spec) = specs.get(&c.slice) {
            check_fits(grid, &c.node, spec)?;
        }
    }
    // Ports taken on each server: committed by any stack, and held by kept replicas.
    let mut taken: BTreeMap<ServerId, BTreeSet<u16>> = committed.clone();
    for p in plan.desired.iter().filter_map(|c| c.placement.as_ref()) {
        taken
            .entry(p.server.clone())
            .or_default()
            .extend(p.host_ports.values());
    }
    let mut work = grid.clone();
    let mut events = Vec::new();
    let mut added = Vec::new();
    let mut desired = plan.desired.clone();
    for c in desired.iter_mut().filter(|c| c.placement.is_none()) {
        let Some(spec) = specs.get(&c.slice) else {
            continue; // slices_to_place covers every unplaced container
        };
        // 2. The grid.
        let no_room = |work: &Grid| DeployError::NoRoom {
            node: c.node.clone(),
            replica: c.replica,
            memory: spec.memory,
            tags: spec.tags.join(","),
            free: free_list(work, &spec.tags),
        };
        let change = match work.place(spec.clone()) {
            Ok(change) => change,
            Err(GridError::Full { .. } | GridError::NoRoom { .. }) => return Err(no_room(&work)),
            Err(e) => return Err(e.into()),
        };
        let server = match change.result {
            PlaceOutcome::Placed { block, .. } => block,
            PlaceOutcome::NeedsBlock { .. } => return Err(no_room(&work)),
        };
        events.extend(change.events);
        added.push(spec.id.clone());
        let info = servers
            .get(&server)
            .ok_or_else(|| DeployError::UnknownServer(server.clone()))?;
        // 3. Host ports.
        let used = taken.entry(server.clone()).or_default();
        let mut host_ports = BTreeMap::new();
        for port in &c.ports {
            let hp = free_port(&c.slice, *port, info.host_ports, used).ok_or_else(|| {
                DeployError::NoHostPort {
                    server: server.clone(),
                    slice: c.slice.clone(),
                    first: info.host_ports.0,
                    last: info.host_ports.1,
                }
            })?;
            used.insert(hp);
            host_ports.insert(*port, hp);
        }
        // 4. The placement.
        c.placement = Some(Placement {
            server,
            host: info.address.clone(),
            ports: host_ports.clone(),
            host_ports,
        });
    }
    // 5. Service addresses into every env.
    build::resolve_env(&mut desired)?;
    Ok(Placed {
        desired,
        grid: work,
        base_version: grid.version(),
        events,
        added,
    })
}

/// The clear errors for a slice no server could ever hold.
fn check_fits(grid: &Grid, node: &str, spec: &SliceSpec) -> Result<(), DeployError> {
    let eligible = grid.blocks().values().filter(|b| b.has_tags(&spec.tags));
    let Some(largest) = eligible.max_by(|a, b| a.size.cmp(&b.size).then(b.id.cmp(&a.id))) else {
        let servers = grid
            .blocks()
            .values()
            .map(|b| {
                let tags: Vec<&str> = b.tags.iter().map(String::as_str).collect();
                format!("{} [{}]", b.id, tags.join(","))
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DeployError::NoServerWithTags {
            node: node.to_owned(),
            tags: spec.tags.join(","),
            servers: if servers.is_empty() {
                "none".to_owned()
            } else {
                servers
            },
        });
    };
    if largest.size < spec.memory {
        return Err(DeployError::TooLarge {
            node: node.to_owned(),
            memory: spec.memory,
            tags: spec.tags.join(","),
            largest: largest.id.clone(),
            largest_memory: largest.size,
        });
    }
    Ok(())
}

/// Each eligible server's free memory, for a message.
fn free_list(grid: &Grid, tags: &[String]) -> String {
    grid.blocks()
        .values()
        .filter(|b| b.has_tags(tags))
        .map(|b| format!("{} {}", b.id, human_bytes(b.free())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first port of `range` not in `used`, scanning (with wrap-around) from a point drawn
/// from the slice id and container port.
fn free_port(slice: &SliceId, port: u16, range: (u16, u16), used: &BTreeSet<u16>) -> Option<u16> {
    let (first, last) = range;
    if first > last {
        return None;
    }
    let span = u64::from(last - first) + 1;
    // FNV-1a: stable across releases and machines (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in slice.0.bytes().chain(port.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let start = h % span;
    (0..span)
        .map(|i| first + ((start + i) % span) as u16)
        .find(|p| !used.contains(p))
}

/// The host ports committed on each server by these stacks' states.
pub fn committed_ports<'a>(
    states: impl IntoIterator<Item = &'a StackState>,
) -> BTreeMap<ServerId, BTreeSet<u16>> {
    let mut out: BTreeMap<ServerId, BTreeSet<u16>> = BTreeMap::new();
    for state in states {
        for node in state.nodes.values() {
            for r in &node.replicas {
                out.entry(r.placement.server.clone())
                    .or_default()
                    .extend(r.placement.host_ports.values());
            }
        }
    }
    out
}

/// The slices a plan retires once it has run: the old revision's (DEPLOY, ENSURE), those
/// scaled away (SCALE) and those of nodes gone from the file (KILL). The caller takes them off
/// the grid when their containers have stopped.
pub fn retired_slices(plan: &Plan) -> Vec<SliceId> {
    let mut out = Vec::new();
    for i in &plan.instructions {
        match i {
            Instruction::Ensure { stop, .. } | Instruction::Deploy { stop, .. } => {
                out.extend(stop.iter().cloned())
            }
            Instruction::Scale { remove, .. } => out.extend(remove.iter().cloned()),
            Instruction::Kill { slices, .. } => out.extend(slices.iter().cloned()),
            Instruction::Route { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
