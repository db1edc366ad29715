//! The HTTP API (axum): on a root-only unix socket (mode 0600, no token) and on TCP (the admin
//! token as `Authorization: Bearer ...` on everything but `GET /v1/health`).
//!
//! | endpoint | what |
//! | --- | --- |
//! | `GET /v1/health` | alive (no token) |
//! | `GET /v1/status` | this server's view: leader, term, voters, learners, commit, applied, health |
//! | `GET /v1/servers` | the servers (linearizable), with role and replication health |
//! | `DELETE /v1/servers/NAME` | remove a server (a write) |
//! | `GET /v1/grid` | the grid with its version (linearizable) |
//! | `GET /v1/env[?stack=S]` | the global or a stack's env (linearizable) |
//! | `POST /v1/env` | set and unset env variables (a write) |
//!
//! Writes are accepted on any server and forwarded to the leader; reads go through Raft's
//! ReadIndex, so they see every write acknowledged before them. Errors are JSON
//! `{"error": "..."}` saying what to do, with 503 when no leader answers (retry), 409 when the
//! state refuses a write, 404 for an unknown server. The data comes from a [`ClusterView`], so
//! the routes know nothing of Raft.
//!
//! Left out: stacks, deploys and `/metrics` (later issues).

pub mod client;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::grid::GridState;
use crate::rpc::join::Member;
use crate::rpc::server::BoxFuture;

/// Raft's view from one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This server's Raft id.
    pub id: u64,
    /// Its role: leader, follower, candidate, precandidate; learners are followers.
    pub role: String,
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
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
    /// Raft's view; `None` if Raft has stopped on this server.
    pub raft: Option<RaftStatus>,
    /// `ok`, or what is wrong (no leader, how many voters are reachable).
    pub health: String,
}

/// One entry of `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The server.
    #[serde(flatten)]
    pub member: Member,
    /// Its Raft id.
    pub raft_id: u64,
    /// `voter`, `learner`, or `none` (recorded, not yet in Raft's configuration).
    pub role: String,
    /// As the leader sees its replication: `ok`, `behind N`, `unreachable`, or `unknown`
    /// (no leader answered).
    pub health: String,
    /// Whether it leads.
    pub leader: bool,
}

/// `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Servers {
    /// The servers, by name.
    pub servers: Vec<ServerEntry>,
}

/// `GET /v1/grid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridView {
    /// The grid (its version included).
    pub grid: GridState,
}

/// `GET /v1/env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvView {
    /// The stack, or none for the global env.
    pub stack: Option<String>,
    /// The variables.
    pub env: BTreeMap<String, String>,
}

/// `POST /v1/env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvChange {
    /// The stack, or none for the global env.
    #[serde(default)]
    pub stack: Option<String>,
    /// Variables to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Variables to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// An error answer: the HTTP status and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
}

/// Where the API reads the cluster from and sends writes to.
pub trait ClusterView: Send + Sync + 'static {
    /// This server's name (for `/v1/health`).
    fn name(&self) -> String;
    /// This server's status (never fails: it says what is wrong).
    fn status(&self) -> BoxFuture<'_, Status>;
    /// The servers.
    fn servers(&self) -> BoxFuture<'_, Result<Servers, ApiFailure>>;
    /// Remove a server.
    fn remove_server(&self, name: String) -> BoxFuture<'_, Result<(), ApiFailure>>;
    /// The grid.
    fn grid(&self) -> BoxFuture<'_, Result<GridView, ApiFailure>>;
    /// The global env, or a stack's.
    fn env(&self, stack: Option<String>) -> BoxFuture<'_, Result<EnvView, ApiFailure>>;
    /// Change env variables.
    fn set_env(&self, change: EnvChange) -> BoxFuture<'_, Result<(), ApiFailure>>;
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

fn failure(f: ApiFailure) -> Response {
    error(
        StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &f.message,
    )
}

fn answer<T: Serialize>(r: Result<T, ApiFailure>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(f) => failure(f),
    }
}

type View = State<Arc<dyn ClusterView>>;

async fn health(State(v): View) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "name": v.name() }))
}

async fn status(State(v): View) -> Json<Status> {
    Json(v.status().await)
}

async fn servers(State(v): View) -> Response {
    answer(v.servers().await)
}

async fn remove_server(State(v): View, UrlPath(name): UrlPath<String>) -> Response {
    answer(
        v.remove_server(name.clone())
            .await
            .map(|()| serde_json::json!({ "removed": name })),
    )
}

async fn grid(State(v): View) -> Response {
    answer(v.grid().await)
}

#[derive(Debug, Deserialize)]
struct StackQuery {
    stack: Option<String>,
}

async fn env(State(v): View, Query(q): Query<StackQuery>) -> Response {
    answer(v.env(q.stack).await)
}

async fn set_env(
    State(v): View,
    body: Result<Json<EnvChange>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(change)) => answer(v.set_env(change).await.map(|()| serde_json::json!({ "ok": true }))),
        Err(e) => error(StatusCode::BAD_REQUEST, &format!("the body is not an env change ({{\"stack\": ..., \"set\": {{...}}, \"unset\": [...]}}): {e}")),
    }
}

fn routes(view: Arc<dyn ClusterView>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/servers", get(servers))
        .route("/v1/servers/{name}", delete(remove_server))
        .route("/v1/grid", get(grid))
        .route("/v1/env", get(env).post(set_env))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v1/status, /v1/servers, /v1/grid, /v1/env",
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
