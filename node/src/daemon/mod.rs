//! What `quarryd init`, `token`, `join` and `run` do, as library calls (the binary only
//! parses flags and prints).
//!
//! Files. Under `config.paths.secrets` (directory 0700, files 0600, root-only): `ca.pem` +
//! `ca.key` (the cluster CA: every member holds it, so any member admits joiners),
//! `node.pem` + `node.key` (this server's identity), `gossip.key`, `join.secret` (hex),
//! `admin.token`. Under `config.paths.data`: `raft/` (the Raft log and snapshots),
//! `node.json` (this server's Raft id), `peers.json` (the Raft peers' addresses as last
//! known: how a restarted or brand-new server reaches the leader before it has replayed the
//! log).
//!
//! `init` makes the secrets and Raft id 1; the first `run` then starts a one-voter cluster
//! and records this server (and the global env in `config.paths.etc/env/`, one file per
//! variable) as the founder. `join` is admitted through any member and receives a Raft id;
//! its `run` starts Raft with no voters and waits for the leader. `run` always restarts from
//! the data directory.
//!
//! `run` also starts gossip (UDP `gossip_port` on the cluster address, sealed with the gossip
//! key; `gossip.rs`; the boot generation in `data/gossip.generation`), the owner of the hosts
//! file's managed block (`paths.hosts_file`: the committed members gossip sees alive), and the
//! leader's reconciler with the self-healing quorum's grace period (`heal_grace`).
//!
//! Invariants: `init` never overwrites an existing cluster (any of these files present stops
//! it); a secret file is created with mode 0600 from the start (never written and then
//! chmod-ed); a joiner stores nothing until the member has admitted it.

pub mod gossip;
mod secrets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use secrets::Secrets;

use crate::api::{self, ApiServer};
use crate::cluster::{
    self, Cluster, ClusterMachine, ControlService, PeerAddr, Peers, RpcTransport,
};
use crate::config::Config;
use crate::launch::{self, Launch};
use crate::pki::{self, ClusterCa, JoinToken};
use crate::rpc::join::{self, JoinAuthority, JoinService, Member, ServerSettings};
use crate::rpc::{Dialer, Handlers, RpcServer};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// init found a cluster already there.
    #[error(
        "{0} exists: this server already belongs to a cluster. `quarryd run` starts it; to start \
         over, remove the secrets directory first"
    )]
    AlreadyInitialized(PathBuf),
    /// run/token found no cluster.
    #[error("no cluster here ({0} is missing): run `quarryd init` or `quarryd join` first")]
    NotInitialized(PathBuf),
    /// Keys or certificates.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Joining failed.
    #[error(transparent)]
    Join(#[from] join::JoinError),
    /// The RPC listener.
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcError),
    /// The HTTP API.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// Something the operator must change.
    #[error("{0}")]
    Invalid(String),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |cause| DaemonError::File {
        path: path.to_owned(),
        cause,
    }
}

/// This server's name: the config's, or the hostname.
pub fn server_name(cfg: &Config) -> Result<String, DaemonError> {
    if let Some(n) = &cfg.name {
        return Ok(n.clone());
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    if h.is_empty() {
        return Err(DaemonError::Invalid(
            "no server name: set `name` in quarryd.toml or pass --name".to_owned(),
        ));
    }
    Ok(h.to_owned())
}

/// This server as it describes itself to the cluster.
pub fn me(cfg: &Config) -> Result<Member, DaemonError> {
    let memory = match &cfg.memory {
        Some(m) => crate::spec::units::parse_size(m).map_err(DaemonError::Invalid)?,
        None => machine_memory().unwrap_or(0),
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Ok(Member {
        name: server_name(cfg)?,
        address: cfg.address,
        rpc_port: cfg.rpc_port,
        gossip_port: cfg.gossip_port,
        api_port: cfg.api_port,
        hostname,
        memory,
        tags: cfg.tags.clone(),
        settings: ServerSettings {
            host_ports: cfg.host_ports,
        },
    })
}

fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// This server's place in Raft, kept in `data/node.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    /// Its Raft id (1: the founder).
    pub raft_id: u64,
}

/// The node file.
pub fn node_path(cfg: &Config) -> PathBuf {
    cfg.paths.data.join("node.json")
}

/// Start this server's router, trying again every 10 s while nginx cannot run (not
/// installed, the port taken): the rest of quarryd serves meanwhile.
async fn run_router(launch: Arc<Launch>, listen: std::net::SocketAddr) {
    loop {
        match launch.start_router(listen).await {
            Ok(()) => return,
            Err(e) => tracing::error!(
                "router: {e}; this server is tagged `router` and routes nothing until nginx \
                 runs (trying again in 10 s)"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// The peers file.
pub fn peers_path(cfg: &Config) -> PathBuf {
    cfg.paths.data.join("peers.json")
}

fn ensure_data(cfg: &Config) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.paths.data)
        .map_err(file_err(&cfg.paths.data))
}

fn write_node_file(cfg: &Config, node: NodeFile) -> Result<(), DaemonError> {
    let p = node_path(cfg);
    let tmp = p.with_extension("tmp");
    let bytes =
        serde_json::to_vec_pretty(&node).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(file_err(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(file_err(&p))
}

fn read_node_file(cfg: &Config) -> Result<NodeFile, DaemonError> {
    let p = node_path(cfg);
    let bytes = std::fs::read(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DaemonError::NotInitialized(p.clone())
        } else {
            file_err(&p)(e)
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DaemonError::Invalid(format!("{}: {e}", p.display())))
}

/// What init made.
#[derive(Debug)]
pub struct Initialized {
    /// The join token to give to new servers.
    pub token: JoinToken,
    /// Where the admin token is.
    pub admin_token_path: PathBuf,
    /// This server's name.
    pub name: String,
}

/// `quarryd init`: a new cluster with this server as its founder (Raft id 1).
pub fn init(cfg: &Config) -> Result<Initialized, DaemonError> {
    let s = Secrets::of(cfg);
    // Refuse before creating anything, so a second init leaves the first untouched.
    for f in [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "join.secret",
        "gossip.key",
        "admin.token",
    ] {
        if s.path(f).exists() {
            return Err(DaemonError::AlreadyInitialized(s.path(f)));
        }
    }
    if node_path(cfg).exists() {
        return Err(DaemonError::AlreadyInitialized(node_path(cfg)));
    }
    let me = me(cfg)?;
    cluster::check_server_name(&me.name).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let ca = ClusterCa::generate(&me.name)?;
    let id = ca.issue(&me.name)?;
    let secret = pki::random_bytes();
    s.create("ca.key", ca.key_pem())?;
    s.create("ca.pem", ca.cert_pem())?;
    s.create("node.key", &id.key_pem)?;
    s.create("node.pem", &id.cert_pem)?;
    s.create("gossip.key", &hex::encode(pki::random_bytes()))?;
    s.create("join.secret", &hex::encode(secret))?;
    s.create("admin.token", &pki::new_admin_token())?;
    ensure_data(cfg)?;
    write_node_file(
        cfg,
        NodeFile {
            raft_id: cluster::FOUNDER_RAFT_ID,
        },
    )?;
    Ok(Initialized {
        token: JoinToken {
            ca: ca.digest(),
            secret,
        },
        admin_token_path: s.path("admin.token"),
        name: me.name,
    })
}

/// What join got.
#[derive(Debug)]
pub struct Joined {
    /// This server's Raft id.
    pub raft_id: u64,
    /// The servers of the cluster, this one included.
    pub servers: Vec<cluster::ServerRecord>,
}

/// `quarryd join`: be admitted by the member at `addr` and store the certificate, the
/// cluster's secrets, the Raft id and the peers it named.
pub async fn join(
    cfg: &Config,
    addr: SocketAddr,
    token: &JoinToken,
) -> Result<Joined, DaemonError> {
    let s = Secrets::of(cfg);
    if s.path("node.pem").exists() {
        return Err(DaemonError::AlreadyInitialized(s.path("node.pem")));
    }
    if node_path(cfg).exists() {
        return Err(DaemonError::AlreadyInitialized(node_path(cfg)));
    }
    let me = me(cfg)?;
    let (csr, key_pem) = pki::new_csr(&me.name)?;
    let admitted = join::join(addr, token, csr, me).await?;
    s.create("node.key", &key_pem)?;
    s.create("node.pem", &admitted.cert_pem)?;
    s.create("ca.pem", &admitted.ca_pem)?;
    s.create("ca.key", &admitted.ca_key_pem)?;
    s.create("join.secret", &hex::encode(admitted.join_secret))?;
    s.create("gossip.key", &hex::encode(admitted.gossip_key))?;
    s.create("admin.token", &admitted.admin_token)?;
    ensure_data(cfg)?;
    let book: BTreeMap<u64, PeerAddr> = admitted
        .servers
        .iter()
        .map(|r| {
            (
                r.raft_id,
                PeerAddr {
                    name: r.member.name.clone(),
                    addr: r.member.rpc_addr(),
                },
            )
        })
        .collect();
    cluster::write_peers(&peers_path(cfg), &book).map_err(file_err(&peers_path(cfg)))?;
    write_node_file(
        cfg,
        NodeFile {
            raft_id: admitted.raft_id,
        },
    )?;
    Ok(Joined {
        raft_id: admitted.raft_id,
        servers: admitted.servers,
    })
}

/// A running server: Raft, the RPC listener, the API and the background tasks.
#[derive(Debug)]
pub struct Running {
    /// The cluster as this server sees it.
    pub cluster: Arc<Cluster>,
    /// The RPC listener.
    pub rpc: RpcServer,
    /// The HTTP API.
    pub api: ApiServer,
    raft: quarry_consensus::NodeTask,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    gossip: crate::gossip::member::GossipMember,
}

impl Running {
    /// Stop everything: the API and RPC first (no new work), then the tasks, then Raft
    /// (which writes what is only in memory).
    pub async fn stop(self) {
        self.api.stop();
        self.rpc.stop();
        for t in &self.tasks {
            t.abort();
        }
        self.gossip.shutdown().await;
        let _ = self.cluster.handle().shutdown().await;
        let _ = self.raft.await;
    }

    /// Whether Raft has stopped (a storage fault stops it; the log says why).
    pub fn raft_stopped(&self) -> bool {
        self.raft.is_finished()
    }
}

/// `quarryd run`: start Raft from the data directory, the RPC listener (Raft, Control, Bulk
/// and Join lanes), the HTTP API and the background tasks (membership, the stacks'
/// reconciler on the engine at `paths.docker_socket`, and while leading, deploys' retirements).
pub async fn run(cfg: &Config) -> Result<Running, DaemonError> {
    let s = Secrets::of(cfg);
    let identity = s.identity()?;
    let node = read_node_file(cfg)?;
    let mut me = me(cfg)?;
    ensure_data(cfg)?;
    let dialer = Dialer::new(&identity)?;
    let seeds = cluster::read_peers(&peers_path(cfg)).map_err(file_err(&peers_path(cfg)))?;
    let peers = Peers::new(seeds);

    let (inbox_tx, inbox_rx) = quarry_consensus::transport::inbox();
    let transport = RpcTransport::new(dialer.clone(), peers.clone(), inbox_tx.clone());
    let (machine, servers) = ClusterMachine::new();
    let watches = machine.watches();
    let voters = if node.raft_id == cluster::FOUNDER_RAFT_ID {
        vec![node.raft_id]
    } else {
        Vec::new() // a joiner: the leader brings it in
    };
    let raft_cfg =
        quarry_consensus::NodeConfig::new(node.raft_id, voters, cfg.paths.data.join("raft"));
    let (handle, raft) = quarry_consensus::start(raft_cfg, machine, transport, inbox_rx)
        .map_err(|e| DaemonError::Invalid(format!("raft could not start: {e}")))?;
    let cluster = Arc::new(Cluster::new(
        node.raft_id,
        me.clone(),
        handle,
        dialer,
        peers.clone(),
        servers,
        watches,
    ));

    let (lane_tx, lane_rx) = mpsc::channel(1024);
    let snapshots =
        cluster::transport::SnapshotService::new(node.raft_id, peers.clone(), inbox_tx.clone());
    let mut tasks = vec![tokio::spawn(cluster::transport::route(
        node.raft_id,
        lane_rx,
        peers,
        inbox_tx,
    ))];
    let authority: Arc<dyn JoinAuthority> = cluster.clone();
    let cluster_id =
        gossip::cluster_id(&ClusterCa::from_pem(&s.read("ca.pem")?, &s.read("ca.key")?)?.digest());
    let launch = Launch::new(
        cluster.clone(),
        &cfg.paths.data,
        Some(cfg.paths.docker_socket.clone()),
        cluster_id,
        cfg.min_free_disk().map_err(DaemonError::Invalid)?,
    )
    .map_err(|e| DaemonError::Invalid(format!("the source store: {e}")))?;
    let handlers = Handlers {
        raft: Some(lane_tx),
        control: Some(Arc::new(
            ControlService::new(cluster.clone())
                .with_launch(Arc::new(launch::Handler(launch.clone()))),
        )),
        bulk: Some(launch.bulk_handler(Arc::new(snapshots))),
        join: Some(Arc::new(JoinService::new(
            ClusterCa::from_pem(&s.read("ca.pem")?, &s.read("ca.key")?)?,
            s.join_secret()?,
            s.gossip_key()?,
            s.admin_token()?,
            authority,
        ))),
    };
    let rpc = RpcServer::bind(
        SocketAddr::new(cfg.address, cfg.rpc_port),
        &identity,
        handlers,
    )
    .await?;
    let view: Arc<dyn api::ClusterView> = launch.clone();
    let api = ApiServer::start(
        cfg.api_addr(),
        &cfg.paths.api_socket,
        s.admin_token()?,
        view,
    )
    .await?;
    // What others dial: the ports actually bound (a config may say 0 in tests).
    me.rpc_port = rpc.local_addr().port();
    me.api_port = api.tcp_addr().port();
    let heal_grace = cfg.heal_grace().map_err(DaemonError::Invalid)?;
    let (member, link) = gossip::start(cfg, &s, &mut me, node.raft_id).await?;
    cluster.set_me(me);
    let generation = link.generation;
    let liveness = link.liveness.clone();
    cluster.attach_gossip(link);
    tasks.push(tokio::spawn(gossip::follow(
        cluster.clone(),
        member.control(),
        generation,
    )));
    tasks.push(tokio::spawn(crate::hosts::keeper::keep(
        cfg.paths.hosts_file.clone(),
        cluster.servers_watch(),
        liveness,
    )));

    tasks.push(tokio::spawn(cluster::follow_servers(
        cluster.clone(),
        peers_path(cfg),
    )));
    tasks.push(tokio::spawn(cluster::keep_record(
        cluster.clone(),
        cfg.paths.etc.join("env"),
    )));
    tasks.push(tokio::spawn(cluster::reconcile(
        cluster.clone(),
        heal_grace,
    )));
    if cfg.tags.iter().any(|t| t == launch::ROUTER_TAG) {
        tasks.push(tokio::spawn(run_router(launch.clone(), cfg.router_listen)));
    }
    tasks.push(tokio::spawn(launch.clone().serve()));
    tasks.push(tokio::spawn(launch.clone().collect_disk()));
    tasks.push(tokio::spawn(launch.lead()));
    Ok(Running {
        cluster,
        rpc,
        api,
        raft,
        tasks,
        gossip: member,
    })
}
