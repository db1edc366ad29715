//! Build: the pure compiler from a stack file and the current state to launch instructions.
//!
//! ```text
//!   (StackFile, StackState, global env) --plan--> Plan { instructions, desired, routes }
//! ```
//!
//! It is what `quarry plan` prints and what the leader (or `quarry start`) executes. Rules, as
//! DESIGN.md sets them:
//!
//! - A node's **definition** is everything that makes its containers what they are: kind,
//!   image (for `build:`, the build directory's content digest), command, env, ports, memory,
//!   health, tags. Not `scale` (a SCALE) and not `domains` (a ROUTE). Its sha256 is the
//!   definition hash; a new hash means a new **revision** (the old one + 1).
//! - A **service**'s definition counts only its own env: global and stack env changes do not
//!   restart it. A changed or new service is ENSUREd; an unchanged one is left alone.
//! - A **web** or **worker** node with a new definition is DEPLOYed (boot new, wait healthy,
//!   switch the router, stop old). Its definition counts the merged env (global, stack, own), so
//!   an env change redeploys it. It is also redeployed when a service it gets addresses from is
//!   replaced, since that address changes.
//! - A scale change alone is a SCALE (replicas added with the lowest free indices, or the
//!   highest removed). Domains added or dropped are ROUTEs. Nodes gone from the file are KILLed.
//! - Order: ENSURE (services first), DEPLOY/SCALE, ROUTE, KILL.
//!
//! Env of every non-service container, lowest precedence first: global env, stack env, the
//! injected service addresses (`S_HOST`, `S_PORT`, `S_PORT_<p>_TCP_ADDR`, `S_PORT_<p>_TCP_PORT`),
//! the node's own env. Until a service is placed its address is written symbolically
//! (`${kv.host}`); [`resolve_env`] fills it in from the placements.

mod render;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use render::{render, render_with, EnvValues, REDACTED};

use crate::spec::{env_prefix, references, Attr, NodeSpec, StackFile};
use crate::types::{
    Command, DesiredContainer, Health, ImageSource, Kind, NodeState, Placement, ReplicaState,
    SliceId, SliceSpec, StackState,
};

/// What [`plan`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The stack as pushed.
    pub stack: &'a StackFile,
    /// What runs now (empty for a first deploy).
    pub current: &'a StackState,
    /// The cluster's global env (lowest precedence).
    pub global_env: &'a BTreeMap<String, String>,
}

/// A launch instruction (the notes' ENSURE, DEPLOY, SCALE, ROUTE, KILL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "UPPERCASE")]
pub enum Instruction {
    /// Boot a service unless it runs with this definition; replace it if its definition changed.
    Ensure {
        /// The node.
        node: String,
        /// The revision it is replacing, if any.
        from: Option<u64>,
        /// The revision to run.
        to: u64,
        /// Why.
        reasons: Vec<String>,
        /// The container to run.
        container: Box<DesiredContainer>,
        /// The old revision's slices to stop once the new one runs.
        stop: Vec<SliceId>,
    },
    /// Boot new replicas, wait until healthy, switch the router, stop the old ones.
    Deploy {
        /// The node.
        node: String,
        /// The running revision, if any.
        from: Option<u64>,
        /// The new revision.
        to: u64,
        /// Why.
        reasons: Vec<String>,
        /// The new replicas.
        containers: Vec<DesiredContainer>,
        /// The old replicas' slices to stop once the new ones are healthy.
        stop: Vec<SliceId>,
    },
    /// Add or remove replicas of the running revision.
    Scale {
        /// The node.
        node: String,
        /// Its revision.
        revision: u64,
        /// Replicas now.
        from: u32,
        /// Replicas wanted.
        to: u32,
        /// Replicas to add.
        add: Vec<DesiredContainer>,
        /// Slices of replicas to remove.
        remove: Vec<SliceId>,
    },
    /// Route a domain to a web node's main port, or stop routing it.
    Route {
        /// The domain.
        domain: String,
        /// The web node.
        node: String,
        /// Its main container port.
        port: u16,
        /// Add or remove.
        action: RouteAction,
    },
    /// Stop the replicas of a node that is gone from quarry.yml.
    Kill {
        /// The node.
        node: String,
        /// Its revision.
        revision: u64,
        /// Its replicas' slices.
        slices: Vec<SliceId>,
        /// Why.
        reason: String,
    },
}

/// What a ROUTE does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAction {
    /// Start routing.
    Add,
    /// Stop routing.
    Remove,
}

/// A domain routed to a web node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    /// The domain.
    pub domain: String,
    /// The web node.
    pub node: String,
    /// Its main container port.
    pub port: u16,
}

/// The compiled plan of one push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The stack.
    pub stack: String,
    /// What changes, in execution order. Empty when nothing does.
    pub instructions: Vec<Instruction>,
    /// Every container the stack should run once the plan is applied: kept ones with their
    /// placement, new ones with `placement: None`.
    pub desired: Vec<DesiredContainer>,
    /// The routes once applied.
    pub routes: Vec<Route>,
    /// Nodes left as they are, with their revision.
    pub unchanged: Vec<(String, u64)>,
}

impl Plan {
    /// The same plan with every container's env values replaced by [`REDACTED`] (names
    /// kept): what `quarry plan --json` prints unless `--show-env`.
    pub fn redacted(&self) -> Plan {
        let hide = |c: &mut DesiredContainer| {
            for v in c.env.values_mut() {
                *v = REDACTED.to_owned();
            }
        };
        let mut p = self.clone();
        for i in &mut p.instructions {
            match i {
                Instruction::Ensure { container, .. } => hide(container),
                Instruction::Deploy { containers, .. } => containers.iter_mut().for_each(hide),
                Instruction::Scale { add, .. } => add.iter_mut().for_each(hide),
                Instruction::Route { .. } | Instruction::Kill { .. } => {}
            }
        }
        p.desired.iter_mut().for_each(hide);
        p
    }

    /// The slices the grid must place: one for each desired container without a placement.
    pub fn slices_to_place(&self, stack: &StackFile) -> Vec<SliceSpec> {
        self.desired
            .iter()
            .filter(|c| c.placement.is_none())
            .map(|c| SliceSpec {
                id: c.slice.clone(),
                memory: c.memory,
                tags: stack
                    .node(&c.node)
                    .map(|n| n.tags.clone())
                    .unwrap_or_default(),
                group: replica_group(&c.stack, &c.node, c.revision),
                pinned: c.kind == Kind::Service,
            })
            .collect()
    }
}

/// The grid group of a node's replicas of one revision (`STACK.NODE.rREVISION`): the grid
/// spreads them over servers. Per revision, so the new replicas of a DEPLOY spread among
/// themselves however the old ones, still running beside them, are placed.
pub fn replica_group(stack: &str, node: &str, revision: u64) -> String {
    format!("{stack}.{node}.r{revision}")
}

/// The definition of a node: what its hash covers.
#[derive(Serialize)]
struct Definition<'a> {
    kind: Kind,
    image: &'a str,
    command: &'a Option<Command>,
    env: &'a BTreeMap<String, String>,
    ports: &'a [u16],
    memory: u64,
    health: &'a Option<Health>,
    tags: &'a [String],
}

/// The env a node's containers get before service addresses are resolved, in precedence order:
/// global, stack, injected service addresses, the node's own.
pub fn node_env(
    stack: &StackFile,
    node: &NodeSpec,
    global_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = global_env.clone();
    env.extend(stack.env.clone());
    if node.kind != Kind::Service {
        for svc in stack.nodes.iter().filter(|n| n.kind == Kind::Service) {
            let p = env_prefix(&svc.name);
            env.insert(format!("{p}_HOST"), format!("${{{}.host}}", svc.name));
            if !svc.ports.is_empty() {
                env.insert(format!("{p}_PORT"), format!("${{{}.port}}", svc.name));
            }
            for port in &svc.ports {
                env.insert(
                    format!("{p}_PORT_{port}_TCP_ADDR"),
                    format!("${{{}.host}}", svc.name),
                );
                env.insert(
                    format!("{p}_PORT_{port}_TCP_PORT"),
                    format!("${{{}.port.{port}}}", svc.name),
                );
            }
        }
    }
    env.extend(node.env.clone());
    env
}

/// The definition hash of a node (hex sha256).
pub fn definition_hash(
    stack: &StackFile,
    node: &NodeSpec,
    global_env: &BTreeMap<String, String>,
) -> String {
    let merged;
    let env = if node.kind == Kind::Service {
        &node.env
    } else {
        merged = node_env(stack, node, global_env);
        &merged
    };
    let def = Definition {
        kind: node.kind,
        image: image_identity(&node.image),
        command: &node.command,
        env,
        ports: &node.ports,
        memory: node.memory,
        health: &node.health,
        tags: &node.tags,
    };
    // Serializing plain data to JSON cannot fail.
    let json = serde_json::to_vec(&def).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// The definition of a node field by field, for explaining changes: `kind`, `image`,
/// `command`, `ports`, `memory`, `health`, `tags`, and `env.KEY` for each env variable (its
/// value hashed, as env values may be secrets).
pub fn definition_fields(
    stack: &StackFile,
    node: &NodeSpec,
    global_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let env = if node.kind == Kind::Service {
        node.env.clone()
    } else {
        node_env(stack, node, global_env)
    };
    let json = |v: &dyn erased::Json| v.json();
    let mut out = BTreeMap::from([
        ("kind".to_owned(), node.kind.as_str().to_owned()),
        (
            "image".to_owned(),
            match &node.image {
                ImageSource::Image(n) => n.clone(),
                ImageSource::Build { dir, digest, .. } => {
                    format!("{dir}/ at {}", &digest[..digest.len().min(12)])
                }
            },
        ),
        ("command".to_owned(), json(&node.command)),
        ("ports".to_owned(), json(&node.ports)),
        (
            "memory".to_owned(),
            crate::spec::units::format_size(node.memory),
        ),
        ("health".to_owned(), json(&node.health)),
        ("tags".to_owned(), json(&node.tags)),
    ]);
    for (k, v) in env {
        let h = hex::encode(Sha256::digest(v.as_bytes()));
        out.insert(format!("env.{k}"), h[..12].to_owned());
    }
    out
}

mod erased {
    /// A value shown as compact JSON.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// What differs between two field maps, for a plan's reasons.
fn changed_fields(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut env_changed = Vec::new();
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (a, b) = (old.get(k), new.get(k));
        if a == b {
            continue;
        }
        if let Some(e) = k.strip_prefix("env.") {
            env_changed.push(match (a, b) {
                (None, _) => format!("+{e}"),
                (_, None) => format!("-{e}"),
                _ => e.to_owned(),
            });
        } else if k == "image" || k == "memory" || k == "kind" {
            out.push(format!(
                "{k} {} -> {}",
                a.map_or("none", String::as_str),
                b.map_or("none", String::as_str)
            ));
        } else {
            out.push(format!("{k} changed"));
        }
    }
    if !env_changed.is_empty() {
        out.push(format!("env {}", env_changed.join(", ")));
    }
    out
}

fn image_identity(img: &ImageSource) -> &str {
    match img {
        ImageSource::Image(n) => n,
        ImageSource::Build { digest, .. } => digest,
    }
}

/// The services a node's env refers to (injected or written in its own env).
fn services_used(stack: &StackFile, node: &NodeSpec) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    if node.kind != Kind::Service {
        out.extend(
            stack
                .nodes
                .iter()
                .filter(|n| n.kind == Kind::Service)
                .map(|n| n.name.clone()),
        );
    }
    for v in node.env.values() {
        if let Ok(refs) = references(v) {
            out.extend(refs.into_iter().map(|r| r.service));
        }
    }
    out
}

fn container(
    stack: &StackFile,
    node: &NodeSpec,
    revision: u64,
    definition: &str,
    replica: u32,
    env: &BTreeMap<String, String>,
) -> DesiredContainer {
    DesiredContainer {
        stack: stack.name.clone(),
        node: node.name.clone(),
        kind: node.kind,
        revision,
        definition: definition.to_owned(),
        replica,
        slice: SliceId::for_replica(&stack.name, &node.name, revision, replica),
        image: node.image.clone(),
        command: node.command.clone(),
        env: env.clone(),
        ports: node.ports.clone(),
        memory: node.memory,
        health: node.health.clone(),
        placement: None,
    }
}

/// Compile the plan of a push. Pure: the same inputs give the same plan.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let Inputs {
        stack,
        current,
        global_env,
    } = *inputs;
    let mut ensure = Vec::new();
    let mut deploy = Vec::new();
    let mut routes_ops = Vec::new();
    let mut kills = Vec::new();
    let mut desired = Vec::new();
    let mut unchanged = Vec::new();

    let defs: BTreeMap<&str, String> = stack
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), definition_hash(stack, n, global_env)))
        .collect();
    // Services whose address is about to change: replaced (new definition) or booted anew.
    let moving: BTreeSet<&str> = stack
        .nodes
        .iter()
        .filter(|n| n.kind == Kind::Service)
        .filter(|n| {
            current
                .nodes
                .get(&n.name)
                .is_none_or(|s| s.definition != defs[n.name.as_str()] || s.kind != Kind::Service)
        })
        .map(|n| n.name.as_str())
        .collect();

    let mut order: Vec<&NodeSpec> = stack.nodes.iter().collect();
    order.sort_by_key(|n| n.kind != Kind::Service);
    for node in order {
        let def = &defs[node.name.as_str()];
        let env = node_env(stack, node, global_env);
        let cur = current.nodes.get(&node.name);
        let mut reasons = Vec::new();
        match cur {
            None => reasons.push("new node".to_owned()),
            Some(c) if c.kind != node.kind => {
                reasons.push(format!("kind {} -> {}", c.kind, node.kind))
            }
            Some(c) if c.definition != *def => {
                let why = changed_fields(&c.fields, &definition_fields(stack, node, global_env));
                if c.fields.is_empty() || why.is_empty() {
                    reasons.push("definition changed".to_owned());
                } else {
                    reasons.extend(why);
                }
            }
            Some(_) => {}
        }
        if reasons.is_empty() && node.kind != Kind::Service {
            let moved: Vec<&str> = services_used(stack, node)
                .iter()
                .filter_map(|s| moving.get(s.as_str()).copied())
                .collect();
            if !moved.is_empty() {
                reasons.push(format!("the address of {} changes", moved.join(", ")));
            }
        }
        let old_slices: Vec<SliceId> = cur
            .map(|c| c.replicas.iter().map(|r| r.slice.clone()).collect())
            .unwrap_or_default();
        let revision = match cur {
            Some(c) if reasons.is_empty() => c.revision,
            Some(c) => c.revision + 1,
            None => 1,
        };
        if !reasons.is_empty() {
            let containers: Vec<DesiredContainer> = (0..node.scale)
                .map(|i| container(stack, node, revision, def, i, &env))
                .collect();
            desired.extend(containers.iter().cloned());
            if node.kind == Kind::Service {
                if let Some(c) = containers.into_iter().next() {
                    ensure.push(Instruction::Ensure {
                        node: node.name.clone(),
                        from: cur.map(|c| c.revision),
                        to: revision,
                        reasons,
                        container: Box::new(c),
                        stop: old_slices,
                    });
                }
            } else {
                deploy.push(Instruction::Deploy {
                    node: node.name.clone(),
                    from: cur.map(|c| c.revision),
                    to: revision,
                    reasons,
                    containers,
                    stop: old_slices,
                });
            }
        } else if let Some(cur) = cur {
            // Same definition: keep the running replicas, scale if asked.
            let mut kept: Vec<&ReplicaState> = cur.replicas.iter().collect();
            kept.sort_by_key(|r| r.replica);
            let want = if node.kind == Kind::Service {
                1
            } else {
                node.scale
            } as usize;
            let mut remove = Vec::new();
            while kept.len() > want {
                if let Some(r) = kept.pop() {
                    remove.push(r.slice.clone());
                }
            }
            for r in &kept {
                let mut c = container(stack, node, revision, def, r.replica, &env);
                c.slice = r.slice.clone();
                c.placement = Some(r.placement.clone());
                desired.push(c);
            }
            let used: BTreeSet<u32> = kept.iter().map(|r| r.replica).collect();
            let add: Vec<DesiredContainer> = (0u32..)
                .filter(|i| !used.contains(i))
                .take(want.saturating_sub(kept.len()))
                .map(|i| container(stack, node, revision, def, i, &env))
                .collect();
            desired.extend(add.iter().cloned());
            if add.is_empty() && remove.is_empty() {
                unchanged.push((node.name.clone(), revision));
            } else {
                deploy.push(Instruction::Scale {
                    node: node.name.clone(),
                    revision,
                    from: cur.replicas.len() as u32,
                    to: want as u32,
                    add,
                    remove: remove.into_iter().rev().collect(),
                });
            }
        }
        // Routes of this node.
        let old_domains: BTreeSet<&str> = cur
            .filter(|c| c.kind == Kind::Web)
            .map(|c| c.domains.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let new_domains: BTreeSet<&str> = if node.kind == Kind::Web {
            node.domains.iter().map(String::as_str).collect()
        } else {
            BTreeSet::new()
        };
        let port = node.ports.first().copied().unwrap_or(0);
        for d in new_domains.difference(&old_domains) {
            routes_ops.push(Instruction::Route {
                domain: (*d).to_owned(),
                node: node.name.clone(),
                port,
                action: RouteAction::Add,
            });
        }
        for d in old_domains.difference(&new_domains) {
            routes_ops.push(Instruction::Route {
                domain: (*d).to_owned(),
                node: node.name.clone(),
                port,
                action: RouteAction::Remove,
            });
        }
    }
    // Nodes gone from the file.
    for (name, cur) in &current.nodes {
        if stack.node(name).is_some() {
            continue;
        }
        for d in &cur.domains {
            routes_ops.push(Instruction::Route {
                domain: d.clone(),
                node: name.clone(),
                port: 0,
                action: RouteAction::Remove,
            });
        }
        kills.push(Instruction::Kill {
            node: name.clone(),
            revision: cur.revision,
            slices: cur.replicas.iter().map(|r| r.slice.clone()).collect(),
            reason: "removed from quarry.yml".to_owned(),
        });
    }
    let mut routes: Vec<Route> = stack
        .nodes
        .iter()
        .filter(|n| n.kind == Kind::Web)
        .flat_map(|n| {
            n.domains.iter().map(|d| Route {
                domain: d.clone(),
                node: n.name.clone(),
                port: n.ports.first().copied().unwrap_or(0),
            })
        })
        .collect();
    routes.sort();
    let mut instructions = ensure;
    instructions.extend(deploy);
    instructions.extend(routes_ops);
    instructions.extend(kills);
    Plan {
        stack: stack.name.clone(),
        instructions,
        desired,
        routes,
        unchanged,
    }
}

/// Why an env could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A referenced service has no placed container.
    #[error(
        "container {container} needs the address of service {service:?}, which is not placed yet"
    )]
    Unplaced {
        /// The container that needs it.
        container: String,
        /// The service.
        service: String,
    },
    /// A referenced port is not one of the service's.
    #[error("container {container} refers to port {port} of service {service:?}, which it does not publish")]
    NoSuchPort {
        /// The container.
        container: String,
        /// The service.
        service: String,
        /// The port.
        port: u16,
    },
}

/// Replace the `${svc.host}` / `${svc.port}` / `${svc.port.P}` references in the env of every
/// non-service container with the placed service's address. Every service the references name
/// must be among `containers` with a placement.
pub fn resolve_env(containers: &mut [DesiredContainer]) -> Result<(), ResolveError> {
    let services: BTreeMap<String, (Placement, Vec<u16>)> = containers
        .iter()
        .filter(|c| c.kind == Kind::Service)
        .filter_map(|c| {
            c.placement
                .clone()
                .map(|p| (c.node.clone(), (p, c.ports.clone())))
        })
        .collect();
    for c in containers.iter_mut() {
        let name = c.container_name();
        for value in c.env.values_mut() {
            let Ok(refs) = references(value) else {
                continue;
            };
            if refs.is_empty() {
                continue;
            }
            let mut out = String::new();
            let mut last = 0;
            for r in refs {
                let (p, ports) =
                    services
                        .get(&r.service)
                        .ok_or_else(|| ResolveError::Unplaced {
                            container: name.clone(),
                            service: r.service.clone(),
                        })?;
                let port_of = |cp: u16| {
                    p.ports.get(&cp).copied().ok_or(ResolveError::NoSuchPort {
                        container: name.clone(),
                        service: r.service.clone(),
                        port: cp,
                    })
                };
                let text = match r.attr {
                    Attr::Host => p.host.clone(),
                    Attr::Port => match ports.first() {
                        Some(cp) => port_of(*cp)?.to_string(),
                        None => {
                            return Err(ResolveError::NoSuchPort {
                                container: name.clone(),
                                service: r.service.clone(),
                                port: 0,
                            })
                        }
                    },
                    Attr::PortOf(cp) => port_of(cp)?.to_string(),
                };
                out.push_str(&value[last..r.offset]);
                out.push_str(&text);
                last = r.offset + r.len;
            }
            out.push_str(&value[last..]);
            *value = out;
        }
    }
    Ok(())
}

/// The current state once `plan` is applied, with each new container placed by `place`.
/// (The leader commits this; `quarry start` reads the same back from Docker; tests use it to
/// chain pushes.)
pub fn state_after(
    plan: &Plan,
    stack: &StackFile,
    global_env: &BTreeMap<String, String>,
    mut place: impl FnMut(&DesiredContainer) -> Placement,
) -> StackState {
    let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
    for c in &plan.desired {
        let placement = c.placement.clone().unwrap_or_else(|| place(c));
        let spec = stack.node(&c.node);
        let entry = nodes.entry(c.node.clone()).or_insert_with(|| NodeState {
            kind: c.kind,
            revision: c.revision,
            definition: c.definition.clone(),
            fields: spec
                .map(|n| definition_fields(stack, n, global_env))
                .unwrap_or_default(),
            domains: spec
                .filter(|n| n.kind == Kind::Web)
                .map(|n| n.domains.clone())
                .unwrap_or_default(),
            replicas: Vec::new(),
        });
        entry.replicas.push(ReplicaState {
            replica: c.replica,
            slice: c.slice.clone(),
            placement,
        });
    }
    for n in nodes.values_mut() {
        n.replicas.sort_by_key(|r| r.replica);
    }
    StackState {
        name: plan.stack.clone(),
        nodes,
    }
}
