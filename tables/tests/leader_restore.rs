//! A leader cluster's table group (three nodes in one process) restoring a backup through
//! a restore marker (issue 13, item 2): only the node holding the upload builds the
//! table, every other replica takes exactly that state from its group (the bytes go over
//! the wire once, as a raft snapshot, never key by key), every restored key carries the
//! marker's raft index as its revision, and the log before the restore is no longer
//! offered to follower clusters.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::IDS;
use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_tables::export::LogRead;
use flotilla_tables::import::{Fetch, LoadMarker, LoadedSnapshot, SnapshotSource, Wanted};
use flotilla_tables::range::{RangeQuery, ResponseBudget};
use flotilla_tables::replace::TableSstWriter;
use flotilla_tables::values::StoredValue;
use flotilla_tables::{Error, Node, Table};
use flotilla_testkit::eventually;
use flotilla_testkit::memory_network::MemoryNetwork;

const DEADLINE: Duration = Duration::from_secs(30);
/// Keys in the uploaded backup.
const RESTORED_KEYS: u64 = 50;
/// The upload number the holder staged.
const UPLOAD: u64 = 9;

/// One node's uploads: the holder has upload [`UPLOAD`], the others none.
struct Uploads {
    dir: tempfile::TempDir,
    holds: bool,
    fetches: AtomicU64,
    /// Restores reported installed (the upload may go).
    installed: AtomicU64,
}

impl SnapshotSource for Uploads {
    fn fetch(&self, _name: &str, table_id: u64, wanted: Wanted) -> Fetch {
        self.fetches.fetch_add(1, Relaxed);
        let result = match wanted {
            Wanted::Upload { upload, revision } if self.holds && upload == UPLOAD => {
                self.stage(table_id, revision)
            }
            _ => Err(Error::LoadUnavailable { leader_index: 0 }),
        };
        Box::pin(async move { result })
    }

    fn installed(&self, _table_id: u64, marker: &LoadMarker) {
        if marker.upload == Some(UPLOAD) {
            self.installed.fetch_add(1, Relaxed);
        }
    }
}

impl Uploads {
    fn stage(&self, table_id: u64, revision: u64) -> flotilla_tables::Result<LoadedSnapshot> {
        let path = self.dir.path().join(format!("{table_id}-{revision}.sst"));
        let mut writer = TableSstWriter::create(&path, table_id)?;
        for i in 0..RESTORED_KEYS {
            let value = StoredValue {
                create_revision: revision,
                mod_revision: revision,
                value: format!("restored{i}").into_bytes(),
            };
            writer.put(format!("r{i:04}").as_bytes(), &value)?;
        }
        Ok(LoadedSnapshot {
            staged: writer.finish()?,
            leader_index: revision,
        })
    }
}

fn open(net: &Arc<MemoryNetwork>, id: u64, dir: &std::path::Path, source: Arc<Uploads>) -> Node {
    let config = common::config(id, dir, Some(source));
    Node::open(config, net.transport(id), &prometheus::Registry::new()).expect("open node")
}

fn put(key: &str) -> Command {
    Command {
        r#type: CommandType::Put as i32,
        kv: Some(KeyValue {
            key: key.as_bytes().to_vec(),
            value: b"old".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn digests(tables: &[Table]) -> Vec<(u64, [u8; 32], u64, u64)> {
    let mut out = Vec::new();
    for t in tables {
        let d = t.digest().await.expect("digest");
        out.push((d.keys, d.sha256, d.applied.gc_horizon, d.applied.index));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_builds_the_restore_and_every_replica_takes_it_from_the_group() {
    let net = MemoryNetwork::new();
    let dirs: Vec<_> = IDS
        .iter()
        .map(|_| tempfile::tempdir().expect("dir"))
        .collect();
    let sources: Vec<Arc<Uploads>> = IDS
        .iter()
        .map(|&id| {
            Arc::new(Uploads {
                dir: tempfile::tempdir().expect("staging"),
                holds: id == 2,
                fetches: AtomicU64::new(0),
                installed: AtomicU64::new(0),
            })
        })
        .collect();
    let nodes: Vec<Node> = IDS
        .iter()
        .zip(&dirs)
        .zip(&sources)
        .map(|((&id, dir), source)| open(&net, id, dir.path(), source.clone()))
        .collect();
    let ok = eventually(DEADLINE, async || nodes[0].create_table("t").await.is_ok()).await;
    assert!(ok, "table created");
    let tables = common::table_on_every_node(&nodes, "t").await;
    for key in ["a", "b", "c"] {
        let ok = eventually(DEADLINE, async || {
            for t in &tables {
                if t.propose(&put(key)).await.is_ok() {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(ok, "put {key}");
    }

    // Node 2 holds the upload; the marker is proposed where the upload arrived.
    let out = tables[1]
        .propose_load(LoadMarker::restore(UPLOAD, 2))
        .await
        .expect("restore applied on the holder");
    let restored_at = out.revision;
    assert!(
        restored_at > 3,
        "the restore is newer than the puts: {out:?}"
    );

    let same = eventually(DEADLINE, async || {
        let d = digests(&tables).await;
        d.iter()
            .all(|x| x.0 == RESTORED_KEYS && x.1 == d[0].1 && x.2 == restored_at)
    })
    .await;
    assert!(
        same,
        "every replica holds exactly the restore with its index as GC horizon: {:?}",
        digests(&tables).await
    );
    for (i, source) in sources.iter().enumerate() {
        let fetched = source.fetches.load(Relaxed);
        if i == 1 {
            assert!(fetched >= 1, "the holder built the upload");
            assert_eq!(
                source.installed.load(Relaxed),
                1,
                "the holder is told once its upload can go"
            );
        } else {
            assert_eq!(fetched, 0, "node {} asked its source for nothing", i + 1);
        }
    }

    // Every key carries the restore's revision; the old keys are gone.
    for t in &tables {
        let query = RangeQuery {
            key: b"\x01".to_vec(),
            range_end: b"\xff".to_vec(),
            ..Default::default()
        };
        let page = t
            .point_in_time()
            .read_page(&query, &mut ResponseBudget::unlimited())
            .expect("range");
        assert_eq!(page.kvs.len() as u64, RESTORED_KEYS);
        assert!(
            page.kvs
                .iter()
                .all(|kv| kv.mod_revision as u64 == restored_at
                    && kv.create_revision as u64 == restored_at
                    && kv.key.starts_with(b"r"))
        );
    }

    // Follower clusters cannot replay across the restore; after it, they can.
    for t in &tables {
        assert_eq!(
            t.read_log(restored_at, restored_at, 1 << 20)
                .await
                .expect("log"),
            LogRead::Compacted
        );
    }
    let ok = eventually(DEADLINE, async || {
        for t in &tables {
            if t.propose(&put("after")).await.is_ok() {
                return true;
            }
        }
        false
    })
    .await;
    assert!(ok, "a write after the restore");
    let leader_log = eventually(DEADLINE, async || {
        matches!(
            tables[1].read_log(restored_at + 1, u64::MAX, 1 << 20).await,
            Ok(LogRead::Commands(c)) if !c.is_empty()
        )
    })
    .await;
    assert!(leader_log, "entries after the restore are served");
    for node in &nodes {
        node.shutdown().await;
    }
}
