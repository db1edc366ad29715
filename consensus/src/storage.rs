//! Durable Raft storage: the log and the hard state in an append-only log engine
//! (raft-engine, TiKV's), the snapshot data in redb.
//!
//! # Layout
//!
//! A node's directory holds `raft-log/`, a raft-engine instance, and `snapshots.redb`.
//!
//! The log engine keeps everything that must change together with the log, in two groups:
//!
//! - the *meta* group holds the hard state (term, vote, commit), the metadata of
//!   the latest snapshot (its index, term and `ConfState`), the applied index, the
//!   configuration of the latest applied conf change with its index
//!   ([`DiskStorage::set_conf_state`]), and the id of the group that holds the log;
//! - the *log* group holds the entries, by index. A received snapshot replaces the whole log,
//!   so the log then moves to a fresh group (the next id) and the old one is cleaned: no
//!   group id is ever reused, and nothing of the old log can come back.
//!
//! A write is one `LogBatch`: one record appended to the engine's current file, checksummed,
//! then one `fdatasync`. A record torn by a crash fails its checksum and is dropped when the
//! engine is opened (raft-engine's `TolerateTailCorruption`), so a batch lands whole or not at
//! all: entries and hard state are never torn apart. The files are preallocated (`fallocate`)
//! and recycled once purged, so a write overwrites allocated blocks: one append costs about
//! one bare fsync of 4 KiB, where a redb commit (several pages, one `fdatasync`) cost about
//! two (see `benches/commit.rs`).
//!
//! redb holds what the log engine does not suit: snapshot data, one value per snapshot, keyed
//! by its index. A snapshot's data is written (and fsynced) *before* the log batch that makes
//! it the snapshot in force, so the metadata never names data that is not on disk; data that
//! no metadata names (a crash between the two writes, or a superseded snapshot) is deleted
//! after the switch or on open.
//!
//! A founding member's storage starts with a snapshot at [`BOOTSTRAP_INDEX`]
//! ([`DiskStorage::bootstrap`]); a joiner's (opened with no voters) starts empty, at 0.
//!
//! # Invariants (checked when the storage is opened; a violation refuses to start)
//!
//! 1. The log is contiguous (raft-engine refuses holes) and starts right after the snapshot:
//!    it holds exactly the indexes `snapshot.index + 1 ..= last`.
//! 2. `snapshot.index <= hard_state.commit <= last`: the hard state never points past the log.
//!    This is the invariant a crash between "write hard state" and "write entries" breaks, and
//!    the reason [`DiskStorage::persist_ready`] writes the `Ready`'s snapshot metadata, entries
//!    and hard state in **one** batch, fsynced before it returns.
//! 3. The snapshot's data is in redb under its index. The snapshot's conf state is the one at
//!    the snapshot's index; the conf state of an applied conf change, if newer, is stored with
//!    its index, which is in the log. On restart raft-rs starts from the newest of the two
//!    ([`DiskStorage::conf_state`]), the node restores the state machine from the snapshot and
//!    replays the committed entries after it, skipping the conf changes at or below that index.
//!
//! The commit index (learnt from a `LightReady`, or from a `Ready` whose hard state moved
//! only the commit index) and the applied index are kept in memory and written with the next
//! write of the hard state (a term or vote change, a snapshot, a compaction, a conf change) or
//! by [`DiskStorage::flush`]; an append of entries alone writes only the log group. Losing
//! them in a crash is safe: a restarted node re-learns its commit index from the leader and
//! re-applies from its snapshot.
//!
//! # Fault injection
//!
//! [`StorageOptions::crash_hook`] is asked before and after each commit whether to "crash"
//! there: the write returns [`StoreError::InjectedCrash`] and the node stops as a process would.
//! [`StorageOptions::unsafe_hard_state_first`] is broken on purpose (hard state in its own
//! write before the entries); it exists so the crash tests can show they catch it.
//!
//! # Several engines in one process
//!
//! raft-engine caches the last block of entries it decoded in a *thread-local*, keyed by file
//! number, offset and length only, so two engines in one process (the tests' in-process
//! clusters, the benchmark) can be served each other's block when their files line up:
//! raft-engine then panics on the wrong index, or hands over entries of another term with no
//! complaint (`tests/storage.rs` shows it). A read whose entries are not this log's (their
//! indexes, and the terms cached here) is therefore done again on a fresh thread, whose cache
//! is empty. quarryd runs one engine per process, where this never happens.
//!
//! Left out: snapshot data larger than memory (the snapshot is one value; the TCP transport
//! streams it in chunks). The log engine caches the entries' locations and terms are cached
//! here; an entry read goes to the engine's file (the page cache, in practice).

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft_engine::{Command, Engine, LogBatch};
use redb::{Database, ReadableDatabase};

use crate::codec::{self, CodecError};

mod disk;
mod fault;
mod read;

use disk::{log_config, Disk, EntryExt, SNAPSHOTS, SNAPSHOT_FILE};
pub use fault::{CrashHook, CrashStage, StorageOptions, WriteKind, WritePoint};

/// The log engine's group of metadata (hard state, snapshot metadata, applied index,
/// configuration, the log's group id).
const META: u64 = 1;
/// The group of a new storage's log; each received snapshot moves the log to the next id.
const FIRST_LOG_GROUP: u64 = 2;
const K_HARD_STATE: &[u8] = b"hard_state";
const K_SNAP_META: &[u8] = b"snapshot_meta";
const K_APPLIED: &[u8] = b"applied";
const K_CONF: &[u8] = b"conf_state";
const K_LOG_GROUP: &[u8] = b"log_group";

/// The file of the storage before the log moved to raft-engine: a directory that holds it is
/// refused rather than started afresh beside it.
const OLD_FILE: &str = "raft.redb";

/// Where a new cluster's log starts: [`DiskStorage::bootstrap`] writes a snapshot at this
/// index, so the log of every founding member starts above it and a node that joins later
/// (whose log is empty) can only catch up through a snapshot.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// A storage failure. Every one of them stops the node: the disk is the node's memory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log engine: {0}")]
    Log(#[from] raft_engine::Error),
    #[error("snapshot store: {0}")]
    Snapshots(#[from] redb::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("raft storage at {path} is inconsistent: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("injected crash at write {seq} ({stage:?})")]
    InjectedCrash { seq: u64, stage: CrashStage },
}

impl StoreError {
    /// Whether the storage is still open elsewhere in this process (a killed node's last
    /// commit finishing on the blocking pool): retry shortly.
    pub fn is_already_open(&self) -> bool {
        matches!(
            self,
            StoreError::Snapshots(redb::Error::DatabaseAlreadyOpen)
        )
    }
}

fn snaps<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Snapshots(e.into())
}

fn other(e: StoreError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

/// raft-rs [`Storage`] on a node's directory: raft-engine for the log, redb for snapshots.
pub struct DiskStorage {
    disk: Arc<Disk>,
    path: PathBuf,
    /// The hard state; its commit may be ahead of the disk (see the module docs).
    hs: HardState,
    snap_meta: SnapshotMetadata,
    /// The log engine group that holds the log.
    group: u64,
    /// `terms[i]` is the term of entry `snap_meta.index + 1 + i`.
    terms: VecDeque<u64>,
    applied: u64,
    /// The configuration after the latest applied conf change, and its index, if that is
    /// newer than the snapshot's.
    conf: Option<(u64, ConfState)>,
    /// Set when raft-rs asked for a snapshot this storage cannot serve yet (too old, or one
    /// whose configuration does not name the recipient); the node takes a fresh one.
    snapshot_wanted: AtomicBool,
    dirty: bool,
    opts: StorageOptions,
    seq: u64,
    /// Committed (fsynced) writes, and entries written, since open.
    writes: u64,
    entries_written: u64,
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("path", &self.path)
            .field("hard_state", &self.hs)
            .field("snapshot_index", &self.snap_meta.index)
            .field("last_index", &self.last())
            .finish()
    }
}

/// A `Ready`'s write, prepared by [`DiskStorage::begin_ready`].
pub struct ReadyWrite {
    disk: Arc<Disk>,
    /// The received snapshot's index and data, stored before the batch.
    snapshot_data: Option<(u64, Vec<u8>)>,
    batch: Option<LogBatch>,
    result: Result<(), StoreError>,
    point: WritePoint,
    snapshot: Option<SnapshotMetadata>,
    group: u64,
    first: Option<u64>,
    terms: Vec<u64>,
    new_hs: HardState,
    hs_written: bool,
}

impl fmt::Debug for ReadyWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyWrite")
            .field("committed", &self.batch.is_none())
            .field("entries", &self.point.entries)
            .finish()
    }
}

impl ReadyWrite {
    /// Whether the write (once committed) succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// Writes and fsyncs: a received snapshot's data first, then the batch that makes it the
    /// snapshot in force. The blocking part, which may run on any thread.
    pub fn commit(mut self) -> Self {
        if let Some(mut batch) = self.batch.take() {
            self.result = (|| {
                if let Some((index, data)) = &self.snapshot_data {
                    self.disk.put_snapshot(*index, data)?;
                }
                self.disk.write(&mut batch)?;
                if let Some((index, _)) = self.snapshot_data.take() {
                    self.disk.drop_snapshots_but(index)?;
                }
                Ok(())
            })();
        }
        self
    }
}

fn get_u64(log: &Engine, key: &[u8]) -> Option<u64> {
    log.get(META, key)
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
}

impl DiskStorage {
    /// Opens (or creates, with `voters` as the first configuration) the storage in the
    /// directory `dir`, checking the invariants of the module docs.
    pub fn open(dir: &Path, voters: &[u64], opts: StorageOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        if dir.join(OLD_FILE).exists() {
            return Err(StoreError::Corrupt {
                path: dir.to_path_buf(),
                what: format!(
                    "it holds a {OLD_FILE} (the single-file storage of an older version), which \
                     this version does not read; starting beside it would start a new log"
                ),
            });
        }
        let snapshots = Database::create(dir.join(SNAPSHOT_FILE)).map_err(snaps)?;
        let txn = snapshots.begin_write().map_err(snaps)?;
        txn.open_table(SNAPSHOTS).map_err(snaps)?;
        txn.commit().map_err(snaps)?;
        let log = Engine::open(log_config(dir))?;
        let disk = Disk { log, snapshots };
        if disk.log.get(META, K_SNAP_META).is_none() {
            let mut sm = SnapshotMetadata::default();
            sm.mut_conf_state().set_voters(voters.to_vec());
            let mut b = LogBatch::default();
            b.put(META, K_SNAP_META.to_vec(), codec::encode_pb(&sm)?)?;
            b.put(
                META,
                K_HARD_STATE.to_vec(),
                codec::encode_pb(&HardState::default())?,
            )?;
            b.put(
                META,
                K_LOG_GROUP.to_vec(),
                FIRST_LOG_GROUP.to_be_bytes().to_vec(),
            )?;
            disk.write(&mut b)?;
        }

        let corrupt = |what: String| StoreError::Corrupt {
            path: dir.to_path_buf(),
            what,
        };
        let get = |k: &[u8]| disk.log.get(META, k).unwrap_or_default();
        let hs = codec::decode_hard_state(&get(K_HARD_STATE))?;
        let snap_meta = codec::decode_snapshot_metadata(&get(K_SNAP_META))?;
        let applied = get_u64(&disk.log, K_APPLIED).unwrap_or(snap_meta.index);
        let group = get_u64(&disk.log, K_LOG_GROUP)
            .ok_or_else(|| corrupt("the log's group id is missing".into()))?;
        let conf = match get(K_CONF) {
            b if b.is_empty() => None,
            b => {
                let m = codec::decode_snapshot_metadata(&b)?;
                (m.index > snap_meta.index).then(|| (m.index, m.get_conf_state().clone()))
            }
        };
        let mut terms = VecDeque::new();
        if let (Some(first), Some(last)) = (disk.log.first_index(group), disk.log.last_index(group))
        {
            if first != snap_meta.index + 1 {
                return Err(corrupt(format!(
                    "log starts at index {first} where {} was expected",
                    snap_meta.index + 1
                )));
            }
            let mut lo = first;
            while lo <= last {
                let hi = (lo + 1024).min(last + 1);
                let mut es = Vec::with_capacity((hi - lo) as usize);
                disk.log
                    .fetch_entries_to::<EntryExt>(group, lo, hi, None, &mut es)?;
                terms.extend(es.iter().map(|e| e.term));
                lo = hi;
            }
        }
        if snap_meta.index > 0 {
            let read = disk.snapshots.begin_read().map_err(snaps)?;
            let t = read.open_table(SNAPSHOTS).map_err(snaps)?;
            if t.get(snap_meta.index).map_err(snaps)?.is_none() {
                return Err(corrupt(format!(
                    "the data of the snapshot at {} is missing",
                    snap_meta.index
                )));
            }
        }
        disk.drop_snapshots_but(snap_meta.index)?;
        let store = DiskStorage {
            disk: Arc::new(disk),
            path: dir.to_path_buf(),
            hs,
            snap_meta,
            group,
            terms,
            applied,
            conf,
            snapshot_wanted: AtomicBool::new(false),
            dirty: false,
            opts,
            seq: 0,
            writes: 0,
            entries_written: 0,
        };
        if store.hs.commit > store.last() {
            return Err(corrupt(format!(
                "hard state commit {} points past the last log index {}",
                store.hs.commit,
                store.last()
            )));
        }
        if let Some((index, _)) = &store.conf {
            if *index > store.last() {
                return Err(corrupt(format!(
                    "configuration applied at {index} is past the last log index {}",
                    store.last()
                )));
            }
        }
        if store.hs.commit < store.snap_meta.index {
            return Err(corrupt(format!(
                "hard state commit {} is below the snapshot index {}",
                store.hs.commit, store.snap_meta.index
            )));
        }
        Ok(store)
    }

    fn first(&self) -> u64 {
        self.snap_meta.index + 1
    }

    fn last(&self) -> u64 {
        self.snap_meta.index + self.terms.len() as u64
    }

    /// The hard state (commit possibly ahead of the disk, see the module docs).
    pub fn hard_state(&self) -> &HardState {
        &self.hs
    }

    /// The metadata of the latest snapshot (index 0 before any).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snap_meta
    }

    /// The applied index last written to the disk.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The configuration in force after the applied log, and the index it was applied at
    /// (the snapshot's, or that of a later applied conf change).
    pub fn conf_state(&self) -> (u64, &ConfState) {
        match &self.conf {
            Some((index, cs)) => (*index, cs),
            None => (self.snap_meta.index, self.snap_meta.get_conf_state()),
        }
    }

    /// Makes a pristine storage the first member of a new cluster: writes a snapshot at
    /// [`BOOTSTRAP_INDEX`] (term 1) holding `data`, the state machine's initial state, with
    /// the configuration given to [`DiskStorage::open`]. Does nothing on a storage that was
    /// used, or that was opened with no voters (a joiner, which waits for the leader's
    /// snapshot).
    pub fn bootstrap(&mut self, data: Vec<u8>) -> Result<(), StoreError> {
        let pristine = self.snap_meta.index == 0
            && self.terms.is_empty()
            && self.hs == HardState::default()
            && self.conf.is_none();
        if !pristine || self.snap_meta.get_conf_state().voters.is_empty() {
            return Ok(());
        }
        let mut snap = Snapshot::default();
        let mut meta = self.snap_meta.clone();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = 1;
        snap.set_metadata(meta);
        snap.data = data.into();
        let hs = HardState {
            term: 1,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        self.applied = BOOTSTRAP_INDEX;
        self.persist_ready(Some(&snap), &[], Some(&hs))
    }

    /// A write point for a write of `kind` that stores no entries.
    fn point(&mut self, kind: WriteKind) -> WritePoint {
        self.seq += 1;
        WritePoint {
            seq: self.seq,
            stage: CrashStage::BeforeCommit,
            kind,
            entries: None,
            snapshot: false,
            commit: self.hs.commit,
            last_index_before: self.last(),
        }
    }

    /// Records the configuration a conf change at `index` (applied, so committed and in the
    /// log) led to; durable when this returns. A restart starts from it instead of replaying
    /// the conf changes up to `index`.
    pub fn set_conf_state(&mut self, index: u64, cs: ConfState) -> Result<(), StoreError> {
        let point = self.point(WriteKind::Flush);
        let mut meta = SnapshotMetadata {
            index,
            ..Default::default()
        };
        meta.set_conf_state(cs.clone());
        let mut b = LogBatch::default();
        b.put(META, K_CONF.to_vec(), codec::encode_pb(&meta)?)?;
        self.put_hard_state(&mut b, &self.hs)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        self.disk.write(&mut b)?;
        self.writes += 1;
        self.conf = Some((index, cs));
        self.dirty = false;
        self.crash(point, CrashStage::AfterCommit)
    }

    /// Whether raft-rs asked for a snapshot this storage could not serve since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// (fsynced writes, log entries written) since the storage was opened.
    pub fn write_stats(&self) -> (u64, u64) {
        (self.writes, self.entries_written)
    }

    /// The latest snapshot, data included.
    pub fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        let read = self.disk.snapshots.begin_read().map_err(snaps)?;
        let table = read.open_table(SNAPSHOTS).map_err(snaps)?;
        let data = table
            .get(self.snap_meta.index)
            .map_err(snaps)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        let mut s = Snapshot::default();
        s.set_metadata(self.snap_meta.clone());
        s.data = data.into();
        Ok(s)
    }

    /// Records the commit index of a `LightReady`; written with the next write.
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hs.commit {
            self.hs.commit = commit;
            self.dirty = true;
        }
    }

    /// Records the applied index; written with the next write.
    pub fn set_applied(&mut self, applied: u64) {
        if applied != self.applied {
            self.applied = applied;
            self.dirty = true;
        }
    }

    fn crash(&self, mut point: WritePoint, stage: CrashStage) -> Result<(), StoreError> {
        point.stage = stage;
        match &self.opts.crash_hook {
            Some(hook) if hook(&point) => Err(StoreError::InjectedCrash {
                seq: point.seq,
                stage,
            }),
            _ => Ok(()),
        }
    }

    /// Persists one `Ready`: a received snapshot, new entries and the hard state, in one
    /// fsynced batch (the snapshot's data before it). Returns only once all of it is durable.
    pub fn persist_ready(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StoreError> {
        if self.opts.unsafe_hard_state_first {
            return self.persist_ready_hard_state_first(snapshot, entries, hs);
        }
        let w = self.begin_ready(snapshot, entries, hs)?.commit();
        self.end_ready(w)
    }

    /// The first half of [`DiskStorage::persist_ready`]: checks the write and prepares its
    /// batch. [`ReadyWrite::commit`] (the fsync; it may run on another thread) and
    /// [`DiskStorage::end_ready`] complete it; nothing else may touch the storage meanwhile.
    ///
    /// The hard state is written when its term or vote changed or with a snapshot; a commit
    /// index that alone moved waits for the next such write (see the module docs), so an
    /// ordinary append touches the log group only.
    pub fn begin_ready(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<ReadyWrite, StoreError> {
        if self.opts.unsafe_hard_state_first {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: "begin_ready does not do the unsafe hard-state-first write".into(),
            });
        }
        let (point, new_hs) = self.check_ready(snapshot, entries, hs)?;
        let hs_due = snapshot.is_some()
            || new_hs.term != self.hs.term
            || new_hs.vote != self.hs.vote
            || entries.is_empty();
        let mut batch = LogBatch::default();
        let group = self.log_batch(&mut batch, snapshot, entries)?;
        if hs_due {
            self.put_hard_state(&mut batch, &new_hs)?;
        }
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        Ok(ReadyWrite {
            disk: self.disk.clone(),
            snapshot_data: snapshot.map(|s| (s.get_metadata().index, s.data.to_vec())),
            batch: Some(batch),
            result: Ok(()),
            point,
            snapshot: snapshot.map(|s| s.get_metadata().clone()),
            group,
            first: entries.first().map(|e| e.index),
            terms: entries.iter().map(|e| e.term).collect(),
            new_hs,
            hs_written: hs_due,
        })
    }

    /// Completes a write begun by [`DiskStorage::begin_ready`] once it was committed.
    pub fn end_ready(&mut self, mut w: ReadyWrite) -> Result<(), StoreError> {
        if w.batch.is_some() {
            w = w.commit();
        }
        w.result?;
        self.writes += 1;
        self.group = w.group;
        self.applied_write(w.snapshot, w.first, w.terms, w.new_hs, w.hs_written);
        self.crash(w.point, CrashStage::AfterCommit)
    }

    /// Checks a `Ready`'s write; its crash point and the hard state it leads to.
    fn check_ready(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(WritePoint, HardState), StoreError> {
        self.seq += 1;
        if let Some(e) = entries.first() {
            let floor = snapshot.map_or(self.first(), |s| s.get_metadata().index + 1);
            let ceiling = snapshot.map_or(self.last() + 1, |s| s.get_metadata().index + 1);
            if e.index < floor || e.index > ceiling {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("append at {} outside the log [{floor}, {ceiling}]", e.index),
                });
            }
        }
        let mut new_hs = hs.cloned().unwrap_or_else(|| self.hs.clone());
        new_hs.commit = new_hs.commit.max(self.hs.commit);
        if let Some(s) = snapshot {
            let m = s.get_metadata();
            new_hs.term = new_hs.term.max(m.term);
            new_hs.commit = new_hs.commit.max(m.index);
        }
        let point = WritePoint {
            seq: self.seq,
            stage: CrashStage::BeforeCommit,
            kind: WriteKind::Ready,
            entries: entries
                .first()
                .zip(entries.last())
                .map(|(a, b)| (a.index, b.index)),
            snapshot: snapshot.is_some(),
            commit: new_hs.commit,
            last_index_before: self.last(),
        };
        Ok((point, new_hs))
    }

    /// Updates the in-memory view after a committed `Ready` write.
    fn applied_write(
        &mut self,
        snapshot: Option<SnapshotMetadata>,
        first: Option<u64>,
        terms: Vec<u64>,
        new_hs: HardState,
        hs_written: bool,
    ) {
        if let Some(m) = snapshot {
            self.snap_meta = m;
            self.terms.clear();
            if self
                .conf
                .as_ref()
                .is_some_and(|(i, _)| *i <= self.snap_meta.index)
            {
                self.conf = None;
            }
        }
        self.entries_written += terms.len() as u64;
        if let Some(first) = first {
            let keep = (first - self.first()) as usize;
            self.terms.truncate(keep);
            self.terms.extend(terms);
        }
        if hs_written {
            self.dirty = false;
        } else if new_hs.commit != self.hs.commit {
            self.dirty = true;
        }
        self.hs = new_hs;
    }

    /// BROKEN ON PURPOSE (the crash tests' negative control): the hard state in its own
    /// write before the entries.
    fn persist_ready_hard_state_first(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let (point, new_hs) = self.check_ready(snapshot, entries, hs)?;
        let mut b = LogBatch::default();
        self.put_hard_state(&mut b, &new_hs)?;
        self.disk.write(&mut b)?;
        self.writes += 1;
        self.crash(point.clone(), CrashStage::Between)?;
        let mut b = LogBatch::default();
        let group = self.log_batch(&mut b, snapshot, entries)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        if let Some(s) = snapshot {
            self.disk.put_snapshot(s.get_metadata().index, &s.data)?;
        }
        self.disk.write(&mut b)?;
        self.writes += 1;
        self.group = group;
        let first = entries.first().map(|e| e.index);
        let terms = entries.iter().map(|e| e.term).collect();
        let snap = snapshot.map(|s| s.get_metadata().clone());
        self.applied_write(snap, first, terms, new_hs, true);
        self.crash(point, CrashStage::AfterCommit)
    }

    /// Adds the hard state and the applied index to `b`.
    fn put_hard_state(&self, b: &mut LogBatch, hs: &HardState) -> Result<(), StoreError> {
        b.put(META, K_HARD_STATE.to_vec(), codec::encode_pb(hs)?)?;
        b.put(
            META,
            K_APPLIED.to_vec(),
            self.applied.to_be_bytes().to_vec(),
        )?;
        Ok(())
    }

    /// Adds a `Ready`'s log changes to `b`: a received snapshot's metadata (the log moves to a
    /// fresh group, the old one is cleaned), then the entries (an append at an index already
    /// in the log replaces it and everything after it). Returns the log's group after `b`.
    fn log_batch(
        &self,
        b: &mut LogBatch,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<u64, StoreError> {
        let mut group = self.group;
        if let Some(s) = snapshot {
            b.add_command(group, Command::Clean);
            group += 1;
            b.put(META, K_LOG_GROUP.to_vec(), group.to_be_bytes().to_vec())?;
            b.put(
                META,
                K_SNAP_META.to_vec(),
                codec::encode_pb(s.get_metadata())?,
            )?;
        }
        b.add_entries::<EntryExt>(group, entries)?;
        Ok(group)
    }

    /// Writes the in-memory commit and applied indexes if they changed.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        let point = self.point(WriteKind::Flush);
        let mut b = LogBatch::default();
        self.put_hard_state(&mut b, &self.hs)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        self.disk.write(&mut b)?;
        self.writes += 1;
        self.dirty = false;
        self.crash(point, CrashStage::AfterCommit)
    }

    /// Stores a snapshot of the state machine at `index` (which must be applied) and drops
    /// the log up to it: the data first, then one batch that makes it the snapshot in force
    /// and compacts the log. Then lets the log engine purge the files nothing needs anymore.
    pub fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        if index <= self.snap_meta.index {
            return Ok(());
        }
        if index > self.last() || index > self.hs.commit {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "compaction to {index} past commit {} / last {}",
                    self.hs.commit,
                    self.last()
                ),
            });
        }
        let point = self.point(WriteKind::Compact);
        let term = self.terms[(index - self.first()) as usize];
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        let mut b = LogBatch::default();
        b.put(META, K_SNAP_META.to_vec(), codec::encode_pb(&meta)?)?;
        b.add_command(self.group, Command::Compact { index: index + 1 });
        self.put_hard_state(&mut b, &self.hs)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        self.disk.put_snapshot(index, &data)?;
        self.disk.write(&mut b)?;
        self.writes += 1;
        let drop_n = (index - self.snap_meta.index) as usize;
        self.terms.drain(..drop_n);
        self.snap_meta = meta;
        if self.conf.as_ref().is_some_and(|(i, _)| *i <= index) {
            self.conf = None;
        }
        self.dirty = false;
        self.disk.drop_snapshots_but(index)?;
        self.disk.log.purge_expired_files()?;
        self.crash(point, CrashStage::AfterCommit)
    }
}
