//! The HTTP API's view of a server with stacks: the cluster's own endpoints, and the stack
//! endpoints answered here or by the leader.

use std::time::Duration;

use super::protocol::{Accepted, DeployView, LaunchAnswer, LaunchRequest, PsView};
use super::routing::{self, RoutesReport};
use super::{Launch, PlanInputs};
use crate::api::{
    ApiFailure, ClusterView, EnvChange, EnvView, GridView, ScaleRequest, Servers, StacksView,
    Status,
};
use crate::cluster::{ClusterState, Command};
use crate::rpc::server::BoxFuture;
use crate::source::{SourceHash, MAX_SOURCE_BYTES};

fn fail(status: u16, message: impl Into<String>) -> ApiFailure {
    ApiFailure {
        status,
        message: message.into(),
    }
}

/// A leader's refusal: 404 for what does not exist, 400 otherwise (the words say why).
fn refused(m: String) -> ApiFailure {
    let status = if m.starts_with("no stack") || m.starts_with("the leader knows no deploy") {
        404
    } else if m.starts_with("a deploy of") {
        409
    } else {
        400
    };
    fail(status, m)
}

fn unexpected(a: LaunchAnswer) -> ApiFailure {
    match a {
        LaunchAnswer::Failed(m) => refused(m),
        other => fail(500, format!("the leader answered {other:?}")),
    }
}

impl Launch {
    /// `POST /v1/deploy`: store the tree here and on a second server, then hand it to the
    /// leader; answers once the leader accepted it.
    async fn receive(&self, default_name: String, tar: Vec<u8>) -> Result<Accepted, ApiFailure> {
        if tar.len() as u64 > MAX_SOURCE_BYTES {
            return Err(fail(
                413,
                format!(
                    "the source is {} bytes, more than the {MAX_SOURCE_BYTES} a deploy carries",
                    tar.len()
                ),
            ));
        }
        self.check_disk().map_err(|e| fail(507, e))?;
        let store = self.sources.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let hash = SourceHash::of(&tar);
            store.put(&hash, &tar).map(|()| hash)
        })
        .await
        .map_err(|e| fail(500, e.to_string()))?
        .map_err(|e| fail(500, format!("storing the source here: {e}")))?;
        let me = self.me();
        // The second copy: on the leader when it is another server (it needs the tree
        // anyway), else on the first other server that takes it.
        let leader = self
            .cluster
            .handle()
            .status()
            .await
            .ok()
            .and_then(|s| s.leader)
            .map(|l| self.cluster.name_of(l))
            .filter(|l| *l != me);
        let mut others: Vec<String> = self
            .cluster
            .servers_now()
            .keys()
            .filter(|n| **n != me)
            .cloned()
            .collect();
        if let Some(l) = &leader {
            others.retain(|n| n != l);
            others.insert(0, l.clone());
        }
        let mut holders = vec![me.clone()];
        let mut why = Vec::new();
        for o in &others {
            match self.push_source(o, &hash).await {
                Ok(()) => {
                    holders.push(o.clone());
                    break;
                }
                Err(e) => why.push(format!("{o}: {e}")),
            }
        }
        if holders.len() < 2 && !others.is_empty() {
            return Err(fail(
                503,
                format!(
                    "the source could not be stored on a second server ({}): nothing was \
                     deployed; retry once the servers answer",
                    why.join("; ")
                ),
            ));
        }
        tracing::info!(source = hash.short(), ?holders, "source stored");
        let req = LaunchRequest::Deploy {
            source: hash,
            holders,
            default_name,
        };
        match self.ask_leader(req, Duration::from_secs(120)).await {
            Ok(LaunchAnswer::Accepted(a)) => Ok(a),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(fail(503, e)),
        }
    }
}

impl ClusterView for Launch {
    fn name(&self) -> String {
        self.cluster.name()
    }

    fn status(&self) -> BoxFuture<'_, Status> {
        self.cluster.status()
    }

    fn servers(&self) -> BoxFuture<'_, Result<Servers, ApiFailure>> {
        self.cluster.servers()
    }

    fn remove_server(&self, name: String) -> BoxFuture<'_, Result<(), ApiFailure>> {
        ClusterView::remove_server(&*self.cluster, name)
    }

    fn grid(&self) -> BoxFuture<'_, Result<GridView, ApiFailure>> {
        self.cluster.grid()
    }

    fn env(&self, stack: Option<String>) -> BoxFuture<'_, Result<EnvView, ApiFailure>> {
        self.cluster.env(stack)
    }

    fn set_env(&self, change: EnvChange) -> BoxFuture<'_, Result<(), ApiFailure>> {
        ClusterView::set_env(&*self.cluster, change)
    }

    fn deploy(
        &self,
        default_name: String,
        tar: Vec<u8>,
    ) -> BoxFuture<'_, Result<Accepted, ApiFailure>> {
        Box::pin(self.receive(default_name, tar))
    }

    fn deploy_progress(
        &self,
        id: String,
        since: usize,
    ) -> BoxFuture<'_, Result<DeployView, ApiFailure>> {
        Box::pin(async move {
            let req = LaunchRequest::Progress { id, since };
            match self.ask_leader(req, Duration::from_secs(5)).await {
                Ok(LaunchAnswer::Progress(v)) => Ok(v),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(fail(503, e)),
            }
        })
    }

    fn ps(&self, stack: Option<String>) -> BoxFuture<'_, Result<PsView, ApiFailure>> {
        Box::pin(async move {
            match self
                .ask_leader(LaunchRequest::Ps { stack }, Duration::from_secs(10))
                .await
            {
                Ok(LaunchAnswer::Ps(v)) => Ok(v),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(fail(503, e)),
            }
        })
    }

    fn stacks(&self) -> BoxFuture<'_, Result<StacksView, ApiFailure>> {
        Box::pin(async move {
            match self
                .ask_leader(LaunchRequest::Stacks, Duration::from_secs(10))
                .await
            {
                Ok(LaunchAnswer::Stacks(stacks)) => Ok(StacksView { stacks }),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(fail(503, e)),
            }
        })
    }

    fn plan_inputs(&self, stack: String) -> BoxFuture<'_, Result<PlanInputs, ApiFailure>> {
        Box::pin(async move {
            Ok(self
                .cluster
                .read(move |s: &ClusterState| PlanInputs::of(s, &stack))
                .await?)
        })
    }

    fn scale(
        &self,
        stack: String,
        scale: ScaleRequest,
    ) -> BoxFuture<'_, Result<Accepted, ApiFailure>> {
        Box::pin(async move {
            let req = LaunchRequest::Scale {
                stack,
                node: scale.node,
                replicas: scale.replicas,
            };
            match self.ask_leader(req, Duration::from_secs(30)).await {
                Ok(LaunchAnswer::Accepted(a)) => Ok(a),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(fail(503, e)),
            }
        })
    }

    fn set_stack_enabled(
        &self,
        stack: String,
        enabled: bool,
    ) -> BoxFuture<'_, Result<(), ApiFailure>> {
        Box::pin(async move {
            self.cluster
                .write(Command::SetStackEnabled { stack, enabled })
                .await?;
            Ok(())
        })
    }

    fn routes(&self) -> BoxFuture<'_, Result<RoutesReport, ApiFailure>> {
        Box::pin(async move {
            let view = match self
                .ask_leader(LaunchRequest::Routes, Duration::from_secs(10))
                .await
            {
                Ok(LaunchAnswer::Routes(v)) => v,
                Ok(other) => return Err(unexpected(other)),
                Err(e) => return Err(fail(503, e)),
            };
            // What the leader's table left out: the same pure function of the committed
            // routes, computed here (the leader's answer has no field for it).
            let left_out = self
                .cluster
                .read(|s: &ClusterState| routing::left_out(&s.routes))
                .await?;
            Ok(RoutesReport { view, left_out })
        })
    }

    fn lead(&self, server: String) -> BoxFuture<'_, Result<(), ApiFailure>> {
        Box::pin(async move {
            match self
                .ask_leader(LaunchRequest::Lead { server }, Duration::from_secs(10))
                .await
            {
                Ok(LaunchAnswer::Done) => Ok(()),
                Ok(LaunchAnswer::Failed(e)) => Err(fail(409, e)),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(fail(503, e)),
            }
        })
    }
}
