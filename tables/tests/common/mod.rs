//! Three in-process nodes over the in-memory network, and the helpers the cluster tests
//! share: waiting with a deadline, writes that may fail, and whole-table comparisons.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_tables::group::GroupConfig;
use flotilla_tables::import::SnapshotSource;
use flotilla_tables::range::RangeQuery;
use flotilla_tables::{Node, NodeConfig, Table};
use flotilla_testkit::memory_network::MemoryNetwork;

pub const IDS: [u64; 3] = [1, 2, 3];
pub const DEADLINE: Duration = Duration::from_secs(20);

/// key -> (value, revision)
pub type Data = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub net: Arc<MemoryNetwork>,
    pub nodes: Vec<Node>,
    pub registries: Vec<prometheus::Registry>,
    pub retention: u64,
}

impl Cluster {
    /// Three nodes over one in-memory network.
    pub fn start(retention: u64) -> Self {
        let net = MemoryNetwork::new();
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        let mut registries = Vec::new();
        for id in IDS {
            let dir = tempfile::tempdir().expect("tempdir");
            let registry = prometheus::Registry::new();
            nodes.push(open(&net, id, dir.path(), retention, &registry));
            dirs.push(dir);
            registries.push(registry);
        }
        Self {
            dirs,
            net,
            nodes,
            registries,
            retention,
        }
    }

    /// Stops node `id`, deletes its data and starts it again empty.
    pub async fn wipe(&mut self, id: u64) {
        let i = (id - 1) as usize;
        self.net.detach(id);
        self.nodes[i].shutdown().await;
        let fresh = tempfile::tempdir().expect("tempdir");
        let old = std::mem::replace(&mut self.dirs[i], fresh);
        self.registries[i] = prometheus::Registry::new();
        let node = open(
            &self.net,
            id,
            self.dirs[i].path(),
            self.retention,
            &self.registries[i],
        );
        // Only now is the old node (and the RocksDB it holds) gone.
        drop(std::mem::replace(&mut self.nodes[i], node));
        drop(old);
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn table(&self, id: u64, name: &str) -> Table {
        self.node(id).table(name).expect("table exists")
    }

    /// Creates `name` through node 1 and waits until every node has it with a leader.
    pub async fn create(&self, name: &str) {
        retry(async || self.node(1).create_table(name).await.ok()).await;
        for id in IDS {
            wait(async || self.node(id).table(name).is_ok()).await;
        }
        self.leader(name, &IDS).await;
    }

    /// The leader of `name` that every node in `among` agrees on.
    pub async fn leader(&self, name: &str, among: &[u64]) -> u64 {
        let mut leader = 0;
        wait(async || {
            let seen: Vec<u64> = among
                .iter()
                .map(|&id| self.table(id, name).status().leader.load(Relaxed))
                .collect();
            leader = seen[0];
            leader != 0 && among.contains(&leader) && seen.iter().all(|&l| l == leader)
        })
        .await;
        leader
    }

    /// The value of counter `name` on node `id`.
    pub fn counter(&self, id: u64, name: &str) -> f64 {
        self.registries[(id - 1) as usize]
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| f.get_metric().first().map(|m| m.get_counter().get_value()))
            .unwrap_or(0.0)
    }

    /// The value of gauge `name` on node `id` (0 when absent).
    pub fn gauge(&self, id: u64, name: &str) -> f64 {
        self.registries[(id - 1) as usize]
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
            .unwrap_or(0.0)
    }

    pub async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

/// Node `id`'s configuration with a fast clock (10 ms ticks, election after 10-20
/// ticks), loading snapshots from outside the log through `source`.
pub fn config(
    id: u64,
    dir: &std::path::Path,
    source: Option<Arc<dyn SnapshotSource>>,
) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        voters: IDS.to_vec(),
        group: GroupConfig {
            node_id: id,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 2,
            ..GroupConfig::default()
        },
        raft_threads: 1,
        snapshot_source: source,
    }
}

/// Waits until every one of `nodes` has table `name` with a known raft leader; its
/// handle on each node, in order.
pub async fn table_on_every_node(nodes: &[Node], name: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    for node in nodes {
        let mut found = None;
        let ready = flotilla_testkit::eventually(DEADLINE, async || {
            found = node.table(name).ok();
            found
                .as_ref()
                .is_some_and(|t| t.status().leader.load(Relaxed) != 0)
        })
        .await;
        assert!(ready, "every node has {name} with a leader");
        tables.extend(found);
    }
    tables
}

/// Node `id` (see [`config`]) keeping `retention` log entries.
pub fn open(
    net: &Arc<MemoryNetwork>,
    id: u64,
    dir: &std::path::Path,
    retention: u64,
    registry: &prometheus::Registry,
) -> Node {
    let mut config = config(id, dir, None);
    config.group.log_retention_entries = retention;
    Node::open(config, net.transport(id), registry).expect("open node")
}

pub fn put(key: &[u8], value: &[u8]) -> Command {
    Command {
        r#type: CommandType::Put as i32,
        kv: Some(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls `check` until true; fails the test after [`DEADLINE`].
pub async fn wait(mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `attempt` until it returns a value; fails the test after [`DEADLINE`].
pub async fn retry<T>(mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(Instant::now() < deadline, "no success within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `key` through `table` with a short timeout; the revision if acknowledged.
pub async fn try_put(table: &Table, key: &[u8], value: &[u8]) -> Option<i64> {
    let out = tokio::time::timeout(Duration::from_secs(2), table.propose(&put(key, value))).await;
    match out {
        Ok(Ok(out)) => Some(out.revision as i64),
        _ => None,
    }
}

/// Everything table `name` holds on node `id`, read locally (serializable).
pub async fn local_data(c: &Cluster, id: u64, name: &str) -> Data {
    let all = RangeQuery {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let page = c.table(id, name).read_page(all).await.expect("read");
    page.kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect()
}

/// Waits until all nodes hold the same data, and returns it.
pub async fn converged(c: &Cluster, name: &str) -> Data {
    let mut data = Data::new();
    wait(async || {
        let d1 = local_data(c, 1, name).await;
        let same = local_data(c, 2, name).await == d1 && local_data(c, 3, name).await == d1;
        data = d1;
        same
    })
    .await;
    data
}

/// Whether table `name` on node `id` installs a raft snapshot within [`DEADLINE`]. Data
/// converging is not enough to read the counter at once: the snapshot's data is readable
/// as soon as its file is ingested, and the group counts the install only after the
/// synced write that completes it.
pub async fn installed_a_snapshot(c: &Cluster, id: u64, name: &str) -> bool {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let table = c.table(id, name);
        if table.status().snapshots_installed.load(Relaxed) >= 1 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn assert_holds(data: &Data, acked: &Data) {
    for (k, v) in acked {
        assert_eq!(
            data.get(k),
            Some(v),
            "acknowledged write {} lost or changed",
            String::from_utf8_lossy(k)
        );
    }
}
