//! The cluster as the HTTP API shows it: status, servers, grid and env views of [`Cluster`]
//! (the API's `ClusterView` for a cluster is in `api/cluster.rs`).
//!
//! Liveness comes from the answering server's own gossip view. `servers` is a linearizable
//! read; when no leader answers it falls back to the server list as last applied here (with a
//! note saying so), because that is exactly when an operator needs to see who is dead.

use quarry_consensus::Role;

use super::node::{Cluster, ClusterError};
use super::state::{ClusterState, Command};
use crate::answers::{
    EnvChange, EnvView, GossipOnly, GossipStatus, GossipView, GridView, RaftStatus, ServerEntry,
    Servers, Status,
};
use crate::gossip::member::{LiveState, Liveness, ServerLiveness};
use crate::types::ServerId;

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "precandidate",
    }
}

fn gossip_view(l: &ServerLiveness) -> GossipView {
    GossipView {
        state: l.state,
        since_unix_ms: l.since_unix_ms,
        generation: l.generation,
        heartbeat: l.heartbeat,
        max_version: l.max_version,
    }
}

impl Cluster {
    fn gossip_status(&self) -> Option<GossipStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let g = self.gossip()?;
        let live: Liveness = g.liveness.borrow().clone();
        let count = |s: LiveState| live.values().filter(|l| l.state == s).count();
        Some(GossipStatus {
            cluster_id: g.cluster_id.clone(),
            listen: g.listen,
            generation: g.generation,
            alive: count(LiveState::Alive),
            suspect: count(LiveState::Suspect),
            dead: count(LiveState::Dead),
            sent: g.stats.sent.load(Relaxed),
            accepted: g.stats.accepted.load(Relaxed),
            not_sealed: g.stats.not_sealed.load(Relaxed),
            replayed: g.stats.replayed.load(Relaxed),
            malformed: g.stats.malformed.load(Relaxed),
            seen: live
                .iter()
                .map(|(n, l)| (n.0.clone(), gossip_view(l)))
                .collect(),
        })
    }

    /// This server's status, with names for Raft ids.
    pub async fn status_view(&self) -> Status {
        let me = self.me();
        let mut out = Status {
            name: me.name.clone(),
            address: me.address,
            rpc_port: me.rpc_port,
            api_port: me.api_port,
            version: crate::version::VERSION.to_owned(),
            commit: crate::version::COMMIT.to_owned(),
            state_versions: crate::version::SUPPORTED,
            cluster_version: Some(self.cluster_version_now()),
            raft: None,
            health: "raft has stopped on this server: restart quarryd (its log says why)"
                .to_owned(),
            gossip: self.gossip_status(),
            replacements: self.replacements_now().as_ref().clone(),
        };
        let Ok(s) = self.handle().status().await else {
            return out;
        };
        let names = |ids: &[u64]| ids.iter().map(|&i| self.name_of(i)).collect::<Vec<_>>();
        let in_config = s.voters.contains(&s.id) || s.learners.contains(&s.id);
        out.health = if self.is_removed() {
            format!(
                "this server was removed from the cluster (`quarry servers remove {}`): stop \
                 quarryd here; to join again, clear its data and secrets directories and run \
                 `quarryd join`",
                me.name
            )
        } else if s.leader.is_some() && in_config {
            "ok".to_owned()
        } else if !in_config && s.voters.is_empty() {
            "waiting for the leader to bring this server in (it replays the log first)".to_owned()
        } else {
            self.no_leader(&s).to_string()
        };
        out.raft = Some(RaftStatus {
            id: s.id,
            role: role_name(s.role).to_owned(),
            leader: s.leader.map(|l| self.name_of(l)),
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            voters: names(&s.voters),
            learners: names(&s.learners),
        });
        out
    }

    /// The servers (linearizable), with roles, the leader's view of their replication and
    /// this server's gossip view of their liveness. Without a leader: the list as last applied
    /// here, with a note.
    pub async fn servers_view(&self) -> Result<Servers, ClusterError> {
        let (records, note) = match self
            .read(|s: &ClusterState| s.servers.values().cloned().collect::<Vec<_>>())
            .await
        {
            Ok(r) => (r, None),
            Err(e @ (ClusterError::NoLeader { .. } | ClusterError::LeaderUnreachable { .. })) => {
                let local: Vec<_> = self.servers_now().values().cloned().collect();
                if local.is_empty() {
                    return Err(e);
                }
                (
                    local,
                    Some(format!(
                        "{e}; this is the server list as last applied on {}",
                        self.me().name
                    )),
                )
            }
            Err(e) => return Err(e),
        };
        let liveness = self.liveness_now();
        let status = self.handle().status().await.ok();
        let (voters, learners) = status
            .as_ref()
            .map(|s| (s.voters.clone(), s.learners.clone()))
            .unwrap_or_default();
        let leader = status.as_ref().and_then(|s| s.leader);
        let progress = self.leader_view().await;
        let servers = records
            .into_iter()
            .map(|r| {
                let id = r.raft_id;
                let health = match &progress {
                    None => "unknown".to_owned(),
                    Some(v) => match v.peers.iter().find(|p| p.raft_id == id) {
                        None => "unknown".to_owned(),
                        Some(p) if !p.active => "unreachable".to_owned(),
                        Some(p) if p.matched == 0 || p.matched + 64 < v.commit => {
                            format!("behind {}", v.commit - p.matched)
                        }
                        Some(_) => "ok".to_owned(),
                    },
                };
                let seen = liveness.get(&ServerId(r.member.name.clone()));
                let record = seen.and_then(|l| l.record.as_ref());
                ServerEntry {
                    build: record.map(|g| g.build.clone()).unwrap_or_default(),
                    state_versions: record.map(|g| g.state_versions),
                    raft_id: id,
                    role: if voters.contains(&id) {
                        "voter"
                    } else if learners.contains(&id) {
                        "learner"
                    } else {
                        "none"
                    }
                    .to_owned(),
                    health,
                    leader: leader == Some(id),
                    liveness: seen.map(gossip_view),
                    member: r.member,
                }
            })
            .collect::<Vec<_>>();
        let others = liveness
            .iter()
            .filter(|(n, _)| !servers.iter().any(|s| s.member.name == n.0))
            .map(|(n, l)| GossipOnly {
                name: n.0.clone(),
                gossip: gossip_view(l),
            })
            .collect();
        Ok(Servers {
            servers,
            others,
            now_unix_ms: super::heal::now_ms(),
            note,
        })
    }
}

impl Cluster {
    /// Remove a server (a write), and wake the leader's reconciler to take it out of Raft.
    pub async fn remove_server(&self, name: String) -> Result<(), ClusterError> {
        self.write(Command::RemoveServer { name }).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The grid with its version (linearizable).
    pub async fn grid_view(&self) -> Result<GridView, ClusterError> {
        let grid = self.read(|s: &ClusterState| s.grid.state().clone()).await?;
        Ok(GridView { grid })
    }

    /// The global env, or a stack's (linearizable).
    pub async fn env_view(&self, stack: Option<String>) -> Result<EnvView, ClusterError> {
        let which = stack.clone();
        let env = self
            .read(move |s: &ClusterState| match &which {
                None => s.env.clone(),
                Some(st) => s.stacks.get(st).map(|r| r.env.clone()).unwrap_or_default(),
            })
            .await?;
        Ok(EnvView { stack, env })
    }

    /// Set and unset env variables (a write).
    pub async fn set_env(&self, change: EnvChange) -> Result<(), ClusterError> {
        self.write(Command::SetEnv {
            stack: change.stack,
            set: change.set,
            unset: change.unset,
        })
        .await?;
        Ok(())
    }
}
