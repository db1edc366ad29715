//! The disk storage on its own: what survives a reopen, and what a crash leaves behind.

use std::sync::Arc;

use quarry_consensus::storage::{CrashStage, DiskStorage, StorageOptions, StoreError};
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::{GetEntriesContext, Storage};
use redb::ReadableTable;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("e{index}t{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
        ..Default::default()
    }
}

fn ents(s: &DiskStorage, lo: u64, hi: u64) -> Vec<Entry> {
    s.entries(lo, hi, None, GetEntriesContext::empty(false))
        .unwrap()
}

#[test]
fn reopen_restores_log_hard_state_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    {
        let mut s = DiskStorage::open(&path, &[1, 2, 3], StorageOptions::default()).unwrap();
        let init = s.initial_state().unwrap();
        assert_eq!(init.conf_state.voters, vec![1, 2, 3]);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        let batch: Vec<Entry> = (1..=6).map(|i| entry(i, 1)).collect();
        s.persist_ready(None, &batch, Some(&hs(1, 5))).unwrap();
        s.set_applied(5);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        s.compact(4, cs, b"machine at 4".to_vec()).unwrap();
    }
    let s = DiskStorage::open(&path, &[9], StorageOptions::default()).unwrap();
    assert_eq!(s.hard_state(), &hs(1, 5));
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 6));
    assert_eq!(s.term(4).unwrap(), 1);
    assert!(s.term(3).is_err(), "compacted entries must be gone");
    assert_eq!(ents(&s, 5, 7), vec![entry(5, 1), entry(6, 1)]);
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 4);
    assert_eq!(&snap.data[..], b"machine at 4");
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    assert_eq!(s.applied(), 5);
}

#[test]
fn append_replaces_the_conflicting_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let mut s = DiskStorage::open(&path, &[1], StorageOptions::default()).unwrap();
    let batch: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
    s.persist_ready(None, &batch, Some(&hs(1, 2))).unwrap();
    s.persist_ready(None, &[entry(3, 2)], Some(&hs(2, 2)))
        .unwrap();
    drop(s);
    let s = DiskStorage::open(&path, &[1], StorageOptions::default()).unwrap();
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(ents(&s, 1, 4), vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
}

#[test]
fn received_snapshot_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let mut s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    let batch: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
    s.persist_ready(None, &batch, Some(&hs(1, 3))).unwrap();
    let mut snap = raft::eraftpb::Snapshot::default();
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 2;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
    snap.data = b"s10".to_vec().into();
    s.persist_ready(Some(&snap), &[entry(11, 2)], None).unwrap();
    drop(s);
    let s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (11, 11)
    );
    assert_eq!(s.hard_state().commit, 10);
    assert_eq!(s.hard_state().term, 2);
    assert_eq!(&s.load_snapshot().unwrap().data[..], b"s10");
}

fn snapshot(index: u64, term: u64, data: &[u8]) -> raft::eraftpb::Snapshot {
    let mut snap = raft::eraftpb::Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = term;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
    snap.data = data.to_vec().into();
    snap
}

/// A follower whose log runs past the snapshot it receives (entries the leader does not have)
/// keeps none of them: not after the write, not after a reopen, not after a second snapshot.
#[test]
fn received_snapshot_drops_the_log_past_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let mut s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    let batch: Vec<Entry> = (1..=12).map(|i| entry(i, 1)).collect();
    s.persist_ready(None, &batch, Some(&hs(1, 3))).unwrap();
    s.persist_ready(Some(&snapshot(10, 2, b"s10")), &[], None)
        .unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (11, 10)
    );
    drop(s);
    let mut s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (11, 10)
    );
    assert_eq!(s.term(10).unwrap(), 2);
    assert!(
        s.term(12).is_err(),
        "an entry past the snapshot survived it"
    );
    s.persist_ready(None, &[entry(11, 2), entry(12, 2)], None)
        .unwrap();
    s.persist_ready(Some(&snapshot(20, 3, b"s20")), &[entry(21, 3)], None)
        .unwrap();
    drop(s);
    let s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (21, 21)
    );
    assert_eq!(ents(&s, 21, 22), vec![entry(21, 3)]);
    assert_eq!(&s.load_snapshot().unwrap().data[..], b"s20");
    assert_eq!(s.hard_state().commit, 20);
}

/// The storage's snapshot table, opened directly.
type SnapshotTable<'t> = redb::Table<'t, u64, &'static [u8]>;

/// The snapshot's data lives apart from its metadata: data that is gone refuses the open, and
/// data that no metadata names (a crash between the two writes) is dropped by it.
#[test]
fn snapshot_data_must_match_its_metadata_on_open() {
    const SNAPSHOTS: redb::TableDefinition<'_, u64, &[u8]> =
        redb::TableDefinition::new("snapshots");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let mut s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    s.persist_ready(Some(&snapshot(10, 2, b"s10")), &[], None)
        .unwrap();
    drop(s);
    let file = path.join("snapshots.redb");
    let edit = |f: &dyn Fn(&mut SnapshotTable<'_>)| {
        let db = redb::Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        f(&mut txn.open_table(SNAPSHOTS).unwrap());
        txn.commit().unwrap();
    };
    edit(&|t| {
        t.insert(30, &b"orphan"[..]).unwrap();
    });
    let s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    assert_eq!(&s.load_snapshot().unwrap().data[..], b"s10");
    drop(s);
    edit(&|t| {
        assert!(
            t.get(30).unwrap().is_none(),
            "orphan data survived the open"
        );
        t.remove(10).unwrap();
    });
    match DiskStorage::open(&path, &[1, 2], StorageOptions::default()) {
        Err(StoreError::Corrupt { what, .. }) => assert!(what.contains("missing"), "{what}"),
        other => panic!("a snapshot without its data was accepted: {other:?}"),
    }
}

fn crash_at(stage: CrashStage, seq: u64, hs_first: bool) -> StorageOptions {
    StorageOptions {
        crash_hook: Some(Arc::new(move |p| p.stage == stage && p.seq == seq)),
        unsafe_hard_state_first: hs_first,
    }
}

#[test]
fn crash_before_commit_leaves_the_previous_state_and_after_commit_the_new_one() {
    for (stage, want_last) in [(CrashStage::BeforeCommit, 2), (CrashStage::AfterCommit, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        let mut s = DiskStorage::open(&path, &[1], crash_at(stage, 2, false)).unwrap();
        s.persist_ready(None, &[entry(1, 1), entry(2, 1)], Some(&hs(1, 1)))
            .unwrap();
        let r = s.persist_ready(None, &[entry(3, 1), entry(4, 1)], Some(&hs(1, 4)));
        assert!(
            matches!(r, Err(StoreError::InjectedCrash { seq: 2, .. })),
            "{r:?}"
        );
        drop(s);
        let s = DiskStorage::open(&path, &[1], StorageOptions::default()).unwrap();
        assert_eq!(s.last_index().unwrap(), want_last, "{stage:?}");
        assert!(s.hard_state().commit <= want_last);
    }
}

/// Negative control at the storage level: hard state first, crash in between, and the open
/// refuses a hard state that points past the log.
#[test]
fn hard_state_written_before_entries_is_refused_on_open_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let mut s = DiskStorage::open(&path, &[1], crash_at(CrashStage::Between, 1, true)).unwrap();
    let r = s.persist_ready(None, &[entry(1, 1), entry(2, 1)], Some(&hs(1, 2)));
    assert!(matches!(r, Err(StoreError::InjectedCrash { .. })), "{r:?}");
    drop(s);
    let r = DiskStorage::open(&path, &[1], StorageOptions::default());
    match r {
        Err(StoreError::Corrupt { what, .. }) => assert!(what.contains("points past"), "{what}"),
        other => panic!("a hard state past the log was accepted: {other:?}"),
    }
}

/// A directory that still holds the single-file storage of an older version is refused: a
/// fresh log started beside it would make the node forget what it promised.
#[test]
fn the_storage_of_an_older_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("raft.redb"), b"an old log").unwrap();
    match DiskStorage::open(dir.path(), &[1], StorageOptions::default()) {
        Err(StoreError::Corrupt { what, .. }) => assert!(what.contains("raft.redb"), "{what}"),
        other => panic!("an old storage was ignored: {other:?}"),
    }
}

/// Well past the log engine's purge threshold (64 MiB of files), with compactions and a
/// received snapshot along the way, the engine's purges and rewrites keep what the storage
/// needs: a reopen finds the log, the hard state and the snapshot in force.
#[test]
fn the_log_survives_the_engines_purges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let cs = ConfState {
        voters: vec![1, 2],
        ..Default::default()
    };
    let big = |index: u64, term: u64| Entry {
        index,
        term,
        data: vec![(index % 251) as u8; 64 << 10].into(),
        ..Default::default()
    };
    let mut s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    let mut index = 0;
    for round in 0..24u64 {
        let batch: Vec<Entry> = (index + 1..=index + 64)
            .map(|i| big(i, 1 + round / 8))
            .collect();
        index += 64;
        s.persist_ready(None, &batch, Some(&hs(1 + round / 8, index)))
            .unwrap();
        s.set_applied(index);
        s.compact(index - 8, cs.clone(), format!("m{index}").into_bytes())
            .unwrap();
        if round == 12 {
            index += 100;
            let snap = snapshot(index, 3, format!("m{index}").as_bytes());
            s.persist_ready(Some(&snap), &[], None).unwrap();
        }
    }
    let (first, last, hard) = (
        s.first_index().unwrap(),
        s.last_index().unwrap(),
        s.hard_state().clone(),
    );
    drop(s);
    let s = DiskStorage::open(&path, &[1, 2], StorageOptions::default()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (first, last)
    );
    assert_eq!(s.hard_state(), &hard);
    assert_eq!(
        ents(&s, first, last + 1),
        (first..=last).map(|i| big(i, 3)).collect::<Vec<_>>()
    );
    // Each compaction left 8 entries behind its snapshot, named after the last index then.
    let data = format!("m{}", first - 1 + 8).into_bytes();
    assert_eq!(s.load_snapshot().unwrap().data, data);
    let files: u64 = std::fs::read_dir(path.join("raft-log"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        files < 96 << 20,
        "the log engine purged nothing: {files} bytes of files"
    );
}

/// raft-engine caches the last block of entries it decoded per thread, keyed by file number,
/// offset and length only. Two storages in one process whose logs line up (same shapes,
/// different terms) are read one after the other on this thread: the second must get its own
/// entries, not the first one's (which raft-engine alone hands over).
#[test]
fn a_read_never_returns_another_storages_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = DiskStorage::open(&dir.path().join("a"), &[1], StorageOptions::default()).unwrap();
    let mut b = DiskStorage::open(&dir.path().join("b"), &[1], StorageOptions::default()).unwrap();
    let batch_a: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
    let batch_b: Vec<Entry> = (1..=3).map(|i| entry(i, 2)).collect();
    a.persist_ready(None, &batch_a, Some(&hs(1, 3))).unwrap();
    b.persist_ready(None, &batch_b, Some(&hs(2, 3))).unwrap();
    assert_eq!(ents(&a, 1, 4), batch_a);
    assert_eq!(
        ents(&b, 1, 4),
        batch_b,
        "storage b served storage a's entries"
    );
    assert_eq!(
        ents(&a, 2, 4),
        batch_a[1..],
        "a range inside a's block, from this thread's cache"
    );
}
