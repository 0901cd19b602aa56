//! Loading a table's state from outside its raft log: how a follower cluster takes a
//! leader cluster's snapshot without replaying it key by key through raft, with every
//! replica ending at exactly the same state.
//!
//! The follower's worker downloads the leader's snapshot (one download per follower
//! cluster), then proposes a small *load marker* ([`encode_marker`]) naming the exact
//! leader index the download reflects and the node holding it. Every replica that applies
//! the marker pauses its group's apply and gets the state at that marker:
//! - the node holding the download swaps it in (one ingest, see [`crate::replace`]);
//! - another replica must not load anything else (the leader cluster has moved on, and a
//!   different leader index would leave replicas with different data at the same raft
//!   index), so it takes a raft snapshot from its group's leader once that has applied
//!   the marker, or, leading the group itself, hands leadership to the node holding the
//!   download. Only if the leader cluster happens to be at exactly that index (an idle
//!   table) may it download again itself; and as a last resort after a long stall, a
//!   group leader loads a newer snapshot (a replica that already loaded the marker is then
//!   repaired by raft snapshot when its next batch is refused as a gap).
//!
//! A marker naming a leader index older than the one a replica stored is skipped (on every
//! replica alike: they hold the same state): loads never go back in time, except after a
//! reset (Maintenance/Reset stores leader index 0, and any snapshot may follow).
//!
//! A leader cluster uses the same machinery for Maintenance/Restore: the node that
//! received the backup stages it as an *upload* and proposes a *restore marker* naming it.
//! The holder builds the table from its upload with every key at the marker's own raft
//! index as its revision (the restore is one write, newer than anything before it); the
//! other replicas get that state from their group. The restore records its index as the
//! table's GC horizon, so follower clusters that applied less re-sync from a snapshot.

use std::future::Future;
use std::pin::Pin;

use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys;
use crate::replace::{StagedTable, replace_table};
use crate::snapshot::InstallJob;

/// First bytes of a load marker entry. A protobuf message never starts with 0x00 (field
/// number 0 is invalid), so markers cannot be mistaken for commands.
const MARKER_PREFIX: [u8; 2] = [0x00, b'M'];

/// First bytes of a restore marker entry (a load marker naming an upload). Distinct
/// from every other 0x00-prefixed entry kind (see `crate::fsm`'s replicated batches).
const RESTORE_PREFIX: [u8; 2] = [0x00, b'U'];

/// A load marker: load the state that node `holder` has staged: the leader cluster's
/// state at exactly `leader_index` (follower clusters), or the backup it received as
/// `upload` (a restore on a leader cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadMarker {
    /// The leader index the loaded data must reflect (0 for a restore).
    pub leader_index: u64,
    /// Raft id of the node whose download or upload it is.
    pub holder: u64,
    /// For a restore: the number of the holder's upload.
    pub upload: Option<u64>,
}

impl LoadMarker {
    /// A marker loading the leader cluster's state at `leader_index` from `holder`.
    pub fn leader_snapshot(leader_index: u64, holder: u64) -> Self {
        Self {
            leader_index,
            holder,
            upload: None,
        }
    }

    /// A marker restoring the backup `holder` staged as `upload`.
    pub fn restore(upload: u64, holder: u64) -> Self {
        Self {
            leader_index: 0,
            holder,
            upload: Some(upload),
        }
    }
}

/// The log entry data of a load marker.
pub fn encode_marker(marker: LoadMarker) -> Vec<u8> {
    let (prefix, first) = match marker.upload {
        Some(upload) => (RESTORE_PREFIX, upload),
        None => (MARKER_PREFIX, marker.leader_index),
    };
    let mut out = prefix.to_vec();
    out.extend_from_slice(&first.to_be_bytes());
    out.extend_from_slice(&marker.holder.to_be_bytes());
    out
}

/// Whether `data` is a marker (of either kind), without decoding it.
pub fn is_marker(data: &[u8]) -> bool {
    data.starts_with(&MARKER_PREFIX) || data.starts_with(&RESTORE_PREFIX)
}

/// The load marker in `data`, if it is one (an error if it is one that does not decode).
pub fn decode_marker(table: u64, data: &[u8]) -> Option<Result<LoadMarker>> {
    let (restore, rest) = match data.strip_prefix(&MARKER_PREFIX[..]) {
        Some(rest) => (false, rest),
        None => (true, data.strip_prefix(&RESTORE_PREFIX[..])?),
    };
    let parts = (
        rest.get(..8).and_then(keys::decode_u64),
        rest.get(8..).and_then(keys::decode_u64),
    );
    Some(match parts {
        (Some(first), Some(holder)) if restore => Ok(LoadMarker::restore(first, holder)),
        (Some(first), Some(holder)) => Ok(LoadMarker::leader_snapshot(first, holder)),
        _ => Err(Error::corrupt(
            table,
            format!("a load marker of {} bytes", data.len()),
        )),
    })
}

/// Which snapshot a fetch must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Exactly this leader index: [`Error::LoadUnavailable`] if no source has it.
    Exactly(u64),
    /// This leader index or a newer one (the last resort, see the module docs).
    AtLeast(u64),
    /// The backup staged as `upload`, every key written at `revision` (a restore).
    Upload {
        /// The upload's number (see [`LoadMarker::restore`]).
        upload: u64,
        /// The restore marker's raft index: every restored key's revision.
        revision: u64,
    },
}

/// A future that fetches a snapshot.
pub type Fetch = Pin<Box<dyn Future<Output = Result<LoadedSnapshot>> + Send>>;

/// Where a replica gets the snapshot a load marker asks for (a follower cluster's
/// connection to its leader cluster, and its node's own downloads).
pub trait SnapshotSource: Send + Sync + 'static {
    /// Fetches table `name`'s data (local id `table_id`) as `wanted`, staged as an SST
    /// built with [`crate::replace::TableSstWriter`]. Errors are retried by the group.
    fn fetch(&self, name: &str, table_id: u64, wanted: Wanted) -> Fetch;

    /// Table `table_id`'s replica here has installed (durably) the state `marker` asked
    /// for: whatever was kept for it may go.
    fn installed(&self, _table_id: u64, _marker: &LoadMarker) {}
}

impl std::fmt::Debug for dyn SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotSource")
    }
}

/// A fetched snapshot ready to be swapped in. The staged file is removed when this is
/// dropped unused (a superseded or failed load).
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The staged data.
    pub staged: StagedTable,
    /// The leader index the data reflects (for a restore: the marker's raft index).
    pub leader_index: u64,
}

/// How a replica goes about a load marker (see the module docs).
pub struct LoadPlan {
    /// The marker.
    pub marker: LoadMarker,
    /// The fetch to run; `None` when this replica must get the state from its group.
    pub fetch: Option<Fetch>,
}

impl std::fmt::Debug for LoadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadPlan")
            .field("marker", &self.marker)
            .field("fetch", &self.fetch.is_some())
            .finish()
    }
}

/// The job that swaps `loaded` in as table `id`'s data and records `marker`'s entry at
/// (`index`, `term`) as applied, atomically and durably: with the loaded leader index
/// (a follower cluster's load), or for a restore with `index` as the GC horizon, since
/// the log before the restore no longer leads to the table's state.
pub fn installer(
    engine: &Engine,
    id: u64,
    (index, term): (u64, u64),
    marker: &LoadMarker,
    loaded: LoadedSnapshot,
    previous: &AppliedState,
) -> InstallJob {
    let state = match marker.upload {
        None => AppliedState {
            index,
            term,
            leader_index: Some(loaded.leader_index),
            gc_horizon: previous.gc_horizon,
        },
        Some(_) => AppliedState {
            index,
            term,
            leader_index: previous.leader_index,
            gc_horizon: index,
        },
    };
    let engine = engine.clone();
    Box::new(move || replace_table(&engine, id, loaded.staged, &state, WriteBatch::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point_in_time::TableAt;
    use crate::replace::TableSstWriter;
    use crate::values::StoredValue;

    #[test]
    fn markers_round_trip_and_are_not_commands() {
        let m = LoadMarker::leader_snapshot(42, 3);
        assert_eq!(
            decode_marker(1, &encode_marker(m)).map(Result::ok),
            Some(Some(m))
        );
        let r = LoadMarker::restore(7, 2);
        assert_eq!(
            decode_marker(1, &encode_marker(r)).map(Result::ok),
            Some(Some(r))
        );
        assert!(is_marker(&encode_marker(r)) && is_marker(&encode_marker(m)));
        // Entries of other kinds that also start with 0x00 are not markers.
        let replicated = crate::fsm::encode_replicated(1, &Default::default());
        assert!(!is_marker(&replicated) && decode_marker(1, &replicated).is_none());
        assert!(decode_marker(1, b"\x0a\x01t").is_none());
        assert!(matches!(
            decode_marker(7, b"\x00M\x01"),
            Some(Err(Error::Corrupt { table: 7, .. }))
        ));
        assert!(
            <flotilla_proto::mvcc::v1::Command as prost::Message>::decode(&encode_marker(m)[..])
                .is_err()
        );
    }

    #[test]
    fn a_load_replaces_the_table_and_records_the_marker_and_leader_index() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(&dir.path().join("db")).expect("open");
        let mut w = TableSstWriter::create(&dir.path().join("load.sst"), 5).expect("create");
        let v = StoredValue {
            create_revision: 10,
            mod_revision: 11,
            value: b"1".to_vec(),
        };
        w.put(b"a", &v).expect("put");
        let loaded = LoadedSnapshot {
            staged: w.finish().expect("finish"),
            leader_index: 11,
        };
        let previous = AppliedState {
            gc_horizon: 4,
            ..AppliedState::default()
        };
        let marker = LoadMarker::leader_snapshot(11, 1);
        installer(&engine, 5, (9, 2), &marker, loaded, &previous)().expect("install");
        let at = TableAt::new(&engine, 5);
        let state = at.applied().expect("applied");
        assert_eq!(
            (
                state.index,
                state.term,
                state.leader_index,
                state.gc_horizon
            ),
            (9, 2, Some(11), 4)
        );
        assert_eq!(at.digest().expect("digest").keys, 1);
    }

    #[test]
    fn a_restore_on_a_leader_table_records_its_index_as_the_gc_horizon() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(&dir.path().join("db")).expect("open");
        let mut w = TableSstWriter::create(&dir.path().join("restore.sst"), 5).expect("create");
        let v = StoredValue {
            create_revision: 9,
            mod_revision: 9,
            value: b"1".to_vec(),
        };
        w.put(b"a", &v).expect("put");
        let loaded = LoadedSnapshot {
            staged: w.finish().expect("finish"),
            leader_index: 9,
        };
        let previous = AppliedState {
            index: 8,
            gc_horizon: 4,
            ..AppliedState::default()
        };
        let marker = LoadMarker::restore(3, 1);
        installer(&engine, 5, (9, 2), &marker, loaded, &previous)().expect("install");
        let state = TableAt::new(&engine, 5).applied().expect("applied");
        assert_eq!(
            (
                state.index,
                state.term,
                state.leader_index,
                state.gc_horizon
            ),
            (9, 2, None, 9)
        );
    }
}

/// Property test of [`decode_marker`] over arbitrary bytes: not a marker, a marker, or a
/// corruption naming the table; never a panic. See docs/FUZZING.md.
#[cfg(test)]
mod fuzz {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::fsm::fuzz::config;

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn fuzz_decode_marker(
            tail in vec(any::<u8>(), 0..24),
            prefix in 0..3usize,
            table in any::<u64>(),
        ) {
            let data = match prefix {
                0 => tail,
                1 => [&MARKER_PREFIX[..], &tail].concat(),
                _ => [&RESTORE_PREFIX[..], &tail].concat(),
            };
            match decode_marker(table, &data) {
                None => prop_assert!(!is_marker(&data)),
                Some(Ok(marker)) => prop_assert_eq!(encode_marker(marker), data),
                Some(Err(Error::Corrupt { table: t, .. })) => {
                    prop_assert_eq!(t, table);
                    prop_assert!(is_marker(&data) && data.len() != 18);
                }
                Some(Err(e)) => prop_assert!(false, "not a corruption: {e}"),
            }
        }
    }
}
