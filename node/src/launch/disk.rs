//! This server's disk: pushed sources, build directories and unpack trees collected
//! ([`crate::source::collect`]) at start and once the stacks' committed sources change (a
//! deploy committed, retired or rolled back), and deploys refused while the data disk has
//! less free space than `min_free_disk` (quarryd.toml).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Launch;
use crate::cluster::ClusterState;
use crate::source::collect;
use crate::source::SourceHash;

/// How often the committed sources are looked at (a ReadIndex; the collection itself runs
/// only when they changed).
const LOOK: Duration = Duration::from_secs(10);

/// Per stack, the sources the state names: its current, then the previous revision's while
/// a deploy rolls out.
fn named(state: &ClusterState) -> BTreeMap<String, Vec<SourceHash>> {
    state
        .stacks
        .iter()
        .filter_map(|(name, r)| {
            let mut v: Vec<SourceHash> = r.source.iter().cloned().collect();
            if let Some(p) = r.previous.as_ref().and_then(|p| p.source.clone()) {
                v.push(p);
            }
            (!v.is_empty()).then(|| (name.clone(), v))
        })
        .collect()
}

impl Launch {
    /// Collect this server's disk whenever the committed sources change (see the module
    /// docs). Runs until the process ends.
    pub async fn collect_disk(self: Arc<Self>) {
        let started = Instant::now();
        let me = self.me();
        let mut last: Option<BTreeMap<String, Vec<SourceHash>>> = None;
        loop {
            let who = me.clone();
            // Only a confirmed view of a state that knows this server: one that has not
            // caught up never collects from an empty state.
            let now = self
                .cluster
                .read(move |s: &ClusterState| s.servers.contains_key(&who).then(|| named(s)))
                .await;
            if let Ok(Some(named)) = now {
                if last.as_ref() != Some(&named) {
                    let (data, store, uptime) =
                        (self.data.clone(), self.sources.clone(), started.elapsed());
                    let n = named.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        collect::collect(&data, &store, n, uptime)
                    })
                    .await;
                    match done {
                        Ok(c) if c != collect::Collected::default() => tracing::info!(
                            sources = c.sources,
                            build_dirs = c.build_dirs,
                            unpacks = c.unpacks,
                            bytes = c.bytes,
                            "disk collected"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("disk collection: {e}"),
                    }
                    last = Some(named);
                }
            }
            tokio::time::sleep(LOOK).await;
        }
    }

    /// Refuse a deploy while this server's data disk is short of space.
    pub(super) fn check_disk(&self) -> Result<(), String> {
        collect::check_free(&self.data, self.min_free_disk)
            .map_err(|e| format!("on server {}: {e}", self.me()))
    }
}
