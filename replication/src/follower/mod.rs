//! The follower cluster's side (WIRE.md §5.7, §5.8): a manager that keeps the local table
//! set equal to the leader cluster's, one [`worker`] per table pulling its log, snapshot
//! recovery through [`source::LeaderSnapshots`], and the client that forwards writes.

pub mod metrics;
pub mod source;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::mvcc::v1::Command;
use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::replication::v1::MetadataRequest;
use flotilla_proto::replication::v1::metadata_client::MetadataClient;
use flotilla_tables::{Node, Table};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

pub use metrics::ReplicationMetrics;
pub use source::LeaderSnapshots;

use crate::error::{Error, Result};
use crate::identity;

/// A lazily connecting channel to the leader cluster's replication address, dialled
/// through `connector` (plain, or TLS with the follower's replication credentials).
pub fn leader_channel(address: &str, connector: flotilla_tls::TlsConnector) -> Result<Channel> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// State the manager and the workers share.
pub(crate) struct Shared {
    node_id: u64,
    channel: Channel,
    source: LeaderSnapshots,
    metrics: ReplicationMetrics,
    /// Wakes the manager before its interval (a table the leader does not know, a write
    /// to a table this follower lacks).
    reconcile_now: Notify,
    /// Latest error per table, for Cluster/Status.
    errors: Mutex<BTreeMap<String, String>>,
}

impl Shared {
    fn set_error(&self, table: &str, e: String) {
        self.errors.lock().insert(table.to_owned(), e);
    }

    /// Whether `e` is the error `table` reports now.
    fn has_error(&self, table: &str, e: &str) -> bool {
        self.errors.lock().get(table).is_some_and(|cur| cur == e)
    }

    fn clear_error(&self, table: &str) {
        let mut errors = self.errors.lock();
        if !errors.is_empty() {
            errors.remove(table);
        }
    }

    fn count_error(&self, table: &str, kind: &str) {
        self.metrics.errors.with_label_values(&[table, kind]).inc();
    }
}

/// A running follower: what the API layer asks of it.
#[derive(Clone)]
pub struct Follower {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

impl Follower {
    /// A KV client of the leader cluster, for forwarded writes.
    pub fn leader_kv(&self) -> KvClient<Channel> {
        KvClient::new(self.shared.channel.clone())
            .max_decoding_message_size(source::MAX_LEADER_MESSAGE_BYTES)
    }

    /// `"<table>: <error>"` for every table whose replication is failing now.
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect()
    }

    /// Asks the manager to compare table sets with the leader now.
    pub fn reconcile_soon(&self) {
        self.shared.reconcile_now.notify_one();
    }

    /// Re-pulls `table` from the leader cluster: a DUMMY with leader index 0 makes every
    /// replica forget its leader index, and the worker then loads a fresh snapshot.
    pub async fn reset(&self, table: &Table) -> Result<()> {
        let reset = Command {
            table: table.name().as_bytes().to_vec(),
            r#type: CommandType::Dummy as i32,
            leader_index: Some(0),
            ..Default::default()
        };
        table.propose(&reset).await?;
        Ok(())
    }
}

/// How the follower runs.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// Between table-set comparisons with the leader (also done on demand).
    pub reconcile_interval: Duration,
}

/// Starts the manager (and through it the workers) over `node`; it stops on `cancel`.
pub fn start(
    node: Arc<Node>,
    channel: Channel,
    source: LeaderSnapshots,
    metrics: ReplicationMetrics,
    config: FollowerConfig,
    cancel: CancellationToken,
) -> (Follower, JoinHandle<()>) {
    let shared = Arc::new(Shared {
        node_id: node.node_id(),
        channel,
        source,
        metrics,
        reconcile_now: Notify::new(),
        errors: Mutex::new(BTreeMap::new()),
    });
    let manager = Manager {
        node,
        shared: shared.clone(),
        config,
        workers: HashMap::new(),
    };
    let task = tokio::spawn(
        manager
            .run(cancel)
            .instrument(tracing::info_span!("replication-manager")),
    );
    (Follower { shared }, task)
}

struct Manager {
    node: Arc<Node>,
    shared: Arc<Shared>,
    config: FollowerConfig,
    /// Worker per local table (by name and id: a re-created table gets a new worker).
    workers: HashMap<(String, u64), (JoinHandle<()>, CancellationToken)>,
}

/// Where a failing table-set comparison shows in [`Follower::errors`].
const TABLE_SET: &str = "(table set)";

/// How often the manager looks for tables that need a worker.
const WORKER_SWEEP: Duration = Duration::from_millis(200);

/// After a failed comparison with the leader cluster, the next try.
const RECONCILE_RETRY: Duration = Duration::from_secs(1);

/// How one comparison of table sets went.
enum Reconciled {
    Done,
    /// This node does not lead the local catalog (or no node does yet).
    NotLeading,
    Failed,
}

impl Manager {
    async fn run(mut self, cancel: CancellationToken) {
        let mut reconcile = tokio::time::interval(self.config.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(WORKER_SWEEP);
        // A comparison that could not run (the catalog's leader not known yet, the
        // leader cluster unreachable) is retried soon, not a whole interval later.
        let mut retry_at: Option<Instant> = None;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = reconcile.tick() => Some(self.reconcile().await),
                _ = self.shared.reconcile_now.notified() => Some(self.reconcile().await),
                _ = sweep.tick() => {
                    self.sweep(&cancel);
                    match retry_at {
                        Some(at) if Instant::now() >= at => Some(self.reconcile().await),
                        _ => None,
                    }
                }
            };
            match outcome {
                Some(Reconciled::Done) => retry_at = None,
                Some(Reconciled::NotLeading) => retry_at = Some(Instant::now() + WORKER_SWEEP),
                Some(Reconciled::Failed) => retry_at = Some(Instant::now() + RECONCILE_RETRY),
                None => {}
            }
        }
        for (_, (task, stop)) in self.workers.drain() {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Starts a worker for every local table that lacks one; forgets finished ones.
    fn sweep(&mut self, cancel: &CancellationToken) {
        let tables = self.node.tables();
        let live: HashSet<(String, u64)> = tables
            .iter()
            .map(|t| (t.name().to_owned(), t.id()))
            .collect();
        self.workers.retain(|key, (task, stop)| {
            if live.contains(key) && !task.is_finished() {
                return true;
            }
            stop.cancel();
            false
        });
        for table in tables {
            let key = (table.name().to_owned(), table.id());
            if self.workers.contains_key(&key) {
                continue;
            }
            let stop = cancel.child_token();
            let span = tracing::info_span!("replication-worker", table = %key.0);
            let task = tokio::spawn(
                worker::run(self.shared.clone(), table, stop.clone()).instrument(span),
            );
            self.workers.insert(key, (task, stop));
        }
    }

    /// Creates and drops local tables to match the leader's. Only the node leading the
    /// local catalog does it, so follower nodes do not race each other.
    async fn reconcile(&mut self) -> Reconciled {
        if !self.node.leads_catalog() {
            return Reconciled::NotLeading;
        }
        match self.compare().await {
            Ok(()) => {
                self.shared.clear_error(TABLE_SET);
                Reconciled::Done
            }
            Err(e) => {
                let e = e.to_string();
                // Once per distinct failure: a cut link would otherwise log every interval.
                if !self.shared.has_error(TABLE_SET, &e) {
                    tracing::warn!("comparing tables with the leader cluster: {e}");
                }
                self.shared.set_error(TABLE_SET, e);
                Reconciled::Failed
            }
        }
    }

    /// Matches the local tables to the leader's by name and, where the leader says
    /// (a Flotilla leader does, in [`identity::TABLE_IDS_HEADER`]), by the leader's table
    /// id: a table the leader dropped and re-created is dropped and pulled afresh here.
    async fn compare(&mut self) -> Result<()> {
        let mut client = MetadataClient::new(self.shared.channel.clone());
        let response = client.get(MetadataRequest {}).await?;
        let ids = identity::read_table_ids(response.metadata())?;
        let leader: HashMap<String, Option<u64>> = response
            .into_inner()
            .tables
            .into_iter()
            .map(|t| {
                let id = ids.get(&t.name).copied();
                (t.name, id)
            })
            .collect();
        let local: HashMap<String, Option<u64>> = self
            .node
            .catalog()
            .await?
            .into_iter()
            .map(|entry| (entry.name, entry.source_id))
            .collect();
        for (name, source_id) in &leader {
            match local.get(name) {
                None => {}
                Some(have) if source_id.is_none() || have == source_id => continue,
                Some(have) => {
                    tracing::info!(
                        table = name,
                        was = ?have,
                        now = ?source_id,
                        "the leader cluster re-created the table; pulling it afresh"
                    );
                    self.drop_table(name).await?;
                }
            }
            tracing::info!(table = name, "creating a table the leader cluster has");
            let created = match source_id {
                Some(id) => self.node.create_replica(name, *id).await,
                None => self.node.create_table(name).await,
            };
            match created {
                Ok(_) | Err(flotilla_tables::Error::TableExists) => {}
                Err(e) => return Err(Error::Tables(e)),
            }
        }
        for name in local.keys().filter(|name| !leader.contains_key(*name)) {
            tracing::info!(table = name, "dropping a table the leader cluster dropped");
            self.drop_table(name).await?;
        }
        Ok(())
    }

    async fn drop_table(&self, name: &str) -> Result<()> {
        match self.node.delete_table(name).await {
            Ok(()) | Err(flotilla_tables::Error::TableNotFound) => Ok(()),
            Err(e) => Err(Error::Tables(e)),
        }
    }
}
