//! The leader's views: `ps` / `stacks` from the committed records and the servers' reports
//! (pure: computed by the soft state's owner from its own copy, see [`super::soft`]).

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::protocol::{PsRow, PsView, StackEntry};
use super::soft::{Records, Soft, FRESH};

impl Soft {
    /// `quarry ps`: every desired container of `records` with what its server reports, and
    /// the reported containers no longer desired; `servers` are the cluster's.
    pub(super) fn ps(&self, now: Instant, records: &Records, servers: &[String]) -> PsView {
        let reports = &self.reports;
        let mut rows = Vec::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        for (name, rec) in records {
            for d in &rec.desired {
                let p = d.placement.as_ref();
                let server = p.map(|p| p.server.0.clone()).unwrap_or_default();
                let address = p.and_then(|p| {
                    let hp = p.host_ports.get(d.ports.first()?)?;
                    Some(p.address(*hp))
                });
                let retiring = rec.retiring.contains(&d.slice);
                let fresh = reports
                    .get(&server)
                    .filter(|(at, _)| now.duration_since(*at) <= FRESH);
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
        for (server, (at, r)) in reports {
            if now.duration_since(*at) > FRESH {
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
        let silent = servers
            .iter()
            .filter_map(|s| match reports.get(s) {
                None => Some(format!("{s}: no report yet")),
                Some((at, _)) if now.duration_since(*at) > FRESH => Some(format!(
                    "{s}: last report {}s ago",
                    now.duration_since(*at).as_secs()
                )),
                Some((_, r)) => r.engine.as_ref().map(|e| format!("{s}: {e}")),
            })
            .collect();
        PsView { rows, silent }
    }

    /// `quarry stacks` over `records`.
    pub(super) fn stacks(
        &self,
        now: Instant,
        records: &Records,
        servers: &[String],
    ) -> Vec<StackEntry> {
        let view = self.ps(now, records, servers);
        let (busy, failures) = (&self.busy, &self.failures);
        let mut out = Vec::new();
        for (name, rec) in records {
            let rows: Vec<&PsRow> = view.rows.iter().filter(|r| r.stack == *name).collect();
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
            } else if let Some(id) = busy.get(name) {
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
                last_failure: failures.get(name).cloned().or(rec.failed.clone()),
            });
        }
        out
    }
}
