//! The leader's compile step, pure: a stack file and the cluster state in, the
//! [`StackChange`] to commit out. The same function runs on the leader (then commits) and in
//! `quarry plan` against the cluster (then prints), so both show the same plan.
//!
//! ```text
//!   PlanInputs::of(state, stack)  --compile(file, source)-->  Compiled { plan, change }
//!     record (current, desired, retiring), env,                 build::plan (instructions)
//!     grid, servers, committed host ports, routes               deploy::place (placements)
//! ```
//!
//! What retires when: the replicas a DEPLOY or an ENSURE replaces keep running (and keep
//! their slices and host ports) until their replacements are healthy: they are the change's
//! `retiring`, retired by a later [`crate::cluster::Command::Retire`]. Replicas a SCALE
//! removes and nodes gone from the file (KILL) are freed at once (`remove`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::build::{self, Instruction, Plan};
use crate::cluster::{ClusterState, RouteTarget, StackChange, StackRecord};
use crate::deploy::{self, DeployError, ServerInfo};
use crate::grid::{Grid, GridError, GridState};
use crate::source::SourceHash;
use crate::spec::StackFile;
use crate::types::{DesiredContainer, ImageSource, ServerId, SliceId};

/// What a server tells placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFacts {
    /// Its cluster address.
    pub address: String,
    /// Its host port range, inclusive.
    pub host_ports: (u16, u16),
    /// Its memory, bytes.
    pub memory: u64,
}

/// Everything compiling a stack reads from the cluster state (also what
/// `GET /v1/stacks/NAME/inputs` answers, so `quarry plan` compiles exactly as the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInputs {
    /// The stack.
    pub stack: String,
    /// Its record (the default when it was never deployed).
    pub record: StackRecord,
    /// The cluster's global env.
    pub global_env: BTreeMap<String, String>,
    /// The grid.
    pub grid: GridState,
    /// The servers, by name.
    pub servers: BTreeMap<ServerId, ServerFacts>,
    /// Host ports held on each server by any stack's containers (retiring ones included).
    pub committed: BTreeMap<ServerId, BTreeSet<u16>>,
    /// Every route of the cluster.
    pub routes: BTreeMap<String, RouteTarget>,
}

impl PlanInputs {
    /// The inputs for `stack` from the state.
    pub fn of(state: &ClusterState, stack: &str) -> PlanInputs {
        let mut committed: BTreeMap<ServerId, BTreeSet<u16>> = BTreeMap::new();
        for rec in state.stacks.values() {
            for d in &rec.desired {
                if let Some(p) = &d.placement {
                    committed
                        .entry(p.server.clone())
                        .or_default()
                        .extend(p.host_ports.values());
                }
            }
        }
        PlanInputs {
            stack: stack.to_owned(),
            record: state.stacks.get(stack).cloned().unwrap_or_default(),
            global_env: state.env.clone(),
            grid: state.grid.state().clone(),
            servers: state
                .servers
                .iter()
                .map(|(name, s)| {
                    (
                        ServerId(name.clone()),
                        ServerFacts {
                            address: s.member.address.to_string(),
                            host_ports: s.member.settings.host_ports,
                            memory: s.member.memory,
                        },
                    )
                })
                .collect(),
            committed,
            routes: state.routes.clone(),
        }
    }

    /// The memory of the largest server (what quarry.yml's sizes are checked against).
    pub fn max_memory(&self) -> Option<u64> {
        self.servers.values().map(|s| s.memory).max()
    }

    /// The env a stack's nodes see below their stack file's: the global env, then the
    /// stack's own (`quarry env -s STACK`).
    pub fn base_env(&self) -> BTreeMap<String, String> {
        let mut env = self.global_env.clone();
        env.extend(self.record.env.clone());
        env
    }
}

/// A compiled deploy or scale.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The launch instructions (what `quarry plan` prints).
    pub plan: Plan,
    /// What to commit.
    pub change: StackChange,
}

impl Compiled {
    /// The new containers (placed now), for display: (container name, server, address).
    pub fn new_placements(&self) -> Vec<(String, ServerId, Option<String>)> {
        let new: BTreeSet<&SliceId> = self.change.place.iter().map(|s| &s.id).collect();
        self.change
            .desired
            .iter()
            .filter(|d| new.contains(&d.slice))
            .filter_map(|d| {
                let p = d.placement.as_ref()?;
                let addr = d
                    .ports
                    .first()
                    .and_then(|port| p.host_ports.get(port))
                    .map(|&hp| p.address(hp));
                Some((d.container_name(), p.server.clone(), addr))
            })
            .collect()
    }
}

/// Why a stack cannot be compiled; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Placement failed (tags, memory, room, host ports).
    #[error(transparent)]
    Place(#[from] DeployError),
    /// The replicated grid could not be read back.
    #[error("the cluster's grid is damaged: {0}")]
    Grid(#[from] GridError),
    /// A domain of the stack is routed to another stack (domains compared
    /// case-insensitively).
    #[error(
        "domain {domain} of stack {stack} is already routed to stack {other} (as {routed}): \
         remove it from {other}'s quarry.yml (and deploy it) first, or use another domain"
    )]
    DomainTaken {
        /// The domain, as the stack being compiled has it.
        domain: String,
        /// The stack being compiled.
        stack: String,
        /// The stack it is routed to.
        other: String,
        /// The domain as committed for `other` (an older build kept its case).
        routed: String,
    },
}

/// Compile `file` (from source `source`) against the cluster (see the module docs).
pub fn compile(
    inputs: &PlanInputs,
    file: &StackFile,
    source: &SourceHash,
) -> Result<Compiled, CompileError> {
    let record = &inputs.record;
    let env = inputs.base_env();
    let plan = build::plan(&build::Inputs {
        stack: file,
        current: &record.current,
        global_env: &env,
    });
    // Case-insensitively: an older build committed domains in the case they were written.
    let taken: BTreeMap<String, (&String, &RouteTarget)> = inputs
        .routes
        .iter()
        .filter(|(_, t)| t.stack != file.name)
        .map(|(d, t)| (d.to_ascii_lowercase(), (d, t)))
        .collect();
    for r in &plan.routes {
        if let Some((routed, t)) = taken.get(&r.domain.to_ascii_lowercase()) {
            return Err(CompileError::DomainTaken {
                domain: r.domain.clone(),
                stack: file.name.clone(),
                other: t.stack.clone(),
                routed: (*routed).clone(),
            });
        }
    }
    let grid = Grid::from_state(inputs.grid.clone())?;
    let servers: BTreeMap<ServerId, ServerInfo> = inputs
        .servers
        .iter()
        .map(|(id, s)| {
            (
                id.clone(),
                ServerInfo {
                    address: s.address.clone(),
                    host_ports: s.host_ports,
                },
            )
        })
        .collect();
    let placed = deploy::place(&deploy::Inputs {
        plan: &plan,
        stack: file,
        grid: &grid,
        servers: &servers,
        committed: &inputs.committed,
    })?;

    // What stops when: replaced replicas retire once their replacements are healthy;
    // scaled-away and killed ones are freed now.
    let mut retire: BTreeSet<SliceId> = record.retiring.iter().cloned().collect();
    for i in &plan.instructions {
        match i {
            Instruction::Ensure { stop, .. } | Instruction::Deploy { stop, .. } => {
                retire.extend(stop.iter().cloned())
            }
            Instruction::Scale { .. } | Instruction::Kill { .. } | Instruction::Route { .. } => {}
        }
    }
    let mut desired = placed.desired.clone();
    let placed_slices: BTreeSet<SliceId> = desired.iter().map(|d| d.slice.clone()).collect();
    let mut retiring = Vec::new();
    for old in &record.desired {
        if retire.contains(&old.slice) && !placed_slices.contains(&old.slice) {
            desired.push(old.clone());
            retiring.push(old.slice.clone());
        }
    }
    let kept: BTreeSet<&SliceId> = desired.iter().map(|d| &d.slice).collect();
    let remove: Vec<SliceId> = record
        .desired
        .iter()
        .map(|d| d.slice.clone())
        .filter(|s| !kept.contains(s))
        .collect();
    let specs: BTreeMap<SliceId, _> = plan
        .slices_to_place(file)
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let place = placed
        .added
        .iter()
        .filter_map(|id| specs.get(id).cloned())
        .collect();
    let current = placed.state_after(&plan, file, &env);
    let routes = plan
        .routes
        .iter()
        .map(|r| (r.domain.clone(), r.node.clone()))
        .collect();
    let change = StackChange {
        stack: file.name.clone(),
        revision: record.revision + 1,
        grid_version: placed.base_version,
        place,
        remove,
        source: source.clone(),
        file: file.clone(),
        current,
        desired,
        retiring,
        images: BTreeMap::new(),
        routes,
    };
    Ok(Compiled { plan, change })
}

/// The `build:` images of these containers: tag -> build directory (relative to quarry.yml).
pub fn build_images<'a>(
    containers: impl IntoIterator<Item = &'a DesiredContainer>,
) -> BTreeMap<String, String> {
    containers
        .into_iter()
        .filter_map(|c| match &c.image {
            ImageSource::Build { dir, tag, .. } => Some((tag.clone(), dir.clone())),
            ImageSource::Image(_) => None,
        })
        .collect()
}

/// The `build:` images each server runs for these containers.
pub fn images_by_server<'a>(
    containers: impl IntoIterator<Item = &'a DesiredContainer>,
) -> BTreeMap<ServerId, BTreeSet<String>> {
    let mut out: BTreeMap<ServerId, BTreeSet<String>> = BTreeMap::new();
    for c in containers {
        if let (ImageSource::Build { tag, .. }, Some(p)) = (&c.image, &c.placement) {
            out.entry(p.server.clone()).or_default().insert(tag.clone());
        }
    }
    out
}

/// The same stack file with node `node` at `replicas` replicas (a `quarry scale`), or why not.
pub fn rescale(file: &StackFile, node: &str, replicas: u32) -> Result<StackFile, String> {
    let mut out = file.clone();
    let names = || {
        file.nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(n) = out.nodes.iter_mut().find(|n| n.name == node) else {
        return Err(format!(
            "stack {} has no node {node} (its nodes: {})",
            file.name,
            names()
        ));
    };
    if n.kind == crate::types::Kind::Service && replicas != 1 {
        return Err(format!(
            "{node} is a service: it runs exactly one replica (scale web and worker nodes)"
        ));
    }
    if replicas == 0 {
        return Err(format!(
            "{node}=0: a node runs at least one replica; to stop the whole stack use `quarry \
             disable -s {}`",
            file.name
        ));
    }
    if replicas > 1000 {
        return Err(format!("{node}={replicas}: at most 1000 replicas"));
    }
    n.scale = replicas;
    Ok(out)
}

#[cfg(test)]
#[path = "compile_tests.rs"]
pub(crate) mod tests;
