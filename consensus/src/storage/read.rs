//! The read side: raft-rs's [`Storage`] over the log engine, and the entry reads that guard
//! against raft-engine's thread-local block cache (see the module docs).

use std::sync::atomic::Ordering;

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use super::{other, DiskStorage, EntryExt, StoreError};

impl DiskStorage {
    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max: Option<u64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let max = max.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        let fetch = || -> Result<Vec<Entry>, StoreError> {
            let mut out = Vec::with_capacity((high - low).min(1024) as usize);
            self.disk
                .log
                .fetch_entries_to::<EntryExt>(self.group, low, high, max, &mut out)?;
            Ok(out)
        };
        // raft-engine's thread-local block cache can serve another engine's block on this
        // thread (see the module docs): it then panics on the wrong index, fails to decode,
        // or hands over entries of another term. Whatever went wrong, the read is done again
        // on a fresh thread, whose cache is empty, and that answer stands.
        if let Ok(Ok(out)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(fetch)) {
            if self.holds(low, &out) {
                return Ok(out);
            }
        }
        let out = std::thread::scope(|s| s.spawn(fetch).join()).map_err(|_| {
            self.corrupt(format!(
                "reading entries {low}..{high} panicked on a fresh thread"
            ))
        })??;
        if !self.holds(low, &out) {
            return Err(self.corrupt(format!(
                "entries {low}..{high} read back with other indexes or terms than the log's"
            )));
        }
        Ok(out)
    }

    /// Whether `entries`, read from `low` on, are this log's: their indexes follow on and
    /// their terms are the ones cached for them.
    fn holds(&self, low: u64, entries: &[Entry]) -> bool {
        let first = self.first();
        entries.iter().enumerate().all(|(i, e)| {
            e.index == low + i as u64
                && e.index >= first
                && self.terms.get((e.index - first) as usize) == Some(&e.term)
        })
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }
}

impl Storage for DiskStorage {
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
