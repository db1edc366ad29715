//! Fault injection: where a storage write can be made to "crash", and the options that ask
//! for it (see the crash-safety tests).

use std::fmt;
use std::sync::Arc;

/// Where in a write a crash is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStage {
    /// Everything prepared, nothing committed.
    BeforeCommit,
    /// Only with `unsafe_hard_state_first`: hard state committed, entries not yet.
    Between,
    /// Committed and fsynced, not yet reported back to the node (on a multi-threaded
    /// runtime the write's acknowledgements may have left already: they promise only what is
    /// durable by then).
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

/// Options of a [`super::DiskStorage`]; the defaults are the correct ones.
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
