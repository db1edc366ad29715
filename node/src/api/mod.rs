//! The HTTP API (axum): on a root-only unix socket (mode 0600, no token) and on TCP (the admin
//! token as `Authorization: Bearer ...` on everything but `GET /v1/health`).
//!
//! Endpoints: `GET /v1/health`, `GET /v1/status` (this server's view: name, addresses, and the
//! Raft fields once Raft runs), `GET /v1/servers` (the members this server knows). Errors are
//! JSON `{"error": "..."}` saying what to do. The data comes from a [`ClusterView`], so the
//! Raft-backed state plugs in without touching the routes.
//!
//! Left out until Raft runs: writes and their forwarding to the leader, `/v1/grid`.

pub mod client;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::rpc::join::{JoinAuthority, Member};

/// Raft's view, when Raft runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: u64,
    /// Voters' names.
    pub voters: Vec<String>,
    /// Learners' names.
    pub learners: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This server's name.
    pub name: String,
    /// Its cluster address.
    pub address: std::net::IpAddr,
    /// RPC port.
    pub rpc_port: u16,
    /// API port.
    pub api_port: u16,
    /// quarryd's version.
    pub version: String,
    /// Raft's view; `None` while this server runs without Raft.
    pub raft: Option<RaftStatus>,
}

/// One entry of `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The member.
    #[serde(flatten)]
    pub member: Member,
    /// `voter` or `learner` once Raft runs.
    pub role: Option<String>,
}

/// `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Servers {
    /// The members.
    pub servers: Vec<ServerEntry>,
}

/// Where the API reads the cluster from.
pub trait ClusterView: Send + Sync + 'static {
    /// This server's status.
    fn status(&self) -> Status;
    /// The members this server knows.
    fn servers(&self) -> Servers;
}

/// The view of a server without Raft: itself and the member list of its [`JoinAuthority`].
#[derive(Debug)]
pub struct LocalView<A> {
    me: Member,
    members: Arc<A>,
}

impl<A> LocalView<A> {
    /// A view of `me` and `members`.
    pub fn new(me: Member, members: Arc<A>) -> Self {
        LocalView { me, members }
    }
}

impl<A: JoinAuthority> ClusterView for LocalView<A> {
    fn status(&self) -> Status {
        Status {
            name: self.me.name.clone(),
            address: self.me.address,
            rpc_port: self.me.rpc_port,
            api_port: self.me.api_port,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            raft: None,
        }
    }

    fn servers(&self) -> Servers {
        Servers {
            servers: self
                .members
                .members()
                .into_iter()
                .map(|member| ServerEntry { member, role: None })
                .collect(),
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Binding failed.
    #[error("cannot listen on {what}: {cause}")]
    Bind {
        /// The address or socket path.
        what: String,
        /// The cause.
        cause: std::io::Error,
    },
}

/// A JSON error.
fn error(code: StatusCode, msg: &str) -> Response {
    (code, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn health(State(v): State<Arc<dyn ClusterView>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "name": v.status().name }))
}

async fn status(State(v): State<Arc<dyn ClusterView>>) -> Json<Status> {
    Json(v.status())
}

async fn servers(State(v): State<Arc<dyn ClusterView>>) -> Json<Servers> {
    Json(v.servers())
}

fn routes(view: Arc<dyn ClusterView>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/servers", get(servers))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v1/status, /v1/servers",
            )
        })
        .with_state(view)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/v1/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "wrong admin token: use the one in admin.token in the server's secrets directory \
             (QUARRY_TOKEN or `token` in ~/.config/quarry/config.toml)",
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "this API needs the admin token: send `Authorization: Bearer TOKEN` (the quarry CLI \
             reads QUARRY_TOKEN or `token` in ~/.config/quarry/config.toml); it is in admin.token \
             in the server's secrets directory",
        ),
    }
}

/// The running API.
#[derive(Debug)]
pub struct ApiServer {
    tcp: SocketAddr,
    socket: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Serve `view` on TCP `tcp` (token `token` required) and on the unix socket `socket`.
    pub async fn start(
        tcp: SocketAddr,
        socket: &Path,
        token: String,
        view: Arc<dyn ClusterView>,
    ) -> Result<ApiServer, ApiError> {
        let bind = |what: String| move |cause| ApiError::Bind { what, cause };
        let listener = tokio::net::TcpListener::bind(tcp)
            .await
            .map_err(bind(tcp.to_string()))?;
        let tcp = listener.local_addr().map_err(bind(tcp.to_string()))?;
        let sock_what = socket.display().to_string();
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(bind(sock_what.clone()))?;
        }
        // A socket left by a previous run would make bind fail.
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind(sock_what)(e)),
        }
        let unix = tokio::net::UnixListener::bind(socket).map_err(bind(sock_what.clone()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(bind(sock_what))?;
        let token = Arc::new(token);
        let tcp_app =
            routes(view.clone()).layer(middleware::from_fn_with_state(token, require_token));
        let unix_app = routes(view);
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, tcp_app).await {
                    tracing::error!("API on TCP stopped: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = axum::serve(unix, unix_app).await {
                    tracing::error!("API on the local socket stopped: {e}");
                }
            }),
        ];
        Ok(ApiServer {
            tcp,
            socket: socket.to_owned(),
            tasks,
        })
    }

    /// The TCP address (with the port chosen when bound to port 0).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// The unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stop serving.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
