//! The stack commands of the cluster state: deploy, scale, retire, enable/disable. Pure, like
//! the rest of `apply`.
//!
//! The leader compiles and places a deploy on its copy of the state ([`crate::launch`]) and
//! proposes the result as a [`StackChange`]; `apply` only checks and records it:
//!
//! - the stack revision it was computed on is the record's (else [`Refusal::StaleStack`]), and
//!   the grid version too (else [`Refusal::StaleGrid`]);
//! - every new slice lands, placed again here exactly as the leader placed it (the grid is
//!   deterministic), on the server the container's placement names; freed slices leave;
//! - afterwards every desired container's slice is on the grid on its placement's server;
//! - a domain routed to another stack is refused.
//!
//! All or nothing: a refused change leaves the state as it was.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::state::{ClusterState, Outcome, PreviousRevision, Refusal, RouteTarget};
use crate::grid::{GridError, PlaceOutcome};
use crate::source::SourceHash;
use crate::spec::StackFile;
use crate::types::{DesiredContainer, ServerId, SliceId, SliceSpec, StackState};

/// What a deploy or a scale commits for one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackChange {
    /// The stack.
    pub stack: String,
    /// The revision this change makes: the record's plus one.
    pub revision: u64,
    /// The grid version the placements were computed on.
    pub grid_version: u64,
    /// New slices, placed in this order.
    pub place: Vec<SliceSpec>,
    /// Slices freed at once (replicas scaled away, nodes gone from the file).
    pub remove: Vec<SliceId>,
    /// The source tree.
    pub source: SourceHash,
    /// The stack file (scale applied).
    pub file: StackFile,
    /// The stack's state once the change has run.
    pub current: StackState,
    /// Every container the stack runs from now on (retiring ones included).
    pub desired: Vec<DesiredContainer>,
    /// Slices of `desired` that stop once their replacements are healthy.
    pub retiring: Vec<SliceId>,
    /// Built image -> servers holding it.
    pub images: BTreeMap<String, Vec<ServerId>>,
    /// The stack's routes: domain -> web node.
    pub routes: BTreeMap<String, String>,
}

/// A [`StackChange`] with each distinct container env stored once (state v2,
/// [`super::Command::CompactStack`]): the replicas of a node share one env, so a deploy of a
/// node with many replicas carries its env once instead of once per container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactChange {
    /// A scale (true) or a deploy.
    pub scale: bool,
    /// The change, every desired container's env empty.
    pub change: StackChange,
    /// The distinct envs.
    pub envs: Vec<BTreeMap<String, String>>,
    /// For each desired container, in order, its env's index in `envs`.
    pub env_of: Vec<u32>,
}

impl CompactChange {
    /// The change with each distinct env stored once. Pure.
    pub fn of(mut change: StackChange, scale: bool) -> CompactChange {
        let mut envs: Vec<BTreeMap<String, String>> = Vec::new();
        let mut env_of = Vec::with_capacity(change.desired.len());
        for d in &mut change.desired {
            let env = std::mem::take(&mut d.env);
            let i = match envs.iter().position(|e| *e == env) {
                Some(i) => i,
                None => {
                    envs.push(env);
                    envs.len() - 1
                }
            };
            env_of.push(i as u32);
        }
        CompactChange {
            scale,
            change,
            envs,
            env_of,
        }
    }

    /// The change as it was (each container's env in place), or why the bytes do not hold
    /// together. Pure.
    pub fn expand(self) -> Result<(StackChange, bool), Refusal> {
        let CompactChange {
            scale,
            mut change,
            envs,
            env_of,
        } = self;
        if env_of.len() != change.desired.len() {
            return Err(Refusal::Invalid(format!(
                "a compact stack change names {} envs for {} containers",
                env_of.len(),
                change.desired.len()
            )));
        }
        for (d, &i) in change.desired.iter_mut().zip(&env_of) {
            d.env = envs.get(i as usize).cloned().ok_or_else(|| {
                Refusal::Invalid(format!("a compact stack change has no env {i}"))
            })?;
        }
        Ok((change, scale))
    }
}

/// Whether a stack name is acceptable: 1 to 63 of `a-z 0-9 -`, starting with a letter or digit
/// (it becomes part of container, network and image names).
pub fn check_stack_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "stack name {name:?}: use 1 to 63 lower-case letters, digits or '-'"
        )))
    }
}

impl ClusterState {
    pub(super) fn change_stack(
        &mut self,
        change: StackChange,
        scale: bool,
    ) -> Result<Outcome, Refusal> {
        check_stack_name(&change.stack)?;
        let record = self.stacks.get(&change.stack).cloned().unwrap_or_default();
        if change.revision != record.revision + 1 {
            return Err(Refusal::StaleStack {
                stack: change.stack,
                expected: change.revision.saturating_sub(1),
                current: record.revision,
            });
        }
        if scale && record.source.as_ref() != Some(&change.source) {
            return Err(Refusal::Invalid(format!(
                "a scale of {} keeps its source: deploy to change it",
                change.stack
            )));
        }
        if change.grid_version != self.grid.version() {
            return Err(Refusal::StaleGrid {
                expected: change.grid_version,
                current: self.grid.version(),
            });
        }
        for domain in change.routes.keys() {
            if let Some(t) = self.routes.get(domain) {
                if t.stack != change.stack {
                    return Err(Refusal::Invalid(format!(
                        "domain {domain} is routed to stack {}: remove it there first",
                        t.stack
                    )));
                }
            }
        }
        let where_of: BTreeMap<&SliceId, &ServerId> = change
            .desired
            .iter()
            .filter_map(|d| d.placement.as_ref().map(|p| (&d.slice, &p.server)))
            .collect();
        let mut grid = self.grid.clone();
        let mut op = 0usize;
        let refused = |op: usize, message: String| Refusal::Grid { op, message };
        for spec in &change.place {
            let id = spec.id.clone();
            let placed = grid
                .place(spec.clone())
                .map_err(|e: GridError| refused(op, e.to_string()))?;
            match (placed.result, where_of.get(&id)) {
                (PlaceOutcome::Placed { block, .. }, Some(want)) if &block == *want => {}
                (outcome, want) => {
                    return Err(refused(
                        op,
                        format!("slice {id} placed as {outcome:?}, the change says {want:?}"),
                    ))
                }
            }
            op += 1;
        }
        for id in &change.remove {
            grid.remove_slice(id)
                .map_err(|e| refused(op, e.to_string()))?;
            op += 1;
        }
        for d in &change.desired {
            let on = grid.block_of(&d.slice);
            let want = d.placement.as_ref().map(|p| &p.server);
            if on.is_none() || on != want {
                return Err(Refusal::Invalid(format!(
                    "container {} is not on the grid where its placement says: compute the \
                     change again",
                    d.container_name()
                )));
            }
        }
        let retiring: BTreeSet<&SliceId> = change.desired.iter().map(|d| &d.slice).collect();
        if let Some(s) = change.retiring.iter().find(|s| !retiring.contains(s)) {
            return Err(Refusal::Invalid(format!(
                "retiring slice {s} is not among the stack's containers"
            )));
        }
        self.grid = grid;
        self.routes.retain(|_, t| t.stack != change.stack);
        for (domain, node) in &change.routes {
            self.routes.insert(
                domain.clone(),
                RouteTarget {
                    stack: change.stack.clone(),
                    node: node.clone(),
                },
            );
        }
        let rec = self.stacks.entry(change.stack.clone()).or_default();
        rec.previous = (!change.retiring.is_empty() && rec.revision > 0).then(|| {
            Box::new(PreviousRevision {
                revision: rec.revision,
                current: rec.current.clone(),
                file: rec.file.clone(),
                source: rec.source.clone(),
                images: rec.images.clone(),
            })
        });
        rec.failed = None;
        rec.current = change.current;
        rec.current.name = change.stack;
        rec.revision = change.revision;
        rec.source = Some(change.source);
        rec.file = Some(change.file);
        rec.desired = change.desired;
        rec.retiring = change.retiring;
        rec.images = change.images;
        Ok(Outcome::StackChanged {
            revision: change.revision,
            grid_version: self.grid.version(),
        })
    }

    /// A stack's record, if the leader computed on its revision and on the grid as it is.
    fn stack_at(
        &self,
        stack: &str,
        revision: u64,
        grid_version: u64,
    ) -> Result<&super::StackRecord, Refusal> {
        let Some(rec) = self.stacks.get(stack) else {
            return Err(Refusal::UnknownStack(stack.to_owned()));
        };
        if rec.revision != revision {
            return Err(Refusal::StaleStack {
                stack: stack.to_owned(),
                expected: revision,
                current: rec.revision,
            });
        }
        if grid_version != self.grid.version() {
            return Err(Refusal::StaleGrid {
                expected: grid_version,
                current: self.grid.version(),
            });
        }
        Ok(rec)
    }

    pub(super) fn retire(
        &mut self,
        stack: &str,
        revision: u64,
        grid_version: u64,
        slices: &[SliceId],
    ) -> Result<Outcome, Refusal> {
        let rec = self.stack_at(stack, revision, grid_version)?;
        if let Some(s) = slices.iter().find(|s| !rec.retiring.contains(s)) {
            return Err(Refusal::Invalid(format!(
                "slice {s} of stack {stack} is not retiring"
            )));
        }
        let mut grid = self.grid.clone();
        for (op, id) in slices.iter().enumerate() {
            grid.remove_slice(id).map_err(|e| Refusal::Grid {
                op,
                message: e.to_string(),
            })?;
        }
        self.grid = grid;
        let rec = self.stacks.get_mut(stack).expect("checked above");
        rec.retiring.retain(|s| !slices.contains(s));
        rec.desired.retain(|d| !slices.contains(&d.slice));
        if rec.retiring.is_empty() {
            rec.previous = None; // the deploy is through: nothing to roll back to
        }
        Ok(Outcome::Retired {
            grid_version: self.grid.version(),
        })
    }

    /// Roll back a deploy whose replaced replicas still run (see [`super::Command::Rollback`]).
    ///
    /// The nodes the deploy replaced (those with retiring replicas) get their previous state
    /// and definition back and keep their old replicas; their new replicas, and every replica
    /// of a node the deploy added, leave the grid. Nodes the deploy did not replace keep what
    /// it did to them (a scale, a removal). The stack env and source are the previous ones.
    pub(super) fn rollback(
        &mut self,
        stack: &str,
        revision: u64,
        grid_version: u64,
        reason: String,
    ) -> Result<Outcome, Refusal> {
        let rec = self.stack_at(stack, revision, grid_version)?;
        let Some(prev) = rec.previous.clone().filter(|_| !rec.retiring.is_empty()) else {
            return Err(Refusal::Invalid(format!(
                "stack {stack} has no deploy in progress to roll back"
            )));
        };
        let retiring: BTreeSet<&SliceId> = rec.retiring.iter().collect();
        let replaced: BTreeSet<String> = rec
            .desired
            .iter()
            .filter(|d| retiring.contains(&d.slice))
            .map(|d| d.node.clone())
            .collect();
        let added: BTreeSet<String> = rec
            .current
            .nodes
            .keys()
            .filter(|n| !prev.current.nodes.contains_key(*n))
            .cloned()
            .collect();
        let dropped: Vec<SliceId> = rec
            .desired
            .iter()
            .filter(|d| {
                (replaced.contains(&d.node) && !retiring.contains(&d.slice))
                    || added.contains(&d.node)
            })
            .map(|d| d.slice.clone())
            .collect();
        let mut grid = self.grid.clone();
        for (op, id) in dropped.iter().enumerate() {
            grid.remove_slice(id).map_err(|e| Refusal::Grid {
                op,
                message: e.to_string(),
            })?;
        }
        let mut rec = rec.clone();
        rec.desired.retain(|d| !dropped.contains(&d.slice));
        rec.retiring.clear();
        for n in &added {
            rec.current.nodes.remove(n);
        }
        for n in &replaced {
            match prev.current.nodes.get(n) {
                Some(was) => rec.current.nodes.insert(n.clone(), was.clone()),
                None => rec.current.nodes.remove(n),
            };
        }
        if let (Some(file), Some(was)) = (rec.file.as_mut(), prev.file.as_ref()) {
            file.env = was.env.clone();
            file.nodes.retain(|n| !added.contains(&n.name));
            for spec in file.nodes.iter_mut() {
                if replaced.contains(&spec.name) {
                    if let Some(old) = was.node(&spec.name) {
                        *spec = old.clone();
                    }
                }
            }
        }
        let used: BTreeSet<&str> = rec.desired.iter().map(|d| d.image.reference()).collect();
        let mut images = prev.images.clone();
        images.extend(rec.images.clone());
        images.retain(|tag, _| used.contains(tag.as_str()));
        rec.images = images;
        rec.source = prev.source.clone().or(rec.source);
        rec.revision += 1;
        rec.previous = None;
        rec.failed = Some(reason);
        let revision = rec.revision;
        self.grid = grid;
        self.routes.retain(|_, t| t.stack != stack);
        for (node, state) in &rec.current.nodes {
            for domain in &state.domains {
                self.routes
                    .entry(domain.clone())
                    .or_insert_with(|| RouteTarget {
                        stack: stack.to_owned(),
                        node: node.clone(),
                    });
            }
        }
        self.stacks.insert(stack.to_owned(), rec);
        Ok(Outcome::RolledBack {
            revision,
            grid_version: self.grid.version(),
        })
    }

    pub(super) fn set_stack_enabled(
        &mut self,
        stack: &str,
        enabled: bool,
    ) -> Result<Outcome, Refusal> {
        match self.stacks.get_mut(stack) {
            Some(rec) if rec.revision > 0 => {
                rec.disabled = !enabled;
                Ok(Outcome::StackEnabled)
            }
            _ => Err(Refusal::UnknownStack(stack.to_owned())),
        }
    }
}
