//! The HTTP API (axum): on a root-only unix socket (mode 0600, no token) and on TCP (the admin
//! token as `Authorization: Bearer ...` on everything but `GET /v1/health`).
//!
//! | endpoint | what |
//! | --- | --- |
//! | `GET /v1/health` | alive (no token) |
//! | `GET /v1/status` | this server's view: leader, term, voters, learners, commit, applied, health, gossip counters, voter replacements |
//! | `GET /v1/servers` | the servers (linearizable; the last applied list when no leader answers), with role, replication health and liveness as this server's gossip sees it |
//! | `DELETE /v1/servers/NAME` | remove a server (a write) |
//! | `GET /v1/grid` | the grid with its version (linearizable) |
//! | `GET /v1/env[?stack=S]` | the global or a stack's env (linearizable) |
//! | `POST /v1/env` | set and unset env variables (a write) |
//! | `POST /v1/deploy?name=DEFAULT` | a stack's source tree (a tar, `source::pack`): stored here and on a second server, then deployed by the leader; answers once accepted |
//! | `GET /v1/deploys/ID[?since=N]` | a deploy's progress lines from line N |
//! | `GET /v1/ps[?stack=S]` | every container of every stack (or one) on every server: placement and reported state |
//! | `GET /v1/stacks` | the stacks: live, deploying, disabled, failed |
//! | `GET /v1/stacks/NAME/inputs` | what compiling NAME reads from the state (`quarry plan` against the cluster) |
//! | `POST /v1/stacks/NAME/scale` | `{"node": N, "replicas": R}`: answered as a deploy |
//! | `POST /v1/stacks/NAME/disable`, `/enable` | stop or restart a stack's containers (placements kept) |
//!
//! Writes are accepted on any server and forwarded to the leader; reads go through Raft's
//! ReadIndex, so they see every write acknowledged before them. Errors are JSON
//! `{"error": "..."}` saying what to do, with 503 when no leader answers (retry), 409 when the
//! state refuses a write, 404 for an unknown server. The data comes from a [`ClusterView`], so
//! the routes know nothing of Raft.
//!
//! Left out: `/metrics`, deleting a stack, streaming progress (the CLI polls).

pub mod client;
mod cluster;
pub mod limits;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub use crate::answers::{
    EnvChange, EnvView, GossipOnly, GossipStatus, GossipView, GridView, RaftStatus, ScaleRequest,
    ServerEntry, Servers, StacksView, Status,
};
use crate::launch::{Accepted, DeployView, PlanInputs, PsView, RoutesReport};
use crate::rpc::server::BoxFuture;

/// An error answer: the HTTP status and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
}

fn no_stacks<T>() -> BoxFuture<'static, Result<T, ApiFailure>>
where
    T: Send + 'static,
{
    Box::pin(async {
        Err(ApiFailure {
            status: 501,
            message: "this server does not run stacks".to_owned(),
        })
    })
}

/// Where the API reads the cluster from and sends writes to. The stack methods default to
/// "not served" (501), for a view without stacks.
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
    /// Deploy a packed source tree.
    fn deploy(
        &self,
        _default_name: String,
        _tar: Vec<u8>,
    ) -> BoxFuture<'_, Result<Accepted, ApiFailure>> {
        no_stacks()
    }
    /// A deploy's progress.
    fn deploy_progress(
        &self,
        _id: String,
        _since: usize,
    ) -> BoxFuture<'_, Result<DeployView, ApiFailure>> {
        no_stacks()
    }
    /// Containers.
    fn ps(&self, _stack: Option<String>) -> BoxFuture<'_, Result<PsView, ApiFailure>> {
        no_stacks()
    }
    /// Stacks.
    fn stacks(&self) -> BoxFuture<'_, Result<StacksView, ApiFailure>> {
        no_stacks()
    }
    /// What compiling a stack reads.
    fn plan_inputs(&self, _stack: String) -> BoxFuture<'_, Result<PlanInputs, ApiFailure>> {
        no_stacks()
    }
    /// Scale a node.
    fn scale(
        &self,
        _stack: String,
        _scale: ScaleRequest,
    ) -> BoxFuture<'_, Result<Accepted, ApiFailure>> {
        no_stacks()
    }
    /// Enable or disable a stack.
    fn set_stack_enabled(
        &self,
        _stack: String,
        _enabled: bool,
    ) -> BoxFuture<'_, Result<(), ApiFailure>> {
        no_stacks()
    }
    /// What the routers serve.
    fn routes(&self) -> BoxFuture<'_, Result<RoutesReport, ApiFailure>> {
        no_stacks()
    }
    /// Hand Raft leadership to a voter.
    fn lead(&self, _server: String) -> BoxFuture<'_, Result<(), ApiFailure>> {
        no_stacks()
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

/// A refused JSON body: its status, and for a body that is not JSON of the right shape,
/// what shape was expected (`shape`).
fn body_fault(f: limits::BodyFault, shape: &str) -> Response {
    match f {
        limits::BodyFault::NotJson(e) => error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not {shape}: {e}"),
        ),
        other => error(other.status(), &other.to_string()),
    }
}

async fn set_env(State(v): View, req: Request) -> Response {
    match limits::json_body::<EnvChange>(req).await {
        Ok(change) => answer(
            v.set_env(change)
                .await
                .map(|()| serde_json::json!({ "ok": true })),
        ),
        Err(f) => body_fault(
            f,
            "an env change ({\"stack\": ..., \"set\": {...}, \"unset\": [...]})",
        ),
    }
}

#[derive(Debug, Deserialize)]
struct DeployQuery {
    name: Option<String>,
}

async fn deploy(State(v): View, Query(q): Query<DeployQuery>, body: axum::body::Bytes) -> Response {
    let name = q.name.unwrap_or_else(|| "stack".to_owned());
    answer(v.deploy(name, body.to_vec()).await)
}

#[derive(Debug, Deserialize)]
struct SinceQuery {
    since: Option<usize>,
}

async fn deploy_progress(
    State(v): View,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<SinceQuery>,
) -> Response {
    answer(v.deploy_progress(id, q.since.unwrap_or(0)).await)
}

async fn ps(State(v): View, Query(q): Query<StackQuery>) -> Response {
    answer(v.ps(q.stack).await)
}

async fn stacks(State(v): View) -> Response {
    answer(v.stacks().await)
}

async fn plan_inputs(State(v): View, UrlPath(name): UrlPath<String>) -> Response {
    answer(v.plan_inputs(name).await)
}

async fn scale(State(v): View, UrlPath(name): UrlPath<String>, req: Request) -> Response {
    match limits::json_body::<ScaleRequest>(req).await {
        Ok(s) => answer(v.scale(name, s).await),
        Err(f) => body_fault(f, "a scale ({\"node\": ..., \"replicas\": N})"),
    }
}

async fn disable(State(v): View, UrlPath(name): UrlPath<String>) -> Response {
    answer(
        v.set_stack_enabled(name.clone(), false)
            .await
            .map(|()| serde_json::json!({ "disabled": name })),
    )
}

async fn enable(State(v): View, UrlPath(name): UrlPath<String>) -> Response {
    answer(
        v.set_stack_enabled(name.clone(), true)
            .await
            .map(|()| serde_json::json!({ "enabled": name })),
    )
}

async fn routes_view(State(v): View) -> Response {
    answer(v.routes().await)
}

async fn lead(State(v): View, UrlPath(name): UrlPath<String>) -> Response {
    answer(
        v.lead(name.clone())
            .await
            .map(|()| serde_json::json!({ "leader": name })),
    )
}

fn routes(view: Arc<dyn ClusterView>) -> Router {
    let upload = crate::source::MAX_SOURCE_BYTES as usize + (1 << 20);
    Router::new()
        .route(
            "/v1/deploy",
            post(deploy).layer(axum::extract::DefaultBodyLimit::max(upload)),
        )
        .route("/v1/deploys/{id}", get(deploy_progress))
        .route("/v1/ps", get(ps))
        .route("/v1/stacks", get(stacks))
        .route("/v1/stacks/{name}/inputs", get(plan_inputs))
        .route("/v1/stacks/{name}/scale", post(scale))
        .route("/v1/stacks/{name}/disable", post(disable))
        .route("/v1/stacks/{name}/enable", post(enable))
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/servers", get(servers))
        .route("/v1/servers/{name}", delete(remove_server))
        .route("/v1/servers/{name}/lead", post(lead))
        .route("/v1/routes", get(routes_view))
        .route("/v1/grid", get(grid))
        .route("/v1/env", get(env).post(set_env))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v1/status, /v1/servers, /v1/grid, /v1/env, /v1/stacks, \
                 /v1/ps",
            )
        })
        // Any other body is bounded too; the upload's own limit above overrides this one.
        .layer(axum::extract::DefaultBodyLimit::max(limits::MAX_JSON_BODY))
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
