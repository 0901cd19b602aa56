//! What a leader cluster hands to follower clusters: committed log entries as commands,
//! and a consistent copy of a table's data, whole or only what changed since a revision.
//! Blocking (RocksDB reads): run off the reactor.

use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType};
use rocksdb::ReadOptions;

use crate::applied::AppliedState;
use crate::engine::{Engine, iter_status};
use crate::error::{Error, Result};
use crate::keys;
use crate::values::StoredValue;

/// Commands read from a table's raft log.
#[derive(Debug, PartialEq)]
pub enum LogRead {
    /// Consecutive commands from the requested index on (possibly none yet: the entry is
    /// applied but its log write has not landed), each with `leader_index` = its index.
    Commands(Vec<Command>),
    /// The requested index was compacted away: the reader needs a snapshot.
    Compacted,
}

/// Reads committed commands of table `id` from `from` up to `to` (inclusive), stopping
/// once `max_bytes` of encoded commands are collected (at least one is returned).
/// Entries that are not commands (leader no-ops, membership changes) come back as DUMMY,
/// so the follower's leader index advances past them too.
pub fn read_log(engine: &Engine, id: u64, from: u64, to: u64, max_bytes: usize) -> Result<LogRead> {
    // One snapshot for the truncation point and the entries: compaction between the two
    // reads would otherwise look like a hole.
    let snap = engine.snapshot();
    let truncated = truncated_index(engine, &snap, id)?;
    if from <= truncated {
        return Ok(LogRead::Compacted);
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snap);
    opts.set_iterate_upper_bound(keys::raft_log_key(id, to.saturating_add(1)));
    let mut iter = engine.raw_iter_opt(keys::CF_RAFT, opts);
    iter.seek(keys::raft_log_key(id, from));
    let mut next = from;
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        // A gap means the entry is applied but not yet written: stop before it.
        if keys::raft_log_index(k) != Some(next) {
            break;
        }
        let entry = Entry::parse_from_bytes(v)?;
        let cmd = command_of(&entry, id);
        bytes += cmd.encoded_len();
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        out.push(cmd);
        next += 1;
        iter.next();
    }
    iter_status(&iter)?;
    // Compacted while we looked (the snapshot pins what we read, not what is kept).
    if out.is_empty() && from <= truncated {
        return Ok(LogRead::Compacted);
    }
    Ok(LogRead::Commands(out))
}

fn command_of(entry: &Entry, table_id: u64) -> Command {
    let index = entry.index;
    let decoded = match entry.get_entry_type() {
        EntryType::EntryNormal if !entry.data.is_empty() => Command::decode(&entry.data[..]).ok(),
        _ => None,
    };
    match decoded {
        Some(mut cmd) => {
            cmd.leader_index = Some(index);
            cmd
        }
        None => {
            if !entry.data.is_empty() && entry.get_entry_type() == EntryType::EntryNormal {
                tracing::warn!(table = table_id, index, "log entry is not a command");
            }
            Command {
                r#type: CommandType::Dummy as i32,
                leader_index: Some(index),
                ..Default::default()
            }
        }
    }
}

/// One live key of a table, with its revisions.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedPair {
    /// The user key.
    pub key: Vec<u8>,
    /// The value and its revisions.
    pub value: StoredValue,
}

type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

/// The last log index compaction removed from group `id` (0 if none), as of `snap`.
fn truncated_index(engine: &Engine, snap: &Snapshot<'_>, id: u64) -> Result<u64> {
    Ok(
        match snap.get_cf(engine.cf(keys::CF_RAFT), keys::truncated_key(id))? {
            Some(b) if b.len() >= 8 => keys::decode_u64(&b[..8]).unwrap_or(0),
            _ => 0,
        },
    )
}

fn applied_state(engine: &Engine, snap: &Snapshot<'_>, id: u64) -> Result<AppliedState> {
    match snap.get_cf(engine.cf(keys::CF_META), keys::applied_key(id))? {
        Some(b) => AppliedState::decode(&b),
        None => Ok(AppliedState::default()),
    }
}

/// Visits every live key of table `id` in key order as of `snap`, until `visit` returns
/// false (then `Unavailable`: the receiver went away).
fn walk_live(
    engine: &Engine,
    snap: &Snapshot<'_>,
    id: u64,
    mut visit: impl FnMut(KeyValue) -> bool,
) -> Result<()> {
    let mut opts = ReadOptions::default();
    opts.set_snapshot(snap);
    opts.set_iterate_upper_bound(keys::table_end(id));
    // A bulk read: do not evict what point reads keep warm.
    opts.fill_cache(false);
    let mut iter = engine.raw_iter_opt(keys::CF_DATA, opts);
    iter.seek(keys::table_start(id));
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        let stored = StoredValue::decode(v)
            .ok_or_else(|| Error::Corrupt(format!("stored value of table {id}")))?;
        let kv = KeyValue {
            key: keys::user_key(k).to_vec(),
            create_revision: stored.create_revision as i64,
            mod_revision: stored.mod_revision as i64,
            value: stored.value,
        };
        if !visit(kv) {
            return Err(Error::Unavailable("snapshot receiver went away".into()));
        }
        iter.next();
    }
    iter_status(&iter)
}

/// Calls `emit` for every live key of table `id` in key order, all read from one RocksDB
/// snapshot, and returns the applied state that snapshot reflects. `emit` returning false
/// stops the walk with `Unavailable` (the receiver went away).
pub fn for_each_pair(
    engine: &Engine,
    id: u64,
    emit: impl FnMut(KeyValue) -> bool,
) -> Result<AppliedState> {
    let snap = engine.snapshot();
    let applied = applied_state(engine, &snap, id)?;
    walk_live(engine, &snap, id, emit)?;
    Ok(applied)
}

/// One record of an incremental export.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A live key last written after the base revision, with its value and revisions.
    Put(KeyValue),
    /// A key deleted after the base revision and not live now.
    Delete(Vec<u8>),
}

/// How an incremental export ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChangesRead {
    /// Every change after the base was emitted; the applied state they bring a copy to.
    Done(AppliedState),
    /// Deletes up to `horizon` are forgotten (compacted with the log), so changes since
    /// an older base cannot be told: the reader needs a full export.
    BeforeHorizon {
        /// The oldest base an incremental export can start from.
        horizon: u64,
    },
}

/// Calls `emit` for every change of table `id` after revision `since`, all read from one
/// RocksDB snapshot: a `Put` per live key whose last write is newer (in key order), then a
/// `Delete` per key deleted since and not live now (in the order of its first such
/// delete). Applying them to a copy of the table as of `since` gives the table as of the
/// returned applied state. Tombstones live only on leader tables, kept back to the log's
/// compaction point; `emit` returning false stops the walk with `Unavailable`.
pub fn for_each_change(
    engine: &Engine,
    id: u64,
    since: u64,
    mut emit: impl FnMut(Change) -> bool,
) -> Result<ChangesRead> {
    let snap = engine.snapshot();
    let horizon = truncated_index(engine, &snap, id)?;
    if since < horizon {
        return Ok(ChangesRead::BeforeHorizon { horizon });
    }
    let applied = applied_state(engine, &snap, id)?;
    walk_live(engine, &snap, id, |kv| {
        kv.mod_revision as u64 <= since || emit(Change::Put(kv))
    })?;

    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snap);
    opts.set_iterate_upper_bound(keys::tombstones_end(id));
    opts.fill_cache(false);
    let mut iter = engine.raw_iter_opt(keys::CF_META, opts);
    iter.seek(keys::tombstone_key(id, since.saturating_add(1), &[]));
    let data_cf = engine.cf(keys::CF_DATA);
    let mut deleted = std::collections::HashSet::new();
    while let Some(k) = iter.key() {
        let (_, key) = keys::tombstone_parts(k)
            .ok_or_else(|| Error::Corrupt(format!("tombstone key of table {id}")))?;
        if !deleted.contains(key) && snap.get_cf(data_cf, keys::data_key(id, key))?.is_none() {
            deleted.insert(key.to_vec());
            if !emit(Change::Delete(key.to_vec())) {
                return Err(Error::Unavailable("snapshot receiver went away".into()));
            }
        }
        iter.next();
    }
    iter_status(&iter)?;
    Ok(ChangesRead::Done(applied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::WriteBatch;

    fn entry(index: u64, data: Vec<u8>) -> Entry {
        Entry {
            index,
            term: 1,
            data: data.into(),
            ..Default::default()
        }
    }

    fn put_cmd(key: &[u8]) -> Command {
        Command {
            r#type: CommandType::Put as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_commands_with_their_indexes_and_stops_at_gaps_and_budget() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        let mut batch = WriteBatch::default();
        let raft_cf = engine.cf(keys::CF_RAFT);
        batch.put_cf(
            raft_cf,
            keys::raft_log_key(7, 1),
            entry(1, vec![]).write_to_bytes().expect("enc"),
        );
        for i in 2..=4 {
            let data = put_cmd(format!("k{i}").as_bytes()).encode_to_vec();
            batch.put_cf(
                raft_cf,
                keys::raft_log_key(7, i),
                entry(i, data).write_to_bytes().expect("enc"),
            );
        }
        // index 5 missing (not yet written), 6 present
        batch.put_cf(
            raft_cf,
            keys::raft_log_key(7, 6),
            entry(6, vec![]).write_to_bytes().expect("enc"),
        );
        engine.write(batch, false).expect("write");

        let LogRead::Commands(cmds) = read_log(&engine, 7, 1, 10, usize::MAX).expect("read") else {
            panic!("not compacted");
        };
        assert_eq!(cmds.len(), 4, "stops before the gap at 5");
        assert_eq!(cmds[0].r#type(), CommandType::Dummy);
        assert_eq!(cmds[0].leader_index, Some(1));
        assert_eq!(
            cmds[3].kv.as_ref().map(|kv| kv.key.clone()),
            Some(b"k4".to_vec())
        );
        assert_eq!(cmds[3].leader_index, Some(4));

        let LogRead::Commands(one) = read_log(&engine, 7, 2, 3, 1).expect("read") else {
            panic!("not compacted");
        };
        assert_eq!(one.len(), 1, "a tiny budget still returns one command");

        let mut batch = WriteBatch::default();
        let mut truncated = 3u64.to_be_bytes().to_vec();
        truncated.extend_from_slice(&1u64.to_be_bytes());
        batch.put_cf(engine.cf(keys::CF_RAFT), keys::truncated_key(7), truncated);
        engine.write(batch, false).expect("write");
        assert_eq!(
            read_log(&engine, 7, 3, 10, usize::MAX).expect("read"),
            LogRead::Compacted
        );
        assert!(
            matches!(read_log(&engine, 7, 4, 10, usize::MAX).expect("read"), LogRead::Commands(c) if c.len() == 1)
        );
    }

    fn delete_cmd(key: &[u8], end: Option<&[u8]>) -> Command {
        Command {
            r#type: CommandType::Delete as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                ..Default::default()
            }),
            range_end: end.map(<[u8]>::to_vec),
            ..Default::default()
        }
    }

    fn changes(engine: &Engine, since: u64) -> (Vec<Change>, ChangesRead) {
        let mut out = Vec::new();
        let read = for_each_change(engine, 7, since, |c| {
            out.push(c);
            true
        })
        .expect("changes");
        (out, read)
    }

    fn put_of(key: &str, revision: i64, create: i64) -> Change {
        Change::Put(KeyValue {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            create_revision: create,
            mod_revision: revision,
        })
    }

    #[test]
    fn changes_since_a_revision_are_the_newer_puts_and_the_deleted_keys() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        let fsm = crate::fsm::TableFsm::new(engine.clone(), 7);
        let mut state = AppliedState::default();
        let log = [
            put_cmd(b"k1"),
            put_cmd(b"k2"),
            put_cmd(b"k3"),
            put_cmd(b"k4"),
            put_cmd(b"k5"),
            delete_cmd(b"k2", None),
            put_cmd(b"k6"),
            delete_cmd(b"k3", Some(b"k5")),
            put_cmd(b"k3"),
        ];
        for (i, cmd) in log.iter().enumerate() {
            fsm.apply_entry(i as u64 + 1, 1, &cmd.encode_to_vec(), &mut state)
                .expect("apply");
        }
        let (got, read) = changes(&engine, 5);
        assert_eq!(read, ChangesRead::Done(state));
        assert_eq!(
            got,
            vec![
                put_of("k3", 9, 9),
                put_of("k6", 7, 7),
                Change::Delete(b"k2".to_vec()),
                Change::Delete(b"k4".to_vec()),
            ],
            "k3 was deleted too, but is live again"
        );
        let (all, _) = changes(&engine, 0);
        assert_eq!(all.len(), 6, "4 live keys and 2 deleted ones: {all:?}");
        assert_eq!(changes(&engine, 9).0, Vec::new(), "nothing after the tip");

        // Once the log is compacted past 6, deletes up to it are forgotten.
        let mut batch = WriteBatch::default();
        let mut truncated = 6u64.to_be_bytes().to_vec();
        truncated.extend_from_slice(&1u64.to_be_bytes());
        batch.put_cf(engine.cf(keys::CF_RAFT), keys::truncated_key(7), truncated);
        engine.write(batch, false).expect("write");
        assert_eq!(
            changes(&engine, 5).1,
            ChangesRead::BeforeHorizon { horizon: 6 }
        );
        assert!(matches!(changes(&engine, 6).1, ChangesRead::Done(_)));
    }

    #[test]
    fn replicated_tables_keep_no_tombstones() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        let fsm = crate::fsm::TableFsm::new(engine.clone(), 7);
        let mut state = AppliedState::default();
        for (i, mut cmd) in [put_cmd(b"k1"), delete_cmd(b"k1", None)]
            .into_iter()
            .enumerate()
        {
            cmd.leader_index = Some(100 + i as u64);
            fsm.apply_entry(i as u64 + 1, 1, &cmd.encode_to_vec(), &mut state)
                .expect("apply");
        }
        assert_eq!(changes(&engine, 0).0, Vec::new());
    }
}
