//! The data every part of quarry shares: servers, slices, placements, the containers a server
//! should run, and the *current state* of a stack.
//!
//! Pure data (serde only, no I/O), so the CLI, the leader, the grid and the reconciler all speak
//! the same types:
//!
//! ```text
//!  quarry.yml --build--> Instruction (ENSURE/DEPLOY/SCALE/ROUTE/KILL)
//!                          | carries DesiredContainer (what to run, not where)
//!                          v
//!                  grid: Slice --place--> Placement (server + host ports)
//!                          |
//!                          v
//!   StackState (replicated) = for each node: revision, definition, replicas (slice, placement)
//!                          |
//!                          v
//!   reconciler on each server: placed DesiredContainers that name it vs Docker's containers
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A server of the cluster: a block of the grid. Locally (`quarry start`) the one server is
/// [`ServerId::local`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(pub String);

impl ServerId {
    /// The one server of a local run.
    pub fn local() -> Self {
        ServerId("local".to_owned())
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A slice of the grid: the memory one container reserves on one server.
///
/// Its id names one replica of one revision of one node (`STACK.NODE.rREVISION.REPLICA`), so
/// the old and the new replica of a DEPLOY hold two different slices while both run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SliceId(pub String);

impl SliceId {
    /// The slice id of a replica: unique across stacks, nodes, revisions and replicas.
    pub fn for_replica(stack: &str, node: &str, revision: u64, replica: u32) -> Self {
        SliceId(format!("{stack}.{node}.r{revision}.{replica}"))
    }
}

impl fmt::Display for SliceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node of a stack is, which decides how it is launched (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A backing container: ENSUREd, pinned to its server, never routed.
    Service,
    /// DEPLOYed on every change, spread over servers, routed by its domains.
    Web,
    /// Like web, but not routed.
    Worker,
}

impl Kind {
    /// The lower-case name used in quarry.yml and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Web => "web",
            Kind::Worker => "worker",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The slice as the grid sees it: size, tags it needs, the group it spreads within, and whether
/// it is pinned (a service: consolidation and drains never move it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceSpec {
    /// The slice id.
    pub id: SliceId,
    /// Memory in bytes.
    pub memory: u64,
    /// Tags the server must carry.
    pub tags: Vec<String>,
    /// The replicas of one revision of a node (`STACK.NODE.rREVISION`, see
    /// [`crate::build::replica_group`]): spread over servers where room allows.
    pub group: String,
    /// A service's slice stays where it is.
    pub pinned: bool,
}

/// Where a slice runs: its server, the address other containers reach it on, and the host port
/// chosen for each container port. Committed with the placement, so an address never changes
/// when a container restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The server that runs the replica.
    pub server: ServerId,
    /// The host (address or name) that other containers use to reach it: the server's cluster
    /// address, or locally the container's name on the stack's Docker network.
    pub host: String,
    /// Container port -> the port others connect to (a host port in the cluster; locally, on the
    /// stack network, the container port itself).
    pub ports: BTreeMap<u16, u16>,
    /// Container port -> the port published on the server (what the host, the router and the
    /// health checker use).
    pub host_ports: BTreeMap<u16, u16>,
}

impl Placement {
    /// `host:port` for one of its ports, as a socket address is written ([`host_port`]).
    pub fn address(&self, port: u16) -> String {
        host_port(&self.host, port)
    }
}

/// `host:port` as a socket address is written, so that it parses back: an IPv6 address in
/// brackets (`[fd00::1]:20001`), an IPv4 address or a name as is (`10.0.0.1:20001`,
/// `shop-kv-1:6379`). A plain `format!("{host}:{port}")` of an IPv6 host is ambiguous, and the
/// router table cannot parse it.
pub fn host_port(host: &str, port: u16) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    }
}

/// How a container is run: an exec list, or a string run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// `["httpd", "-f"]`: run as is.
    Exec(Vec<String>),
    /// `"httpd -f"`: run by `/bin/sh -c`.
    Shell(String),
}

impl Command {
    /// The argv Docker gets.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => vec!["/bin/sh".to_owned(), "-c".to_owned(), s.clone()],
        }
    }
}

/// What a health check probes, from the host, against the published main port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// HTTP GET of this path; healthy on a 2xx or 3xx answer.
    Http(String),
    /// A TCP connect.
    Tcp,
}

/// A health check (DESIGN.md: checked by the server that runs the replica, from the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// What to probe.
    pub probe: Probe,
    /// Time between probes, in milliseconds.
    pub interval_ms: u64,
    /// Time one probe may take, in milliseconds.
    pub timeout_ms: u64,
    /// Failed probes in a row before the replica counts as unhealthy.
    pub retries: u32,
}

/// Where a container's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// A named image (`redis:7`), pulled where a registry is reachable.
    Image(String),
    /// Built from a directory of the stack's tree (relative to quarry.yml) whose content hashes
    /// to `digest`; tagged `tag`.
    Build {
        /// The build context, relative to the directory of quarry.yml.
        dir: String,
        /// The content digest of that directory (hex sha256).
        digest: String,
        /// The image tag quarry gives the build (`quarry/STACK-DIR:DIGEST12`).
        tag: String,
    },
}

impl ImageSource {
    /// The image reference a container is created from.
    pub fn reference(&self) -> &str {
        match self {
            ImageSource::Image(name) => name,
            ImageSource::Build { tag, .. } => tag,
        }
    }
}

/// The labels quarry puts on every container it runs (DESIGN.md), so the current state of a
/// server can be read back from Docker.
pub mod labels {
    /// The stack's name.
    pub const STACK: &str = "quarry.stack";
    /// The node's name within the stack.
    pub const NODE: &str = "quarry.node";
    /// The node's revision (a number that grows with each change of its definition).
    pub const REVISION: &str = "quarry.revision";
    /// The grid's slice id.
    pub const SLICE: &str = "quarry.slice";
    /// The replica index.
    pub const REPLICA: &str = "quarry.replica";
    /// The node's kind (service, web, worker).
    pub const KIND: &str = "quarry.kind";
    /// The definition hash of the node's revision.
    pub const DEFINITION: &str = "quarry.definition";
}

/// The Docker restart policy of every quarry container, so containers survive a `quarryd`
/// restart or outage (static stability).
pub const RESTART_POLICY: &str = "unless-stopped";

/// One container a server should run: everything the reconciler needs, and nothing about how
/// the decision was made. The reconciler compares these (by their labels) with Docker's
/// containers and converges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredContainer {
    /// The stack.
    pub stack: String,
    /// The node within the stack.
    pub node: String,
    /// The node's kind.
    pub kind: Kind,
    /// The node's revision.
    pub revision: u64,
    /// The definition hash of that revision (hex sha256).
    pub definition: String,
    /// The replica index, 0-based.
    pub replica: u32,
    /// The slice this container runs in.
    pub slice: SliceId,
    /// The image to run.
    pub image: ImageSource,
    /// The command; `None` keeps the image's own.
    pub command: Option<Command>,
    /// The environment, fully resolved where the service addresses are known, otherwise with
    /// `${svc.host}`-style placeholders (a plan before placement).
    pub env: BTreeMap<String, String>,
    /// The container ports; the first is the main one.
    pub ports: Vec<u16>,
    /// The memory limit in bytes (the slice size).
    pub memory: u64,
    /// The health check, if any.
    pub health: Option<Health>,
    /// Where it runs, once placed.
    pub placement: Option<Placement>,
}

impl DesiredContainer {
    /// The Docker container name: unique per stack, node, revision and replica.
    pub fn container_name(&self) -> String {
        format!(
            "quarry-{}-{}-r{}-{}",
            self.stack, self.node, self.revision, self.replica
        )
    }

    /// The labels this container carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::STACK.to_owned(), self.stack.clone()),
            (labels::NODE.to_owned(), self.node.clone()),
            (labels::REVISION.to_owned(), self.revision.to_string()),
            (labels::SLICE.to_owned(), self.slice.0.clone()),
            (labels::REPLICA.to_owned(), self.replica.to_string()),
            (labels::KIND.to_owned(), self.kind.as_str().to_owned()),
            (labels::DEFINITION.to_owned(), self.definition.clone()),
        ])
    }
}

/// One running replica of a node, as the current state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The replica index.
    pub replica: u32,
    /// The grid slice it occupies.
    pub slice: SliceId,
    /// Where it runs.
    pub placement: Placement,
}

/// The current state of one node of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node's kind as deployed.
    pub kind: Kind,
    /// The running revision.
    pub revision: u64,
    /// The definition hash of the running revision.
    pub definition: String,
    /// The definition field by field (`image`, `memory`, `env.KEY`, ...), values shown or, for
    /// env, hashed, so a plan can say what changed without storing secrets twice. May be empty
    /// (then a plan says only that the definition changed).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The domains routed to it (web only).
    pub domains: Vec<String>,
    /// Its replicas, by index.
    pub replicas: Vec<ReplicaState>,
}

/// The current state of a stack: for each node, the running revision, its definition hash, and
/// its replicas with their slice, server and ports. Locally it is read back from container
/// labels; in the cluster it is part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackState {
    /// The stack's name.
    pub name: String,
    /// Node name -> its state.
    pub nodes: BTreeMap<String, NodeState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_placement_address_is_bracketed_and_parses_back() {
        let p = Placement {
            server: ServerId("h1".to_owned()),
            host: "fd00::1".to_owned(),
            ports: BTreeMap::new(),
            host_ports: BTreeMap::new(),
        };
        assert_eq!(p.address(20001), "[fd00::1]:20001");
        assert!(p.address(20001).parse::<std::net::SocketAddr>().is_ok());
        assert_eq!(host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_port("shop-kv-1", 6379), "shop-kv-1:6379");
    }
}
