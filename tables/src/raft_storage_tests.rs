//! Unit tests of the raft storage: staging, reload, compaction, hard state, the tail.

use super::*;
use raft::Storage as _;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8].into(),
        ..Default::default()
    }
}

fn open() -> (tempfile::TempDir, Engine, RaftStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path()).expect("open");
    let mut batch = WriteBatch::default();
    bootstrap(&engine, &mut batch, 9, &[1]);
    engine.write(batch, true).expect("bootstrap");
    let s = RaftStorage::load(engine.clone(), 9).expect("load");
    (dir, engine, s)
}

fn persist(engine: &Engine, w: LogWrite) {
    let cf = engine.cf(keys::CF_RAFT);
    let mut b = WriteBatch::default();
    if let Some((s, e)) = w.delete_range {
        b.delete_range_cf(cf, s, e);
    }
    for (k, v) in w.puts {
        b.put_cf(cf, k, v);
    }
    engine.write(b, true).expect("write");
}

#[test]
fn a_bad_or_missing_truncated_state_is_corruption_naming_the_group() {
    let (_d, engine, _s) = open();
    let cf = keys::CF_RAFT;
    let mut b = WriteBatch::default();
    b.put_cf(engine.cf(cf), keys::truncated_key(9), [1, 2, 3, 4, 5]);
    engine.write(b, true).expect("write");
    let err = RaftStorage::load(engine.clone(), 9).expect_err("5 bytes are no state");
    assert!(
        matches!(&err, Error::Corrupt { table: 9, what } if what.contains("truncated")),
        "{err}"
    );
    let mut b = WriteBatch::default();
    b.delete_cf(engine.cf(cf), keys::truncated_key(9));
    engine.write(b, true).expect("write");
    let err = RaftStorage::load(engine, 9).expect_err("missing state is not a default");
    assert!(matches!(err, Error::Corrupt { table: 9, .. }), "{err}");
}

#[test]
fn staged_entries_are_readable_then_survive_reload() {
    let (_d, engine, mut s) = open();
    let w = s
        .stage(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
        .expect("stage");
    assert_eq!(
        s.entries(1, 4, None, GetEntriesContext::empty(false))
            .expect("e")
            .len(),
        3
    );
    persist(&engine, w);
    s.trim_tail(3);
    assert_eq!(s.term(2).expect("term"), 1);
    let reloaded = RaftStorage::load(engine, 9).expect("reload");
    assert_eq!(reloaded.last_index().expect("last"), 3);
    assert_eq!(
        reloaded
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .expect("e")[0]
            .index,
        2
    );
}

#[test]
fn conflicting_suffix_is_replaced_on_disk_too() {
    let (_d, engine, mut s) = open();
    let w = s
        .stage(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
        .expect("stage");
    persist(&engine, w);
    s.trim_tail(3);
    let w = s.stage(&[entry(2, 2)], None).expect("stage");
    assert!(w.delete_range.is_some());
    persist(&engine, w);
    assert_eq!(s.last_index().expect("last"), 2);
    assert_eq!(s.term(2).expect("term"), 2);
    let reloaded = RaftStorage::load(engine, 9).expect("reload");
    assert_eq!(reloaded.last_index().expect("last"), 2);
    assert_eq!(reloaded.term(2).expect("term"), 2);
}

#[test]
fn a_commit_only_hard_state_waits_for_the_next_write_but_votes_do_not() {
    let (_d, engine, mut s) = open();
    let hs = |term, vote, commit| HardState {
        term,
        vote,
        commit,
        ..Default::default()
    };
    let w = s.stage(&[], Some(&hs(1, 1, 0))).expect("stage");
    assert!(!w.is_empty(), "a new term and vote are written");
    persist(&engine, w);
    let w = s.stage(&[], Some(&hs(1, 1, 3))).expect("stage");
    assert!(w.is_empty(), "a commit-only change costs no write");
    assert_eq!(s.initial_state().expect("state").hard_state.commit, 3);
    let w = s.stage(&[entry(1, 1)], Some(&hs(1, 1, 4))).expect("stage");
    persist(&engine, w);
    let reloaded = RaftStorage::load(engine.clone(), 9).expect("reload");
    let stored = reloaded.initial_state().expect("state").hard_state;
    assert_eq!((stored.term, stored.vote, stored.commit), (1, 1, 4));
    let w = s.stage(&[], Some(&hs(2, 0, 4))).expect("stage");
    assert!(!w.is_empty(), "a new term is written at once");
}

#[test]
fn the_term_of_the_last_trimmed_entry_needs_no_read() {
    let (_d, engine, mut s) = open();
    let w = s
        .stage(&[entry(1, 1), entry(2, 1), entry(3, 2)], None)
        .expect("stage");
    persist(&engine, w);
    s.trim_tail(3);
    // Take the entries from under the storage: only what it keeps in memory answers.
    let mut b = WriteBatch::default();
    b.delete_range_cf(
        engine.cf(keys::CF_RAFT),
        keys::raft_log_key(9, 0),
        keys::raft_log_key(9, u64::MAX),
    );
    engine.write(b, true).expect("write");
    assert_eq!(s.term(3).expect("the newest trimmed entry's term"), 2);
    assert!(s.term(2).is_err(), "older entries are read from RocksDB");
    // A replaced suffix forgets it.
    let w = s.stage(&[entry(3, 3)], None).expect("stage");
    persist(&engine, w);
    assert_eq!(s.term(3).expect("term"), 3);
}

#[test]
fn commit_is_raised_to_the_applied_index() {
    let (_d, _engine, mut s) = open();
    s.ensure_committed(5);
    assert_eq!(s.initial_state().expect("state").hard_state.commit, 5);
    s.ensure_committed(3);
    assert_eq!(s.initial_state().expect("state").hard_state.commit, 5);
}

#[test]
fn compaction_truncates_and_reports_compacted() {
    let (_d, engine, mut s) = open();
    let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
    let w = s.stage(&entries, None).expect("stage");
    persist(&engine, w);
    let mut deletes = WriteBatch::default();
    for revision in [5, 6, 7] {
        deletes.put_cf(
            engine.cf(keys::CF_META),
            keys::tombstone_key(9, revision, b"k"),
            [],
        );
    }
    engine.write(deletes, false).expect("tombstones");
    s.compact(6).expect("compact");
    assert_eq!(s.first_index().expect("first"), 7);
    // Deletes up to the compaction point are forgotten with the log.
    let mut iter = engine.iter(
        keys::CF_META,
        keys::tombstone_key(9, 0, b""),
        keys::tombstones_end(9),
    );
    iter.seek_to_first();
    let mut left = Vec::new();
    while let Some(k) = iter.key() {
        left.push(k.to_vec());
        iter.next();
    }
    drop(iter);
    assert_eq!(left, vec![keys::tombstone_key(9, 7, b"k")]);
    assert_eq!(s.term(6).expect("term"), 1);
    assert!(
        s.entries(5, 8, None, GetEntriesContext::empty(false))
            .is_err()
    );
    let reloaded = RaftStorage::load(engine, 9).expect("reload");
    assert_eq!(
        (
            reloaded.first_index().expect("f"),
            reloaded.last_index().expect("l")
        ),
        (7, 10)
    );
}
