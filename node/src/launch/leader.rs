//! The leader's part: accept deploys and scales, run them (builds, transfers, commit,
//! removals, rollout), keep the servers' reports, retire replaced replicas, and answer `ps`
//! and `stacks` from the state and the reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quarry_consensus::Role;
use tokio::time::Instant;

use super::compile::{self, build_images, images_by_server, PlanInputs};
use super::protocol::{
    Accepted, BuildJob, DeployView, LaunchAnswer, LaunchRequest, PsRow, PsView, ServerReport,
    StackEntry,
};
use super::{lock, Launch};
use crate::cluster::{ClusterError, ClusterState, Command, Outcome, Refusal, StackChange};
use crate::images::{self, ImageNeeds};
use crate::source::SourceHash;
use crate::spec::{self, DirFacts, StackFile};
use crate::types::{ServerId, SliceId};

/// A report older than this is not trusted (its server is silent).
const FRESH: Duration = Duration::from_secs(5);
/// How long a deploy waits for its rollout before it says what is still missing.
const ROLLOUT: Duration = Duration::from_secs(60);
/// How long one build may take.
const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// How long one transfer may take.
const SEND_LIMIT: Duration = Duration::from_secs(600);
/// How long asking a server for its images may take.
const ASK_LIMIT: Duration = Duration::from_secs(3);
/// A server Raft has not heard from for this long is taken as gone for a build or transfer.
const SILENT: Duration = Duration::from_secs(3);
/// How many deploys' progress the leader keeps.
const KEEP_DEPLOYS: usize = 50;

/// What the leader keeps in memory (soft state).
#[derive(Debug, Default)]
pub(super) struct LeaderState {
    reports: Mutex<BTreeMap<String, (Instant, ServerReport)>>,
    deploys: Mutex<BTreeMap<String, DeployLog>>,
    /// Stack -> the deploy running on it.
    busy: Mutex<BTreeMap<String, String>>,
    /// Stack -> why its last deploy failed (until one succeeds).
    failures: Mutex<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
struct DeployLog {
    stack: String,
    phase: String,
    lines: Vec<String>,
    done: bool,
    failed: Option<String>,
    committed: Option<u64>,
    started: Instant,
}

/// What a deploy or a scale does.
#[derive(Debug, Clone)]
enum Op {
    Deploy(Box<StackFile>),
    Scale { node: String, replicas: u32 },
}

#[derive(Debug, Clone)]
struct Job {
    id: String,
    stack: String,
    op: Op,
    source: SourceHash,
    holders: Vec<String>,
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

    async fn inputs(&self, stack: &str) -> Result<PlanInputs, String> {
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

    fn say(&self, id: &str, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(deploy = id, "{line}");
        if let Some(d) = lock(&self.leader.deploys).get_mut(id) {
            d.lines.push(line);
        }
    }

    fn phase(&self, id: &str, phase: &str) {
        if let Some(d) = lock(&self.leader.deploys).get_mut(id) {
            d.phase = phase.to_owned();
        }
    }

    fn finish(&self, job: &Job, failed: Option<String>) {
        if let Some(d) = lock(&self.leader.deploys).get_mut(&job.id) {
            d.done = true;
            d.phase = if failed.is_some() { "failed" } else { "done" }.to_owned();
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

fn job_file(job: &Job, inputs: &PlanInputs) -> Result<StackFile, String> {
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

impl Launch {
    /// Run a job to its end (see the module docs of [`crate::launch`]).
    async fn run_job(self: Arc<Self>, job: Job) {
        let r = self.clone().run_job_inner(&job).await;
        self.finish(&job, r.err());
    }

    async fn run_job_inner(self: Arc<Self>, job: &Job) -> Result<(), String> {
        let me = self.me();
        let id = job.id.as_str();
        // 1. Builds, where images::plan says (a server that runs the image when it holds the
        //    source), before anything is committed.
        self.phase(id, "building");
        let inputs = self.inputs(&job.stack).await?;
        let file = job_file(job, &inputs)?;
        let compiled = compile::compile(&inputs, &file, &job.source).map_err(|e| e.to_string())?;
        let wanted = build_images(&compiled.change.desired);
        let (mut has, silent) = self.images_everywhere(&job.stack, &inputs).await;
        for (s, why) in &silent {
            self.say(
                id,
                format!("{s} does not answer ({why}): it gets its images once back"),
            );
        }
        // The leader builds: it holds the source (it compiled the deploy from it), so a
        // build never waits on another server; runners get the images by transfer. Other
        // servers holding the source build only when the leader's engine cannot.
        let mut builders = Vec::new();
        if !silent.contains_key(&ServerId(me.clone())) {
            builders.push(ServerId(me.clone()));
        } else {
            for h in &job.holders {
                let s = ServerId(h.clone());
                if *h != me && !silent.contains_key(&s) && inputs.servers.contains_key(&s) {
                    builders.push(s);
                }
            }
        }
        let needs = ImageNeeds {
            runs: images_by_server(&compiled.change.desired),
            ran: images_by_server(&inputs.record.desired),
            has: has.clone(),
            builders: builders.clone(),
        };
        let img = images::plan(&needs).map_err(|e| e.to_string())?;
        let mut by_builder: BTreeMap<ServerId, BTreeMap<String, String>> = BTreeMap::new();
        for (tag, on) in &img.builds {
            let dir = wanted.get(tag).cloned().unwrap_or_default();
            by_builder
                .entry(on.clone())
                .or_default()
                .insert(tag.clone(), dir);
        }
        for (on, tags) in by_builder {
            let job_b = BuildJob {
                stack: job.stack.clone(),
                source: job.source.clone(),
                holders: job.holders.iter().cloned().chain([me.clone()]).collect(),
                images: tags.clone(),
            };
            self.say(
                id,
                format!(
                    "building {} on {on}",
                    tags.keys().cloned().collect::<Vec<_>>().join(" ")
                ),
            );
            let t = Instant::now();
            let asked = if on.0 == me {
                let say = |l: String| self.say(id, format!("  {l}"));
                Ok(match self.build_here(job_b.clone(), &say).await {
                    Ok(lines) => LaunchAnswer::Built(lines),
                    Err(e) => LaunchAnswer::Failed(e),
                })
            } else {
                let req = LaunchRequest::Build(job_b.clone());
                self.ask_watched(&on.0, &[&on.0], req, BUILD_LIMIT).await
            };
            let built = match asked {
                Ok(LaunchAnswer::Built(lines)) => Ok((on.clone(), lines)),
                Ok(LaunchAnswer::Failed(e)) => Err(e),
                Ok(other) => Err(format!("{on} answered {other:?}")),
                Err(link) if on.0 != me => {
                    self.say(id, format!("{on} could not build ({link}): building here"));
                    let say = |l: String| self.say(id, format!("  {l}"));
                    match self.build_here(job_b, &say).await {
                        Ok(lines) => Ok((ServerId(me.clone()), lines)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let (on, lines) = built.map_err(|e| format!("{e}\nnothing was deployed or changed"))?;
            for l in lines {
                self.say(id, l);
            }
            self.say(
                id,
                format!("built on {on} in {:.1}s", t.elapsed().as_secs_f64()),
            );
            has.entry(on).or_default().extend(tags.into_keys());
        }

        // 2. Transfers and the commit, again while the grid or the stack moves under us.
        let mut attempt = 0;
        let (change, plan) = loop {
            attempt += 1;
            self.phase(id, "placing");
            let inputs = self.inputs(&job.stack).await?;
            let file = job_file(job, &inputs)?;
            let compiled =
                compile::compile(&inputs, &file, &job.source).map_err(|e| e.to_string())?;
            let needs = ImageNeeds {
                runs: images_by_server(&compiled.change.desired),
                ran: images_by_server(&inputs.record.desired),
                has: has.clone(),
                builders: builders.clone(),
            };
            let plan = images::plan(&needs).map_err(|e| e.to_string())?;
            self.phase(id, "sending images");
            let failed = self.transfer(id, &plan, &silent, &mut has).await;
            let mut change = compiled.change;
            change.images = holders(&change, &has, &plan, &failed);
            self.phase(id, "committing");
            let command = match job.op {
                Op::Deploy(_) => Command::Deploy(Box::new(change.clone())),
                Op::Scale { .. } => Command::Scale(Box::new(change.clone())),
            };
            match self.cluster.write(command).await {
                Ok(Outcome::StackChanged { revision, .. }) => {
                    self.say(
                        id,
                        format!(
                            "committed revision {revision} of {}: {} container(s) placed, \
                             {} retiring once replaced",
                            job.stack,
                            change.desired.len() - change.retiring.len(),
                            change.retiring.len()
                        ),
                    );
                    if let Some(d) = lock(&self.leader.deploys).get_mut(id) {
                        d.committed = Some(revision);
                    }
                    break (change, (plan, failed));
                }
                Err(ClusterError::Refused(
                    r @ (Refusal::StaleGrid { .. } | Refusal::StaleStack { .. }),
                )) if attempt < 5 => {
                    self.say(id, format!("computed again: {r}"));
                }
                Ok(other) => return Err(format!("the commit gave {other:?}")),
                Err(e) => return Err(format!("{e}\nnothing was deployed or changed")),
            }
        };

        // 3. Images no server runs or ran go (the build server keeps one only if it runs it),
        //    unless a transfer of it failed: then its holders keep it for the late server.
        let (plan, failed) = plan;
        for (server, images) in &plan.remove {
            let drop: Vec<String> = images
                .iter()
                .filter(|i| !failed.contains(*i))
                .cloned()
                .collect();
            if drop.is_empty() || silent.contains_key(server) {
                continue;
            }
            let req = LaunchRequest::RemoveImages {
                images: drop.clone(),
            };
            match self.ask(&server.0, req, ASK_LIMIT * 10).await {
                Ok(LaunchAnswer::Done) => {
                    self.say(id, format!("removed {} from {server}", drop.join(" ")))
                }
                Ok(other) => self.say(id, format!("images not removed from {server}: {other:?}")),
                Err(e) => self.say(id, format!("images not removed from {server}: {e}")),
            }
        }

        // 4. The rollout, as the servers report it.
        self.phase(id, "starting containers");
        self.rollout(id, &change).await;
        Ok(())
    }

    /// Ask `server`, giving up as soon as one of `watch` (other than this server) has not been
    /// heard from by Raft for [`SILENT`]: a server cut off mid-transfer never holds a deploy
    /// for a whole timeout.
    async fn ask_watched(
        &self,
        server: &str,
        watch: &[&str],
        req: LaunchRequest,
        limit: Duration,
    ) -> Result<LaunchAnswer, String> {
        tokio::select! {
            r = self.ask(server, req, limit) => r,
            gone = self.gone_silent(watch) => Err(format!(
                "{gone} has not been heard from for {}s", SILENT.as_secs()
            )),
        }
    }

    /// Resolves with the first of `servers` (other than this one) silent for [`SILENT`].
    async fn gone_silent(&self, servers: &[&str]) -> String {
        let me = self.me();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let records = self.cluster.servers_now();
            for s in servers.iter().filter(|s| **s != me) {
                if let Some(r) = records.get(*s) {
                    if !self.cluster.peers().heard_within(r.raft_id, SILENT) {
                        return (*s).to_owned();
                    }
                }
            }
        }
    }

    /// Ask every server which of the stack's images it has; servers that do not answer are
    /// returned apart, with why.
    async fn images_everywhere(
        &self,
        stack: &str,
        inputs: &PlanInputs,
    ) -> (
        BTreeMap<ServerId, BTreeSet<String>>,
        BTreeMap<ServerId, String>,
    ) {
        let asks = inputs.servers.keys().map(|s| async move {
            let req = LaunchRequest::HasImages {
                stack: stack.to_owned(),
            };
            (s.clone(), self.ask(&s.0, req, ASK_LIMIT).await)
        });
        let mut has = BTreeMap::new();
        let mut silent = BTreeMap::new();
        for (s, r) in futures_util::future::join_all(asks).await {
            match r {
                Ok(LaunchAnswer::Images(i)) => {
                    has.insert(s, i.into_iter().collect());
                }
                Ok(other) => {
                    silent.insert(s, format!("{other:?}"));
                }
                Err(e) => {
                    silent.insert(s, e);
                }
            }
        }
        (has, silent)
    }

    /// Run a plan's transfers (each receiver's concurrently); returns the images whose
    /// transfer failed or was skipped, and records what arrived in `has`.
    async fn transfer(
        &self,
        id: &str,
        plan: &images::ImagePlan,
        silent: &BTreeMap<ServerId, String>,
        has: &mut BTreeMap<ServerId, BTreeSet<String>>,
    ) -> BTreeSet<String> {
        let mut failed = BTreeSet::new();
        let mut runs = Vec::new();
        for t in &plan.transfers {
            if silent.contains_key(&t.to) || silent.contains_key(&t.from) {
                self.say(
                    id,
                    format!(
                        "not sending {} {} -> {}: a server does not answer; {} fetches them \
                         once back",
                        t.images.join(" "),
                        t.from,
                        t.to,
                        t.to
                    ),
                );
                failed.extend(t.images.iter().cloned());
                continue;
            }
            self.say(
                id,
                format!("sending {} {} -> {}", t.images.join(" "), t.from, t.to),
            );
            runs.push(async move {
                let start = Instant::now();
                let req = LaunchRequest::SendImages {
                    images: t.images.clone(),
                    to: t.to.0.clone(),
                };
                let watch = [t.from.0.as_str(), t.to.0.as_str()];
                let r = if t.from.0 == self.me() {
                    let say = |l: String| self.say(id, l);
                    let sent = self.send_here(&t.images, &t.to.0, &say);
                    tokio::select! {
                        r = sent => Ok(match r {
                            Ok((bytes, images)) => LaunchAnswer::Sent { bytes, images },
                            Err(e) => LaunchAnswer::Failed(e),
                        }),
                        gone = self.gone_silent(&watch) => Err(format!(
                            "{gone} has not been heard from for {}s", SILENT.as_secs()
                        )),
                    }
                } else {
                    self.ask_watched(&t.from.0, &watch, req, SEND_LIMIT).await
                };
                (t, start, r)
            });
        }
        for (t, start, r) in futures_util::future::join_all(runs).await {
            match r {
                Ok(LaunchAnswer::Sent { bytes, .. }) => {
                    self.say(
                        id,
                        format!(
                            "sent {} {} -> {}: {:.1} MB in {:.1}s",
                            t.images.join(" "),
                            t.from,
                            t.to,
                            bytes as f64 / 1e6,
                            start.elapsed().as_secs_f64()
                        ),
                    );
                    has.entry(t.to.clone())
                        .or_default()
                        .extend(t.images.iter().cloned());
                }
                Ok(LaunchAnswer::Failed(e)) | Err(e) => {
                    self.say(id, format!("transfer {} -> {} failed: {e}", t.from, t.to));
                    failed.extend(t.images.iter().cloned());
                }
                Ok(other) => {
                    self.say(id, format!("transfer {} -> {}: {other:?}", t.from, t.to));
                    failed.extend(t.images.iter().cloned());
                }
            }
        }
        failed
    }

    /// Wait (up to [`ROLLOUT`]) until the servers report every container of the change
    /// running and healthy, and its replaced replicas retired; say what is still missing.
    async fn rollout(&self, id: &str, change: &StackChange) {
        let deadline = Instant::now() + ROLLOUT;
        let mut last = String::new();
        loop {
            let (ready, waiting) = self.readiness(&change.stack, change.revision).await;
            let line = if waiting.is_empty() {
                format!("{ready} container(s) running and healthy")
            } else {
                format!("{ready} ready, waiting for {}", waiting.join("; "))
            };
            if line != last {
                self.say(id, line.clone());
                last = line;
            }
            if waiting.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                self.say(
                    id,
                    format!(
                        "still not running after {}s: the servers keep trying (`quarry ps -s {}`)",
                        ROLLOUT.as_secs(),
                        change.stack
                    ),
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// How many of the stack's containers are ready, and what the others wait for (empty
    /// once the stack runs at `revision` with nothing left to retire).
    async fn readiness(&self, stack: &str, revision: u64) -> (usize, Vec<String>) {
        let s = stack.to_owned();
        let rec = self
            .cluster
            .read(move |st: &ClusterState| st.stacks.get(&s).cloned())
            .await
            .ok()
            .flatten();
        let Some(rec) = rec else {
            return (0, vec!["the stack's record".to_owned()]);
        };
        if rec.revision != revision {
            return (0, Vec::new()); // a later change took over
        }
        let reports = lock(&self.leader.reports).clone();
        let mut ready = 0;
        let mut waiting = Vec::new();
        for d in rec
            .desired
            .iter()
            .filter(|d| !rec.retiring.contains(&d.slice))
        {
            let server = d
                .placement
                .as_ref()
                .map(|p| p.server.0.clone())
                .unwrap_or_default();
            match container_state(&reports, &server, stack, &d.slice) {
                Ready::Yes => ready += 1,
                Ready::No(why) => {
                    waiting.push(format!("{} on {server} ({why})", d.container_name()))
                }
            }
        }
        if !rec.retiring.is_empty() {
            waiting.push(format!(
                "{} replaced container(s) to retire",
                rec.retiring.len()
            ));
        }
        (ready, waiting)
    }
}

enum Ready {
    Yes,
    No(String),
}

fn container_state(
    reports: &BTreeMap<String, (Instant, ServerReport)>,
    server: &str,
    stack: &str,
    slice: &SliceId,
) -> Ready {
    let Some((at, r)) = reports.get(server) else {
        return Ready::No("no report from it yet".to_owned());
    };
    if at.elapsed() > FRESH {
        return Ready::No(format!("no report for {}s", at.elapsed().as_secs()));
    }
    if let Some(e) = &r.engine {
        return Ready::No(format!("its engine: {e}"));
    }
    match r
        .containers
        .iter()
        .find(|c| c.stack == stack && c.slice == slice.0)
    {
        Some(c) if c.state == "running" && (c.health == "healthy" || c.health == "none") => {
            Ready::Yes
        }
        Some(c) => Ready::No(format!("{}, {}", c.status, c.health)),
        None => Ready::No(
            r.problems
                .get(&slice.0)
                .cloned()
                .unwrap_or_else(|| "not created yet".to_owned()),
        ),
    }
}

/// Where each built image of the change is once the transfers are done and the removals
/// will have run: the servers that have it, minus those it will be removed from.
fn holders(
    change: &StackChange,
    has: &BTreeMap<ServerId, BTreeSet<String>>,
    plan: &images::ImagePlan,
    failed: &BTreeSet<String>,
) -> BTreeMap<String, Vec<ServerId>> {
    build_images(&change.desired)
        .into_keys()
        .map(|tag| {
            let on = has
                .iter()
                .filter(|(_, i)| i.contains(&tag))
                .map(|(s, _)| s.clone())
                .filter(|s| {
                    failed.contains(&tag) || !plan.remove.get(s).is_some_and(|r| r.contains(&tag))
                })
                .collect();
            (tag, on)
        })
        .collect()
}

impl Launch {
    /// The leader's background work: retire replaced replicas once their replacements are
    /// healthy. Runs until the process ends; acts only while this server leads.
    pub async fn lead(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match self.cluster.handle().status().await {
                Ok(s) if s.role == Role::Leader => {}
                Ok(_) => continue,
                Err(_) => return,
            }
            if let Err(e) = self.retire_step().await {
                tracing::debug!("retire: {e}");
            }
        }
    }

    async fn retire_step(&self) -> Result<(), String> {
        let stacks = self
            .cluster
            .read(|s: &ClusterState| {
                (
                    s.grid.version(),
                    s.stacks
                        .iter()
                        .filter(|(_, r)| !r.retiring.is_empty())
                        .map(|(n, r)| (n.clone(), r.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        let (version, stacks) = stacks;
        let reports = lock(&self.leader.reports).clone();
        for (name, rec) in stacks {
            // A node's replaced replicas go once every one of its live replicas is ready.
            let mut slices = Vec::new();
            let nodes: BTreeSet<&str> = rec
                .desired
                .iter()
                .filter(|d| rec.retiring.contains(&d.slice))
                .map(|d| d.node.as_str())
                .collect();
            for node in nodes {
                let live_ready = rec
                    .desired
                    .iter()
                    .filter(|d| d.node == node && !rec.retiring.contains(&d.slice))
                    .all(|d| {
                        let server = d
                            .placement
                            .as_ref()
                            .map(|p| p.server.0.as_str())
                            .unwrap_or("");
                        matches!(
                            container_state(&reports, server, &name, &d.slice),
                            Ready::Yes
                        )
                    });
                if live_ready || rec.disabled {
                    slices.extend(
                        rec.desired
                            .iter()
                            .filter(|d| d.node == node && rec.retiring.contains(&d.slice))
                            .map(|d| d.slice.clone()),
                    );
                }
            }
            if slices.is_empty() {
                continue;
            }
            let cmd = Command::Retire {
                stack: name.clone(),
                revision: rec.revision,
                grid_version: version,
                slices: slices.clone(),
            };
            match self.cluster.write(cmd).await {
                Ok(_) => tracing::info!(stack = %name, ?slices, "replaced replicas retired"),
                Err(e) => return Err(e.to_string()),
            }
            return Ok(()); // the grid moved: the next round reads it again
        }
        Ok(())
    }

    /// `quarry ps`: every desired container of the stack (or all stacks) with what its
    /// server reports, and the reported containers no longer desired.
    async fn ps(&self, stack: Option<String>) -> Result<PsView, String> {
        let which = stack.clone();
        let records = self
            .cluster
            .read(move |s: &ClusterState| {
                s.stacks
                    .iter()
                    .filter(|(n, r)| r.revision > 0 && which.as_ref().is_none_or(|w| w == *n))
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Some(s) = &stack {
            if records.is_empty() {
                return Err(Refusal::UnknownStack(s.clone()).to_string());
            }
        }
        let reports = lock(&self.leader.reports).clone();
        let mut rows = Vec::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        for (name, rec) in &records {
            for d in &rec.desired {
                let p = d.placement.as_ref();
                let server = p.map(|p| p.server.0.clone()).unwrap_or_default();
                let address = p.and_then(|p| {
                    let hp = p.host_ports.get(d.ports.first()?)?;
                    Some(format!("{}:{hp}", p.host))
                });
                let retiring = rec.retiring.contains(&d.slice);
                let fresh = reports.get(&server).filter(|(at, _)| at.elapsed() <= FRESH);
                let found = fresh.and_then(|(_, r)| {
                    r.containers
                        .iter()
                        .find(|c| c.stack == *name && c.slice == d.slice.0)
                });
                seen.insert((name.clone(), d.slice.0.clone()));
                let (state, health, container, note) = match (fresh, found) {
                    (None, _) => (
                        "unknown".to_owned(),
                        "-".to_owned(),
                        None,
                        Some(format!("no fresh report from {server}")),
                    ),
                    (Some(_), Some(c)) => (
                        if retiring && c.state == "running" {
                            "retiring".to_owned()
                        } else {
                            c.state.clone()
                        },
                        c.health.clone(),
                        Some(c.id.clone()),
                        (c.state != "running").then(|| c.status.clone()),
                    ),
                    (Some((_, r)), None) => (
                        if rec.disabled { "disabled" } else { "pending" }.to_owned(),
                        "-".to_owned(),
                        None,
                        r.problems.get(&d.slice.0).cloned(),
                    ),
                };
                rows.push(PsRow {
                    stack: name.clone(),
                    node: d.node.clone(),
                    kind: d.kind.to_string(),
                    replica: d.replica,
                    server,
                    revision: d.revision,
                    state,
                    health,
                    address,
                    container,
                    note,
                });
            }
        }
        let names: BTreeSet<&String> = records.iter().map(|(n, _)| n).collect();
        for (server, (at, r)) in &reports {
            if at.elapsed() > FRESH {
                continue;
            }
            for c in r.containers.iter().filter(|c| names.contains(&c.stack)) {
                if seen.contains(&(c.stack.clone(), c.slice.clone())) {
                    continue;
                }
                rows.push(PsRow {
                    stack: c.stack.clone(),
                    node: c.node.clone(),
                    kind: c.kind.clone(),
                    replica: c.replica,
                    server: server.clone(),
                    revision: c.revision,
                    state: "stopping".to_owned(),
                    health: c.health.clone(),
                    address: c.address.clone(),
                    container: Some(c.id.clone()),
                    note: Some("no longer desired".to_owned()),
                });
            }
        }
        rows.sort_by(|a, b| {
            (&a.stack, &a.node, a.revision, a.replica, &a.server)
                .cmp(&(&b.stack, &b.node, b.revision, b.replica, &b.server))
        });
        let servers = self.cluster.servers_now();
        let silent = servers
            .keys()
            .filter_map(|s| match reports.get(s) {
                None => Some(format!("{s}: no report yet")),
                Some((at, _)) if at.elapsed() > FRESH => {
                    Some(format!("{s}: last report {}s ago", at.elapsed().as_secs()))
                }
                Some((_, r)) => r.engine.as_ref().map(|e| format!("{s}: {e}")),
            })
            .collect();
        Ok(PsView { rows, silent })
    }

    /// `quarry stacks`.
    async fn stacks(&self) -> Result<Vec<StackEntry>, String> {
        let view = self.ps(None).await?;
        let records = self
            .cluster
            .read(|s: &ClusterState| {
                s.stacks
                    .iter()
                    .filter(|(_, r)| r.revision > 0)
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| e.to_string())?;
        let busy = lock(&self.leader.busy).clone();
        let failures = lock(&self.leader.failures).clone();
        let mut out = Vec::new();
        for (name, rec) in records {
            let rows: Vec<&PsRow> = view.rows.iter().filter(|r| r.stack == name).collect();
            let mut nodes = BTreeMap::new();
            for node in rec.current.nodes.keys() {
                let live: Vec<&&PsRow> = rows
                    .iter()
                    .filter(|r| r.node == *node && r.state != "retiring" && r.state != "stopping")
                    .collect();
                let up = live
                    .iter()
                    .filter(|r| {
                        r.state == "running" && (r.health == "healthy" || r.health == "none")
                    })
                    .count();
                nodes.insert(node.clone(), format!("{up}/{}", live.len()));
            }
            let broken: Vec<String> = rows
                .iter()
                .filter(|r| r.state == "stopped" || r.health.starts_with("unhealthy"))
                .map(|r| {
                    format!(
                        "{}.{} on {}: {} {}",
                        r.node, r.replica, r.server, r.state, r.health
                    )
                })
                .collect();
            let pending = rows.iter().any(|r| {
                matches!(
                    r.state.as_str(),
                    "pending" | "retiring" | "stopping" | "unknown"
                ) || r.health.starts_with("starting")
            });
            let (status, reason) = if rec.disabled {
                ("disabled", None)
            } else if !broken.is_empty() {
                ("failed", Some(broken.join("; ")))
            } else if let Some(id) = busy.get(&name) {
                ("deploying", Some(format!("deploy {id} running")))
            } else if pending || !rec.retiring.is_empty() {
                (
                    "deploying",
                    Some("containers starting or retiring".to_owned()),
                )
            } else {
                ("live", None)
            };
            out.push(StackEntry {
                name: name.clone(),
                status: status.to_owned(),
                reason,
                revision: rec.revision,
                source: rec.source.as_ref().map(|s| s.short().to_owned()),
                nodes,
                domains: rec
                    .current
                    .nodes
                    .values()
                    .flat_map(|n| n.domains.clone())
                    .collect(),
                last_failure: failures.get(&name).cloned(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::protocol::ContainerReport;

    fn report(containers: Vec<ContainerReport>) -> ServerReport {
        ServerReport {
            server: "h1".into(),
            engine: None,
            fresh: true,
            containers,
            problems: BTreeMap::from([("s.web.r1.1".to_owned(), "waiting for image x".to_owned())]),
        }
    }

    fn row(slice: &str, state: &str, health: &str) -> ContainerReport {
        ContainerReport {
            stack: "s".into(),
            node: "web".into(),
            kind: "web".into(),
            replica: 0,
            revision: 1,
            slice: slice.into(),
            id: "id".into(),
            name: "n".into(),
            state: state.into(),
            status: state.into(),
            health: health.into(),
            address: None,
            image: "i".into(),
        }
    }

    fn ready(
        reports: &BTreeMap<String, (Instant, ServerReport)>,
        slice: &str,
    ) -> Result<(), String> {
        match container_state(reports, "h1", "s", &SliceId(slice.into())) {
            Ready::Yes => Ok(()),
            Ready::No(why) => Err(why),
        }
    }

    #[test]
    fn a_container_is_ready_when_its_fresh_report_says_running_and_healthy_or_unprobed() {
        let reports = BTreeMap::from([(
            "h1".to_owned(),
            (
                Instant::now(),
                report(vec![
                    row("s.web.r1.0", "running", "healthy"),
                    row("s.ticker.r1.0", "running", "none"),
                    row("s.web.r1.2", "running", "starting (last probe: refused)"),
                    row("s.web.r1.3", "stopped", "-"),
                ]),
            ),
        )]);
        assert_eq!(ready(&reports, "s.web.r1.0"), Ok(()));
        assert_eq!(ready(&reports, "s.ticker.r1.0"), Ok(()));
        assert!(ready(&reports, "s.web.r1.2")
            .unwrap_err()
            .contains("starting"));
        assert!(ready(&reports, "s.web.r1.3").is_err());
        assert_eq!(
            ready(&reports, "s.web.r1.1"),
            Err("waiting for image x".to_owned()),
            "the server's problem is the reason"
        );
        assert!(container_state(&BTreeMap::new(), "h1", "s", &SliceId("x".into())).is_no());
    }

    #[test]
    fn holders_are_the_servers_keeping_an_image_after_the_removals_unless_a_transfer_failed() {
        use crate::types::{DesiredContainer, ImageSource, Kind, Placement};
        let placed = |server: &str| DesiredContainer {
            stack: "s".into(),
            node: "web".into(),
            kind: Kind::Web,
            revision: 1,
            definition: "d".into(),
            replica: 0,
            slice: SliceId(format!("s.web.r1.{server}")),
            image: ImageSource::Build {
                dir: "web".into(),
                digest: "x".into(),
                tag: "quarry/s-web:1".into(),
            },
            command: None,
            env: BTreeMap::new(),
            ports: vec![],
            memory: 1,
            health: None,
            placement: Some(Placement {
                server: ServerId(server.into()),
                host: "10.0.0.1".into(),
                ports: BTreeMap::new(),
                host_ports: BTreeMap::new(),
            }),
        };
        let change = StackChange {
            stack: "s".into(),
            revision: 1,
            grid_version: 0,
            place: vec![],
            remove: vec![],
            source: SourceHash::of(b"s"),
            file: StackFile {
                name: "s".into(),
                env: BTreeMap::new(),
                nodes: vec![],
            },
            current: Default::default(),
            desired: vec![placed("h2")],
            retiring: vec![],
            images: BTreeMap::new(),
            routes: BTreeMap::new(),
        };
        let tag = "quarry/s-web:1".to_owned();
        let one = BTreeSet::from([tag.clone()]);
        let has = BTreeMap::from([
            (ServerId("h1".into()), one.clone()),
            (ServerId("h2".into()), one.clone()),
        ]);
        let plan = images::ImagePlan {
            remove: BTreeMap::from([(ServerId("h1".into()), one.clone())]),
            ..Default::default()
        };
        let ok = holders(&change, &has, &plan, &BTreeSet::new());
        assert_eq!(
            ok[&tag],
            vec![ServerId("h2".into())],
            "the build server lets it go"
        );
        let failed = holders(&change, &has, &plan, &one);
        assert_eq!(
            failed[&tag],
            vec![ServerId("h1".into()), ServerId("h2".into())],
            "a failed transfer keeps it where it is"
        );
    }

    impl Ready {
        fn is_no(&self) -> bool {
            matches!(self, Ready::No(_))
        }
    }
}
