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

/// A load marker: load the leader cluster's state at exactly `leader_index`, which node
/// `holder` has downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadMarker {
    /// The leader index the loaded data must reflect.
    pub leader_index: u64,
    /// Raft id of the node whose download it is.
    pub holder: u64,
}

/// The log entry data of a load marker.
pub fn encode_marker(marker: LoadMarker) -> Vec<u8> {
    let mut out = MARKER_PREFIX.to_vec();
    out.extend_from_slice(&marker.leader_index.to_be_bytes());
    out.extend_from_slice(&marker.holder.to_be_bytes());
    out
}

/// The load marker in `data`, if it is one (an error if it is one that does not decode).
pub fn decode_marker(table: u64, data: &[u8]) -> Option<Result<LoadMarker>> {
    let rest = data.strip_prefix(&MARKER_PREFIX[..])?;
    let parts = (
        rest.get(..8).and_then(keys::decode_u64),
        rest.get(8..).and_then(keys::decode_u64),
    );
    Some(match parts {
        (Some(leader_index), Some(holder)) => Ok(LoadMarker {
            leader_index,
            holder,
        }),
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
}

/// A future that fetches a snapshot.
pub type Fetch = Pin<Box<dyn Future<Output = Result<LoadedSnapshot>> + Send>>;

/// Where a replica gets the snapshot a load marker asks for (a follower cluster's
/// connection to its leader cluster, and its node's own downloads).
pub trait SnapshotSource: Send + Sync + 'static {
    /// Fetches table `name`'s data (local id `table_id`) as `wanted`, staged as an SST
    /// built with [`crate::replace::TableSstWriter`]. Errors are retried by the group.
    fn fetch(&self, name: &str, table_id: u64, wanted: Wanted) -> Fetch;
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
    /// The leader index the data reflects.
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

/// The job that swaps `loaded` in as table `id`'s data and records the marker entry
/// (`index`, `term`) as applied with the loaded leader index, atomically and durably.
pub fn installer(
    engine: &Engine,
    id: u64,
    index: u64,
    term: u64,
    loaded: LoadedSnapshot,
    previous: &AppliedState,
) -> InstallJob {
    let state = AppliedState {
        index,
        term,
        leader_index: Some(loaded.leader_index),
        gc_horizon: previous.gc_horizon,
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
        let m = LoadMarker {
            leader_index: 42,
            holder: 3,
        };
        assert_eq!(
            decode_marker(1, &encode_marker(m)).map(Result::ok),
            Some(Some(m))
        );
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
        installer(&engine, 5, 9, 2, loaded, &previous)().expect("install");
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
            prefixed in any::<bool>(),
            table in any::<u64>(),
        ) {
            let data = if prefixed { [&MARKER_PREFIX[..], &tail].concat() } else { tail };
            match decode_marker(table, &data) {
                None => prop_assert!(!data.starts_with(&MARKER_PREFIX)),
                Some(Ok(marker)) => prop_assert_eq!(encode_marker(marker), data),
                Some(Err(Error::Corrupt { table: t, .. })) => {
                    prop_assert_eq!(t, table);
                    prop_assert!(data.starts_with(&MARKER_PREFIX) && data.len() != 18);
                }
                Some(Err(e)) => prop_assert!(false, "not a corruption: {e}"),
            }
        }
    }
}
