//! A table as the API layer sees it: proposals through its raft group, reads from the
//! shared RocksDB off the async reactor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::mvcc::v1::{Command, ResponseOp, Txn};
use prost::Message as _;
use raft::eraftpb::Snapshot;
use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::export::{self, LogRead};
use crate::fsm::{self, ApplyOutput, Refusal, Stop, TableFsm};
use crate::group::{GroupHandle, GroupStatus, StateMachine};
use crate::import::{self, LoadMarker, LoadPlan, LoadedSnapshot, SnapshotSource, Wanted};
use crate::keys;
use crate::point_in_time::{OwnedTableAt, TableAt, TableDigest};
use crate::range::{RangePage, RangeQuery, ResponseBudget};
use crate::snapshot::{self, InstallJob};
use crate::view::decode_stored;

/// The state machine of a table group: [`TableFsm`] plus its applied state.
#[derive(Debug)]
pub struct TableMachine {
    fsm: TableFsm,
    state: AppliedState,
    /// Where snapshots are installed.
    engine: Engine,
    id: u64,
    name: String,
    /// This node's raft id (a load marker names the node holding its download).
    node_id: u64,
    /// Where load markers fetch from (follower clusters only).
    source: Option<Arc<dyn SnapshotSource>>,
    /// The stored leader index (0 for none), published for [`Table::applied_leader_index`]
    /// before the group announces the apply, so waiters need no storage read.
    leader_index: Arc<AtomicU64>,
    /// A replicated batch was refused as a gap: this replica's state is behind its
    /// group's, and the group should ask its leader for a raft snapshot.
    repair: bool,
}

impl TableMachine {
    /// Loads table `id`'s applied state; load markers fetch from `source`.
    pub fn load(
        engine: Engine,
        id: u64,
        name: &str,
        node_id: u64,
        source: Option<Arc<dyn SnapshotSource>>,
    ) -> Result<Self> {
        let state = read_applied(&engine, id)?;
        Ok(Self {
            fsm: TableFsm::new(engine.clone(), id),
            leader_index: Arc::new(AtomicU64::new(state.leader_index.unwrap_or(0))),
            state,
            engine,
            id,
            name: name.to_owned(),
            node_id,
            source,
            repair: false,
        })
    }

    /// The cell this machine publishes its stored leader index in.
    pub(crate) fn leader_index_cell(&self) -> Arc<AtomicU64> {
        self.leader_index.clone()
    }

    fn publish(&self) {
        self.leader_index
            .store(self.state.leader_index.unwrap_or(0), Ordering::Release);
    }

    /// Whether this replica skips `marker`: it already holds that leader index or a newer
    /// one (loads never go back, except after a reset, which stores 0). A restore is
    /// never skipped.
    fn skips(&self, marker: &LoadMarker) -> bool {
        marker.upload.is_none()
            && self
                .state
                .leader_index
                .is_some_and(|stored| stored != 0 && stored >= marker.leader_index)
    }
}

fn read_applied(engine: &Engine, id: u64) -> Result<AppliedState> {
    match engine.get(keys::CF_META, &keys::applied_key(id))? {
        Some(b) => AppliedState::decode(id, &b),
        None => Ok(AppliedState::default()),
    }
}

impl StateMachine for TableMachine {
    type Output = ApplyOutput;

    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Result<ApplyOutput> {
        // A load marker gets here only when this replica skips it: an empty entry.
        let output = match import::decode_marker(self.id, data) {
            Some(marker) => {
                marker?;
                let mut out = self.fsm.apply_entry(index, term, &[], &mut self.state)?;
                out.skipped = true;
                out.revision = self.state.leader_index.unwrap_or(0);
                out
            }
            None => self.fsm.apply_entry(index, term, data, &mut self.state)?,
        };
        if matches!(output.refused, Some(Refusal::Gap { .. })) {
            self.repair = true;
        }
        self.publish();
        Ok(output)
    }

    fn applied_index(&self) -> u64 {
        self.state.index
    }

    fn snapshot_installer(
        &self,
        snapshot: &Snapshot,
        raft_state: WriteBatch,
    ) -> Result<InstallJob> {
        snapshot::installer(&self.engine, self.id, raft_state, &snapshot.data)
    }

    fn reload(&mut self) -> Result<()> {
        self.state = read_applied(&self.engine, self.id)?;
        self.publish();
        Ok(())
    }

    fn compacted(&self, index: u64) -> Option<Vec<u8>> {
        // Only leader tables: a follower table's history belongs to its leader cluster.
        self.state.leader_index.is_none().then(|| {
            Command {
                r#type: flotilla_proto::mvcc::v1::command::CommandType::Gc as i32,
                leader_index: Some(index),
                ..Default::default()
            }
            .encode_to_vec()
        })
    }

    fn external_load(&self, index: u64, data: &[u8], exact: bool) -> Option<LoadPlan> {
        let marker = import::decode_marker(self.id, data)?.ok()?;
        if self.skips(&marker) {
            return None;
        }
        let Some(source) = &self.source else {
            tracing::warn!(
                table = self.name,
                "a load marker on a node without a snapshot source; skipped"
            );
            return None;
        };
        // Only the node holding the download loads it (see `crate::import`); the others
        // get the marker's state from their group, but for the last resort (which a
        // restore does not have: its upload exists nowhere else).
        let fetch = if let Some(upload) = marker.upload {
            (marker.holder == self.node_id).then(|| {
                source.fetch(
                    &self.name,
                    self.id,
                    Wanted::Upload {
                        upload,
                        revision: index,
                    },
                )
            })
        } else if !exact {
            Some(source.fetch(&self.name, self.id, Wanted::AtLeast(marker.leader_index)))
        } else if marker.holder == self.node_id {
            Some(source.fetch(&self.name, self.id, Wanted::Exactly(marker.leader_index)))
        } else {
            None
        };
        Some(LoadPlan { marker, fetch })
    }

    fn load_installer(
        &self,
        index: u64,
        term: u64,
        marker: &LoadMarker,
        loaded: LoadedSnapshot,
    ) -> Result<(InstallJob, ApplyOutput)> {
        let output = ApplyOutput {
            revision: loaded.leader_index,
            succeeded: true,
            ..Default::default()
        };
        let job = import::installer(
            &self.engine,
            self.id,
            (index, term),
            marker,
            loaded,
            &self.state,
        );
        Ok((job, output))
    }

    fn load_installed(&self, marker: &LoadMarker) {
        if let Some(source) = &self.source {
            source.installed(self.id, marker);
        }
    }

    fn take_repair_request(&mut self) -> bool {
        std::mem::take(&mut self.repair)
    }
}

/// A handle to one table; cheap to clone.
#[derive(Debug, Clone)]
pub struct Table {
    name: String,
    group: GroupHandle<ApplyOutput>,
    engine: Engine,
    /// Published by the table's machine (see [`TableMachine::leader_index_cell`]).
    leader_index: Arc<AtomicU64>,
    /// The leader cluster's id of the table this one replicates (follower clusters).
    source_id: Option<u64>,
}

impl Table {
    pub(crate) fn new(
        name: String,
        group: GroupHandle<ApplyOutput>,
        engine: Engine,
        leader_index: Arc<AtomicU64>,
        source_id: Option<u64>,
    ) -> Self {
        Self {
            name,
            group,
            engine,
            leader_index,
            source_id,
        }
    }

    /// On a follower cluster, the leader cluster's id of the table this one replicates.
    pub fn source_id(&self) -> Option<u64> {
        self.source_id
    }

    /// The leader-cluster index this replica has applied (0 if none: leader clusters, or
    /// a follower table not yet replicated). Updated before [`Self::applied_watch`] moves.
    pub fn applied_leader_index(&self) -> u64 {
        self.leader_index.load(Ordering::Acquire)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's numeric id (also its raft group / shard id).
    pub fn id(&self) -> u64 {
        self.group.id()
    }

    /// Raft status of the table's group on this node.
    pub fn status(&self) -> &GroupStatus {
        self.group.status()
    }

    /// Replicates and applies `cmd`; returns once it is durable and applied. A command
    /// every replica refused (its results would not fit a response) is an error.
    pub async fn propose(&self, cmd: &Command) -> Result<ApplyOutput> {
        self.propose_bytes(cmd.encode_to_vec()).await
    }

    async fn propose_bytes(&self, data: Vec<u8>) -> Result<ApplyOutput> {
        let mut out = self.group.propose(data).await?;
        match out.refused.take() {
            Some(refusal) => Err(refusal.into()),
            None => Ok(out),
        }
    }

    /// Proposes a follower's batch of its leader's commands (a SEQUENCE, see
    /// [`fsm::encode_replicated`]) continuing from leader index `continues_from`.
    /// A batch that would leave a gap is refused ([`Error::ReplicationGap`]).
    pub async fn propose_replicated(
        &self,
        continues_from: u64,
        seq: &Command,
    ) -> Result<ApplyOutput> {
        self.propose_bytes(fsm::encode_replicated(continues_from, seq))
            .await
    }

    /// Waits until everything committed before this call is applied here.
    pub async fn read_barrier(&self) -> Result<()> {
        self.group.read_barrier().await
    }

    /// Proposes a load marker (see [`crate::import`]): every replica swaps in the state
    /// at exactly `marker.leader_index` (or, for a restore, the holder's upload). Returns
    /// once this replica has; the output's revision is the leader index it holds then
    /// (for a restore: the marker's raft index, every restored key's revision).
    pub async fn propose_load(&self, marker: LoadMarker) -> Result<ApplyOutput> {
        self.propose_bytes(import::encode_marker(marker)).await
    }

    /// The applied index, watched: changes as entries are applied here. The receiver has
    /// seen the current value.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.group.applied_watch()
    }

    /// This replica's applied state as stored (applied index, stored leader index).
    pub async fn applied_state(&self) -> Result<AppliedState> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || read_applied(&engine, id)).await
    }

    /// Committed commands from `from` to `to` (inclusive), about `max_bytes` at most.
    pub async fn read_log(&self, from: u64, to: u64, max_bytes: usize) -> Result<LogRead> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || export::read_log(&engine, id, from, to, max_bytes)).await
    }

    /// Runs `read` against this replica as of one instant (blocking: call it off the
    /// reactor): full and incremental exports, whose applied state and data must agree.
    pub fn read_at_blocking<T, E>(
        &self,
        read: impl FnOnce(&TableAt<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        read(&TableAt::new(&self.engine, self.id()))
    }

    /// The digest of this replica's data (see [`TableDigest`]).
    pub async fn digest(&self) -> Result<TableDigest> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || TableAt::new(&engine, id).digest()).await
    }

    /// Waits until this replica has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        self.group.wait_applied(index).await
    }

    /// Resolves once the table's group task has exited.
    pub async fn stopped(&self) {
        self.group.stopped().await;
    }

    /// Reads one page of `query`: a point read that memory answers right here, anything
    /// else off the async reactor.
    pub async fn read_page(&self, query: RangeQuery) -> Result<RangePage> {
        if query.is_point()
            && let Some(page) = self.read_point_from_memory(&query)?
        {
            return Ok(page);
        }
        let at = self.point_in_time();
        read_page_at(at, query).await
    }

    /// A point read from the memtables and block cache only (microseconds, no file
    /// read, no snapshot: one key is read atomically), or `None` when a file must be read.
    /// Most reads of a working set that fits the cache end here, without the thread
    /// hand-off of the blocking pool.
    fn read_point_from_memory(&self, query: &RangeQuery) -> Result<Option<RangePage>> {
        let key = keys::data_key(self.id(), &query.key);
        let Some(stored) = self.engine.get_from_memory(keys::CF_DATA, &key)? else {
            return Ok(None);
        };
        let value = stored
            .map(|bytes| decode_stored(self.id(), &query.key, &bytes))
            .transpose()?;
        Ok(Some(query.point_page(value, &mut ResponseBudget::page())))
    }

    /// This table as of now, to read several pages from one instant (IterateRange).
    pub fn point_in_time(&self) -> Arc<OwnedTableAt> {
        Arc::new(OwnedTableAt::new(self.engine.clone(), self.id()))
    }

    /// Evaluates a read-only Txn (every op a Range) against one instant of the local
    /// state: every compare and range sees the same data.
    pub async fn read_txn(&self, txn: Txn) -> Result<(bool, Vec<ResponseOp>)> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || {
            let at = TableAt::new(&engine, id);
            fsm::read_txn(&at.view(), txn).map_err(|stop| match stop {
                Stop::Failed(e) => e,
                Stop::Refused(r) => r.into(),
            })
        })
        .await
    }
}

/// Reads one page of `query` from `at` (off the async reactor).
pub async fn read_page_at(at: Arc<OwnedTableAt>, query: RangeQuery) -> Result<RangePage> {
    blocking(move || at.read_page(&query, &mut ResponseBudget::page())).await
}

/// Runs blocking storage work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::TaskFailed(e.to_string()))?
}
