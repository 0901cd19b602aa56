//! A node's tables: opens the shared engine, starts the log writer, the catalog group and
//! one group per table, and keeps the name -> table map the API layer uses.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::Registry;
use prost::Message as _;
use rocksdb::WriteBatch;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    self, CatalogCommand, CatalogEntry, CatalogListener, CatalogMachine, CatalogOutcome,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::group::{self, GroupConfig, GroupHandle, GroupParts};
use crate::import::SnapshotSource;
use crate::keys::{self, CATALOG_ID};
use crate::log_writer::{DEFAULT_QUEUE_LIMIT, LogWriter, LogWriterMetrics};
use crate::metrics::TablesMetrics;
use crate::raft_storage::{self, RaftStorage};
use crate::replace;
use crate::router::Router;
use crate::snapshot;
use crate::table::{Table, TableMachine};
use crate::transport::{Outbox, Transport};

/// Directory under the data dir where received snapshots are staged.
const SNAPSHOT_DIR: &str = "snapshots";

/// How to open a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory of the node's RocksDB.
    pub data_dir: PathBuf,
    /// Raft ids of all voters of every group (static membership).
    pub voters: Vec<u64>,
    /// Group timing and retention; `group.node_id` is this node's raft id.
    pub group: GroupConfig,
    /// Threads of the runtime that drives raft groups and applies entries.
    pub raft_threads: usize,
    /// Where load markers fetch snapshots from: the leader cluster, on a follower cluster.
    pub snapshot_source: Option<Arc<dyn SnapshotSource>>,
}

struct Shared {
    engine: Engine,
    config: NodeConfig,
    log_writer: LogWriter,
    transport: Arc<dyn Transport>,
    metrics: TablesMetrics,
    runtime: tokio::runtime::Handle,
    cancel: CancellationToken,
    tables: DashMap<String, (Table, CancellationToken)>,
    router: Router,
    /// This node started with no catalog state (a new cluster, or its data was lost):
    /// the replicas of tables that existed before must fence their votes.
    fresh: bool,
    /// On a fresh node, the catalog leader's commit index in the first append the
    /// catalog got (0 until then): tables created at or below it may predate the loss.
    rejoin_commit: Arc<std::sync::atomic::AtomicU64>,
}

/// Listener given to the catalog machine; weak so the catalog does not keep the node alive.
struct Listener(Weak<Shared>);

impl CatalogListener for Listener {
    fn created(&self, index: u64, id: u64, name: &str, source_id: Option<u64>) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        // A table this node may have voted in before it lost its state: created at or
        // below what the catalog had committed when this node rejoined (0: not known yet,
        // so assume so). Tables created later are new to every replica.
        let fence = shared.fresh && {
            let rejoined_at = shared
                .rejoin_commit
                .load(std::sync::atomic::Ordering::Acquire);
            rejoined_at == 0 || index <= rejoined_at
        };
        match shared.open_table(id, name, source_id, fence) {
            Ok(table) => {
                // One replica, chosen by table id so that leadership spreads over the
                // nodes, starts the election at once instead of all of them waiting out
                // an election timeout. (PreVote keeps this from disturbing a table that
                // already has a leader, e.g. when a wiped node replays the catalog.)
                let voters = &shared.config.voters;
                let starter = voters.get((id % voters.len().max(1) as u64) as usize);
                if voters.len() > 1 && starter == Some(&shared.config.group.node_id) {
                    let _ = table.campaign();
                }
            }
            Err(e) => tracing::error!(table = name, id, "cannot start created table: {e}"),
        }
    }

    fn dropped(&self, id: u64, name: &str) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        shared.metrics.remove(name);
        let Some((_, (table, cancel))) = shared.tables.remove(name) else {
            return;
        };
        shared.router.unregister(id);
        cancel.cancel();
        let engine = shared.engine.clone();
        shared.runtime.spawn(async move {
            // Erase only after the group can no longer write the table's ranges.
            table.stopped().await;
            let erased =
                tokio::task::spawn_blocking(move || catalog::erase_dropped(&engine, id)).await;
            match erased {
                Ok(Ok(())) => tracing::info!(id, "dropped table erased"),
                Ok(Err(e)) => {
                    tracing::error!(id, "erasing dropped table: {e} (retried at next start)")
                }
                Err(e) => tracing::error!(id, "erasing dropped table: {e} (retried at next start)"),
            }
        });
    }
}

impl Shared {
    /// Starts table `id`'s group; `fence` when its replica here lost its raft state and
    /// must fence its votes (see `group::fence`).
    fn open_table(
        &self,
        id: u64,
        name: &str,
        source_id: Option<u64>,
        fence: bool,
    ) -> Result<GroupHandle<crate::fsm::ApplyOutput>> {
        let storage = RaftStorage::load(self.engine.clone(), id)?;
        let machine = TableMachine::load(
            self.engine.clone(),
            id,
            name,
            self.config.group.node_id,
            self.config.snapshot_source.clone(),
        )?;
        let leader_index = machine.leader_index_cell();
        let cancel = self.cancel.child_token();
        let handle = group::spawn(
            GroupParts {
                id,
                name: name.to_owned(),
                config: self.config.group.clone(),
                storage,
                machine,
                log_writer: self.log_writer.clone(),
                transport: self.transport.clone() as Arc<dyn Outbox>,
                metrics: self.metrics.group(name),
                cancel: cancel.clone(),
                vote_fence: fence.then_some(None),
            },
            &self.runtime,
        )?;
        self.router.register(id, Arc::new(handle.clone()));
        let table = Table::new(
            name.to_owned(),
            handle.clone(),
            self.engine.clone(),
            leader_index,
            source_id,
        );
        self.tables.insert(name.to_owned(), (table, cancel));
        Ok(handle)
    }
}

/// One node's tables and the machinery under them.
pub struct Node {
    shared: Arc<Shared>,
    catalog: GroupHandle<CatalogOutcome>,
    /// The runtime driving the groups; taken on shutdown.
    runtime: parking_lot::Mutex<Option<tokio::runtime::Runtime>>,
    /// Joined on shutdown, so the engine is released when `shutdown` returns.
    log_writer_thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("engine", &self.shared.engine)
            .finish()
    }
}

impl Node {
    /// Opens the node's storage and starts every group. Metrics go into `registry`.
    pub fn open(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        registry: &Registry,
    ) -> Result<Self> {
        crate::files::create_dir(&config.data_dir)?;
        let engine = Engine::open(&config.data_dir)?;
        // Finish interrupted replaces (snapshot installs, loads) first: one may belong to
        // a table that was dropped since, whose data the erase below must then remove too.
        replace::redo_replaces(&engine)?;
        let snapshot_dir = config.data_dir.join(SNAPSHOT_DIR);
        snapshot::clean_staging(&snapshot_dir);
        for id in catalog::dropped(&engine)? {
            tracing::info!(id, "erasing table dropped before the last stop");
            catalog::erase_dropped(&engine, id)?;
        }
        let metrics_err = |e: prometheus::Error| Error::Startup(format!("metrics: {e}"));
        let metrics = TablesMetrics::new(registry).map_err(metrics_err)?;
        let lw_metrics = LogWriterMetrics::new(registry).map_err(metrics_err)?;
        let (log_writer, log_writer_thread) =
            LogWriter::start(engine.clone(), lw_metrics, DEFAULT_QUEUE_LIMIT)
                .map_err(|e| Error::Startup(format!("log writer thread: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.raft_threads.max(1))
            .thread_name("raft")
            .enable_all()
            .build()
            .map_err(|e| Error::Startup(format!("raft runtime: {e}")))?;
        let fresh = engine
            .get(keys::CF_META, &keys::conf_state_key(CATALOG_ID))?
            .is_none();
        if fresh {
            let mut batch = WriteBatch::default();
            raft_storage::bootstrap(&engine, &mut batch, CATALOG_ID, &config.voters);
            engine.write(batch, true)?;
        }
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            config: config.clone(),
            log_writer: log_writer.clone(),
            transport: transport.clone(),
            metrics: metrics.clone(),
            runtime: runtime.handle().clone(),
            cancel: CancellationToken::new(),
            tables: DashMap::new(),
            router: Router::new(config.group.node_id, engine.clone(), snapshot_dir),
            fresh,
            rejoin_commit: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        });
        transport.attach(shared.router.clone());
        for entry in catalog::list(&engine)? {
            shared.open_table(entry.id, &entry.name, entry.source_id, false)?;
        }
        let machine = CatalogMachine::load(
            engine.clone(),
            config.voters.clone(),
            Arc::new(Listener(Arc::downgrade(&shared))),
        )?;
        // The catalog keeps its whole log: it is small (one entry per create or drop), and
        // a replica that joins late rebuilds its tables by replaying it, which a catalog
        // snapshot would have to do by reconciling table sets instead.
        let catalog_config = GroupConfig {
            log_retention_entries: u64::MAX,
            log_retention_bytes: u64::MAX,
            ..config.group.clone()
        };
        let catalog = group::spawn(
            GroupParts {
                id: CATALOG_ID,
                name: "__catalog".into(),
                config: catalog_config,
                storage: RaftStorage::load(engine, CATALOG_ID)?,
                machine,
                log_writer,
                transport: transport as Arc<dyn Outbox>,
                metrics: metrics.group("__catalog"),
                cancel: shared.cancel.child_token(),
                vote_fence: fresh.then(|| Some(shared.rejoin_commit.clone())),
            },
            runtime.handle(),
        )?;
        shared
            .router
            .register(CATALOG_ID, Arc::new(catalog.clone()));
        Ok(Self {
            shared,
            catalog,
            runtime: parking_lot::Mutex::new(Some(runtime)),
            log_writer_thread: parking_lot::Mutex::new(Some(log_writer_thread)),
        })
    }

    /// Creates table `name`; returns its id once it is ready for requests.
    pub async fn create_table(&self, name: &str) -> Result<u64> {
        self.create(name, 0).await
    }

    /// Creates table `name` replicating the leader cluster's table `source_id` (follower
    /// clusters); returns its id.
    pub async fn create_replica(&self, name: &str, source_id: u64) -> Result<u64> {
        self.create(name, source_id).await
    }

    async fn create(&self, name: &str, source_id: u64) -> Result<u64> {
        let cmd = CatalogCommand {
            op: CatalogCommand::CREATE,
            name: name.to_owned(),
            source_id,
        };
        match self.catalog.propose(cmd.encode_to_vec()).await? {
            CatalogOutcome::Created(id) => Ok(id),
            CatalogOutcome::AlreadyExists => Err(Error::TableExists),
            other => Err(Error::corrupt(
                CATALOG_ID,
                format!("a create answered {other:?}"),
            )),
        }
    }

    /// Every table of the catalog as stored, including one whose group could not be
    /// started here: what this cluster has, as opposed to what it serves right now.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || catalog::list(&engine))
            .await
            .map_err(|e| Error::TaskFailed(e.to_string()))?
    }

    /// Drops table `name` and (in the background) erases its data.
    pub async fn delete_table(&self, name: &str) -> Result<()> {
        let cmd = CatalogCommand {
            op: CatalogCommand::DROP,
            name: name.to_owned(),
            source_id: 0,
        };
        match self.catalog.propose(cmd.encode_to_vec()).await? {
            CatalogOutcome::Dropped(_) => Ok(()),
            CatalogOutcome::NotFound => Err(Error::TableNotFound),
            other => Err(Error::corrupt(
                CATALOG_ID,
                format!("a drop answered {other:?}"),
            )),
        }
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Result<Table> {
        self.shared
            .tables
            .get(name)
            .map(|t| t.0.clone())
            .ok_or(Error::TableNotFound)
    }

    /// All tables, sorted by name.
    pub fn tables(&self) -> Vec<Table> {
        let mut out: Vec<Table> = self.shared.tables.iter().map(|t| t.0.clone()).collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// Waits until the catalog has a leader and has applied everything committed, so
    /// table lookups reflect every acknowledged create and drop.
    pub async fn catalog_barrier(&self) -> Result<()> {
        self.catalog.read_barrier().await
    }

    /// Whether this node's replica of the catalog is its raft leader (one node per
    /// cluster acts for the cluster, e.g. a follower cluster's table reconciliation).
    pub fn leads_catalog(&self) -> bool {
        self.catalog
            .status()
            .leader
            .load(std::sync::atomic::Ordering::Relaxed)
            == self.node_id()
    }

    /// Where raft traffic from peers enters this node (for the transport's server side).
    pub fn router(&self) -> Router {
        self.shared.router.clone()
    }

    /// The node's raft id.
    pub fn node_id(&self) -> u64 {
        self.shared.config.group.node_id
    }

    /// Refreshes gauges that are sampled rather than pushed (RocksDB size).
    pub fn refresh_metrics(&self) {
        let size = self.shared.engine.approximate_size();
        self.shared
            .metrics
            .db_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Stops every group (each waits for its in-flight log writes) and flushes RocksDB.
    /// Requests after this fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        let tables = self.tables();
        let wait_all = async {
            for t in &tables {
                t.stopped().await;
            }
            self.catalog.stopped().await;
        };
        if tokio::time::timeout(Duration::from_secs(10), wait_all)
            .await
            .is_err()
        {
            tracing::warn!("groups did not stop within 10s");
        }
        self.shared.tables.clear();
        let runtime = self.runtime.lock().take();
        let log_writer = self.shared.log_writer.clone();
        let thread = self.log_writer_thread.lock().take();
        let engine = self.shared.engine.clone();
        let finished = tokio::task::spawn_blocking(move || {
            // Drop every task (and the engine handles they hold), then let the log writer
            // finish and exit, then flush: when this returns only `Node` holds the engine.
            if let Some(rt) = runtime {
                rt.shutdown_timeout(Duration::from_secs(5));
            }
            log_writer.stop();
            if let Some(t) = thread
                && t.join().is_err()
            {
                tracing::error!("log writer thread panicked");
            }
            engine.flush()
        })
        .await;
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("flush on shutdown: {e}"),
            Err(e) => tracing::error!("shutdown: {e}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}
