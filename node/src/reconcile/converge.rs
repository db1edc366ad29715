//! The converging shell: executes a [`Diff`] on the local Docker engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::diff::{Diff, NodeMeta, ObservedContainer};
use crate::docker::{self, containers, DockerError, Engine, Origin};
use crate::health::{self, Target};
use crate::types::{DesiredContainer, Kind, SliceId};

/// Why converging failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Docker refused something.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A new container exited or crash-loops; the new containers were removed.
    #[error(
        "{slice} {why}; the new containers were removed and the running ones left as they were"
    )]
    Crashed {
        /// The replica.
        slice: SliceId,
        /// What happened, with its last output.
        why: String,
    },
    /// New replicas did not get healthy in time; they were removed again.
    #[error("not healthy within {waited_s} s, so the new containers were removed and the running ones left as they were: {}", .failures.join("; "))]
    Unhealthy {
        /// How long it waited.
        waited_s: u64,
        /// One line per replica that failed.
        failures: Vec<String>,
    },
}

/// How often new containers are checked for a crash while they are waited on.
const CRASH_POLL: Duration = Duration::from_millis(300);

/// What [`Converger::bring_up`] did.
#[derive(Debug, Clone, Default)]
pub struct UpReport {
    /// Containers created now: slice -> container id.
    pub created: BTreeMap<SliceId, String>,
    /// Containers started now (they existed, stopped).
    pub started: BTreeSet<SliceId>,
    /// Every desired replica that passed a probe (new and kept).
    pub healthy: BTreeSet<SliceId>,
    /// Kept replicas that did not pass a probe in time: slice -> last failure.
    pub unhealthy_kept: BTreeMap<SliceId, String>,
}

/// Executes diffs for one stack on one engine.
pub struct Converger<'a> {
    engine: &'a Engine,
    network: String,
    /// Node -> what is recorded on its containers beside the shared labels.
    meta: BTreeMap<String, NodeMeta>,
    /// How long new replicas may take to get healthy.
    health_timeout: Duration,
    /// Where ports are published (and probed).
    publish_ip: IpAddr,
    /// Who its containers are made by (their name and `quarry.origin` label).
    origin: Origin,
    /// Where progress lines go.
    log: &'a (dyn Fn(&str) + Sync),
}

impl std::fmt::Debug for Converger<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converger")
            .field("network", &self.network)
            .field("health_timeout", &self.health_timeout)
            .finish_non_exhaustive()
    }
}

/// The address the host reaches a replica's main port on.
fn main_addr(ports: &[u16], host_ports: &BTreeMap<u16, u16>, ip: IpAddr) -> Option<SocketAddr> {
    let main = ports.first()?;
    let host = host_ports.get(main)?;
    Some(SocketAddr::new(ip, *host))
}

/// The probe target of a desired container whose ports are published on `ip`.
pub fn target_of_desired(d: &DesiredContainer, ip: IpAddr) -> Target {
    let host_ports = d
        .placement
        .as_ref()
        .map(|p| p.host_ports.clone())
        .unwrap_or_default();
    Target {
        slice: d.slice.clone(),
        addr: main_addr(&d.ports, &host_ports, ip),
        health: d.health.clone(),
    }
}

/// The probe target of an observed container, from its labels and port bindings.
pub fn target_of_observed(o: &ObservedContainer) -> Target {
    Target {
        slice: o.slice.clone(),
        addr: main_addr(
            &o.ports,
            &o.host_ports,
            o.publish_ip.unwrap_or(containers::PUBLISH_IP),
        ),
        health: o.health.clone(),
    }
}

/// What [`Converger::start_now`] did, container by container (it goes on past failures).
#[derive(Debug, Clone, Default)]
pub struct StartReport {
    /// Containers created now: slice -> container id.
    pub created: BTreeMap<SliceId, String>,
    /// Containers started now (they existed, stopped).
    pub started: BTreeSet<SliceId>,
    /// Containers that could not be replaced, created or started: slice -> why.
    pub failed: BTreeMap<SliceId, String>,
}

impl<'a> Converger<'a> {
    /// A converger for one stack's network.
    pub fn new(
        engine: &'a Engine,
        network: String,
        meta: BTreeMap<String, NodeMeta>,
        health_timeout: Duration,
        log: &'a (dyn Fn(&str) + Sync),
    ) -> Self {
        Converger {
            engine,
            network,
            meta,
            health_timeout,
            publish_ip: containers::PUBLISH_IP,
            origin: Origin::Local,
            log,
        }
    }

    /// Make containers as `origin`'s (default: [`Origin::Local`], `quarry start`'s).
    pub fn made_by(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Publish ports on `ip` (and probe them there) instead of loopback: a server of the
    /// cluster publishes on its cluster address.
    pub fn publish_on(mut self, ip: IpAddr) -> Self {
        self.publish_ip = ip;
        self
    }

    /// The cluster's step: replace, create and start what the diff asks (services first),
    /// without waiting for health and without rolling back: a container that fails is
    /// reported and tried again on the next round, while health is watched (and reported)
    /// on its own. Removes nothing that is merely undesired.
    pub async fn start_now(&self, diff: &Diff) -> StartReport {
        let mut report = StartReport::default();
        let mut create: Vec<&DesiredContainer> = diff.create.iter().collect();
        for (old, new) in &diff.replace {
            (self.log)(&format!("replacing {}", old.name));
            match containers::stop_and_remove(self.engine, &old.id, 10).await {
                Ok(()) => create.push(new),
                Err(e) => {
                    report.failed.insert(new.slice.clone(), e.to_string());
                }
            }
        }
        create.sort_by_key(|d| (d.kind != Kind::Service, d.node.clone(), d.replica));
        // Services first, then the rest; within each group all at once (a web replica does
        // not wait for its sibling's `docker create`).
        let (services, others): (Vec<&DesiredContainer>, Vec<&DesiredContainer>) =
            create.into_iter().partition(|d| d.kind == Kind::Service);
        for group in [services, others] {
            let runs = group.into_iter().map(|d| async move {
                (self.log)(&format!("creating {}", self.origin.container_name(d)));
                let meta = self.meta.get(&d.node).cloned().unwrap_or_default();
                let made = containers::create(
                    self.engine,
                    &self.network,
                    d,
                    &meta,
                    self.publish_ip,
                    &self.origin,
                )
                .await;
                let started = match made {
                    Ok(id) => match containers::start(self.engine, &id).await {
                        Ok(()) => Ok(id),
                        Err(e) => {
                            // A container that cannot start (its port is taken...) goes, so
                            // the next round creates it afresh.
                            let _ = containers::remove(self.engine, &id).await;
                            Err(e)
                        }
                    },
                    Err(e) => Err(e),
                };
                (d, started)
            });
            for (d, started) in futures_util::future::join_all(runs).await {
                match started {
                    Ok(id) => {
                        report.created.insert(d.slice.clone(), id);
                    }
                    Err(e) => {
                        report.failed.insert(d.slice.clone(), e.to_string());
                    }
                }
            }
        }
        for o in &diff.start {
            (self.log)(&format!("starting {}", o.name));
            match containers::start(self.engine, &o.id).await {
                Ok(()) => {
                    report.started.insert(o.slice.clone());
                }
                Err(e) => {
                    report.failed.insert(o.slice.clone(), e.to_string());
                }
            }
        }
        report
    }

    /// Steps 1–3: replaces, creates and starts what the diff asks, services first, and waits
    /// until the new replicas are healthy. Removes nothing that is merely undesired.
    pub async fn bring_up(
        &self,
        diff: &Diff,
        desired: &[DesiredContainer],
    ) -> Result<UpReport, ReconcileError> {
        let mut report = UpReport::default();
        let result = self.bring_up_inner(diff, desired, &mut report).await;
        if let Err(e) = result {
            for (slice, id) in &report.created {
                (self.log)(&format!("removing {slice} (rollback)"));
                let _ = containers::remove(self.engine, id).await;
            }
            return Err(e);
        }
        Ok(report)
    }

    async fn bring_up_inner(
        &self,
        diff: &Diff,
        desired: &[DesiredContainer],
        report: &mut UpReport,
    ) -> Result<(), ReconcileError> {
        let by_slice: BTreeMap<&SliceId, &DesiredContainer> =
            desired.iter().map(|d| (&d.slice, d)).collect();
        let mut create: Vec<&DesiredContainer> = diff.create.iter().collect();
        for (old, new) in &diff.replace {
            (self.log)(&format!("replacing {}", old.name));
            containers::stop_and_remove(self.engine, &old.id, 10).await?;
            create.push(new);
        }
        let deadline = Instant::now() + self.health_timeout;
        for services in [true, false] {
            let wanted = |k: Kind| (k == Kind::Service) == services;
            let mut targets = Vec::new();
            for d in create.iter().filter(|d| wanted(d.kind)) {
                let name = self.origin.container_name(d);
                (self.log)(&format!("creating {name}"));
                let meta = self.meta.get(&d.node).cloned().unwrap_or_default();
                let id = containers::create(
                    self.engine,
                    &self.network,
                    d,
                    &meta,
                    self.publish_ip,
                    &self.origin,
                )
                .await?;
                report.created.insert(d.slice.clone(), id.clone());
                containers::start(self.engine, &id).await?;
                targets.push(target_of_desired(d, self.publish_ip));
            }
            for o in diff.start.iter().filter(|o| wanted(o.kind)) {
                (self.log)(&format!("starting {}", o.name));
                docker::containers::start(self.engine, &o.id).await?;
                report.started.insert(o.slice.clone());
                let d = by_slice.get(&o.slice);
                targets.push(match d {
                    Some(d) => target_of_desired(d, self.publish_ip),
                    None => target_of_observed(o),
                });
            }
            // Wait for health, but stop at once if a new container exits or crash-loops.
            // (Only containers created now: a restarted old one carries its past restarts.)
            let watched: Vec<(SliceId, String)> = report
                .created
                .iter()
                .map(|(s, id)| (s.clone(), id.clone()))
                .collect();
            let watch = async {
                loop {
                    tokio::time::sleep(CRASH_POLL).await;
                    for (slice, id) in &watched {
                        if let Some(why) = containers::crash_report(self.engine, id).await? {
                            return Err::<(), ReconcileError>(ReconcileError::Crashed {
                                slice: slice.clone(),
                                why,
                            });
                        }
                    }
                }
            };
            let outcomes = tokio::select! {
                outcomes = health::wait_healthy(&targets, deadline) => outcomes,
                crashed = watch => {
                    crashed?;
                    Vec::new()
                }
            };
            let failures: Vec<String> = outcomes
                .iter()
                .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.slice)))
                .collect();
            if !failures.is_empty() {
                return Err(ReconcileError::Unhealthy {
                    waited_s: self.health_timeout.as_secs(),
                    failures,
                });
            }
            for o in outcomes {
                (self.log)(&format!("healthy {}", o.slice));
                report.healthy.insert(o.slice);
            }
        }
        // Kept replicas: probe them so the router only gets what answers.
        let kept: Vec<Target> = diff
            .keep
            .iter()
            .map(|o| match by_slice.get(&o.slice) {
                Some(d) => target_of_desired(d, self.publish_ip),
                None => target_of_observed(o),
            })
            .collect();
        let kept_deadline = Instant::now() + self.health_timeout.min(Duration::from_secs(10));
        for o in health::wait_healthy(&kept, kept_deadline).await {
            match o.result {
                Ok(()) => {
                    report.healthy.insert(o.slice);
                }
                Err(e) => {
                    report.unhealthy_kept.insert(o.slice, e);
                }
            }
        }
        Ok(())
    }

    /// Step 5: stops and removes every container the diff no longer wants, concurrently.
    pub async fn retire(&self, diff: &Diff) -> Result<(), ReconcileError> {
        let removals = diff.remove.iter().map(|o| async move {
            (self.log)(&format!("stopping {}", o.name));
            containers::stop_and_remove(self.engine, &o.id, 10).await
        });
        for r in futures_util::future::join_all(removals).await {
            r?;
        }
        Ok(())
    }
}
