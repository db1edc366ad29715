//! The cluster as the HTTP API sees it ([`ClusterView`] for [`Cluster`]).

use quarry_consensus::Role;

use super::node::{Cluster, ClusterError};
use super::state::{ClusterState, Command, Refusal};
use crate::api::{
    ApiFailure, ClusterView, EnvChange, EnvView, GridView, RaftStatus, ServerEntry, Servers, Status,
};
use crate::rpc::server::BoxFuture;

impl From<ClusterError> for ApiFailure {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::Refused(Refusal::UnknownServer(_)) => 404,
            ClusterError::Refused(Refusal::Invalid(_)) => 400,
            ClusterError::Refused(_) => 409,
            ClusterError::NoLeader { .. } | ClusterError::LeaderUnreachable { .. } => 503,
            ClusterError::Stopped | ClusterError::Failed(_) => 500,
        };
        ApiFailure {
            status,
            message: e.to_string(),
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "precandidate",
    }
}

impl Cluster {
    /// This server's status, with names for Raft ids.
    pub async fn status_view(&self) -> Status {
        let me = self.me();
        let mut out = Status {
            name: me.name.clone(),
            address: me.address,
            rpc_port: me.rpc_port,
            api_port: me.api_port,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            raft: None,
            health: "raft has stopped on this server: restart quarryd (its log says why)"
                .to_owned(),
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

    /// The servers (linearizable), with roles and the leader's view of their replication.
    pub async fn servers_view(&self) -> Result<Servers, ClusterError> {
        let records = self
            .read(|s: &ClusterState| s.servers.values().cloned().collect::<Vec<_>>())
            .await?;
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
                ServerEntry {
                    member: r.member,
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
                }
            })
            .collect();
        Ok(Servers { servers })
    }
}

impl ClusterView for Cluster {
    fn name(&self) -> String {
        self.me().name
    }

    fn status(&self) -> BoxFuture<'_, Status> {
        Box::pin(self.status_view())
    }

    fn servers(&self) -> BoxFuture<'_, Result<Servers, ApiFailure>> {
        Box::pin(async move { Ok(self.servers_view().await?) })
    }

    fn remove_server(&self, name: String) -> BoxFuture<'_, Result<(), ApiFailure>> {
        Box::pin(async move {
            self.write(Command::RemoveServer { name }).await?;
            self.wake.notify_one();
            Ok(())
        })
    }

    fn grid(&self) -> BoxFuture<'_, Result<GridView, ApiFailure>> {
        Box::pin(async move {
            let grid = self.read(|s: &ClusterState| s.grid.state().clone()).await?;
            Ok(GridView { grid })
        })
    }

    fn env(&self, stack: Option<String>) -> BoxFuture<'_, Result<EnvView, ApiFailure>> {
        Box::pin(async move {
            let which = stack.clone();
            let env = self
                .read(move |s: &ClusterState| match &which {
                    None => s.env.clone(),
                    Some(st) => s.stacks.get(st).map(|r| r.env.clone()).unwrap_or_default(),
                })
                .await?;
            Ok(EnvView { stack, env })
        })
    }

    fn set_env(&self, change: EnvChange) -> BoxFuture<'_, Result<(), ApiFailure>> {
        Box::pin(async move {
            self.write(Command::SetEnv {
                stack: change.stack,
                set: change.set,
                unset: change.unset,
            })
            .await?;
            Ok(())
        })
    }
}
