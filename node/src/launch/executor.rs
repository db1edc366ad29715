//! Running an accepted deploy or scale on the leader: builds, transfers, the commit (again
//! while the grid or the stack moves), removals of images no server runs or ran, and the
//! rollout as the servers report it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::commit::{after_commit, settle, AfterCommit, OUTCOME_UNKNOWN};
use super::compile::{self, build_images, images_by_server, PlanInputs};
use super::protocol::{BuildJob, LaunchAnswer, LaunchRequest};
use super::soft::{unexpected, Answer, Msg, SILENT};
use super::Launch;
use crate::cluster::{ClusterState, Command, Refusal, StackChange};
use crate::images::{self, ImageNeeds};
use crate::source::SourceHash;
use crate::spec::StackFile;
use crate::types::ServerId;

/// How long a deploy waits for its rollout before it says what is still missing.
pub(super) const ROLLOUT: Duration = Duration::from_secs(60);
/// How long one build may take.
pub(super) const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// How long one transfer may take.
pub(super) const SEND_LIMIT: Duration = Duration::from_secs(600);
/// How long asking a server for its images may take.
pub(super) const ASK_LIMIT: Duration = Duration::from_secs(3);

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

impl Launch {
    /// Run a job to its end (see the module docs of [`crate::launch`]).
    pub(super) async fn run_job(self: Arc<Self>, job: Job) {
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
            // From cluster version 2 on the change is committed compact (each env once).
            let scale = matches!(job.op, Op::Scale { .. });
            let version = self.cluster.cluster_version_now();
            let command = Command::stack_change(change.clone(), scale, version);
            let written = self.cluster.write(command).await;
            let committed = match after_commit(&change, written, attempt) {
                AfterCommit::Committed(revision) => Ok(revision),
                AfterCommit::Again(why) => {
                    self.say(id, format!("computed again: {why}"));
                    continue;
                }
                AfterCommit::Failed(why) => return Err(why),
                AfterCommit::Unknown(why) => {
                    // Look before reporting: the proposal may have committed meanwhile.
                    let s = job.stack.clone();
                    let rec = self
                        .cluster
                        .read(move |st: &ClusterState| st.stacks.get(&s).cloned())
                        .await;
                    match rec {
                        Ok(rec) => match settle(rec.as_ref(), &change, &why) {
                            AfterCommit::Committed(r) => Ok(r),
                            AfterCommit::Unknown(why) | AfterCommit::Failed(why) => Err(why),
                            AfterCommit::Again(_) => Err(why),
                        },
                        Err(e) => Err(format!("{why}\n(the state could not be read: {e})")),
                    }
                }
            };
            if committed.is_err() {
                self.phase(id, OUTCOME_UNKNOWN);
            }
            match committed {
                Ok(revision) => {
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
                    self.soft.tell(Msg::DeployCommitted {
                        id: id.to_owned(),
                        revision,
                    });
                    break (change, (plan, failed));
                }
                Err(why) => return Err(why),
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
        self.rollout(id, &change, matches!(job.op, Op::Deploy(_)))
            .await
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

    /// Wait until the stack runs `change` with nothing left to retire, or the leader's
    /// rollout ([`super::rollout`]) rolled it back; say what is still missing as it changes.
    /// A change with nothing to roll back to (a first deploy, a scale) that is not running
    /// after [`ROLLOUT`] is left to the servers, which keep trying: a deploy says it failed,
    /// a scale that it is not through.
    async fn rollout(&self, id: &str, change: &StackChange, deploy: bool) -> Result<(), String> {
        let deadline = Instant::now() + ROLLOUT;
        let mut last = String::new();
        loop {
            let s = change.stack.clone();
            let rec = self
                .cluster
                .read(move |st: &ClusterState| st.stacks.get(&s).cloned())
                .await
                .map_err(|e| e.to_string())?;
            if let Some(rec) = &rec {
                if rec.revision == change.revision + 1 && rec.previous.is_none() {
                    if let Some(why) = &rec.failed {
                        return Err(format!(
                            "rolled back (revision {}): {why}; the previous revision serves on",
                            rec.revision
                        ));
                    }
                }
            }
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
                return Ok(());
            }
            let rolling =
                rec.is_some_and(|r| r.revision == change.revision && r.previous.is_some());
            if Instant::now() >= deadline && !rolling {
                let note = format!(
                    "not running after {}s: the servers keep trying (`quarry ps -s {}`)",
                    ROLLOUT.as_secs(),
                    change.stack
                );
                if deploy {
                    return Err(note);
                }
                self.say(id, note);
                return Ok(());
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
        let record = rec.map(Box::new);
        let asked = self.soft.ask(Msg::Readiness {
            stack: stack.to_owned(),
            revision,
            record,
        });
        match asked.await {
            Ok(Answer::Readiness(ready, waiting)) => (ready, waiting),
            Ok(other) => (0, vec![unexpected(other)]),
            Err(e) => (0, vec![e]),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SliceId;

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
}
