//! The reconciler's pure heart: the containers a server should run (placed
//! [`DesiredContainer`]s) against the ones Docker has ([`ObservedContainer`]s, read back by
//! label), as a [`Diff`] of what to create, start, keep, replace and remove.
//!
//! Invariants:
//! - A desired container and an observed one are the same replica when their slice ids match
//!   (the slice id names stack, node, revision and replica). It is kept only if its definition
//!   hash and its published ports are the ones desired; otherwise it is replaced.
//! - Nothing desired is ever in `remove`; every observed container is in exactly one of
//!   `start`, `keep`, `replace` or `remove`.
//! - `create` lists services first, so their addresses exist before the containers that use
//!   them start (DESIGN.md: services first).
//! - An empty desired set removes everything observed: the *caller* decides whether its view
//!   is trustworthy (the cluster never reconciles from an empty or stale view; locally the
//!   desired set comes straight from quarry.yml).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::types::{
    DesiredContainer, Health, Kind, NodeState, Placement, ReplicaState, ServerId, SliceId,
    StackState,
};

/// The state of a container as quarry cares about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Running (or being restarted by its restart policy).
    Running,
    /// Created, exited or dead: not running and not coming back by itself.
    Stopped,
}

/// One container of a stack as Docker has it, read back from its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedContainer {
    /// The container id.
    pub id: String,
    /// Its name (without the leading `/`).
    pub name: String,
    /// `quarry.node`.
    pub node: String,
    /// `quarry.kind`.
    pub kind: Kind,
    /// `quarry.revision`.
    pub revision: u64,
    /// `quarry.definition`.
    pub definition: String,
    /// `quarry.replica`.
    pub replica: u32,
    /// `quarry.slice`.
    pub slice: SliceId,
    /// Its alias on the stack network (its `Placement::host`).
    pub host: String,
    /// The health check it was created with.
    pub health: Option<Health>,
    /// The node's domains.
    pub domains: Vec<String>,
    /// The node's definition field by field (see [`NodeState::fields`]).
    pub fields: BTreeMap<String, String>,
    /// Its container ports, main one first.
    pub ports: Vec<u16>,
    /// Running or not.
    pub state: RunState,
    /// Docker's own status word (`running`, `restarting`, `exited`...).
    pub status: String,
    /// Container port -> published host port.
    pub host_ports: BTreeMap<u16, u16>,
    /// The address its ports are published on (loopback locally, the server's cluster
    /// address in the cluster).
    pub publish_ip: Option<std::net::IpAddr>,
    /// The image reference it was created from.
    pub image: String,
    /// When it last started (RFC 3339), if it ever did.
    pub started_at: Option<String>,
    /// The pid of its main process on the host, while running.
    pub pid: Option<i64>,
}

/// What quarry records on a node's containers beside the shared labels, so the current state
/// can be read back whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node's domains (web only).
    pub domains: Vec<String>,
    /// Its definition field by field.
    pub fields: BTreeMap<String, String>,
}

/// What to do to make the observed containers the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Desired containers that do not exist: create and start them (services first).
    pub create: Vec<DesiredContainer>,
    /// Desired containers that exist but are stopped: start them.
    pub start: Vec<ObservedContainer>,
    /// Desired containers that exist and run: leave them alone.
    pub keep: Vec<ObservedContainer>,
    /// Containers holding a desired slice but with another definition or other ports: remove
    /// the old one, then create the desired one (same name, so not both at once).
    pub replace: Vec<(ObservedContainer, DesiredContainer)>,
    /// Containers not desired: remove them once the new ones serve (the old side of a DEPLOY,
    /// a scale-down, a removed node).
    pub remove: Vec<ObservedContainer>,
}

impl Diff {
    /// Whether converging would change nothing.
    pub fn is_noop(&self) -> bool {
        self.create.is_empty()
            && self.start.is_empty()
            && self.replace.is_empty()
            && self.remove.is_empty()
    }
}

/// Compares the desired containers with the observed ones.
pub fn diff(desired: &[DesiredContainer], observed: &[ObservedContainer]) -> Diff {
    let mut out = Diff::default();
    let mut by_slice: BTreeMap<&SliceId, &ObservedContainer> = BTreeMap::new();
    for o in observed {
        if by_slice.contains_key(&o.slice) {
            // A second container claiming the same slice: never desired.
            out.remove.push(o.clone());
        } else {
            by_slice.insert(&o.slice, o);
        }
    }
    let mut matched: BTreeSet<&SliceId> = BTreeSet::new();
    for d in desired {
        match by_slice.get(&d.slice) {
            None => out.create.push(d.clone()),
            Some(o) => {
                matched.insert(&d.slice);
                let wanted_ports = d.placement.as_ref().map(|p| &p.host_ports);
                let same = o.definition == d.definition
                    && wanted_ports.is_none_or(|ports| *ports == o.host_ports);
                if !same {
                    out.replace.push(((*o).clone(), d.clone()));
                } else if o.state == RunState::Running {
                    out.keep.push((*o).clone());
                } else {
                    out.start.push((*o).clone());
                }
            }
        }
    }
    for (slice, o) in by_slice {
        if !matched.contains(slice) {
            out.remove.push(o.clone());
        }
    }
    out.create.sort_by(|a, b| {
        order_key(a.kind, &a.node, a.replica).cmp(&order_key(b.kind, &b.node, b.replica))
    });
    out.start.sort_by(|a, b| {
        order_key(a.kind, &a.node, a.replica).cmp(&order_key(b.kind, &b.node, b.replica))
    });
    out.remove
        .sort_by(|a, b| (&a.node, a.revision, a.replica).cmp(&(&b.node, b.revision, b.replica)));
    out
}

fn order_key(kind: Kind, node: &str, replica: u32) -> (bool, &str, u32) {
    (kind != Kind::Service, node, replica)
}

/// The current state of a stack read back from its containers: for each node, the highest
/// revision found and its replicas with their slice and placement on `server` (locally
/// [`ServerId::local`]; `ports` are the container ports themselves, reached by alias on the
/// stack network).
pub fn current_state(stack: &str, server: &ServerId, observed: &[ObservedContainer]) -> StackState {
    let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
    for o in observed {
        // The node as this container describes it, with no replicas yet.
        let fresh = || NodeState {
            kind: o.kind,
            revision: o.revision,
            definition: o.definition.clone(),
            domains: o.domains.clone(),
            fields: o.fields.clone(),
            replicas: Vec::new(),
        };
        let entry = nodes.entry(o.node.clone()).or_insert_with(fresh);
        if o.revision > entry.revision {
            *entry = fresh();
        }
        if o.revision == entry.revision && !entry.replicas.iter().any(|r| r.replica == o.replica) {
            entry.replicas.push(ReplicaState {
                replica: o.replica,
                slice: o.slice.clone(),
                placement: Placement {
                    server: server.clone(),
                    host: o.host.clone(),
                    ports: o.host_ports.keys().map(|p| (*p, *p)).collect(),
                    host_ports: o.host_ports.clone(),
                },
            });
        }
    }
    for n in nodes.values_mut() {
        n.replicas.sort_by_key(|r| r.replica);
    }
    StackState {
        name: stack.to_owned(),
        nodes,
    }
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
