//! The leader's part: accept deploys and scales (checked and placed before the answer), keep
//! their progress and the servers' reports (soft state). Running them is `executor.rs`;
//! retiring replaced replicas and the `ps`/`stacks` views are `views.rs`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::compile::{self, PlanInputs};
use super::protocol::{Accepted, DeployView, LaunchAnswer, LaunchRequest, ServerReport};
use super::{lock, Launch};
use crate::cluster::{ClusterState, Refusal};
use crate::source::SourceHash;
use crate::spec::{self, DirFacts, StackFile};

/// A report older than this is not trusted (its server is silent).
pub(super) const FRESH: Duration = Duration::from_secs(5);
/// How long a deploy waits for its rollout before it says what is still missing.
pub(super) const ROLLOUT: Duration = Duration::from_secs(60);
/// How long one build may take.
pub(super) const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// How long one transfer may take.
pub(super) const SEND_LIMIT: Duration = Duration::from_secs(600);
/// How long asking a server for its images may take.
pub(super) const ASK_LIMIT: Duration = Duration::from_secs(3);
/// A server Raft has not heard from for this long is taken as gone for a build or transfer.
pub(super) const SILENT: Duration = Duration::from_secs(3);
/// How many deploys' progress the leader keeps.
pub(super) const KEEP_DEPLOYS: usize = 50;

/// What the leader keeps in memory (soft state).
#[derive(Debug, Default)]
pub(super) struct LeaderState {
    /// Server -> its last report and when it came.
    pub(super) reports: Mutex<BTreeMap<String, (Instant, ServerReport)>>,
    /// Deploy id -> its progress.
    pub(super) deploys: Mutex<BTreeMap<String, DeployLog>>,
    /// Stack -> the deploy running on it.
    pub(super) busy: Mutex<BTreeMap<String, String>>,
    /// Stack -> why its last deploy failed (until one succeeds).
    pub(super) failures: Mutex<BTreeMap<String, String>>,
    /// Since when this server leads (`None`: it does not).
    pub(super) since: Mutex<Option<Instant>>,
    /// Router -> what it acknowledged.
    pub(super) routers: Mutex<BTreeMap<String, super::rollout::RouterAck>>,
    /// Stack -> (the revision rolling out, since when this leader watches it).
    pub(super) watched: Mutex<BTreeMap<String, (u64, Instant)>>,
}

/// One deploy's progress.
#[derive(Debug, Clone)]
pub(super) struct DeployLog {
    stack: String,
    phase: String,
    lines: Vec<String>,
    done: bool,
    failed: Option<String>,
    /// The stack revision committed, once it is.
    pub(super) committed: Option<u64>,
    started: Instant,
}

/// What a deploy or a scale does.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Deploy(Box<StackFile>),
    Scale { node: String, replicas: u32 },
}

/// An accepted deploy or scale.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) id: String,
    pub(super) stack: String,
    pub(super) op: Op,
    pub(super) source: SourceHash,
    pub(super) holders: Vec<String>,
}

impl Launch {
    pub(super) async fn answer_as_leader(&self, req: LaunchRequest) -> LaunchAnswer {
        match req {
            LaunchRequest::Report(r) => {
                lock(&self.leader.reports).insert(r.server.clone(), (Instant::now(), r));
                LaunchAnswer::Done
            }
            LaunchRequest::Progress { id, since } => match lock(&self.leader.deploys).get(&id) {
                Some(d) => LaunchAnswer::Progress(DeployView {
                    id,
                    stack: d.stack.clone(),
                    phase: d.phase.clone(),
                    lines: d.lines.iter().skip(since).cloned().collect(),
                    next: d.lines.len(),
                    done: d.done,
                    failed: d.failed.clone(),
                    committed: d.committed,
                }),
                None => LaunchAnswer::Failed(format!(
                    "the leader knows no deploy {id}: leadership moved since it began, and \
                     what it had not committed is lost — see `quarry stacks` and `quarry ps`, \
                     and deploy again if the stack is not at the revision you expect"
                )),
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
        {
            let mut busy = lock(&self.leader.busy);
            if let Some(other) = busy.get(&job.stack) {
                return Err(format!(
                    "a deploy of {} is running ({other}): wait until it is done (`quarry \
                     stacks`), then try again",
                    job.stack
                ));
            }
            busy.insert(job.stack.clone(), job.id.clone());
        }
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
        let id = job.id.clone();
        {
            let mut deploys = lock(&self.leader.deploys);
            while deploys.len() >= KEEP_DEPLOYS {
                let oldest = deploys
                    .iter()
                    .filter(|(_, d)| d.done)
                    .min_by_key(|(_, d)| d.started)
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(id) => deploys.remove(&id),
                    None => break,
                };
            }
            deploys.insert(
                job.id.clone(),
                DeployLog {
                    stack: job.stack.clone(),
                    phase: "accepted".to_owned(),
                    lines: vec![format!(
                        "accepted: revision {} of {} from source {} (stored on {})",
                        accepted.revision,
                        job.stack,
                        job.source.short(),
                        if job.holders.is_empty() {
                            "the servers".to_owned()
                        } else {
                            job.holders.join(", ")
                        }
                    )],
                    done: false,
                    failed: None,
                    committed: None,
                    started: Instant::now(),
                },
            );
        }
        tracing::info!(deploy = %id, stack = %accepted.stack, "deploy accepted");
        tokio::spawn(self.arc().run_job(job));
        Ok(accepted)
    }

    pub(super) fn say(&self, id: &str, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(deploy = id, "{line}");
        if let Some(d) = lock(&self.leader.deploys).get_mut(id) {
            d.lines.push(line);
        }
    }

    pub(super) fn phase(&self, id: &str, phase: &str) {
        if let Some(d) = lock(&self.leader.deploys).get_mut(id) {
            d.phase = phase.to_owned();
        }
    }

    pub(super) fn finish(&self, job: &Job, failed: Option<String>) {
        if let Some(d) = lock(&self.leader.deploys).get_mut(&job.id) {
            d.done = true;
            if failed.is_none() || d.phase != super::executor::OUTCOME_UNKNOWN {
                d.phase = if failed.is_some() { "failed" } else { "done" }.to_owned();
            }
            d.failed = failed.clone();
        }
        let mut failures = lock(&self.leader.failures);
        match failed {
            Some(f) => {
                failures.insert(job.stack.clone(), f);
            }
            None => {
                failures.remove(&job.stack);
            }
        }
        lock(&self.leader.busy).remove(&job.stack);
    }
}

fn new_id() -> String {
    hex::encode(&crate::pki::random_bytes()[..8])
}

pub(super) fn job_file(job: &Job, inputs: &PlanInputs) -> Result<StackFile, String> {
    match &job.op {
        Op::Deploy(file) => Ok((**file).clone()),
        Op::Scale { node, replicas } => {
            let Some(file) = &inputs.record.file else {
                return Err(Refusal::UnknownStack(job.stack.clone()).to_string());
            };
            compile::rescale(file, node, *replicas)
        }
    }
}
