//! Every server's reconciler: the placed containers that name it, converged on its engine,
//! their health probed from the host, and a report to the leader, every round.
//!
//! A round: the engine's quarry containers this cluster made ([`crate::docker::origin`]:
//! never a `quarry start`'s, whatever their stack's name) -> ReadIndex (the view is fresh, or
//! the round only probes and reports; a round whose last confirmed view is unchanged here and
//! wants nothing done skips it) -> per known stack, [`reconcile::diff`] -> fetch missing images
//! in the background -> [`Converger::start_now`] -> stop what is not desired -> probe ->
//! report. Rounds run every [`ROUND`], and at once when this server applies a new entry (Raft's
//! watch of the applied index wakes it; nothing polls).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::protocol::{ContainerReport, LaunchAnswer, LaunchRequest, ServerReport};
use super::{lock, Launch};
use crate::cluster::ClusterState;
use crate::docker::{containers, image, network, Engine, ObservedContainer, RunState};
use crate::health;
use crate::reconcile::converge::target_of_observed;
use crate::reconcile::{self, Converger, NodeMeta};
use crate::types::{DesiredContainer, ImageSource, ServerId};

/// The longest pause between two rounds.
const ROUND: Duration = Duration::from_secs(1);
/// The pause while a container of this server is starting or waiting (its first passed
/// probe reaches the leader, and so the routers, this much sooner).
const BUSY_ROUND: Duration = Duration::from_millis(250);
/// How long a round waits for ReadIndex.
const READ_LIMIT: Duration = Duration::from_secs(2);
/// How long a missing image is not asked for again after a failed fetch.
const FETCH_BACKOFF: Duration = Duration::from_secs(5);
/// How long a named image is not pulled again after a failed pull.
const PULL_BACKOFF: Duration = Duration::from_secs(30);
/// How long one image fetch may take.
const FETCH_LIMIT: Duration = Duration::from_secs(300);

/// One stack as this server must run it.
#[derive(Debug, Clone)]
struct StackView {
    name: String,
    disabled: bool,
    /// Its containers placed on this server.
    mine: Vec<DesiredContainer>,
    meta: BTreeMap<String, NodeMeta>,
    /// Built image -> servers holding it.
    holders: BTreeMap<String, Vec<ServerId>>,
}

/// The view of one round, confirmed by ReadIndex.
#[derive(Debug, Clone)]
struct View {
    /// Whether this server's record is in the state (a joiner that has not caught up has no
    /// business acting).
    known: bool,
    address: Option<IpAddr>,
    stacks: Vec<StackView>,
}

fn view_of(state: &ClusterState, me: &str) -> View {
    let server = ServerId(me.to_owned());
    View {
        known: state.servers.contains_key(me),
        address: state.servers.get(me).map(|s| s.member.address),
        stacks: state
            .stacks
            .iter()
            .filter(|(_, r)| r.revision > 0)
            .map(|(name, r)| StackView {
                name: name.clone(),
                disabled: r.disabled,
                mine: r
                    .desired
                    .iter()
                    .filter(|d| d.placement.as_ref().is_some_and(|p| p.server == server))
                    .cloned()
                    .collect(),
                meta: r
                    .current
                    .nodes
                    .iter()
                    .map(|(n, s)| {
                        (
                            n.clone(),
                            NodeMeta {
                                domains: s.domains.clone(),
                                fields: s.fields.clone(),
                            },
                        )
                    })
                    .collect(),
                holders: r.images.clone(),
            })
            .collect(),
    }
}

/// Health of one container, as probed over the rounds.
#[derive(Debug, Clone, Default)]
struct Probed {
    passes: u32,
    fails_in_row: u32,
    last_error: Option<String>,
}

impl Probed {
    fn word(&self, retries: u32) -> String {
        match (&self.last_error, self.passes) {
            (None, _) => "healthy".to_owned(),
            (Some(e), 0) => format!("starting (last probe: {e})"),
            (Some(e), _) if self.fails_in_row >= retries.max(1) => format!("unhealthy: {e}"),
            (Some(_), _) => "healthy".to_owned(),
        }
    }
}

/// Whether `view` wants anything done on this server's engine, given what it runs.
fn wants_action(view: &View, observed: &BTreeMap<String, Vec<ObservedContainer>>) -> bool {
    view.stacks.iter().any(|stack| {
        let desired: &[DesiredContainer] = if stack.disabled { &[] } else { &stack.mine };
        let obs = observed.get(&stack.name).map(Vec::as_slice).unwrap_or(&[]);
        let d = reconcile::diff(desired, obs);
        !d.create.is_empty() || !d.replace.is_empty() || !d.start.is_empty() || !d.remove.is_empty()
    })
}

/// What the reconciler keeps between rounds.
#[derive(Debug, Default)]
struct Memory {
    /// The last view confirmed with ReadIndex, and the applied index noted before the read.
    view: Option<(u64, View)>,
    /// Container id -> its probes.
    probes: BTreeMap<String, Probed>,
    /// Networks known to exist.
    networks: BTreeSet<String>,
    /// Images being fetched now.
    fetching: Arc<Mutex<BTreeSet<String>>>,
    /// Image -> when its last fetch failed.
    failed: Arc<Mutex<BTreeMap<String, Instant>>>,
}

impl Launch {
    /// The reconciler of this server: runs until the process ends.
    pub async fn serve(self: Arc<Self>) {
        let mut memory = Memory::default();
        let mut raft = self.cluster.handle().watch();
        loop {
            // The applied index the round's view is read at (or after).
            let seen = raft.borrow_and_update().applied;
            let busy = self.round(&mut memory).await;
            // Wait for the next round, or for a new entry applied here (at once if one was
            // applied during the round): woken by Raft's watch, not a poll.
            let pause = if busy { BUSY_ROUND } else { ROUND };
            tokio::select! {
                r = raft.wait_for(|n| n.applied != seen) => if r.is_err() { return }, // Raft stopped
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One round; whether something is on its way (a container starting, waiting for its
    /// image, or just acted on).
    async fn round(self: &Arc<Self>, memory: &mut Memory) -> bool {
        let me = self.me();
        let mut report = ServerReport {
            server: me.clone(),
            engine: None,
            fresh: false,
            containers: Vec::new(),
            problems: BTreeMap::new(),
        };
        let engine = match self.engine().await {
            Ok(e) => e,
            Err(e) => {
                report.engine = Some(e);
                self.send_report(report).await;
                return false;
            }
        };
        let origin = self.origin();
        let mut observed = match containers::observe_all(&engine, &origin).await {
            Ok(o) => o,
            Err(e) => {
                self.engine_failed().await;
                report.engine = Some(e.to_string());
                self.send_report(report).await;
                return false;
            }
        };
        // The last confirmed view, if this server applied nothing since it was read and it
        // wants nothing done here: then this round acts on nothing, so it needs no ReadIndex.
        // Anything to do (a container to create, start, replace or remove) is done only on a
        // view confirmed this round.
        let applied = self.cluster.handle().watch().borrow().applied;
        let quiet = memory
            .view
            .as_ref()
            .filter(|(at, v)| *at == applied && !wants_action(v, &observed))
            .map(|(_, v)| v.clone());
        let confirmed = quiet.is_none();
        let view = match quiet {
            Some(v) => Some(v),
            None => {
                let who = me.clone();
                let read = tokio::time::timeout(
                    READ_LIMIT,
                    self.cluster
                        .handle()
                        .read(move |m: &crate::cluster::ClusterMachine| view_of(&m.state, &who)),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .filter(|v| v.known);
                memory.view = read.clone().map(|v| (applied, v));
                read
            }
        };
        let mut acted = false;
        if let Some(view) = view.as_ref().filter(|_| confirmed) {
            report.fresh = true;
            for stack in &view.stacks {
                let obs = observed.get(&stack.name).cloned().unwrap_or_default();
                let publish = view.address.unwrap_or(containers::PUBLISH_IP);
                acted |= self
                    .converge(&engine, stack, &obs, publish, memory, &mut report)
                    .await;
            }
            if acted {
                if let Ok(o) = containers::observe_all(&engine, &origin).await {
                    observed = o;
                }
            }
        }
        let known: Option<BTreeSet<&str>> = view
            .as_ref()
            .map(|v| v.stacks.iter().map(|s| s.name.as_str()).collect());
        let listed: Vec<(&str, &ObservedContainer)> = observed
            .iter()
            .filter(|(s, _)| known.as_ref().is_none_or(|k| k.contains(s.as_str())))
            .flat_map(|(s, list)| list.iter().map(move |o| (s.as_str(), o)))
            .collect();
        report.containers = probe_all(&listed, memory).await;
        let busy = acted
            || !report.problems.is_empty()
            || report
                .containers
                .iter()
                .any(|c| c.health.starts_with("starting"));
        self.send_report(report).await;
        busy
    }

    /// Converge one stack; whether anything was done.
    async fn converge(
        self: &Arc<Self>,
        engine: &Engine,
        stack: &StackView,
        observed: &[ObservedContainer],
        publish: IpAddr,
        memory: &mut Memory,
        report: &mut ServerReport,
    ) -> bool {
        let desired: &[DesiredContainer] = if stack.disabled { &[] } else { &stack.mine };
        let mut diff = reconcile::diff(desired, observed);
        // Containers whose image is not here yet wait for it: a built image is fetched from
        // a server holding it, a named one pulled (where a registry is reachable).
        let present = crate::images::stack_images(engine, &stack.name)
            .await
            .unwrap_or_default();
        let mut waiting = BTreeMap::new();
        for d in diff
            .create
            .iter()
            .chain(diff.replace.iter().map(|(_, d)| d))
        {
            let why = match &d.image {
                ImageSource::Build { tag, .. } if !present.contains(tag) => Some(format!(
                    "waiting for image {tag} ({})",
                    self.fetch_image(stack, tag, memory)
                )),
                ImageSource::Image(name)
                    if !image::image_exists(engine, name).await.unwrap_or(false) =>
                {
                    Some(format!(
                        "waiting for image {name} ({})",
                        self.pull_image(engine, name, memory)
                    ))
                }
                _ => None,
            };
            if let Some(why) = why {
                waiting.insert(d.slice.clone(), why);
            }
        }
        for (slice, why) in &waiting {
            report.problems.insert(slice.0.clone(), why.clone());
        }
        diff.create.retain(|d| !waiting.contains_key(&d.slice));
        diff.replace
            .retain(|(_, d)| !waiting.contains_key(&d.slice));
        let acts = !diff.create.is_empty()
            || !diff.replace.is_empty()
            || !diff.start.is_empty()
            || !diff.remove.is_empty();
        if !acts {
            return false;
        }
        if (!diff.create.is_empty() || !diff.replace.is_empty())
            && !memory.networks.contains(&stack.name)
        {
            match network::ensure_network(engine, &stack.name, &self.origin()).await {
                Ok(_) => {
                    memory.networks.insert(stack.name.clone());
                }
                Err(e) => {
                    for d in &diff.create {
                        report.problems.insert(d.slice.0.clone(), e.to_string());
                    }
                    return false;
                }
            }
        }
        let name = stack.name.clone();
        let log = move |line: &str| tracing::info!(stack = %name, "{line}");
        let converger = Converger::new(
            engine,
            self.origin().network_name(&stack.name),
            stack.meta.clone(),
            Duration::from_secs(60),
            &log,
        )
        .publish_on(publish)
        .made_by(self.origin());
        let started = converger.start_now(&diff).await;
        for (slice, why) in started.failed {
            tracing::warn!(stack = %stack.name, %slice, "{why}");
            report.problems.insert(slice.0, why);
        }
        // Only a fresh view gets here: what it does not want goes.
        let removals = diff.remove.iter().map(|o| async move {
            tracing::info!(stack = %stack.name, "stopping {}", o.name);
            (o, containers::stop_and_remove(engine, &o.id, 10).await)
        });
        for (o, r) in futures_util::future::join_all(removals).await {
            if let Err(e) = r {
                report.problems.insert(o.slice.0.clone(), e.to_string());
            }
        }
        true
    }

    /// Start fetching image `tag` of `stack` from a server holding it, unless a fetch runs or
    /// failed just now; says where it comes from.
    fn fetch_image(self: &Arc<Self>, stack: &StackView, tag: &str, memory: &Memory) -> String {
        let me = self.me();
        let holders: Vec<String> = stack
            .holders
            .get(tag)
            .map(|h| h.iter().map(|s| s.0.clone()).filter(|s| *s != me).collect())
            .unwrap_or_default();
        if holders.is_empty() {
            return "no server is known to hold it".to_owned();
        }
        let said = format!("fetching from {}", holders.join(" or "));
        if lock(&memory.fetching).contains(tag) {
            return said;
        }
        if lock(&memory.failed)
            .get(tag)
            .is_some_and(|t| t.elapsed() < FETCH_BACKOFF)
        {
            return format!("{said}: the last try failed, trying again shortly");
        }
        lock(&memory.fetching).insert(tag.to_owned());
        let (this, tag) = (self.clone(), tag.to_owned());
        let (fetching, failed) = (memory.fetching.clone(), memory.failed.clone());
        tokio::spawn(async move {
            let mut ok = false;
            for h in &holders {
                let req = LaunchRequest::SendImages {
                    images: vec![tag.clone()],
                    to: me.clone(),
                };
                match this.ask(h, req, FETCH_LIMIT).await {
                    Ok(LaunchAnswer::Sent { bytes, .. }) => {
                        tracing::info!(image = %tag, from = %h, bytes, "image fetched");
                        ok = true;
                        break;
                    }
                    Ok(other) => tracing::warn!(image = %tag, from = %h, "not fetched: {other:?}"),
                    Err(e) => tracing::warn!(image = %tag, from = %h, "not fetched: {e}"),
                }
            }
            if !ok {
                lock(&failed).insert(tag.clone(), Instant::now());
            }
            lock(&fetching).remove(&tag);
        });
        said
    }

    /// Start pulling a named image unless a pull runs or failed just now; says how it goes.
    fn pull_image(self: &Arc<Self>, engine: &Engine, name: &str, memory: &Memory) -> String {
        if lock(&memory.fetching).contains(name) {
            return "pulling".to_owned();
        }
        if let Some(t) = lock(&memory.failed).get(name) {
            if t.elapsed() < PULL_BACKOFF {
                return "the last pull failed: is a registry reachable from this server? \
                        trying again shortly"
                    .to_owned();
            }
        }
        lock(&memory.fetching).insert(name.to_owned());
        let (engine, name) = (engine.clone(), name.to_owned());
        let (fetching, failed) = (memory.fetching.clone(), memory.failed.clone());
        tokio::spawn(async move {
            let source = ImageSource::Image(name.clone());
            let mut quiet = |_: &str| {};
            let dir = std::path::Path::new("/");
            match image::ensure_image(&engine, "", dir, &source, &mut quiet).await {
                Ok(_) => tracing::info!(image = %name, "image pulled"),
                Err(e) => {
                    tracing::warn!(image = %name, "not pulled: {e}");
                    lock(&failed).insert(name.clone(), Instant::now());
                }
            }
            lock(&fetching).remove(&name);
        });
        "pulling".to_owned()
    }

    async fn send_report(&self, report: ServerReport) {
        if let Err(e) = self
            .ask_leader_once(LaunchRequest::Report(report), Duration::from_secs(2))
            .await
        {
            tracing::debug!("report not delivered: {e}");
        }
    }

    /// One attempt at the leader (reports are sent again next round anyway).
    async fn ask_leader_once(
        &self,
        req: LaunchRequest,
        limit: Duration,
    ) -> Result<LaunchAnswer, String> {
        let leader = self.cluster.handle().watch().borrow().leader;
        let leader = leader.ok_or("no leader")?;
        self.ask(&self.cluster.name_of(leader), req, limit).await
    }
}

/// Probe every running container that has something to probe, concurrently, and build the
/// report's rows.
async fn probe_all(
    listed: &[(&str, &ObservedContainer)],
    memory: &mut Memory,
) -> Vec<ContainerReport> {
    let probes = listed.iter().map(|(_, o)| async move {
        if o.state != RunState::Running {
            return None;
        }
        let (addr, probe, timeout) = target_of_observed(o).effective_probe()?;
        Some(health::probe(addr, &probe, timeout).await)
    });
    let results = futures_util::future::join_all(probes).await;
    let alive: BTreeSet<&str> = listed.iter().map(|(_, o)| o.id.as_str()).collect();
    memory.probes.retain(|id, _| alive.contains(id.as_str()));
    let mut out = Vec::new();
    for ((stack, o), result) in listed.iter().zip(results) {
        let retries = o.health.as_ref().map(|h| h.retries).unwrap_or(3);
        let health = match result {
            None if o.state == RunState::Running => "none".to_owned(),
            None => "-".to_owned(),
            Some(r) => {
                let p = memory.probes.entry(o.id.clone()).or_default();
                match r {
                    Ok(()) => {
                        p.passes += 1;
                        p.fails_in_row = 0;
                        p.last_error = None;
                    }
                    Err(e) => {
                        p.fails_in_row += 1;
                        p.last_error = Some(e.to_string());
                    }
                }
                p.word(retries)
            }
        };
        out.push(ContainerReport {
            stack: (*stack).to_owned(),
            node: o.node.clone(),
            kind: o.kind.to_string(),
            replica: o.replica,
            revision: o.revision,
            slice: o.slice.0.clone(),
            id: o.id.clone(),
            name: o.name.clone(),
            state: match o.state {
                RunState::Running => "running",
                RunState::Stopped => "stopped",
            }
            .to_owned(),
            status: o.status.clone(),
            health,
            address: o.ports.first().and_then(|p| {
                let hp = o.host_ports.get(p)?;
                let ip = o.publish_ip.unwrap_or(containers::PUBLISH_IP);
                Some(std::net::SocketAddr::new(ip, *hp).to_string())
            }),
            image: o.image.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_starting_until_a_probe_passes_then_unhealthy_after_retries_failures() {
        let mut p = Probed::default();
        assert_eq!(p.word(3), "healthy", "nothing failed yet");
        p.fails_in_row = 1;
        p.last_error = Some("refused".into());
        assert_eq!(p.word(3), "starting (last probe: refused)");
        p.passes = 1;
        assert_eq!(
            p.word(3),
            "healthy",
            "one failure after passing is not enough"
        );
        p.fails_in_row = 3;
        assert_eq!(p.word(3), "unhealthy: refused");
    }
}
