//! The leader's part: accept deploys and scales (checked and placed before the answer) and
//! answer the leader's requests. Their progress and the servers' reports are soft state,
//! owned by one task (`soft.rs`, views in `views.rs`); running a job is `executor.rs`;
//! routing and retiring replaced replicas are `rollout.rs`.

use std::sync::Arc;

use super::compile::{self, PlanInputs};
use super::executor::{job_file, Job, Op};
use super::protocol::{Accepted, LaunchAnswer, LaunchRequest, PsView, RoutesView, StackEntry};
use super::soft::{unexpected, Answer, Msg, Records};
use super::Launch;
use crate::cluster::{ClusterState, Refusal};
use crate::source::SourceHash;
use crate::spec::{self, DirFacts};

impl Launch {
    pub(super) async fn answer_as_leader(&self, req: LaunchRequest) -> LaunchAnswer {
        match req {
            LaunchRequest::Report(r) => {
                self.soft.tell(Msg::ReportArrived(r));
                LaunchAnswer::Done
            }
            LaunchRequest::Progress { id, since } => match self
                .soft
                .ask(Msg::Progress {
                    id: id.clone(),
                    since,
                })
                .await
            {
                Ok(Answer::Progress(Some(v))) => LaunchAnswer::Progress(v),
                Ok(Answer::Progress(None)) => LaunchAnswer::Failed(format!(
                    "the leader knows no deploy {id}: leadership moved since it began, and \
                     what it had not committed is lost — see `quarry stacks` and `quarry ps`, \
                     and deploy again if the stack is not at the revision you expect"
                )),
                Ok(other) => LaunchAnswer::Failed(unexpected(other)),
                Err(e) => LaunchAnswer::Failed(e),
            },
            LaunchRequest::Ps { stack } => match self.ps(stack).await {
                Ok(v) => LaunchAnswer::Ps(v),
                Err(e) => LaunchAnswer::Failed(e),
            },
            LaunchRequest::Stacks => match self.stacks().await {
                Ok(v) => LaunchAnswer::Stacks(v),
                Err(e) => LaunchAnswer::Failed(e),
            },
            LaunchRequest::Routes => match self.routes().await {
                Ok(v) => LaunchAnswer::Routes(v),
                Err(e) => LaunchAnswer::Failed(e),
            },
            LaunchRequest::Lead { server } => {
                let Some(rec) = self.cluster.servers_now().get(&server).cloned() else {
                    return LaunchAnswer::Failed(format!("no server {server} in the cluster"));
                };
                match self.cluster.handle().transfer_leader(rec.raft_id).await {
                    Ok(()) => LaunchAnswer::Done,
                    Err(e) => LaunchAnswer::Failed(format!("leadership stays: {e}")),
                }
            }
            LaunchRequest::Deploy {
                source,
                holders,
                default_name,
            } => match self.accept_deploy(source, holders, default_name).await {
                Ok(a) => LaunchAnswer::Accepted(a),
                Err(e) => LaunchAnswer::Failed(e),
            },
            LaunchRequest::Scale {
                stack,
                node,
                replicas,
            } => match self.accept_scale(stack, node, replicas).await {
                Ok(a) => LaunchAnswer::Accepted(a),
                Err(e) => LaunchAnswer::Failed(e),
            },
            other => LaunchAnswer::Failed(format!("not a leader request: {other:?}")),
        }
    }

    pub(super) async fn inputs(&self, stack: &str) -> Result<PlanInputs, String> {
        let s = stack.to_owned();
        self.cluster
            .read(move |st: &ClusterState| PlanInputs::of(st, &s))
            .await
            .map_err(|e| e.to_string())
    }

    async fn accept_deploy(
        &self,
        source: SourceHash,
        holders: Vec<String>,
        default_name: String,
    ) -> Result<Accepted, String> {
        self.check_disk()?;
        self.ensure_source(&source, &holders).await?;
        let unpacked = self.unpack_fresh(&source).await?;
        let servers = self
            .cluster
            .read(|s: &ClusterState| {
                s.servers
                    .values()
                    .map(|r| r.member.memory)
                    .max()
                    .unwrap_or(0)
            })
            .await
            .map_err(|e| e.to_string())?;
        let facts = DirFacts {
            root: unpacked.clone(),
            max_memory: (servers > 0).then_some(servers),
        };
        let dir = unpacked.clone();
        let loaded =
            tokio::task::spawn_blocking(move || spec::load_with(&dir, &default_name, &facts))
                .await
                .map_err(|e| e.to_string())?;
        let prefix = format!("{}/", unpacked.display());
        let file = match loaded {
            Ok((file, _warnings)) => file,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&unpacked);
                return Err(format!(
                    "{}\nnothing was deployed or changed",
                    e.to_string().replace(&prefix, "")
                ));
            }
        };
        crate::cluster::check_stack_name(&file.name).map_err(|e| e.to_string())?;
        self.settle_build_dir(unpacked, &file.name, &source)?;
        let job = Job {
            id: new_id(),
            stack: file.name.clone(),
            op: Op::Deploy(Box::new(file)),
            source,
            holders,
        };
        self.accept(job).await
    }

    async fn accept_scale(
        &self,
        stack: String,
        node: String,
        replicas: u32,
    ) -> Result<Accepted, String> {
        let inputs = self.inputs(&stack).await?;
        let Some(source) = inputs.record.source.clone() else {
            return Err(Refusal::UnknownStack(stack).to_string());
        };
        let job = Job {
            id: new_id(),
            stack,
            op: Op::Scale { node, replicas },
            source,
            holders: Vec::new(),
        };
        self.accept(job).await
    }

    /// Compile the job once (its errors refuse it), register it and start it.
    async fn accept(&self, job: Job) -> Result<Accepted, String> {
        let inputs = self.inputs(&job.stack).await?;
        let file = job_file(&job, &inputs)?;
        let compiled = compile::compile(&inputs, &file, &job.source)
            .map_err(|e| format!("{e}\nnothing was deployed or changed"))?;
        let accepted = Accepted {
            id: job.id.clone(),
            stack: job.stack.clone(),
            revision: compiled.change.revision,
            plan: crate::build::render(&compiled.plan),
            placements: compiled
                .new_placements()
                .into_iter()
                .map(|(c, s, a)| match a {
                    Some(a) => format!("{c} -> {s} at {a}"),
                    None => format!("{c} -> {s}"),
                })
                .collect(),
            holders: job.holders.clone(),
        };
        let line = format!(
            "accepted: revision {} of {} from source {} (stored on {})",
            accepted.revision,
            job.stack,
            job.source.short(),
            if job.holders.is_empty() {
                "the servers".to_owned()
            } else {
                job.holders.join(", ")
            }
        );
        let begun = self
            .soft
            .ask(Msg::DeployAccepted {
                id: job.id.clone(),
                stack: job.stack.clone(),
                line,
            })
            .await?;
        match begun {
            Answer::Begun(Ok(())) => {}
            Answer::Begun(Err(busy)) => return Err(busy),
            other => return Err(unexpected(other)),
        }
        let id = job.id.clone();
        tracing::info!(deploy = %id, stack = %accepted.stack, "deploy accepted");
        tokio::spawn(self.arc().run_job(job));
        Ok(accepted)
    }

    pub(super) fn say(&self, id: &str, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(deploy = id, "{line}");
        self.soft.tell(Msg::DeploySaid {
            id: id.to_owned(),
            line,
        });
    }

    pub(super) fn phase(&self, id: &str, phase: &str) {
        self.soft.tell(Msg::DeployPhase {
            id: id.to_owned(),
            phase: phase.to_owned(),
        });
    }

    pub(super) fn finish(&self, job: &Job, failed: Option<String>) {
        self.soft.tell(Msg::DeployFinished {
            id: job.id.clone(),
            stack: job.stack.clone(),
            failed,
        });
    }

    /// The committed stack records (revision > 0), of `stack` only if given.
    async fn records(&self, stack: Option<String>) -> Result<Records, String> {
        self.cluster
            .read(move |s: &ClusterState| {
                s.stacks
                    .iter()
                    .filter(|(n, r)| r.revision > 0 && stack.as_ref().is_none_or(|w| w == *n))
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn server_names(&self) -> Vec<String> {
        self.cluster.servers_now().keys().cloned().collect()
    }

    /// `quarry ps`: see [`super::soft::Soft::ps`].
    pub(super) async fn ps(&self, stack: Option<String>) -> Result<PsView, String> {
        let records = self.records(stack.clone()).await?;
        if let Some(s) = &stack {
            if records.is_empty() {
                return Err(Refusal::UnknownStack(s.clone()).to_string());
            }
        }
        let servers = self.server_names();
        match self.soft.ask(Msg::Ps { records, servers }).await? {
            Answer::Ps(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// `quarry stacks`: see [`super::soft::Soft::stacks`].
    pub(super) async fn stacks(&self) -> Result<Vec<StackEntry>, String> {
        let records = self.records(None).await?;
        let servers = self.server_names();
        match self.soft.ask(Msg::Stacks { records, servers }).await? {
            Answer::Stacks(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// `quarry routes`.
    pub(super) async fn routes(&self) -> Result<RoutesView, String> {
        let state = self
            .cluster
            .read(|s: &ClusterState| s.clone())
            .await
            .map_err(|e| e.to_string())?;
        match self
            .soft
            .ask(Msg::Routes {
                state: Arc::new(state),
            })
            .await?
        {
            Answer::Routes(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }
}

fn new_id() -> String {
    hex::encode(&crate::pki::random_bytes()[..8])
}
