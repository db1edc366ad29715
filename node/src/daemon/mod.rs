//! What `quarryd init`, `token`, `join` and `run` do, as library calls (the binary only
//! parses flags and prints).
//!
//! Files, all under `config.paths.secrets` (directory 0700, files 0600, root-only):
//! `ca.pem` + `ca.key` (the cluster CA; only on servers that may admit joiners), `node.pem` +
//! `node.key` (this server's identity), `gossip.key`, `join.secret` (hex), `admin.token`. The
//! member list lives in `config.paths.data/members.json` until Raft carries it.
//!
//! Invariants: `init` never overwrites an existing cluster (any of these files present stops
//! it); a secret file is created with mode 0600 from the start (never written and then
//! chmod-ed); a joiner stores nothing until the member has admitted it.
//!
//! Left out until the Raft-backed cluster exists: Raft membership (a joined server is a member
//! of the list, not yet a learner), forwarding writes, the replicated state.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::{self, ApiServer, LocalView};
use crate::config::Config;
use crate::pki::{self, ClusterCa, JoinToken, NodeIdentity};
use crate::rpc::join::{self, FileAuthority, JoinAuthority, JoinService, Member};
use crate::rpc::{Handlers, RpcServer};

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

/// The secret files of a server.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// The files under `config.paths.secrets`.
    pub fn of(cfg: &Config) -> Secrets {
        Secrets {
            dir: cfg.paths.secrets.clone(),
        }
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<String, DaemonError> {
        let p = self.path(name);
        std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DaemonError::NotInitialized(p.clone())
            } else {
                file_err(&p)(e)
            }
        })
    }

    fn read32(&self, name: &str) -> Result<[u8; 32], DaemonError> {
        let text = self.read(name)?;
        hex::decode(text.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                DaemonError::Invalid(format!(
                    "{} is not 64 hex digits",
                    self.path(name).display()
                ))
            })
    }

    /// Create the directory (0700) and write a new file (0600); refuses to replace one.
    fn create(&self, name: &str, contents: &str) -> Result<(), DaemonError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(file_err(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(file_err(&self.dir))?;
        let p = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    DaemonError::AlreadyInitialized(p.clone())
                } else {
                    file_err(&p)(e)
                }
            })?;
        f.write_all(contents.as_bytes()).map_err(file_err(&p))?;
        f.sync_all().map_err(file_err(&p))
    }

    /// This server's identity.
    pub fn identity(&self) -> Result<NodeIdentity, DaemonError> {
        Ok(NodeIdentity {
            cert_pem: self.read("node.pem")?,
            key_pem: self.read("node.key")?,
            ca_pem: self.read("ca.pem")?,
        })
    }

    /// The cluster CA with its key, when this server holds it.
    pub fn ca(&self) -> Result<Option<ClusterCa>, DaemonError> {
        if !self.path("ca.key").exists() {
            return Ok(None);
        }
        Ok(Some(ClusterCa::from_pem(
            &self.read("ca.pem")?,
            &self.read("ca.key")?,
        )?))
    }

    /// The join token (needs the CA and the join secret).
    pub fn join_token(&self) -> Result<JoinToken, DaemonError> {
        let ca = self.read("ca.pem")?;
        let digest = ClusterCa::from_pem(&ca, &self.read("ca.key")?)?.digest();
        Ok(JoinToken {
            ca: digest,
            secret: self.read32("join.secret")?,
        })
    }

    /// The admin token of the HTTP API.
    pub fn admin_token(&self) -> Result<String, DaemonError> {
        Ok(self.read("admin.token")?.trim().to_owned())
    }

    /// The gossip key.
    pub fn gossip_key(&self) -> Result<[u8; 32], DaemonError> {
        self.read32("gossip.key")
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

/// This server as a member record.
pub fn me(cfg: &Config) -> Result<Member, DaemonError> {
    let memory = match &cfg.memory {
        Some(m) => crate::spec::units::parse_size(m).map_err(DaemonError::Invalid)?,
        None => machine_memory().unwrap_or(0),
    };
    Ok(Member {
        name: server_name(cfg)?,
        address: cfg.address,
        rpc_port: cfg.rpc_port,
        gossip_port: cfg.gossip_port,
        api_port: cfg.api_port,
        memory,
        tags: cfg.tags.clone(),
    })
}

fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The member list file.
pub fn members_path(cfg: &Config) -> PathBuf {
    cfg.paths.data.join("members.json")
}

fn ensure_data(cfg: &Config) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.paths.data)
        .map_err(file_err(&cfg.paths.data))
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

/// `quarryd init`: a new cluster with this server as its first member.
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
    let me = me(cfg)?;
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
    let name = me.name.clone();
    FileAuthority::open(&members_path(cfg), me).map_err(file_err(&members_path(cfg)))?;
    Ok(Initialized {
        token: JoinToken {
            ca: ca.digest(),
            secret,
        },
        admin_token_path: s.path("admin.token"),
        name,
    })
}

/// `quarryd join`: get a certificate from the member at `addr` and store it with the gossip
/// key, the join secret and the member list. Returns the members the member knew.
pub async fn join(
    cfg: &Config,
    addr: SocketAddr,
    token: &JoinToken,
) -> Result<Vec<Member>, DaemonError> {
    let s = Secrets::of(cfg);
    if s.path("node.pem").exists() {
        return Err(DaemonError::AlreadyInitialized(s.path("node.pem")));
    }
    let me = me(cfg)?;
    let (csr, key_pem) = pki::new_csr(&me.name)?;
    let admitted = join::join(addr, token, csr, me).await?;
    s.create("node.key", &key_pem)?;
    s.create("node.pem", &admitted.cert_pem)?;
    s.create("ca.pem", &admitted.ca_pem)?;
    s.create("gossip.key", &hex::encode(admitted.gossip_key))?;
    s.create("admin.token", &admitted.admin_token)?;
    ensure_data(cfg)?;
    FileAuthority::store(&members_path(cfg), &admitted.members)
        .map_err(file_err(&members_path(cfg)))?;
    Ok(admitted.members)
}

/// A running server: the RPC listener and the API.
#[derive(Debug)]
pub struct Running {
    /// The RPC listener.
    pub rpc: RpcServer,
    /// The HTTP API.
    pub api: ApiServer,
}

/// `quarryd run`: load the config and secrets, start the RPC listener (serving Join when this
/// server holds the CA) and the HTTP API.
pub async fn run(cfg: &Config) -> Result<Running, DaemonError> {
    let s = Secrets::of(cfg);
    let identity = s.identity()?;
    let me = me(cfg)?;
    ensure_data(cfg)?;
    let authority = Arc::new(
        FileAuthority::open(&members_path(cfg), me.clone())
            .map_err(file_err(&members_path(cfg)))?,
    );
    let mut handlers = Handlers::default();
    if let Some(ca) = s.ca()? {
        let secret = s.read32("join.secret")?;
        let dyn_auth: Arc<dyn JoinAuthority> = authority.clone();
        handlers.join = Some(Arc::new(JoinService::new(
            ca,
            secret,
            s.gossip_key()?,
            s.admin_token()?,
            dyn_auth,
        )));
    }
    let rpc_listen = SocketAddr::new(cfg.address, cfg.rpc_port);
    let rpc = RpcServer::bind(rpc_listen, &identity, handlers).await?;
    let view = Arc::new(LocalView::new(me, authority));
    let api = ApiServer::start(
        cfg.api_addr(),
        &cfg.paths.api_socket,
        s.admin_token()?,
        view,
    )
    .await?;
    Ok(Running { rpc, api })
}
