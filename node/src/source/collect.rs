//! Disk collection: which pushed sources (`data/sources/HASH.tar`), build directories
//! (`data/stacks/STACK/build/HASH/`) and unpack trees (`data/stacks/.unpack-*`) a server
//! keeps, as a pure function ([`plan`]), and the shell that looks and removes ([`collect`]).
//!
//! # What is kept
//!
//! - For each stack, its **current and previous revision's sources** ([`KEEP_REVISIONS`]):
//!   what a rollback needs. The committed state names the current source (and, while a
//!   deploy rolls out, the previous one); once a deploy is through the state forgets the
//!   previous, so each server keeps a small history of the sources it saw as each stack's
//!   current ([`History`], `data/stacks/.history.json`), newest last.
//! - Anything younger than [`GRACE`]: a source is pushed, and a build directory unpacked,
//!   before its deploy commits (a deploy in flight, here or on the leader, names sources the
//!   state does not know yet).
//! - An `.unpack-*` older than this process goes at once (a crash between unpacking and
//!   moving into place left it: no deploy of this process made it); a younger one only once
//!   it is older than [`GRACE`].
//!
//! Everything else goes. The collection runs at start and whenever the stacks' committed
//! sources change (each deploy, retire or rollback), with a view confirmed by ReadIndex: a
//! server that has not caught up never collects from an empty state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{SourceHash, SourceStore};

/// How many revisions' sources of each stack are kept: the current and the previous.
pub const KEEP_REVISIONS: usize = 2;
/// How old an unnamed source, build directory or unpack tree must be before it goes: far
/// longer than a deploy takes between its upload and its commit (builds and transfers have
/// 10 minutes each).
pub const GRACE: Duration = Duration::from_secs(3600);

/// The sources each stack had as its current, as this server saw them, newest last.
pub type History = BTreeMap<String, Vec<SourceHash>>;

/// What is on the disk, and what the state names.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Per stack, the sources the committed state names: its current source first, then the
    /// previous revision's while a deploy rolls out.
    pub named: BTreeMap<String, Vec<SourceHash>>,
    /// The history as saved.
    pub history: History,
    /// The stored sources and their age.
    pub sources: Vec<(SourceHash, Duration)>,
    /// The build directories: (stack, directory name, age).
    pub build_dirs: Vec<(String, String, Duration)>,
    /// The `.unpack-*` trees: (name, age).
    pub unpacks: Vec<(String, Duration)>,
    /// How long this process has run (what is older was left by an earlier one).
    pub uptime: Duration,
}

/// What to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collection {
    /// The history to save.
    pub history: History,
    /// Sources to remove.
    pub sources: Vec<SourceHash>,
    /// Build directories to remove: (stack, directory name).
    pub build_dirs: Vec<(String, String)>,
    /// Unpack trees to remove.
    pub unpacks: Vec<String>,
}

/// What to keep and remove (see the module docs).
pub fn plan(i: &Inputs) -> Collection {
    let mut history = i.history.clone();
    for (stack, named) in &i.named {
        let Some(current) = named.first() else {
            continue;
        };
        let h = history.entry(stack.clone()).or_default();
        if h.last() != Some(current) {
            h.retain(|s| s != current);
            h.push(current.clone());
        }
        let drop = h.len().saturating_sub(KEEP_REVISIONS);
        h.drain(..drop);
    }
    let mut keep: BTreeMap<&str, BTreeSet<&SourceHash>> = BTreeMap::new();
    for (stack, h) in &history {
        keep.entry(stack).or_default().extend(h);
    }
    for (stack, named) in &i.named {
        keep.entry(stack).or_default().extend(named);
    }
    let all: BTreeSet<&SourceHash> = keep.values().flatten().copied().collect();
    let old = |age: &Duration| *age >= GRACE;
    Collection {
        sources: i
            .sources
            .iter()
            .filter(|(h, age)| !all.contains(h) && old(age))
            .map(|(h, _)| h.clone())
            .collect(),
        build_dirs: i
            .build_dirs
            .iter()
            .filter(|(stack, dir, age)| {
                let kept = keep
                    .get(stack.as_str())
                    .is_some_and(|k| k.iter().any(|h| h.as_str() == dir));
                !kept && old(age)
            })
            .map(|(s, d, _)| (s.clone(), d.clone()))
            .collect(),
        unpacks: i
            .unpacks
            .iter()
            .filter(|(_, age)| *age > i.uptime || old(age))
            .map(|(n, _)| n.clone())
            .collect(),
        history,
    }
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Sources removed.
    pub sources: usize,
    /// Build directories removed.
    pub build_dirs: usize,
    /// Unpack trees removed.
    pub unpacks: usize,
    /// Bytes freed (what the removed files held).
    pub bytes: u64,
}

fn age(path: &Path, now: SystemTime) -> Duration {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default()
}

fn size(path: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| size(&e.path()))
        .sum()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// The file the history is kept in.
fn history_path(data: &Path) -> PathBuf {
    data.join("stacks").join(".history.json")
}

/// Look at `data` (the store's and the stacks' directories), plan with what the state
/// `named`, remove what the plan says and save the history. Errors removing one thing are
/// logged and the rest goes on (a collection never fails a deploy).
pub fn collect(
    data: &Path,
    store: &SourceStore,
    named: BTreeMap<String, Vec<SourceHash>>,
    uptime: Duration,
) -> Collected {
    let now = SystemTime::now();
    let stacks = data.join("stacks");
    let history: History = std::fs::read(history_path(data))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let sources = store
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let a = age(&store.path(&h), now);
            (h, a)
        })
        .collect();
    let mut build_dirs = Vec::new();
    let mut unpacks = Vec::new();
    for name in dir_names(&stacks) {
        if name.starts_with(".unpack-") {
            let a = age(&stacks.join(&name), now);
            unpacks.push((name, a));
        } else if !name.starts_with('.') {
            let build = stacks.join(&name).join("build");
            for dir in dir_names(&build) {
                let a = age(&build.join(&dir), now);
                build_dirs.push((name.clone(), dir, a));
            }
        }
    }
    let c = plan(&Inputs {
        named,
        history,
        sources,
        build_dirs,
        unpacks,
        uptime,
    });
    let mut done = Collected::default();
    let mut remove = |path: PathBuf, count: &mut usize| {
        let bytes = size(&path);
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => {
                *count += 1;
                done.bytes += bytes;
            }
            Err(e) => tracing::warn!(path = %path.display(), "not collected: {e}"),
        }
    };
    let (mut s, mut b, mut u) = (0, 0, 0);
    for h in &c.sources {
        remove(store.path(h), &mut s);
    }
    for (stack, dir) in &c.build_dirs {
        remove(stacks.join(stack).join("build").join(dir), &mut b);
    }
    for name in &c.unpacks {
        remove(stacks.join(name), &mut u);
    }
    (done.sources, done.build_dirs, done.unpacks) = (s, b, u);
    if std::fs::create_dir_all(&stacks).is_ok() {
        let tmp = stacks.join(".history.json.tmp");
        let saved = serde_json::to_vec(&c.history)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, history_path(data)));
        if let Err(e) = saved {
            tracing::warn!("the sources' history is not saved: {e}");
        }
    }
    done
}

/// The free space of the filesystem holding `path`, in bytes (what an unprivileged writer
/// may use).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether a deploy may store and build on the disk of `path`: refused, saying why, while
/// less than `min_free` bytes are free (Raft's log and snapshots need the room more than a
/// new revision does).
pub fn check_free(path: &Path, min_free: u64) -> Result<(), String> {
    let free =
        free_bytes(path).map_err(|e| format!("the free space of {}: {e}", path.display()))?;
    refuse_below(free, min_free, path)
}

fn refuse_below(free: u64, min_free: u64, path: &Path) -> Result<(), String> {
    if free >= min_free {
        return Ok(());
    }
    Err(format!(
        "the data disk ({}) has {} free, less than the {} a deploy needs \
         (min_free_disk in quarryd.toml): free some space (old images: `docker image prune`); \
         nothing was deployed or changed",
        path.display(),
        crate::spec::units::human_size(free),
        crate::spec::units::human_size(min_free)
    ))
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;
