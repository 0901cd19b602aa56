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
use crate::point_in_time::TableAt;

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
/// so the follower's leader index advances past them too. A restore (a load marker in
/// the log) cannot be replayed from the log: reading stops before it, and a read that
/// starts at or before the last one is [`LogRead::Compacted`].
pub fn read_log(engine: &Engine, id: u64, from: u64, to: u64, max_bytes: usize) -> Result<LogRead> {
    // One snapshot for the truncation point and the entries: compaction between the two
    // reads would otherwise look like a hole.
    let at = TableAt::new(engine, id);
    if from <= horizon(&at)? {
        return Ok(LogRead::Compacted);
    }
    let snap = engine.snapshot();
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
        let entry = Entry::parse_from_bytes(v)
            .map_err(|e| Error::corrupt(id, format!("log entry {next}: {e}")))?;
        if crate::import::is_marker(&entry.data) {
            // A restore not applied when the horizon was read: nothing from here on.
            if out.is_empty() {
                return Ok(LogRead::Compacted);
            }
            break;
        }
        let cmd = command_of(&entry, id)?;
        bytes += cmd.encoded_len();
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        out.push(cmd);
        next += 1;
        iter.next();
    }
    iter_status(&iter)?;
    // Compacted after the truncation point was read (the snapshot pins what we read,
    // not what is kept).
    if out.is_empty() && from <= horizon(&TableAt::new(engine, id))? {
        return Ok(LogRead::Compacted);
    }
    Ok(LogRead::Commands(out))
}

/// The last index whose history a reader can no longer replay: the log's compaction
/// point or the table's GC horizon (raised by a restore), whichever is later.
fn horizon(at: &TableAt<'_>) -> Result<u64> {
    Ok(at.truncated_index()?.max(at.applied()?.gc_horizon))
}

/// The command a leader-table log entry carries, with its index as the leader index.
fn command_of(entry: &Entry, table_id: u64) -> Result<Command> {
    let index = entry.index;
    let mut cmd = match entry.get_entry_type() {
        EntryType::EntryNormal if !entry.data.is_empty() => Command::decode(&entry.data[..])
            .map_err(|e| Error::corrupt(table_id, format!("command at {index}: {e}")))?,
        _ => Command {
            r#type: CommandType::Dummy as i32,
            ..Default::default()
        },
    };
    cmd.leader_index = Some(index);
    Ok(cmd)
}

/// One record of an incremental export.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The live keys of `[start, end)` were deleted after the base (`end` `None`: to the
    /// table's end). Applied before the puts, which are all newer where they overlap.
    DeleteRange {
        /// First key of the range.
        start: Vec<u8>,
        /// Exclusive end, or `None` for the end of the table.
        end: Option<Vec<u8>>,
    },
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
    /// The base is ahead of what this replica applied: there is nothing it could send.
    Ahead {
        /// This replica's applied index.
        applied: u64,
    },
}

/// Calls `emit` for every change of the table `at` reads after revision `since`, all
/// from its one instant: a `DeleteRange` per range deleted since (by revision), a `Put` per
/// live key whose last write is newer (in key order), then a `Delete` per key deleted since
/// and not live now (in the order of its first such delete). Applying them in that order
/// to a copy of the table as of `since` gives the table as of the returned applied state.
/// Tombstones live only on leader tables, kept back to the log's compaction point. Nothing
/// is emitted unless the export can go ahead (see [`ChangesRead`]); `emit` returning false
/// stops the walk with [`Error::ReceiverGone`].
pub fn for_each_change(
    at: &TableAt<'_>,
    since: u64,
    mut emit: impl FnMut(Change) -> bool,
) -> Result<ChangesRead> {
    let applied = at.applied()?;
    if since > applied.index {
        return Ok(ChangesRead::Ahead {
            applied: applied.index,
        });
    }
    let horizon = horizon(at)?;
    if since < horizon {
        return Ok(ChangesRead::BeforeHorizon { horizon });
    }
    at.for_each_range_delete(since, |_, start, end| {
        emit(Change::DeleteRange {
            start: start.to_vec(),
            end: (!end.is_empty()).then(|| end.to_vec()),
        })
    })?;
    at.for_each_pair(|kv| kv.mod_revision as u64 <= since || emit(Change::Put(kv)))?;
    let mut deleted = std::collections::HashSet::new();
    let mut failed = None;
    at.for_each_point_delete(since, |_, key| {
        if deleted.contains(key) {
            return true;
        }
        match at.is_live(key) {
            Ok(true) => true,
            Ok(false) => {
                deleted.insert(key.to_vec());
                emit(Change::Delete(key.to_vec()))
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .map_err(|e| failed.take().unwrap_or(e))?;
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
        let read = for_each_change(&TableAt::new(engine, 7), since, |c| {
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
                Change::DeleteRange {
                    start: b"k3".to_vec(),
                    end: Some(b"k5".to_vec())
                },
                put_of("k3", 9, 9),
                put_of("k6", 7, 7),
                Change::Delete(b"k2".to_vec()),
            ],
            "k3 was deleted too, but is live again"
        );
        // Applied in order to the table as of 5, the changes give the table as of 9.
        let mut copy: std::collections::BTreeMap<Vec<u8>, i64> =
            (1..=5).map(|i| (format!("k{i}").into_bytes(), i)).collect();
        for change in got {
            match change {
                Change::DeleteRange { start, end } => {
                    copy.retain(|k, _| !(*k >= start && end.as_ref().is_none_or(|e| k < e)))
                }
                Change::Put(kv) => {
                    copy.insert(kv.key, kv.mod_revision);
                }
                Change::Delete(key) => {
                    copy.remove(&key);
                }
            }
        }
        let mut now = std::collections::BTreeMap::new();
        TableAt::new(&engine, 7)
            .for_each_pair(|kv| {
                now.insert(kv.key, kv.mod_revision);
                true
            })
            .expect("walk");
        assert_eq!(copy, now);
        let (all, _) = changes(&engine, 0);
        assert_eq!(
            all.len(),
            6,
            "a range, 4 live keys and a deleted one: {all:?}"
        );
        assert_eq!(changes(&engine, 9).0, Vec::new(), "nothing after the tip");
        assert_eq!(changes(&engine, 10).1, ChangesRead::Ahead { applied: 9 });

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
