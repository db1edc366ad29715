//! One server's handle on the cluster: writes (forwarded to the leader), linearizable reads,
//! admissions, and what status needs.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use quarry_consensus::{ClientError, Handle, IdempotencyKey, Role, Status};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::control::{AdmitError, ControlAnswer, ControlRequest, LeaderView};
use super::machine::{ClusterMachine, Replacements, ServerMap, Watches};
use super::state::{ClusterState, Command, Outcome, Refusal};
use super::transport::Peers;
use crate::gossip::member::Liveness;
use crate::gossip::transport::SealStats;
use crate::rpc::client::Requests;
use crate::rpc::join::{Admission, Member};
use crate::rpc::{codec, Dialer, Lane};

/// The largest command this server proposes, encoded (4 MiB). Checked before a command is
/// proposed or forwarded, because an entry above the Raft lane's frame limit
/// ([`crate::rpc::codec::MAX_FRAME`], 16 MiB, which an append of several entries must also
/// fit) could never be replicated, and replication would stall on it for good. A deploy of
/// a large stack is a few hundred KB.
pub const MAX_COMMAND: usize = 4 << 20;

/// Refuse a command above [`MAX_COMMAND`] ([`ClusterError::TooLarge`]), counting its encoded
/// size without encoding it.
pub fn check_command(command: &Command) -> Result<(), ClusterError> {
    let size = codec::encoded_len(command).map_err(|e| ClusterError::Failed(e.to_string()))?;
    if size > MAX_COMMAND {
        return Err(ClusterError::TooLarge {
            what: command_name(command),
            size,
            limit: MAX_COMMAND,
        });
    }
    Ok(())
}

/// What a command is, for a refusal (its `Debug` would print all of a 5 MB command).
fn command_name(command: &Command) -> String {
    match command {
        Command::Found { .. } => "found",
        Command::AddServer { .. } => "add-server",
        Command::UpdateServer { .. } => "update-server",
        Command::RemoveServer { .. } => "remove-server",
        Command::Grid { .. } => "grid",
        Command::SetEnv { .. } => "env",
        Command::SetRoute { .. } => "route",
        Command::RecordReplacement(_) => "record-replacement",
        Command::Deploy(_) => "deploy",
        Command::Scale(_) => "scale",
        Command::Retire { .. } => "retire",
        Command::Rollback { .. } => "rollback",
        Command::SetStackEnabled { .. } => "enable/disable",
        Command::SetClusterVersion(_) => "set-cluster-version",
        Command::CompactStack(_) => "deploy (compact)",
    }
    .to_owned()
}

/// How long a write keeps trying to reach a leader before it gives up.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(8);
/// How long a read keeps trying.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long one read attempt may wait for its ReadIndex.
const READ_ATTEMPT: Duration = Duration::from_secs(1);
/// The pause between two attempts.
const RETRY: Duration = Duration::from_millis(100);
/// How long one forwarded write may take before it is tried again (same idempotency key):
/// short, so a leader that vanished mid-request costs one retry, not the whole deadline.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a forwarded admission may take (the leader waits for Raft to list the joiner).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long asking a peer who leads may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How recently a voter must have been heard from to count as reachable.
const REACHABLE_WITHIN: Duration = Duration::from_secs(3);

/// Why a cluster request did not succeed. The text says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The state refused the command (deterministic: retrying will not help).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No leader could be found in time.
    #[error(
        "no leader yet ({reachable} of {voters} voters reachable) — retry in a few seconds; if \
         it lasts, a majority of the voters is down or cut off (`quarry servers` on another \
         server shows which)"
    )]
    NoLeader {
        /// Voters this server heard from recently (itself included).
        reachable: usize,
        /// Voters in the configuration.
        voters: usize,
    },
    /// A leader is known but did not answer in time.
    #[error("the leader ({leader}) did not answer: {why} — retry in a few seconds")]
    LeaderUnreachable {
        /// Its name.
        leader: String,
        /// The last error.
        why: String,
    },
    /// The command is above [`MAX_COMMAND`], encoded: nothing was proposed.
    #[error(
        "the {what} command is {size} bytes encoded, above the limit of {limit} bytes \
         (MAX_COMMAND); nothing was proposed: make the change smaller (fewer or smaller env \
         values, a smaller stack)"
    )]
    TooLarge {
        /// The command's kind.
        what: String,
        /// Its encoded size in bytes.
        size: usize,
        /// [`MAX_COMMAND`].
        limit: usize,
    },
    /// This server's Raft has stopped.
    #[error("this server's Raft has stopped: restart quarryd (its log says why)")]
    Stopped,
    /// Failed for good.
    #[error("{0}")]
    Failed(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What this server's gossip member shares with the cluster code (attached once it runs).
#[derive(Debug, Clone)]
pub struct GossipLink {
    /// Liveness as this server's gossip sees it.
    pub liveness: watch::Receiver<Liveness>,
    /// The sealing transport's counters.
    pub stats: Arc<SealStats>,
    /// The gossip cluster id (not secret: the CA's digest, as in the join token).
    pub cluster_id: String,
    /// The address gossip listens on.
    pub listen: SocketAddr,
    /// This server's boot generation.
    pub generation: u64,
}

/// The running cluster as one server sees it.
pub struct Cluster {
    raft_id: u64,
    me: Mutex<Member>,
    handle: Handle<ClusterMachine>,
    dialer: Dialer,
    peers: Arc<Peers>,
    servers: watch::Receiver<Arc<ServerMap>>,
    /// Idempotency sessions not in use: (client id, last sequence used). A write takes one
    /// and gives it back, so concurrent writes never share a client id and the replicated
    /// session table grows only with the peak number of concurrent writes.
    sessions: Mutex<Vec<(u64, u64)>>,
    /// Idle Control connections, by peer Raft id.
    control: Mutex<HashMap<u64, Requests>>,
    /// Wakes the leader's reconciler.
    pub(super) wake: Notify,
    /// Set once this server's record was removed.
    removed: AtomicBool,
    /// The recorded voter replacements, as applied here.
    replacements: watch::Receiver<Arc<Replacements>>,
    /// The cluster version in force, as applied here.
    version: watch::Receiver<u32>,
    /// Gossip, once it runs.
    gossip: OnceLock<GossipLink>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("raft_id", &self.raft_id)
            .finish_non_exhaustive()
    }
}

enum Attempt<T> {
    Done(T),
    Retry(String),
}

impl Cluster {
    /// A cluster handle for server `me` (Raft id `raft_id`) over a started Raft node.
    pub fn new(
        raft_id: u64,
        me: Member,
        handle: Handle<ClusterMachine>,
        dialer: Dialer,
        peers: Arc<Peers>,
        servers: watch::Receiver<Arc<ServerMap>>,
        watches: Watches,
    ) -> Cluster {
        Cluster {
            raft_id,
            me: Mutex::new(me),
            handle,
            dialer,
            peers,
            servers,
            sessions: Mutex::new(Vec::new()),
            control: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
            replacements: watches.replacements,
            version: watches.version,
            gossip: OnceLock::new(),
        }
    }

    /// The cluster version in force as applied here (it only goes up, so a command allowed at
    /// this version is allowed when it applies).
    pub fn cluster_version_now(&self) -> u32 {
        *self.version.borrow()
    }

    /// Attach this server's gossip (once; later calls change nothing).
    pub fn attach_gossip(&self, link: GossipLink) {
        let _ = self.gossip.set(link);
    }

    /// This server's gossip, if it runs.
    pub fn gossip(&self) -> Option<&GossipLink> {
        self.gossip.get()
    }

    /// Liveness as this server's gossip sees it now (empty before gossip runs).
    pub fn liveness_now(&self) -> Liveness {
        self.gossip
            .get()
            .map(|g| g.liveness.borrow().clone())
            .unwrap_or_default()
    }

    /// The recorded voter replacements, as applied here (not linearizable: for status).
    pub fn replacements_now(&self) -> Arc<Replacements> {
        self.replacements.borrow().clone()
    }

    /// Whether this server was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub(super) fn set_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// This server's Raft id.
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// This server as it describes itself.
    pub fn me(&self) -> Member {
        lock(&self.me).clone()
    }

    /// Change what this server says about itself (the ports it actually bound).
    pub fn set_me(&self, me: Member) {
        *lock(&self.me) = me;
    }

    /// The Raft handle.
    pub fn handle(&self) -> &Handle<ClusterMachine> {
        &self.handle
    }

    /// The dialer of this server's RPC lanes (its member certificate).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The address book.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The server list as last applied here (not linearizable: for names and status).
    pub fn servers_now(&self) -> Arc<ServerMap> {
        self.servers.borrow().clone()
    }

    /// A receiver of the server list.
    pub fn servers_watch(&self) -> watch::Receiver<Arc<ServerMap>> {
        self.servers.clone()
    }

    /// The name of the server with Raft id `id`, as far as this server knows.
    pub fn name_of(&self, id: u64) -> String {
        self.servers_now()
            .values()
            .find(|s| s.raft_id == id)
            .map(|s| s.member.name.clone())
            .or_else(|| self.peers.get(id).map(|p| p.name))
            .unwrap_or_else(|| format!("raft:{id}"))
    }

    /// The error for "no leader", counting the voters this server heard from recently.
    pub fn no_leader(&self, status: &Status) -> ClusterError {
        let reachable = status
            .voters
            .iter()
            .filter(|&&v| v == self.raft_id || self.peers.heard_within(v, REACHABLE_WITHIN))
            .count();
        ClusterError::NoLeader {
            reachable,
            voters: status.voters.len(),
        }
    }

    async fn status(&self) -> Result<Status, ClusterError> {
        self.handle
            .status()
            .await
            .map_err(|_| ClusterError::Stopped)
    }

    /// Send `req` to the server with Raft id `peer` on the Control lane.
    pub async fn call(&self, peer: u64, req: &ControlRequest) -> Result<ControlAnswer, String> {
        let limit = match req {
            ControlRequest::Admit { .. } => ADMIT_TIMEOUT,
            _ => FORWARD_TIMEOUT,
        };
        self.call_within(peer, req, limit).await
    }

    async fn call_within(
        &self,
        peer: u64,
        req: &ControlRequest,
        limit: Duration,
    ) -> Result<ControlAnswer, String> {
        let addr = self
            .peers
            .get(peer)
            .ok_or_else(|| format!("no address known for server {}", self.name_of(peer)))?
            .addr;
        let bytes = codec::encode(req).map_err(|e| e.to_string())?;
        let pooled = lock(&self.control).remove(&peer);
        let fut = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => self
                    .dialer
                    .requests(addr, Lane::Control)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            let answer = conn.call(&bytes).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, answer))
        };
        let (conn, answer) = tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| format!("no answer from {addr} in {limit:?}"))??;
        lock(&self.control).insert(peer, conn);
        codec::decode_control(&answer).map_err(|e| e.to_string())
    }

    fn take_session(&self) -> (u64, u64) {
        match lock(&self.sessions).pop() {
            Some((client, seq)) => (client, seq + 1),
            None => {
                let b = crate::pki::random_bytes();
                let client = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                (client, 1)
            }
        }
    }

    /// Commit `command` through the leader, wherever it is; retried (with the same
    /// idempotency key, so it applies at most once) across leader changes until
    /// [`WRITE_DEADLINE`].
    ///
    /// A command that needs a newer cluster version than the one applied here is refused
    /// before it is proposed ([`Refusal::NeedsClusterVersion`]): an older member could not
    /// read its log entry.
    pub async fn write(&self, command: Command) -> Result<Outcome, ClusterError> {
        check_command(&command)?;
        let current = self.cluster_version_now();
        if command.needs_version() > current {
            return Err(ClusterError::Refused(Refusal::NeedsClusterVersion {
                needed: command.needs_version(),
                current,
            }));
        }
        let (client, seq) = self.take_session();
        let key = IdempotencyKey { client, seq };
        let r = self.submit(key, command).await;
        // Given back whatever happened: a later write uses seq + 1, so a late apply of this
        // one can never be confused with it.
        lock(&self.sessions).push((client, seq));
        r?.map_err(ClusterError::Refused)
    }

    async fn submit(
        &self,
        key: IdempotencyKey,
        command: Command,
    ) -> Result<Result<Outcome, Refusal>, ClusterError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let status = self.status().await?;
            let attempt = match (status.role, status.leader) {
                (Role::Leader, _) => match self.handle.propose_with_key(key, command.clone()).await
                {
                    Ok(out) => Attempt::Done(out),
                    Err(ClientError::Stopped) => return Err(ClusterError::Stopped),
                    Err(ClientError::StaleRequest { .. }) => {
                        return Err(ClusterError::Failed(
                            "the write was superseded by a later one from this server".to_owned(),
                        ))
                    }
                    Err(e) => Attempt::Retry(e.to_string()),
                },
                (_, Some(leader)) => {
                    let req = ControlRequest::Propose {
                        key,
                        command: command.clone(),
                    };
                    match self.call(leader, &req).await {
                        Ok(ControlAnswer::Applied(out)) => Attempt::Done(out),
                        Ok(ControlAnswer::Failed(m)) => return Err(ClusterError::Failed(m)),
                        Ok(_) => Attempt::Retry("leadership moved".to_owned()),
                        Err(e) => Attempt::Retry(e),
                    }
                }
                (_, None) => match self.find_leader().await {
                    Some(leader) => {
                        let req = ControlRequest::Propose {
                            key,
                            command: command.clone(),
                        };
                        match self.call(leader, &req).await {
                            Ok(ControlAnswer::Applied(out)) => Attempt::Done(out),
                            Ok(ControlAnswer::Failed(m)) => return Err(ClusterError::Failed(m)),
                            _ => Attempt::Retry(String::new()),
                        }
                    }
                    None => Attempt::Retry(String::new()),
                },
            };
            match attempt {
                Attempt::Done(out) => return Ok(out),
                Attempt::Retry(why) if Instant::now() >= deadline => {
                    return Err(match status.leader {
                        Some(l) if l != self.raft_id && !why.is_empty() => {
                            ClusterError::LeaderUnreachable {
                                leader: self.name_of(l),
                                why,
                            }
                        }
                        _ => self.no_leader(&status),
                    })
                }
                Attempt::Retry(_) => tokio::time::sleep(RETRY).await,
            }
        }
    }

    /// A linearizable read of the state (ReadIndex through the leader), retried across
    /// leader changes until [`READ_DEADLINE`].
    pub async fn read<R, F>(&self, f: F) -> Result<R, ClusterError>
    where
        R: Send + 'static,
        F: Fn(&ClusterState) -> R + Clone + Send + 'static,
    {
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let g = f.clone();
            let attempt = self.handle.read(move |m: &ClusterMachine| g(&m.state));
            // A ReadIndex request lost with a leader change is never answered: give each
            // attempt a short time, then ask again.
            let r = tokio::time::timeout(READ_ATTEMPT, attempt)
                .await
                .unwrap_or(Err(ClientError::Timeout));
            match r {
                Ok(r) => return Ok(r),
                Err(ClientError::Stopped) => return Err(ClusterError::Stopped),
                Err(_) if Instant::now() >= deadline => {
                    let status = self.status().await?;
                    return Err(self.no_leader(&status));
                }
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        }
    }

    /// Ask the servers in the address book who leads, when this server does not know (it
    /// has just started, or lost touch): the first answer naming a leader wins.
    pub async fn find_leader(&self) -> Option<u64> {
        let probes = self
            .peers
            .all()
            .into_keys()
            .filter(|&id| id != self.raft_id)
            .map(|id| async move {
                let asked = self.call_within(id, &ControlRequest::Progress, PROBE_TIMEOUT);
                match asked.await {
                    Ok(ControlAnswer::Progress(_)) => Some(id),
                    Ok(ControlAnswer::NotLeader { leader }) => leader,
                    _ => None,
                }
            });
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .find(|&l| l != self.raft_id)
    }

    /// Admit a joiner: on the leader, here; elsewhere, forwarded to it.
    pub async fn admit(&self, member: Member) -> Result<Admission, String> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let status = self.status().await.map_err(|e| e.to_string())?;
            let why = match (status.role, status.leader) {
                (Role::Leader, _) => match self.admit_here(member.clone()).await {
                    Ok(a) => return Ok(a),
                    Err(AdmitError::Failed(m)) => return Err(m),
                    Err(AdmitError::NotLeader) => "leadership moved".to_owned(),
                },
                (_, hint) => {
                    let Some(leader) = (match hint {
                        Some(l) => Some(l),
                        None => self.find_leader().await,
                    }) else {
                        if Instant::now() >= deadline {
                            return Err(format!(
                                "the cluster could not admit the server: {}",
                                self.no_leader(&status)
                            ));
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    };
                    let req = ControlRequest::Admit {
                        member: member.clone(),
                    };
                    match self.call(leader, &req).await {
                        Ok(ControlAnswer::Admitted(a)) => return Ok(a),
                        Ok(ControlAnswer::Failed(m)) => return Err(m),
                        Ok(_) => "leadership moved".to_owned(),
                        Err(e) => e,
                    }
                }
            };
            if Instant::now() >= deadline {
                let e = match status.leader {
                    Some(l) if !why.is_empty() => ClusterError::LeaderUnreachable {
                        leader: self.name_of(l),
                        why,
                    },
                    _ => self.no_leader(&status),
                };
                return Err(format!("the cluster could not admit the server: {e}"));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Admit a joiner on the leader: commit its record, have the reconciler add it as a
    /// learner, and answer once Raft lists it.
    pub(super) async fn admit_here(&self, member: Member) -> Result<Admission, AdmitError> {
        let raft_id = match self.write(Command::AddServer { member }).await {
            Ok(Outcome::ServerAdded { raft_id, .. }) => raft_id,
            Ok(other) => return Err(AdmitError::Failed(format!("unexpected outcome {other:?}"))),
            Err(ClusterError::Refused(r)) => return Err(AdmitError::Failed(r.to_string())),
            Err(e) => return Err(AdmitError::Failed(e.to_string())),
        };
        self.wake.notify_one();
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let s = self.status().await.map_err(|_| AdmitError::NotLeader)?;
            if s.voters.contains(&raft_id) || s.learners.contains(&raft_id) {
                break;
            }
            if s.role != Role::Leader {
                return Err(AdmitError::NotLeader);
            }
            if Instant::now() >= deadline {
                return Err(AdmitError::Failed(
                    "the server was recorded but Raft has not taken it in as a learner yet: \
                     run the join again"
                        .to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let servers = self
            .read(|s| s.servers.values().cloned().collect::<Vec<_>>())
            .await
            .map_err(|e| AdmitError::Failed(e.to_string()))?;
        Ok(Admission { raft_id, servers })
    }

    /// The leader's replication progress: from this node when it leads, else asked of the
    /// leader. `None` when no leader answers.
    pub async fn leader_view(&self) -> Option<LeaderView> {
        let status = self.status().await.ok()?;
        match (status.role, status.leader) {
            (Role::Leader, _) => Some(super::control::leader_view_of(&status)),
            (_, Some(l)) => match self.call(l, &ControlRequest::Progress).await {
                Ok(ControlAnswer::Progress(v)) => Some(v),
                _ => None,
            },
            _ => None,
        }
    }

    /// Raft ids of the configuration (voters and learners), from the local status.
    pub async fn configuration(&self) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
        let s = self.status().await.ok()?;
        Some((
            s.voters.into_iter().collect(),
            s.learners.into_iter().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env_of(bytes: usize) -> Command {
        Command::SetEnv {
            stack: None,
            set: BTreeMap::from([("BIG".to_owned(), "x".repeat(bytes))]),
            unset: vec![],
        }
    }

    #[test]
    fn a_command_above_max_command_is_refused_naming_its_size_and_the_limit() {
        check_command(&env_of(MAX_COMMAND - 100)).expect("under the cap");
        let e = check_command(&env_of(MAX_COMMAND + 1)).expect_err("above the cap");
        let ClusterError::TooLarge { what, size, limit } = &e else {
            panic!("not TooLarge: {e}");
        };
        let exact = codec::encode(&env_of(MAX_COMMAND + 1))
            .expect("encode")
            .len();
        assert_eq!((what.as_str(), *size, *limit), ("env", exact, MAX_COMMAND));
        let said = e.to_string();
        assert!(
            said.contains(&exact.to_string()) && said.contains(&MAX_COMMAND.to_string()),
            "{said}"
        );
    }
}
