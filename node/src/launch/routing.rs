//! What the routers serve, and when a deploy may retire or must roll back: pure functions of
//! the committed state and the servers' reports (as a readiness function), tested as data.
//!
//! - [`table`]: for every committed route (domain -> a stack's web node), the addresses of the
//!   node's ready replicas. Domains are served in lower case; a route the routers cannot
//!   serve (a domain two nodes claim in any case, a name nginx cannot take) is left out and
//!   reported ([`left_out`], `quarry routes`): one stack never keeps the others' routes out. While a DEPLOY runs (the node has retiring replicas) exactly one
//!   revision is routed: the new one once **all** its replicas are ready, the old one until
//!   then (or the new one's ready replicas when no old one is ready). A disabled stack, or a
//!   node with nothing ready, routes nothing: its domains answer 503.
//! - [`switched`]: whether a router's acknowledged table has left a stack's retiring replicas.
//! - [`verdict`]: what a stack's rollout needs next: nothing, wait, retire the replaced
//!   replicas (new ones ready and every live router switched), or roll back (a new replica
//!   failed, its server went silent, or the rollout ran out of time, routers included).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::RoutesView;
use crate::cluster::{RouteTarget, StackRecord};
use crate::router::{admit, Admitted, LeftOut, RouterSpec, Site};
use crate::types::DesiredContainer;

/// How long a deploy's new replicas get to become ready before it is rolled back.
pub const ROLLOUT_LIMIT: Duration = Duration::from_secs(30);
/// How long the server of a new replica may stay silent before the deploy is rolled back.
pub const SILENT_LIMIT: Duration = Duration::from_secs(10);

/// One replica a router sends requests to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Upstream {
    /// `address:host port` of its main port.
    pub address: String,
    /// Its slice.
    pub slice: String,
    /// Its revision.
    pub revision: u64,
}

/// One routed node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedNode {
    /// The stack.
    pub stack: String,
    /// The web node.
    pub node: String,
    /// Its domains, sorted.
    pub domains: Vec<String>,
    /// Its ready replicas of the routed revision, sorted (empty: 503).
    pub upstreams: Vec<Upstream>,
}

/// Everything a router serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// By (stack, node).
    pub nodes: Vec<RoutedNode>,
}

impl RouteTable {
    /// The router config's input, listening on `listen`.
    pub fn spec(&self, listen: std::net::SocketAddr) -> RouterSpec {
        RouterSpec {
            listen,
            sites: self
                .nodes
                .iter()
                .map(|n| Site {
                    stack: n.stack.clone(),
                    node: n.node.clone(),
                    domains: n.domains.clone(),
                    upstreams: n
                        .upstreams
                        .iter()
                        .filter_map(|u| u.address.parse().ok())
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `GET /v1/routes`: the leader's view and the committed routes left out of its table. (The
/// view's wire encoding between servers is fixed; the left-out routes are computed by the
/// server that answers, from the same committed routes.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesReport {
    /// What the leader computes and the routers acknowledged.
    #[serde(flatten)]
    pub view: RoutesView,
    /// Committed routes no router is sent, and why.
    #[serde(default)]
    pub left_out: Vec<LeftOut>,
}

/// The `address:host port` of a placed container's main port.
pub fn main_address(d: &DesiredContainer) -> Option<String> {
    let p = d.placement.as_ref()?;
    let hp = p.host_ports.get(d.ports.first()?)?;
    Some(p.address(*hp))
}

/// The committed routes the routers can serve ([`crate::router::admit`]: domains in lower
/// case; a domain two nodes claim, or a name nginx could not take, left out).
fn admitted(routes: &BTreeMap<String, RouteTarget>) -> Admitted {
    admit(
        routes
            .iter()
            .map(|(d, t)| (t.stack.as_str(), t.node.as_str(), d.as_str())),
    )
}

/// The committed routes left out of the routers' table, and why (`quarry routes` shows them;
/// a pure function of the committed routes, so any server computes what the leader does).
pub fn left_out(routes: &BTreeMap<String, RouteTarget>) -> Vec<LeftOut> {
    admitted(routes).left_out
}

/// The routers' table: see the module docs. `ready(stack, container)` says whether the
/// container's server reports it running and healthy. A committed route that cannot be
/// served ([`left_out`]) is not in it; every other route is.
pub fn table(
    routes: &BTreeMap<String, RouteTarget>,
    stacks: &BTreeMap<String, StackRecord>,
    ready: &dyn Fn(&str, &DesiredContainer) -> bool,
) -> RouteTable {
    let mut by_node: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (domain, target) in admitted(routes).routes {
        by_node.entry(target).or_default().push(domain);
    }
    let nodes = by_node
        .into_iter()
        .map(|((stack, node), domains)| {
            let upstreams = stacks
                .get(&stack)
                .filter(|r| !r.disabled)
                .map(|r| routed(r, &stack, &node, ready))
                .unwrap_or_default();
            RoutedNode {
                stack,
                node,
                domains,
                upstreams,
            }
        })
        .collect();
    RouteTable { nodes }
}

/// The ready replicas of the one revision of `node` that is routed.
fn routed(
    rec: &StackRecord,
    stack: &str,
    node: &str,
    ready: &dyn Fn(&str, &DesiredContainer) -> bool,
) -> Vec<Upstream> {
    let retiring: BTreeSet<&str> = rec.retiring.iter().map(|s| s.0.as_str()).collect();
    let (old, new): (Vec<&DesiredContainer>, Vec<&DesiredContainer>) = rec
        .desired
        .iter()
        .filter(|d| d.node == node && d.placement.is_some())
        .partition(|d| retiring.contains(d.slice.0.as_str()));
    let up = |list: &[&DesiredContainer]| -> Vec<Upstream> {
        let mut v: Vec<Upstream> = list
            .iter()
            .filter(|d| ready(stack, d))
            .filter_map(|d| {
                Some(Upstream {
                    address: main_address(d)?,
                    slice: d.slice.0.clone(),
                    revision: d.revision,
                })
            })
            .collect();
        v.sort();
        v
    };
    let new_up = up(&new);
    if old.is_empty() || (!new.is_empty() && new_up.len() == new.len()) {
        return new_up;
    }
    let old_up = up(&old);
    if old_up.is_empty() {
        new_up
    } else {
        old_up
    }
}

/// Whether a router's acknowledged `table` routes none of `stack`'s retiring replicas.
pub fn switched(table: &RouteTable, stack: &str, retiring: &BTreeSet<String>) -> bool {
    table
        .nodes
        .iter()
        .filter(|n| n.stack == stack)
        .all(|n| n.upstreams.iter().all(|u| !retiring.contains(&u.slice)))
}

/// How a new replica is doing, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running and healthy (or nothing to probe).
    Ready,
    /// Not yet; why.
    Waiting(String),
    /// It will not get there: reported unhealthy, or its server silent past [`SILENT_LIMIT`].
    Failed(String),
}

/// What a stack's rollout needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is retiring.
    Idle,
    /// Waiting for these.
    Wait(Vec<String>),
    /// Retire the replaced replicas.
    Retire,
    /// Roll the deploy back, for this reason.
    RollBack(String),
}

/// The next step of a stack's rollout: `health` of each container the change made, whether every live
/// router has switched away from the retiring replicas, and how long this leader has watched
/// the rollout.
pub fn verdict(
    rec: &StackRecord,
    health: &dyn Fn(&DesiredContainer) -> Health,
    routers_switched: bool,
    watched: Duration,
) -> Verdict {
    if rec.retiring.is_empty() {
        return Verdict::Idle;
    }
    if rec.disabled {
        return Verdict::Retire; // nothing of it runs: the old replicas go with no switch
    }
    // The change's own replicas (replacements, new nodes, new replicas): those of the
    // record's revision. Replicas of nodes it left alone are no part of the rollout.
    let mut waiting = Vec::new();
    for d in rec.desired.iter().filter(|d| d.revision == rec.revision) {
        let server = d
            .placement
            .as_ref()
            .map(|p| p.server.0.as_str())
            .unwrap_or("?");
        match health(d) {
            Health::Ready => {}
            Health::Waiting(why) => {
                waiting.push(format!("{} on {server} ({why})", d.container_name()))
            }
            Health::Failed(why) => {
                return Verdict::RollBack(format!("{} on {server}: {why}", d.container_name()))
            }
        }
    }
    if !waiting.is_empty() {
        if watched >= ROLLOUT_LIMIT {
            return Verdict::RollBack(format!(
                "not ready after {}s: {}",
                ROLLOUT_LIMIT.as_secs(),
                waiting.join("; ")
            ));
        }
        return Verdict::Wait(waiting);
    }
    if !routers_switched {
        if watched >= ROLLOUT_LIMIT {
            return Verdict::RollBack(format!(
                "the routers did not switch to the new replicas within {}s (`quarry routes` \
                 says why)",
                ROLLOUT_LIMIT.as_secs()
            ));
        }
        return Verdict::Wait(vec!["the routers to switch to the new replicas".to_owned()]);
    }
    Verdict::Retire
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
