//! Durable Raft storage on redb: the log, the hard state, the snapshot, the applied index.
//!
//! # Layout
//!
//! One redb file, three tables. `entries` maps a log index to the protobuf bytes of that
//! entry. `meta` holds the hard state (term, vote, commit), the metadata of the latest
//! snapshot (its index, term and `ConfState`), the applied index, and the configuration of
//! the latest applied conf change with its index ([`RedbStorage::set_conf_state`]).
//! `snapshot` holds the snapshot's data alone, so that the hard-state write of every `Ready`
//! never copies the page of a big value.
//!
//! A founding member's storage starts with a snapshot at [`BOOTSTRAP_INDEX`]
//! ([`RedbStorage::bootstrap`]); a joiner's (opened with no voters) starts empty, at 0.
//!
//! # Invariants (checked when the file is opened; a violation refuses to start)
//!
//! 1. The log is contiguous: it holds exactly the indexes `snapshot.index + 1 ..= last`.
//! 2. `snapshot.index <= hard_state.commit <= last`: the hard state never points past the log.
//!    This is the invariant a crash between "write hard state" and "write entries" breaks, and
//!    the reason [`RedbStorage::persist_ready`] writes the `Ready`'s snapshot, entries and hard
//!    state in **one** write transaction, fsynced (`Durability::Immediate`) before it returns.
//! 3. The snapshot's conf state is the one at the snapshot's index; the conf state of an
//!    applied conf change, if newer, is stored with its index, which is in the log. On
//!    restart raft-rs starts from the newest of the two ([`RedbStorage::conf_state`]), the node
//!    restores the state machine from the snapshot and replays the committed entries after
//!    it, skipping the conf changes at or below that index.
//!
//! The commit index (learnt from a `LightReady`, or from a `Ready` whose hard state moved
//! only the commit index) and the applied index are kept in memory and written with the next
//! write of the hard state (a term or vote change, a snapshot, a compaction, a conf change) or
//! by [`RedbStorage::flush`]; an append of entries alone writes only the `entries` table. Losing them in a crash is safe:
//! a restarted node re-learns its commit index from the leader and re-applies from its snapshot.
//!
//! # Fault injection
//!
//! [`StorageOptions::crash_hook`] is asked before and after each commit whether to "crash"
//! there: the write returns [`StoreError::InjectedCrash`] and the node stops as a process would.
//! [`StorageOptions::unsafe_hard_state_first`] is broken on purpose (hard state in its own
//! transaction before the entries); it exists so the crash tests can show they catch it.
//!
//! Left out: an in-memory entry cache (each read opens a read transaction; terms are cached),
//! and snapshot data larger than memory (the snapshot is one value; the TCP transport streams
//! it in chunks).

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{self, CodecError};

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// The snapshot's data, alone in its table: a write of the (small) hard state must never
/// rewrite the page that holds a big value.
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");
const K_HARD_STATE: &str = "hard_state";
const K_SNAP_META: &str = "snapshot_meta";
const K_SNAP_DATA: &str = "snapshot_data";
const K_APPLIED: &str = "applied";
const K_CONF: &str = "conf_state";

/// Where a new cluster's log starts: [`RedbStorage::bootstrap`] writes a snapshot at this
/// index, so the log of every founding member starts above it and a node that joins later
/// (whose log is empty) can only catch up through a snapshot.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// A storage failure. Every one of them stops the node: the disk is the node's memory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] redb::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("raft storage at {path} is inconsistent: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("injected crash at write {seq} ({stage:?})")]
    InjectedCrash { seq: u64, stage: CrashStage },
}

fn engine<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Engine(e.into())
}

fn other(e: StoreError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

/// Where in a write a crash is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStage {
    /// Everything prepared, nothing committed.
    BeforeCommit,
    /// Only with `unsafe_hard_state_first`: hard state committed, entries not yet.
    Between,
    /// Committed and fsynced, not yet reported back.
    AfterCommit,
}

/// What a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A `Ready`: snapshot, entries and hard state.
    Ready,
    /// A local snapshot that compacts the log.
    Compact,
    /// Commit/applied indexes only.
    Flush,
}

/// Describes the write a crash hook is asked about.
#[derive(Clone, Debug)]
pub struct WritePoint {
    /// Writes since this storage was opened, from 1.
    pub seq: u64,
    pub stage: CrashStage,
    pub kind: WriteKind,
    /// First and last index of the entries written, if any.
    pub entries: Option<(u64, u64)>,
    /// Whether a received snapshot is part of the write.
    pub snapshot: bool,
    /// The commit index the write stores.
    pub commit: u64,
    /// The last log index before the write.
    pub last_index_before: u64,
}

/// Asked at each [`WritePoint`]; `true` crashes there.
pub type CrashHook = Arc<dyn Fn(&WritePoint) -> bool + Send + Sync>;

/// Options of a [`RedbStorage`]; the defaults are the correct ones.
#[derive(Clone, Default)]
pub struct StorageOptions {
    pub crash_hook: Option<CrashHook>,
    /// BROKEN ON PURPOSE: write the hard state in its own transaction before the entries.
    /// Only for the crash-safety negative control.
    pub unsafe_hard_state_first: bool,
}

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageOptions")
            .field("crash_hook", &self.crash_hook.is_some())
            .field("unsafe_hard_state_first", &self.unsafe_hard_state_first)
            .finish()
    }
}

/// raft-rs [`Storage`] on a redb file.
pub struct RedbStorage {
    db: Database,
    path: PathBuf,
    /// The hard state; its commit may be ahead of the file (see the module docs).
    hs: HardState,
    snap_meta: SnapshotMetadata,
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
    /// Committed (fsynced) write transactions, and entries written, since open.
    writes: u64,
    entries_written: u64,
}

impl fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.path)
            .field("hard_state", &self.hs)
            .field("snapshot_index", &self.snap_meta.index)
            .field("last_index", &self.last())
            .finish()
    }
}

/// A `Ready`'s write transaction, prepared by [`RedbStorage::begin_ready`].
pub struct ReadyWrite {
    txn: Option<redb::WriteTransaction>,
    result: Result<(), StoreError>,
    point: WritePoint,
    snapshot: Option<SnapshotMetadata>,
    first: Option<u64>,
    terms: Vec<u64>,
    new_hs: HardState,
    hs_written: bool,
}

impl fmt::Debug for ReadyWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyWrite")
            .field("committed", &self.txn.is_none())
            .field("entries", &self.point.entries)
            .finish()
    }
}

impl ReadyWrite {
    /// Commits (and fsyncs) the transaction: the blocking part, which may run on any thread.
    pub fn commit(mut self) -> Self {
        if let Some(txn) = self.txn.take() {
            self.result = txn.commit().map_err(engine);
        }
        self
    }
}

impl RedbStorage {
    /// Opens (or creates, with `voters` as the first configuration) the storage at `path`,
    /// checking the invariants of the module docs.
    pub fn open(path: &Path, voters: &[u64], opts: StorageOptions) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(engine)?;
        let txn = db.begin_write().map_err(engine)?;
        {
            txn.open_table(ENTRIES).map_err(engine)?;
            let mut snap = txn.open_table(SNAPSHOT).map_err(engine)?;
            let mut meta = txn.open_table(META).map_err(engine)?;
            if meta.get(K_SNAP_META).map_err(engine)?.is_none() {
                let mut sm = SnapshotMetadata::default();
                sm.mut_conf_state().set_voters(voters.to_vec());
                let smb = codec::encode_pb(&sm)?;
                let hsb = codec::encode_pb(&HardState::default())?;
                meta.insert(K_SNAP_META, smb.as_slice()).map_err(engine)?;
                meta.insert(K_HARD_STATE, hsb.as_slice()).map_err(engine)?;
                snap.insert(K_SNAP_DATA, &[][..]).map_err(engine)?;
            }
        }
        txn.commit().map_err(engine)?;

        let read = db.begin_read().map_err(engine)?;
        let meta = read.open_table(META).map_err(engine)?;
        let get = |k: &str| -> Result<Vec<u8>, StoreError> {
            Ok(meta
                .get(k)
                .map_err(engine)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default())
        };
        let hs = codec::decode_hard_state(&get(K_HARD_STATE)?)?;
        let snap_meta = codec::decode_snapshot_metadata(&get(K_SNAP_META)?)?;
        let applied = get(K_APPLIED)?
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(snap_meta.index);
        let conf = match get(K_CONF)? {
            b if b.is_empty() => None,
            b => {
                let m = codec::decode_snapshot_metadata(&b)?;
                (m.index > snap_meta.index).then(|| (m.index, m.get_conf_state().clone()))
            }
        };
        let entries = read.open_table(ENTRIES).map_err(engine)?;
        let mut terms = VecDeque::new();
        let corrupt = |what: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        for row in entries.range::<u64>(..).map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            let want = snap_meta.index + 1 + terms.len() as u64;
            if k.value() != want {
                return Err(corrupt(format!(
                    "log not contiguous: found index {} where {want} was expected",
                    k.value()
                )));
            }
            terms.push_back(codec::decode_entry(v.value())?.term);
        }
        drop((meta, entries, read));
        let store = RedbStorage {
            db,
            path: path.to_path_buf(),
            hs,
            snap_meta,
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

    /// The hard state (commit possibly ahead of the file, see the module docs).
    pub fn hard_state(&self) -> &HardState {
        &self.hs
    }

    /// The metadata of the latest snapshot (index 0 before any).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snap_meta
    }

    /// The applied index last written to the file.
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
    /// the configuration given to [`RedbStorage::open`]. Does nothing on a storage that was
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

    /// Records the configuration a conf change at `index` (applied, so committed and in the
    /// log) led to; durable when this returns. A restart starts from it instead of replaying
    /// the conf changes up to `index`.
    pub fn set_conf_state(&mut self, index: u64, cs: ConfState) -> Result<(), StoreError> {
        self.seq += 1;
        let point = WritePoint {
            seq: self.seq,
            stage: CrashStage::BeforeCommit,
            kind: WriteKind::Flush,
            entries: None,
            snapshot: false,
            commit: self.hs.commit,
            last_index_before: self.last(),
        };
        let mut meta = SnapshotMetadata {
            index,
            ..Default::default()
        };
        meta.set_conf_state(cs.clone());
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut m = txn.open_table(META).map_err(engine)?;
            let b = codec::encode_pb(&meta)?;
            m.insert(K_CONF, b.as_slice()).map_err(engine)?;
        }
        self.write_hard_state(&txn, &self.hs)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        txn.commit().map_err(engine)?;
        self.writes += 1;
        self.conf = Some((index, cs));
        self.dirty = false;
        self.crash(point, CrashStage::AfterCommit)
    }

    /// Whether raft-rs asked for a snapshot this storage could not serve since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// (fsynced write transactions, log entries written) since the storage was opened.
    pub fn write_stats(&self) -> (u64, u64) {
        (self.writes, self.entries_written)
    }

    /// The latest snapshot, data included.
    pub fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        let read = self.db.begin_read().map_err(engine)?;
        let table = read.open_table(SNAPSHOT).map_err(engine)?;
        let data = table
            .get(K_SNAP_DATA)
            .map_err(engine)?
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
    /// fsynced transaction. Returns only once all of it is durable.
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

    /// The first half of [`RedbStorage::persist_ready`]: checks the write and prepares its
    /// transaction. [`ReadyWrite::commit`] (the fsync; it may run on another thread) and
    /// [`RedbStorage::end_ready`] complete it; nothing else may touch the storage meanwhile.
    ///
    /// The hard state is written when its term or vote changed or with a snapshot; a commit
    /// index that alone moved waits for the next such write (see the module docs), so an
    /// ordinary append touches the `entries` table only.
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
        let txn = self.db.begin_write().map_err(engine)?;
        self.write_log(&txn, snapshot, entries)?;
        if hs_due {
            self.write_hard_state(&txn, &new_hs)?;
        }
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        Ok(ReadyWrite {
            txn: Some(txn),
            result: Ok(()),
            point,
            snapshot: snapshot.map(|s| s.get_metadata().clone()),
            first: entries.first().map(|e| e.index),
            terms: entries.iter().map(|e| e.term).collect(),
            new_hs,
            hs_written: hs_due,
        })
    }

    /// Completes a write begun by [`RedbStorage::begin_ready`] once it was committed.
    pub fn end_ready(&mut self, mut w: ReadyWrite) -> Result<(), StoreError> {
        if w.txn.is_some() {
            w = w.commit();
        }
        w.result?;
        self.writes += 1;
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
    /// transaction before the entries.
    fn persist_ready_hard_state_first(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let (point, new_hs) = self.check_ready(snapshot, entries, hs)?;
        let txn = self.db.begin_write().map_err(engine)?;
        self.write_hard_state(&txn, &new_hs)?;
        txn.commit().map_err(engine)?;
        self.writes += 1;
        self.crash(point.clone(), CrashStage::Between)?;
        let txn = self.db.begin_write().map_err(engine)?;
        self.write_log(&txn, snapshot, entries)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        txn.commit().map_err(engine)?;
        self.writes += 1;
        let first = entries.first().map(|e| e.index);
        let terms = entries.iter().map(|e| e.term).collect();
        let snap = snapshot.map(|s| s.get_metadata().clone());
        self.applied_write(snap, first, terms, new_hs, true);
        self.crash(point, CrashStage::AfterCommit)
    }

    fn write_hard_state(
        &self,
        txn: &redb::WriteTransaction,
        hs: &HardState,
    ) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META).map_err(engine)?;
        let hsb = codec::encode_pb(hs)?;
        meta.insert(K_HARD_STATE, hsb.as_slice()).map_err(engine)?;
        meta.insert(K_APPLIED, &self.applied.to_be_bytes()[..])
            .map_err(engine)?;
        Ok(())
    }

    fn write_log(
        &self,
        txn: &redb::WriteTransaction,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        let mut table = txn.open_table(ENTRIES).map_err(engine)?;
        if let Some(s) = snapshot {
            table.retain(|_, _| false).map_err(engine)?;
            let mut meta = txn.open_table(META).map_err(engine)?;
            let smb = codec::encode_pb(s.get_metadata())?;
            meta.insert(K_SNAP_META, smb.as_slice()).map_err(engine)?;
            let mut snap = txn.open_table(SNAPSHOT).map_err(engine)?;
            snap.insert(K_SNAP_DATA, &s.data[..]).map_err(engine)?;
        }
        if let Some(first) = entries.first() {
            table
                .retain_in(first.index.., |_, _| false)
                .map_err(engine)?;
            for e in entries {
                let b = codec::encode_pb(e)?;
                table.insert(e.index, b.as_slice()).map_err(engine)?;
            }
        }
        Ok(())
    }

    /// Writes the in-memory commit and applied indexes if they changed.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        self.seq += 1;
        let point = WritePoint {
            seq: self.seq,
            stage: CrashStage::BeforeCommit,
            kind: WriteKind::Flush,
            entries: None,
            snapshot: false,
            commit: self.hs.commit,
            last_index_before: self.last(),
        };
        let txn = self.db.begin_write().map_err(engine)?;
        self.write_hard_state(&txn, &self.hs)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        txn.commit().map_err(engine)?;
        self.writes += 1;
        self.dirty = false;
        self.crash(point, CrashStage::AfterCommit)
    }

    /// Stores a snapshot of the state machine at `index` (which must be applied) and drops
    /// the log up to it, in one transaction.
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
        self.seq += 1;
        let term = self.terms[(index - self.first()) as usize];
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        let point = WritePoint {
            seq: self.seq,
            stage: CrashStage::BeforeCommit,
            kind: WriteKind::Compact,
            entries: None,
            snapshot: false,
            commit: self.hs.commit,
            last_index_before: self.last(),
        };
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut m = txn.open_table(META).map_err(engine)?;
            let smb = codec::encode_pb(&meta)?;
            m.insert(K_SNAP_META, smb.as_slice()).map_err(engine)?;
            let mut snap = txn.open_table(SNAPSHOT).map_err(engine)?;
            snap.insert(K_SNAP_DATA, data.as_slice()).map_err(engine)?;
            let mut t = txn.open_table(ENTRIES).map_err(engine)?;
            t.retain_in(..=index, |_, _| false).map_err(engine)?;
        }
        self.write_hard_state(&txn, &self.hs)?;
        self.crash(point.clone(), CrashStage::BeforeCommit)?;
        txn.commit().map_err(engine)?;
        self.writes += 1;
        let drop_n = (index - self.snap_meta.index) as usize;
        self.terms.drain(..drop_n);
        self.snap_meta = meta;
        if self.conf.as_ref().is_some_and(|(i, _)| *i <= index) {
            self.conf = None;
        }
        self.dirty = false;
        self.crash(point, CrashStage::AfterCommit)
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max: Option<u64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let read = self.db.begin_read().map_err(engine)?;
        let table = read.open_table(ENTRIES).map_err(engine)?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for row in table.range(low..high).map_err(engine)? {
            let (_, v) = row.map_err(engine)?;
            let bytes = v.value();
            size += bytes.len() as u64;
            if !out.is_empty() && max.is_some_and(|m| size > m) {
                break;
            }
            out.push(codec::decode_entry(bytes)?);
        }
        Ok(out)
    }
}

impl Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hs.clone(), self.conf_state().1.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let out = self
            .read_entries(low, high, max_size.into())
            .map_err(other)?;
        if out.is_empty() && high > low {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.terms[(idx - self.first()) as usize])
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snap_meta.get_conf_state();
        let names_to = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&id| id == to);
        if self.snap_meta.index < request_index || !names_to {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        self.load_snapshot().map_err(other)
    }
}
