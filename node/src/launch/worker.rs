//! What any server does for a deploy when asked: fetch and unpack a source, build images, send
//! images to another server, list and remove a stack's images.

use std::path::PathBuf;

use super::protocol::BuildJob;
use super::{Launch, DIAL_TIMEOUT};
use crate::docker::image::{self, ImageOutcome};
use crate::images::{self, Cancel};
use crate::rpc::Lane;
use crate::source::{self, SourceHash};
use crate::types::ImageSource;

impl Launch {
    /// Make source `hash` present in the local store: it is, or one of `holders` sends it.
    pub(super) async fn ensure_source(
        &self,
        hash: &SourceHash,
        holders: &[String],
    ) -> Result<(), String> {
        if self.sources.has(hash) {
            let (store, h) = (self.sources.clone(), hash.clone());
            let ok = tokio::task::spawn_blocking(move || store.get(&h).is_ok())
                .await
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
        }
        let me = self.me();
        let mut why = Vec::new();
        for h in holders.iter().filter(|h| **h != me) {
            match self.fetch_source(h, hash).await {
                Ok(()) => {
                    tracing::info!(source = hash.short(), from = %h, "source fetched");
                    return Ok(());
                }
                Err(e) => why.push(format!("{h}: {e}")),
            }
        }
        Err(format!(
            "source {} is not stored here and no server sent it ({}): deploy again",
            hash.short(),
            if why.is_empty() {
                "no other server holds it".to_owned()
            } else {
                why.join("; ")
            }
        ))
    }

    async fn fetch_source(&self, from: &str, hash: &SourceHash) -> Result<(), String> {
        let addr = self.addr_of(from).ok_or("not in the cluster")?;
        let mut conn = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.cluster.dialer().requests(addr, Lane::Bulk),
        )
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
        let bytes = source::wire::fetch(&mut conn, hash)
            .await
            .map_err(|e| e.to_string())?;
        let (store, h) = (self.sources.clone(), hash.clone());
        tokio::task::spawn_blocking(move || store.put(&h, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Store a copy of a local source on server `to` (Bulk lane).
    pub(super) async fn push_source(&self, to: &str, hash: &SourceHash) -> Result<(), String> {
        let addr = self.addr_of(to).ok_or("not in the cluster")?;
        let (store, h) = (self.sources.clone(), hash.clone());
        let bytes = tokio::task::spawn_blocking(move || store.get(&h))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let tar = source::SourceTar {
            hash: hash.clone(),
            bytes,
        };
        let mut conn = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.cluster.dialer().requests(addr, Lane::Bulk),
        )
        .await
        .map_err(|_| format!("{to} did not answer"))?
        .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            source::wire::push(&mut conn, &tar),
        )
        .await
        .map_err(|_| format!("{to} did not store the source within 60 s"))?
        .map_err(|e| e.to_string())
    }

    /// Where a stack's source is unpacked for building.
    pub(super) fn build_dir(&self, stack: &str, hash: &SourceHash) -> PathBuf {
        self.data
            .join("stacks")
            .join(stack)
            .join("build")
            .join(hash.as_str())
    }

    /// Unpack a stored source into a new directory under `data/stacks` (a unique name).
    pub(super) async fn unpack_fresh(&self, hash: &SourceHash) -> Result<PathBuf, String> {
        let tmp = self.data.join("stacks").join(format!(
            ".unpack-{}-{}",
            hash.short(),
            hex::encode(&crate::pki::random_bytes()[..6])
        ));
        let (store, h, dest) = (self.sources.clone(), hash.clone(), tmp.clone());
        tokio::task::spawn_blocking(move || store.unpack(&h, &dest))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(tmp)
    }

    /// Move an unpacked tree to the stack's build directory for `hash` (kept if it is already
    /// there: the same hash is the same tree).
    pub(super) fn settle_build_dir(
        &self,
        unpacked: PathBuf,
        stack: &str,
        hash: &SourceHash,
    ) -> Result<PathBuf, String> {
        let dir = self.build_dir(stack, hash);
        if dir.is_dir() {
            let _ = std::fs::remove_dir_all(&unpacked);
            return Ok(dir);
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        std::fs::rename(&unpacked, &dir)
            .map_err(|e| format!("moving the source to {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The stack's build directory for `hash`, unpacked from the store if needed.
    async fn unpacked(&self, stack: &str, hash: &SourceHash) -> Result<PathBuf, String> {
        let dir = self.build_dir(stack, hash);
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.unpack_fresh(hash).await?;
        self.settle_build_dir(tmp, stack, hash)
    }

    /// Build a job's images on this server's engine (skipping those it has); every line of
    /// build output goes to `say` as it comes.
    pub(super) async fn build_here(
        &self,
        job: BuildJob,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Vec<String>, String> {
        self.ensure_source(&job.source, &job.holders).await?;
        let dir = self.unpacked(&job.stack, &job.source).await?;
        let engine = self.engine().await?;
        // The images build side by side (the engine shares the common layers).
        let builds = job.images.iter().map(|(tag, build)| {
            let (engine, dir, stack) = (&engine, &dir, &job.stack);
            async move {
                let src = ImageSource::Build {
                    dir: build.clone(),
                    digest: String::new(),
                    tag: tag.clone(),
                };
                let mut log = |l: &str| say(format!("[{build}] {l}"));
                let outcome = image::ensure_image(engine, stack, dir, &src, &mut log)
                    .await
                    .map_err(|e| format!("on {}: {e}", self.me()))?;
                Ok::<_, String>(match outcome {
                    ImageOutcome::Built => format!("built {tag} on {}", self.me()),
                    _ => format!("{tag} was already on {}", self.me()),
                })
            }
        });
        futures_util::future::join_all(builds)
            .await
            .into_iter()
            .collect()
    }

    /// Send images from this server's engine to server `to`; how far it is goes to `say`
    /// about once a second.
    pub(super) async fn send_here(
        &self,
        images: &[String],
        to: &str,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(u64, Vec<String>), String> {
        let engine = self.engine().await?;
        let addr = self
            .addr_of(to)
            .ok_or_else(|| format!("no server {to} in the cluster"))?;
        let mut conn = tokio::time::timeout(
            DIAL_TIMEOUT,
            self.cluster.dialer().requests(addr, Lane::Bulk),
        )
        .await
        .map_err(|_| format!("{to} ({addr}) did not answer"))?
        .map_err(|e| format!("{to}: {e}"))?;
        let mut last = tokio::time::Instant::now();
        let mut progress = |p: images::Progress| {
            if !p.done && last.elapsed() >= std::time::Duration::from_secs(1) {
                last = tokio::time::Instant::now();
                let of = p
                    .estimate
                    .map(|e| format!(" of ~{:.1} MB", e as f64 / 1e6))
                    .unwrap_or_default();
                say(format!("  -> {to}: {:.1} MB{of}", p.sent as f64 / 1e6));
            }
        };
        let report = images::send_images(&engine, images, &mut conn, &mut progress, &Cancel::new())
            .await
            .map_err(|e| format!("sending {} to {to}: {e}", images.join(" ")))?;
        Ok((report.bytes, report.images))
    }

    /// The images this server's engine has of `stack`.
    pub(super) async fn has_images(&self, stack: &str) -> Result<Vec<String>, String> {
        let engine = self.engine().await?;
        images::stack_images(&engine, stack)
            .await
            .map(|s| s.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    /// Remove images from this server's engine.
    pub(super) async fn remove_images(&self, list: &[String]) -> Result<(), String> {
        let engine = self.engine().await?;
        images::remove(&engine, list)
            .await
            .map_err(|e| e.to_string())
    }
}
