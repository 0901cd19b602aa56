//! A table as the API layer sees it: proposals through its raft group, reads from the
//! shared RocksDB off the async reactor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::mvcc::v1::{Command, KeyValue, ResponseOp, Txn};
use prost::Message as _;
use raft::eraftpb::Snapshot;
use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::export::{self, LogRead};
use crate::fsm::{ApplyOutput, TableFsm, execute_txn};
use crate::group::{GroupHandle, GroupStatus, StateMachine};
use crate::import::{self, Fetch, LoadedSnapshot, SnapshotSource};
use crate::keys;
use crate::range::{RangePage, RangeQuery};
use crate::snapshot;
use crate::view::{DbView, Overlay};

/// The state machine of a table group: [`TableFsm`] plus its applied state.
#[derive(Debug)]
pub struct TableMachine {
    fsm: TableFsm,
    state: AppliedState,
    /// Where snapshots are installed.
    engine: Engine,
    id: u64,
    name: String,
    /// Where load markers fetch from (follower clusters only).
    source: Option<Arc<dyn SnapshotSource>>,
    /// The stored leader index (0 for none), published for [`Table::applied_leader_index`]
    /// before the group announces the apply, so waiters need no storage read.
    leader_index: Arc<AtomicU64>,
}

impl TableMachine {
    /// Loads table `id`'s applied state; load markers fetch from `source`.
    pub fn load(
        engine: Engine,
        id: u64,
        name: &str,
        source: Option<Arc<dyn SnapshotSource>>,
    ) -> Result<Self> {
        let state = match engine.get(keys::CF_META, &keys::applied_key(id))? {
            Some(b) => AppliedState::decode(&b)?,
            None => AppliedState::default(),
        };
        Ok(Self {
            fsm: TableFsm::new(engine.clone(), id),
            leader_index: Arc::new(AtomicU64::new(state.leader_index.unwrap_or(0))),
            state,
            engine,
            id,
            name: name.to_owned(),
            source,
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
}

impl StateMachine for TableMachine {
    type Output = ApplyOutput;

    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Result<ApplyOutput> {
        let output = self.fsm.apply_entry(index, term, data, &mut self.state);
        self.publish();
        output
    }

    fn applied_index(&self) -> u64 {
        self.state.index
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot, raft_state: WriteBatch) -> Result<()> {
        self.state = snapshot::install(&self.engine, self.id, raft_state, &snapshot.data)?;
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

    fn external_load(&self, data: &[u8]) -> Option<Fetch> {
        // Never load anything older than this replica already holds: the worker goes on
        // from where it was, so going back would lose the entries in between. A marker of
        // 0 is a reset (Maintenance/Reset), which takes whatever the leader cluster has
        // now, even less than before: that is how a follower recovers from a leader
        // cluster with a shorter history (LEADER_BEHIND), e.g. one restored from a backup.
        let marker = import::decode_marker(data)?;
        let min_leader_index = match marker {
            0 => 0,
            floor => floor.max(self.state.leader_index.unwrap_or(0)),
        };
        match &self.source {
            Some(source) => Some(source.fetch(&self.name, self.id, min_leader_index)),
            None => {
                tracing::warn!(
                    table = self.name,
                    "load marker on a node without a snapshot source"
                );
                None
            }
        }
    }

    fn apply_loaded(
        &mut self,
        index: u64,
        term: u64,
        loaded: LoadedSnapshot,
    ) -> Result<ApplyOutput> {
        let revision = loaded.leader_index;
        self.state = import::install(&self.engine, self.id, index, term, loaded, &self.state)?;
        self.publish();
        Ok(ApplyOutput {
            revision,
            succeeded: true,
            ..Default::default()
        })
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
}

impl Table {
    pub(crate) fn new(
        name: String,
        group: GroupHandle<ApplyOutput>,
        engine: Engine,
        leader_index: Arc<AtomicU64>,
    ) -> Self {
        Self {
            name,
            group,
            engine,
            leader_index,
        }
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

    /// Replicates and applies `cmd`; returns once it is durable and applied.
    pub async fn propose(&self, cmd: &Command) -> Result<ApplyOutput> {
        self.group.propose(cmd.encode_to_vec()).await
    }

    /// Waits until everything committed before this call is applied here.
    pub async fn read_barrier(&self) -> Result<()> {
        self.group.read_barrier().await
    }

    /// Proposes a load marker (see [`crate::import`]): every replica swaps in a snapshot
    /// reflecting at least `min_leader_index`. Returns once this replica has; the output's
    /// revision is the leader index it loaded.
    pub async fn propose_load(&self, min_leader_index: u64) -> Result<ApplyOutput> {
        self.group
            .propose(import::encode_marker(min_leader_index))
            .await
    }

    /// The applied index, watched: changes as entries are applied here.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.group.applied_watch()
    }

    /// This replica's applied state as stored (applied index, stored leader index).
    pub async fn applied_state(&self) -> Result<AppliedState> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(
            move || match engine.get(keys::CF_META, &keys::applied_key(id))? {
                Some(b) => AppliedState::decode(&b),
                None => Ok(AppliedState::default()),
            },
        )
        .await
    }

    /// Committed commands from `from` to `to` (inclusive), about `max_bytes` at most.
    pub async fn read_log(&self, from: u64, to: u64, max_bytes: usize) -> Result<LogRead> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || export::read_log(&engine, id, from, to, max_bytes)).await
    }

    /// Walks every live key from one consistent snapshot (blocking: call it off the
    /// reactor); returns the applied state the walk reflects.
    pub fn export_blocking(&self, emit: impl FnMut(KeyValue) -> bool) -> Result<AppliedState> {
        export::for_each_pair(&self.engine, self.id(), emit)
    }

    /// Walks what changed after revision `since` from one consistent snapshot (blocking:
    /// call it off the reactor); see [`export::for_each_change`].
    pub fn changes_blocking(
        &self,
        since: u64,
        emit: impl FnMut(export::Change) -> bool,
    ) -> Result<export::ChangesRead> {
        export::for_each_change(&self.engine, self.id(), since, emit)
    }

    /// Waits until this replica has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        self.group.wait_applied(index).await
    }

    /// Resolves once the table's group task has exited.
    pub async fn stopped(&self) {
        self.group.stopped().await;
    }

    /// Reads one page of `query` (off the async reactor).
    pub async fn read_page(&self, query: RangeQuery, byte_budget: usize) -> Result<RangePage> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || query.read_page(&DbView::new(&engine, id), byte_budget)).await
    }

    /// Evaluates a read-only Txn (every op a Range) against the local state.
    pub async fn read_txn(&self, txn: Txn) -> Result<(bool, Vec<ResponseOp>)> {
        let (engine, id) = (self.engine.clone(), self.id());
        blocking(move || {
            let view = DbView::new(&engine, id);
            execute_txn(&mut Overlay::new(&view), txn, 0)
        })
        .await
    }
}

/// Runs blocking storage work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("read task failed: {e}")))?
}
