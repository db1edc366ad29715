//! The two stores under a node's directory: the log engine and the snapshot file.

use std::path::Path;

use raft::eraftpb::Entry;
use raft_engine::{Engine, LogBatch, MessageExt, ReadableSize};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{snaps, StoreError};

/// Snapshot data by snapshot index.
pub(super) const SNAPSHOTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshots");

/// The log engine's directory and the snapshot file, under the node's directory.
const LOG_DIR: &str = "raft-log";
pub(super) const SNAPSHOT_FILE: &str = "snapshots.redb";

/// Entries as the log engine stores them (protobuf).
pub(super) struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// The log engine's settings: files of 16 MiB, rewritten and purged once the log's files
/// pass 64 MiB (the log is compacted every few thousand entries, so little is live), no
/// compression (batches are small; the CPU is better spent elsewhere).
pub(super) fn log_config(dir: &Path) -> raft_engine::Config {
    raft_engine::Config {
        dir: dir.join(LOG_DIR).to_string_lossy().into_owned(),
        recovery_threads: 1,
        batch_compression_threshold: ReadableSize(0),
        target_file_size: ReadableSize::mb(16),
        purge_threshold: ReadableSize::mb(64),
        ..Default::default()
    }
}

/// The two stores. The log engine is declared first so it is dropped first: once the redb
/// file can be opened again, the engine's directory lock is free too.
pub(super) struct Disk {
    pub(super) log: Engine,
    pub(super) snapshots: Database,
}

impl Disk {
    /// Writes `batch` and fsyncs it.
    pub(super) fn write(&self, batch: &mut LogBatch) -> Result<(), StoreError> {
        self.log.write(batch, true)?;
        Ok(())
    }

    /// Stores a snapshot's data under its index, fsynced.
    pub(super) fn put_snapshot(&self, index: u64, data: &[u8]) -> Result<(), StoreError> {
        let txn = self.snapshots.begin_write().map_err(snaps)?;
        {
            let mut t = txn.open_table(SNAPSHOTS).map_err(snaps)?;
            t.insert(index, data).map_err(snaps)?;
        }
        txn.commit().map_err(snaps)
    }

    /// Deletes the data of every snapshot but the one at `keep`.
    pub(super) fn drop_snapshots_but(&self, keep: u64) -> Result<(), StoreError> {
        let stale: Vec<u64> = {
            let read = self.snapshots.begin_read().map_err(snaps)?;
            let t = read.open_table(SNAPSHOTS).map_err(snaps)?;
            let mut out = Vec::new();
            for row in t.range::<u64>(..).map_err(snaps)? {
                let k = row.map_err(snaps)?.0.value();
                if k != keep {
                    out.push(k);
                }
            }
            out
        };
        if stale.is_empty() {
            return Ok(());
        }
        let txn = self.snapshots.begin_write().map_err(snaps)?;
        {
            let mut t = txn.open_table(SNAPSHOTS).map_err(snaps)?;
            for k in stale {
                t.remove(k).map_err(snaps)?;
            }
        }
        txn.commit().map_err(snaps)
    }
}
