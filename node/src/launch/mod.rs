//! Launch: stacks on the cluster. A deploy sent to any server runs on the grid.
//!
//! ```text
//!  quarry deploy DIR --tar--> any server's API (receive)
//!      store the source by hash; push a second copy (Bulk lane): the leader, or another server
//!      forward Deploy{source, holders} ------------------------------> the leader (accept)
//!                                 fetch the source if missing, unpack under stacks/STACK/build,
//!                                 load quarry.yml, compile + place on its copy (dry) -> Accepted
//!      CLI polls GET /v1/deploys/ID <-- progress lines --------------  executor (one per stack):
//!                                   builds on itself (it holds the source; another holder
//!                                   builds only when its engine cannot), then every transfer
//!                                   of images::plan, sender -> runner (docker save | Bulk |
//!                                   docker load; a server cut off meanwhile is skipped), then
//!                                   compile again and commit Deploy (grid version + stack
//!                                   revision checked; stale: again), then remove images no
//!                                   server runs or ran, then wait for the rollout
//!  every server (serve): ReadIndex -> its placed containers -> reconcile::diff vs its engine
//!      -> start_now; retire what is not desired (only with a fresh view); fetch missing built
//!      images from their holders, pull missing `image:` ones; probe health; Report -> the
//!      leader (soft state)
//!  the leader (lead, rollout.rs): the routers' table (routing::table) -> every server tagged
//!      `router` (Route; nginx reloaded, acknowledged); per rolling stack routing::verdict ->
//!      Retire the replaced replicas (new ones ready, every live router switched) or Rollback
//! ```
//!
//! # Invariants
//!
//! - **Nothing changes before the commit**: a deploy that fails to load, compile, place or
//!   build is refused or fails before `Command::Deploy` is proposed; the cluster's state and
//!   every container stay as they were (images built meanwhile are not used by anything).
//! - **The source is on two servers before a deploy is accepted** (one when the cluster has
//!   one server), so the receiving server may vanish once the CLI has its answer.
//! - **Static stability**: a server acts only on a view it confirmed with ReadIndex; it never
//!   stops a container because its view is missing, empty or old, and manages only stacks the
//!   cluster knows (never containers of a stack without a record). Every container runs with
//!   restart policy `unless-stopped`, so quarryd's absence stops nothing.
//! - **Exactly the committed host ports**, published on the server's cluster address.
//! - A replaced replica (DEPLOY, ENSURE) runs until every replica of the stack's new revision
//!   is reported healthy **and** every live router has acknowledged a table without it; only
//!   then is it retired (and its slice freed). Until then the routers route the old revision:
//!   exactly one revision of a node is routed at any time.
//! - A deploy whose new replicas are not ready within [`routing::ROLLOUT_LIMIT`], are reported
//!   unhealthy, or sit on a server silent for [`routing::SILENT_LIMIT`] is rolled back
//!   ([`crate::cluster::Command::Rollback`], committed, so a new leader sees it): the old
//!   replicas serve on, the new ones stop, and the deploy reports why.
//! - A router keeps its last nginx config whenever it has no fresh table; nginx runs as its
//!   own daemon, so routing survives quarryd's absence; a table of an older leader term is
//!   refused.
//! - Reports, health, deploy progress and failures are soft state on the leader: lost with
//!   it, rebuilt from the next reports.
//!
//! # Left out (issue 11 and later)
//!
//! A first deploy (nothing to roll back to) whose replicas never get healthy is reported
//! failed while its servers keep trying; a leader lost mid-deploy loses the deploy's uncommitted work (the CLI says so; deploy
//! again); rescheduling the replicas of a dead server; `image:` references are pulled by each
//! server that runs them, never carried between servers (so only where a registry is
//! reachable); deleting a stack.

pub mod compile;
pub mod protocol;
pub mod routing;

mod api;
mod commit;
mod disk;
mod executor;
mod leader;
mod rollout;
mod router;
mod server;
mod soft;
mod views;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use quarry_consensus::Role;
use tokio::time::Instant;

pub use compile::{compile, CompileError, Compiled, PlanInputs, ServerFacts};
pub use protocol::{
    Accepted, ContainerReport, DeployView, LaunchAnswer, LaunchRequest, PsRow, PsView, RouterEntry,
    RoutesView, ServerReport, StackEntry,
};
pub use routing::RoutesReport;
pub use soft::ROUTER_TAG;

use crate::bulk::BulkHandler;
use crate::cluster::{Cluster, ControlAnswer, ControlRequest};
use crate::docker::Engine;
use crate::images::ImageReceiver;
use crate::rpc::client::Requests;
use crate::rpc::server::{BoxFuture, RequestHandler};
use crate::rpc::{codec, Lane};
use crate::source::{SourceError, SourceStore};

/// How long a forwarded request keeps looking for the leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long dialing another server may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle Control connections kept per server.
const POOLED: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stacks on this server: its reconciler, its share of builds and transfers, and, while it
/// leads, deploys, reports and retirements.
pub struct Launch {
    this: Weak<Launch>,
    cluster: Arc<Cluster>,
    data: PathBuf,
    sources: SourceStore,
    docker_socket: Option<PathBuf>,
    engine: tokio::sync::Mutex<Option<Engine>>,
    receiver: OnceLock<Arc<ImageReceiver>>,
    /// The router, on a server tagged `router` once [`Launch::start_router`] ran.
    router: OnceLock<router::Router>,
    /// The leader's soft state, owned by one task.
    soft: soft::Owner,
    /// Open Control connections to other servers, by address.
    pool: Mutex<HashMap<SocketAddr, Vec<Requests>>>,
    /// The cluster's id: the `quarry.origin` of the containers this server makes.
    cluster_id: String,
    /// A deploy is refused while the data disk has less free space (bytes).
    min_free_disk: u64,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("data", &self.data)
            .field("docker_socket", &self.docker_socket)
            .finish_non_exhaustive()
    }
}

impl Launch {
    /// Stacks for `cluster` (of id `cluster_id`), with data under `data` (sources in
    /// `data/sources`, build directories in `data/stacks/STACK/build/SOURCE`), deploys
    /// refused below `min_free_disk` free bytes there, and the engine at `docker_socket`
    /// (`None`: `DOCKER_HOST` or Docker's default).
    pub fn new(
        cluster: Arc<Cluster>,
        data: &Path,
        docker_socket: Option<PathBuf>,
        cluster_id: String,
        min_free_disk: u64,
    ) -> Result<Arc<Launch>, SourceError> {
        let sources = SourceStore::open(data)?;
        Ok(Arc::new_cyclic(|this| Launch {
            this: this.clone(),
            cluster,
            data: data.to_owned(),
            sources,
            docker_socket,
            engine: tokio::sync::Mutex::new(None),
            receiver: OnceLock::new(),
            router: OnceLock::new(),
            soft: soft::Owner::spawn(),
            pool: Mutex::new(HashMap::new()),
            cluster_id,
            min_free_disk,
        }))
    }

    /// Who this server's containers are made by.
    fn origin(&self) -> crate::docker::Origin {
        crate::docker::Origin::Cluster(self.cluster_id.clone())
    }

    /// This, shared (for tasks that outlive a call).
    fn arc(&self) -> Arc<Launch> {
        self.this
            .upgrade()
            .expect("a Launch is only used through its Arc")
    }

    /// The cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Run this server's router (it is tagged `router`): nginx listening on `listen`, with
    /// its last config until the leader sends a table.
    pub async fn start_router(&self, listen: SocketAddr) -> Result<(), String> {
        let r = router::Router::start(&self.data, listen).await?;
        let _ = self.router.set(r);
        Ok(())
    }

    /// This server's name.
    fn me(&self) -> String {
        self.cluster.me().name
    }

    /// The local engine, connected on first use (and again after a failure).
    async fn engine(&self) -> Result<Engine, String> {
        let mut slot = self.engine.lock().await;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let engine = match &self.docker_socket {
            Some(p) => Engine::connect_at(p).await,
            None => Engine::connect().await,
        }
        .map_err(|e| e.to_string())?;
        *slot = Some(engine.clone());
        Ok(engine)
    }

    /// Forget the engine (it failed): the next use connects again.
    async fn engine_failed(&self) {
        *self.engine.lock().await = None;
    }

    /// The Bulk lane's handler: images into the local engine, sources into the store, Raft
    /// snapshots to `raft`.
    pub fn bulk_handler(
        self: &Arc<Self>,
        raft: Arc<dyn RequestHandler>,
    ) -> Arc<dyn RequestHandler> {
        Arc::new(Bulk(self.clone(), raft))
    }

    async fn receiver(&self) -> Option<Arc<ImageReceiver>> {
        if let Some(r) = self.receiver.get() {
            return Some(r.clone());
        }
        let engine = self.engine().await.ok()?;
        Some(
            self.receiver
                .get_or_init(|| Arc::new(ImageReceiver::new(engine)))
                .clone(),
        )
    }

    async fn is_leader(&self) -> bool {
        self.cluster.handle().watch().borrow().role == Role::Leader
    }

    fn addr_of(&self, server: &str) -> Option<SocketAddr> {
        self.cluster
            .servers_now()
            .get(server)
            .map(|r| r.member.rpc_addr())
    }

    /// Ask server `server` (this one: answered here) with a deadline of `limit`.
    async fn ask(
        &self,
        server: &str,
        req: LaunchRequest,
        limit: Duration,
    ) -> Result<LaunchAnswer, String> {
        if server == self.me() {
            return Ok(self.answer(req).await);
        }
        let addr = self
            .addr_of(server)
            .ok_or_else(|| format!("no server {server} in the cluster"))?;
        let inner = codec::encode(&req).map_err(|e| e.to_string())?;
        let bytes = codec::encode(&ControlRequest::Launch(inner)).map_err(|e| e.to_string())?;
        // A pooled connection may have died with its peer's restart: a failure on one is
        // tried once more on a fresh connection (it failed before any answer came back).
        let pooled = lock(&self.pool).get_mut(&addr).and_then(Vec::pop);
        let answer = match pooled {
            Some(mut conn) => match tokio::time::timeout(limit, conn.call(&bytes)).await {
                Ok(Ok(a)) => {
                    self.give_back(addr, conn);
                    a
                }
                Ok(Err(_)) => self.call_fresh(server, addr, &bytes, limit).await?,
                Err(_) => return Err(format!("{server} did not answer within {limit:?}")),
            },
            None => self.call_fresh(server, addr, &bytes, limit).await?,
        };
        match codec::decode_control::<ControlAnswer>(&answer).map_err(|e| e.to_string())? {
            ControlAnswer::Launch(Ok(b)) => codec::decode_control(&b).map_err(|e| e.to_string()),
            ControlAnswer::Launch(Err(m)) | ControlAnswer::Failed(m) => Err(m),
            other => Err(format!("{server} answered {other:?}")),
        }
    }

    async fn call_fresh(
        &self,
        server: &str,
        addr: SocketAddr,
        bytes: &[u8],
        limit: Duration,
    ) -> Result<Vec<u8>, String> {
        let mut conn = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.cluster.dialer().requests(addr, Lane::Control),
        )
        .await
        .map_err(|_| format!("{server} ({addr}) did not answer within {DIAL_TIMEOUT:?}"))?
        .map_err(|e| format!("{server}: {e}"))?;
        let answer = tokio::time::timeout(limit, conn.call(bytes))
            .await
            .map_err(|_| format!("{server} did not answer within {limit:?}"))?
            .map_err(|e| format!("{server}: {e}"))?;
        self.give_back(addr, conn);
        Ok(answer)
    }

    /// Keep a connection that answered for the next request (a few per server).
    fn give_back(&self, addr: SocketAddr, conn: Requests) {
        let mut pool = lock(&self.pool);
        let list = pool.entry(addr).or_default();
        if list.len() < POOLED {
            list.push(conn);
        }
    }

    /// Ask the leader, wherever it is, retrying across leader changes until
    /// [`LEADER_DEADLINE`]; each attempt may take `limit`.
    async fn ask_leader(
        &self,
        req: LaunchRequest,
        limit: Duration,
    ) -> Result<LaunchAnswer, String> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let status = self
                .cluster
                .handle()
                .status()
                .await
                .map_err(|_| "this server's Raft has stopped: restart quarryd".to_owned())?;
            let leader = match status.leader {
                Some(l) => Some(l),
                None => self.cluster.find_leader().await,
            };
            let last = if let Some(l) = leader {
                let name = self.cluster.name_of(l);
                match self.ask(&name, req.clone(), limit).await {
                    Ok(LaunchAnswer::NotLeader) => format!("{name} no longer leads"),
                    Ok(a) => return Ok(a),
                    Err(e) => e,
                }
            } else {
                self.cluster.no_leader(&status).to_string()
            };
            if Instant::now() >= deadline {
                return Err(format!("the leader could not be asked: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Answer one request (see [`protocol`]). Boxed: a deploy the leader accepts asks
    /// servers (itself too) in turn.
    fn answer(&self, req: LaunchRequest) -> BoxFuture<'_, LaunchAnswer> {
        Box::pin(async move {
            let failed = LaunchAnswer::Failed;
            match req {
                LaunchRequest::Build(job) => match self.build_here(job, &|_| {}).await {
                    Ok(lines) => LaunchAnswer::Built(lines),
                    Err(e) => failed(e),
                },
                LaunchRequest::SendImages { images, to } => {
                    match self.send_here(&images, &to, &|_| {}).await {
                        Ok((bytes, images)) => LaunchAnswer::Sent { bytes, images },
                        Err(e) => failed(e),
                    }
                }
                LaunchRequest::HasImages { stack } => match self.has_images(&stack).await {
                    Ok(i) => LaunchAnswer::Images(i),
                    Err(e) => failed(e),
                },
                LaunchRequest::RemoveImages { images } => match self.remove_images(&images).await {
                    Ok(()) => LaunchAnswer::Done,
                    Err(e) => failed(e),
                },
                LaunchRequest::Route { term, table } => match self.router.get() {
                    Some(r) => match r.apply(term, &table).await {
                        Ok(()) => LaunchAnswer::Done,
                        Err(e) => failed(format!("{}: {e}", self.me())),
                    },
                    None => failed(format!(
                        "{} runs no router: tag it `router` in its quarryd.toml and restart \
                         quarryd",
                        self.me()
                    )),
                },
                other => {
                    if !self.is_leader().await {
                        return LaunchAnswer::NotLeader;
                    }
                    self.answer_as_leader(other).await
                }
            }
        })
    }
}

/// The Control lane's launch handler.
#[derive(Debug)]
pub struct Handler(pub Arc<Launch>);

impl RequestHandler for Handler {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let req: LaunchRequest = codec::decode_control(&request)
                .map_err(|e| format!("undecodable launch request from {peer}: {e}"))?;
            let answer = self.0.answer(req).await;
            codec::encode(&answer).map_err(|e| e.to_string())
        })
    }
}

struct Bulk(Arc<Launch>, Arc<dyn RequestHandler>);

impl RequestHandler for Bulk {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let handler = BulkHandler {
                images: self.0.receiver().await,
                sources: Some(self.0.sources.clone()),
                raft: Some(self.1.clone()),
            };
            handler.handle(&peer, request).await
        })
    }
}
