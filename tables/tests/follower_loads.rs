//! A follower cluster's table group (three nodes in one process) loading leader
//! snapshots through load markers, with a fake leader cluster as the snapshot source.
//!
//! The hole this guards (issue 10, item 1): replicas that loaded *different* leader
//! indexes and then took batches from one another's worker could skip commands. Now only
//! the node that holds the marker's download loads it, the others take exactly that state
//! from their group, and a batch that continues from beyond a replica's leader index is
//! refused on every replica alike.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::IDS;
use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_tables::import::{Fetch, LoadMarker, LoadedSnapshot, SnapshotSource, Wanted};
use flotilla_tables::replace::TableSstWriter;
use flotilla_tables::values::StoredValue;
use flotilla_tables::{Error, Node, Table};
use flotilla_testkit::eventually;
use flotilla_testkit::memory_network::MemoryNetwork;
use parking_lot::Mutex;

const DEADLINE: Duration = Duration::from_secs(30);

/// The leader cluster's table as of leader index `index`: keys `k0..k{index}`.
fn leader_state(index: u64) -> Vec<(Vec<u8>, StoredValue)> {
    (1..=index)
        .map(|i| {
            let value = StoredValue {
                create_revision: i,
                mod_revision: i,
                value: format!("v{i}").into_bytes(),
            };
            (format!("k{i:04}").into_bytes(), value)
        })
        .collect()
}

/// One node's snapshot source: what it "downloaded" (leader index per table id), served
/// only as that exact index; any other request is unavailable here, like a real node's
/// kept downloads.
#[derive(Default)]
struct Downloads {
    dir: Mutex<Option<tempfile::TempDir>>,
    held: Mutex<HashMap<u64, u64>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl SnapshotSource for Downloads {
    fn fetch(&self, _name: &str, table_id: u64, wanted: Wanted) -> Fetch {
        self.fetches.fetch_add(1, Relaxed);
        let held = self.held.lock().get(&table_id).copied();
        let result = match (wanted, held) {
            (Wanted::Exactly(want), Some(have)) if want == have => self.stage(table_id, have),
            (Wanted::Exactly(want), _) => Err(Error::LoadUnavailable { leader_index: want }),
            (Wanted::AtLeast(want), Some(have)) if have >= want => self.stage(table_id, have),
            (Wanted::AtLeast(want), _) => Err(Error::LoadUnavailable { leader_index: want }),
            (Wanted::Upload { .. }, _) => Err(Error::LoadUnavailable { leader_index: 0 }),
        };
        Box::pin(async move { result })
    }
}

impl Downloads {
    fn stage(&self, table_id: u64, index: u64) -> flotilla_tables::Result<LoadedSnapshot> {
        let mut dir = self.dir.lock();
        let dir = dir.get_or_insert_with(|| tempfile::tempdir().expect("staging dir"));
        let path = dir.path().join(format!("{table_id}-{index}.sst"));
        let mut writer = TableSstWriter::create(&path, table_id)?;
        for (key, value) in leader_state(index) {
            writer.put(&key, &value)?;
        }
        Ok(LoadedSnapshot {
            staged: writer.finish()?,
            leader_index: index,
        })
    }
}

fn open(net: &Arc<MemoryNetwork>, id: u64, dir: &std::path::Path, source: Arc<Downloads>) -> Node {
    let config = common::config(id, dir, Some(source));
    Node::open(config, net.transport(id), &prometheus::Registry::new()).expect("open node")
}

/// A replicated PUT of key `k{index}` at leader index `index`.
fn leader_put(index: u64) -> Command {
    Command {
        r#type: CommandType::Put as i32,
        kv: Some(KeyValue {
            key: format!("k{index:04}").into_bytes(),
            value: format!("v{index}").into_bytes(),
            ..Default::default()
        }),
        leader_index: Some(index),
        ..Default::default()
    }
}

/// The batch of leader indexes `from..=to`.
fn batch(from: u64, to: u64) -> Command {
    Command {
        r#type: CommandType::Sequence as i32,
        sequence: (from..=to).map(leader_put).collect(),
        leader_index: Some(to),
        ..Default::default()
    }
}

async fn digests(tables: &[Table]) -> Vec<(u64, [u8; 32], Option<u64>)> {
    let mut out = Vec::new();
    for t in tables {
        let d = t.digest().await.expect("digest");
        out.push((d.keys, d.sha256, d.applied.leader_index));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_loads_and_every_replica_ends_at_the_markers_state() {
    let net = MemoryNetwork::new();
    let dirs: Vec<_> = IDS
        .iter()
        .map(|_| tempfile::tempdir().expect("dir"))
        .collect();
    let sources: Vec<Arc<Downloads>> = IDS.iter().map(|_| Arc::default()).collect();
    let nodes: Vec<Node> = IDS
        .iter()
        .zip(&dirs)
        .zip(&sources)
        .map(|((&id, dir), source)| open(&net, id, dir.path(), source.clone()))
        .collect();
    let ok = eventually(DEADLINE, async || {
        nodes[0].create_replica("t", 7).await.is_ok()
    })
    .await;
    assert!(ok, "table created");
    let tables = common::table_on_every_node(&nodes, "t").await;

    // Node 1 "downloaded" leader index 100; nodes 2 and 3 downloaded 105 (they are
    // ahead), which must never be loaded for a marker naming 100.
    sources[0].held.lock().insert(tables[0].id(), 100);
    for s in &sources[1..] {
        s.held.lock().insert(tables[0].id(), 105);
    }
    let marker = LoadMarker::leader_snapshot(100, 1);
    let loaded = eventually(DEADLINE, async || {
        tables[0].propose_load(marker).await.is_ok()
    })
    .await;
    assert!(loaded, "the marker applied");
    let same = eventually(DEADLINE, async || {
        let d = digests(&tables).await;
        d.iter().all(|x| *x == d[0] && x.2 == Some(100))
    })
    .await;
    assert!(
        same,
        "every replica holds exactly leader index 100: {:?}",
        digests(&tables).await
    );
    assert_eq!(digests(&tables).await[0].0, 100);

    // A batch continuing from 100 applies everywhere; one continuing from 105 (a worker
    // that believed it had 105) is refused on every replica: nothing is skipped.
    let out = eventually(DEADLINE, async || {
        tables[0]
            .propose_replicated(100, &batch(101, 102))
            .await
            .is_ok()
    })
    .await;
    assert!(out, "the continuation applied");
    let gap = tables[0].propose_replicated(105, &batch(106, 106)).await;
    assert!(
        matches!(
            gap,
            Err(Error::ReplicationGap {
                stored: 102,
                continues_from: 105
            })
        ),
        "{gap:?}"
    );
    let same = eventually(DEADLINE, async || {
        let d = digests(&tables).await;
        d.iter().all(|x| *x == d[0] && x.2 == Some(102))
    })
    .await;
    assert!(same, "replicas agree at 102: {:?}", digests(&tables).await);
    assert_eq!(digests(&tables).await[0].0, 102);
    for node in &nodes {
        node.shutdown().await;
    }
}
