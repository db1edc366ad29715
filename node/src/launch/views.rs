//! The leader's views: `ps` / `stacks` from the committed state and the servers' reports.

use std::collections::{BTreeMap, BTreeSet};

use super::leader::FRESH;
use super::protocol::{PsRow, PsView, StackEntry};
use super::{lock, Launch};
use crate::cluster::{ClusterState, Refusal};

impl Launch {
    /// `quarry ps`: every desired container of the stack (or all stacks) with what its
    /// server reports, and the reported containers no longer desired.
    pub(super) async fn ps(&self, stack: Option<String>) -> Result<PsView, String> {
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
                    Some(p.address(*hp))
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
    pub(super) async fn stacks(&self) -> Result<Vec<StackEntry>, String> {
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
                last_failure: failures.get(&name).cloned().or(rec.failed.clone()),
            });
        }
        Ok(out)
    }
}
