//! A whole node in-process: log compaction keeps each table's log bounded (and appends a
//! GC command), a node restarts on a compacted log with every write in place, and a table
//! publishes the leader index it applied.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use flotilla_proto::mvcc::v1::{Command, KeyValue, command::CommandType};
use flotilla_tables::group::GroupConfig;
use flotilla_tables::range::RangeQuery;
use flotilla_tables::transport::NoPeers;
use flotilla_tables::{Node, NodeConfig};

const RETENTION: u64 = 50;

fn open(dir: &std::path::Path) -> Node {
    let config = NodeConfig {
        data_dir: dir.to_path_buf(),
        voters: vec![1],
        group: GroupConfig {
            log_retention_entries: RETENTION,
            ..GroupConfig::default()
        },
        raft_threads: 1,
        snapshot_source: None,
    };
    Node::open(config, Arc::new(NoPeers), &prometheus::Registry::new()).expect("open node")
}

fn put(key: String) -> Command {
    Command {
        r#type: CommandType::Put as i32,
        kv: Some(KeyValue {
            key: key.into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn compaction_bounds_the_log_and_restart_replays_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    node.create_table("t").await.expect("create");
    let table = node.table("t").expect("table");
    let mut last_revision = 0;
    for i in 0..400 {
        last_revision = table
            .propose(&put(format!("k{i:04}")))
            .await
            .expect("put")
            .revision;
    }
    let s = table.status();
    let (first, last) = (s.first_index.load(Relaxed), s.last_index.load(Relaxed));
    assert!(first > 1, "log was compacted (first index {first})");
    // The leader proposed a GC command at each compaction (WIRE.md §5.8-5): applied, it
    // records the horizon without making the table look replicated.
    let state = table.applied_state().await.expect("state");
    assert!(state.gc_horizon > 0, "a GC command was applied: {state:?}");
    assert_eq!(state.leader_index, None);
    assert!(
        last - first < RETENTION * 2,
        "log stays bounded: {first}..={last} with retention {RETENTION}"
    );
    node.shutdown().await;
    // Table handles share the engine: all must go before the data dir can be reopened.
    drop((node, table));

    let node = open(dir.path());
    node.catalog_barrier().await.expect("catalog ready");
    let table = node.table("t").expect("table after restart");
    table.read_barrier().await.expect("leader again");
    let all = RangeQuery {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let page = table.read_page(all).await.expect("read");
    assert_eq!(page.count, 400);
    assert_eq!(
        page.kvs.last().map(|kv| kv.mod_revision as u64),
        Some(last_revision)
    );
    let next = table
        .propose(&put("after".into()))
        .await
        .expect("put after restart");
    assert!(next.revision > last_revision);
    node.shutdown().await;
}

#[tokio::test]
async fn dropped_table_data_is_erased() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let id = node.create_table("gone").await.expect("create");
    let table = node.table("gone").expect("table");
    for i in 0..20 {
        table.propose(&put(format!("k{i}"))).await.expect("put");
    }
    node.delete_table("gone").await.expect("drop");
    assert!(node.table("gone").is_err());
    table.stopped().await;
    node.shutdown().await;
    drop((node, table));
    // Erasure runs in the background and may be cut short by the shutdown; opening the
    // node again finishes any interrupted drop.
    let node = open(dir.path());
    node.shutdown().await;
    drop(node);
    // Reopen the raw engine: nothing of the table's id range is left in any family.
    let engine = flotilla_tables::engine::Engine::open(dir.path()).expect("engine");
    for cf in flotilla_tables::keys::COLUMN_FAMILIES {
        let start = flotilla_tables::keys::table_start(id);
        let mut iter = engine.iter(cf, start.clone(), flotilla_tables::keys::table_end(id));
        iter.seek(&start);
        assert!(!iter.valid(), "keys of dropped table {id} left in {cf}");
    }
}

#[tokio::test]
async fn the_applied_leader_index_is_published_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    node.create_table("f").await.expect("create");
    let table = node.table("f").expect("table");
    assert_eq!(table.applied_leader_index(), 0, "nothing replicated yet");
    let mut sequence = Command {
        r#type: CommandType::Sequence as i32,
        sequence: vec![put("a".into()), put("b".into())],
        leader_index: Some(42),
        ..Default::default()
    };
    sequence.sequence[0].leader_index = Some(41);
    sequence.sequence[1].leader_index = Some(42);
    table.propose_replicated(0, &sequence).await.expect("apply");
    assert_eq!(
        table.applied_leader_index(),
        42,
        "readable as soon as the proposal returns"
    );
    node.shutdown().await;
    drop((node, table));

    let node = open(dir.path());
    node.catalog_barrier().await.expect("catalog ready");
    let table = node.table("f").expect("table after restart");
    assert_eq!(
        table.applied_leader_index(),
        42,
        "loaded with the applied state"
    );
    node.shutdown().await;
}
