//! The peer network of a 3-node cluster over mutual TLS (issue 11): a certificate from
//! another CA cannot open a stream; a peer's certificate speaks only for its own raft id
//! (forged batch senders, forged message senders and foreign snapshots are dropped and
//! counted); a snapshot over `raft.max-snapshot-size-bytes` is cut off.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::tls::{Pki, api, path, plain_channel, tls_channel};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, MemberListRequest, PutRequest, RangeRequest, cluster_client::ClusterClient,
    kv_client::KvClient, tables_client::TablesClient,
};
use flotilla_server::Role;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_accept_only_peer_certificates_and_only_for_their_own_raft_id() {
    use flotilla_proto::flotilla::raft::v1::raft_client::RaftClient;
    use flotilla_proto::flotilla::raft::v1::{GroupMessage, MessageBatch};
    use protobuf::Message as _;

    let pki = Pki::new();
    let ca = pki.ca_file();
    // Each node on its own loopback address, so a certificate names exactly one node.
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports = common::free_ports(3);
    let members = (0..3)
        .map(|i| format!("{}={}:{}", i + 1, hosts[i], ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let certs: Vec<(PathBuf, PathBuf)> = (0..3)
        .map(|i| {
            pki.leaf(
                &format!("node{}", i + 1),
                &format!("node{}", i + 1),
                &[hosts[i]],
            )
        })
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut s = common::settings(dirs[i].path());
        s.raft.node_id = i as u64 + 1;
        s.raft.address = format!("{}:{}", hosts[i], ports[i]);
        s.raft.initial_members = members.clone();
        s.raft.rtt = "10ms".into();
        s.raft.tls_cert_file = path(&certs[i].0);
        s.raft.tls_key_file = path(&certs[i].1);
        s.raft.tls_ca_file = path(&ca);
        s.api.advertise_address = format!("http://node{}.example:8443", i + 1);
        // Node 1 stages at most 1 MiB of an incoming snapshot (checked below).
        if i == 0 {
            s.raft.max_snapshot_size_bytes = 1 << 20;
        }
        nodes.push(
            flotilla_server::start(s, Role::Leader)
                .await
                .expect("node starts"),
        );
    }
    // The cluster works over mutual TLS: a table created and written through node 2 is
    // read on node 3.
    let mut tables = TablesClient::new(plain_channel(api(&nodes[1])));
    assert!(
        common::eventually(WAIT, async || tables
            .create(CreateTableRequest {
                name: "t".into(),
                config: None,
            })
            .await
            .is_ok())
        .await,
        "create through node 2"
    );
    KvClient::new(plain_channel(api(&nodes[1])))
        .put(PutRequest {
            table: b"t".to_vec(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put through node 2");
    let mut node3 = KvClient::new(plain_channel(api(&nodes[2])));
    assert!(
        common::eventually(WAIT, async || node3
            .range(RangeRequest {
                table: b"t".to_vec(),
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.into_inner().kvs.len() == 1))
        .await,
        "node 3 replicated the write"
    );

    let raft1: SocketAddr = format!("{}:{}", hosts[0], ports[0]).parse().expect("addr");
    let rest1 = nodes[0].rest_addr.to_string();
    let hello = |from: u64, api_address: &str| MessageBatch {
        from,
        messages: Vec::new(),
        api_address: api_address.to_owned(),
    };

    // A node with a certificate from another CA cannot even open a stream.
    let foreign = pki.stranger("foreign", "node2", &[hosts[1]]);
    let refused = RaftClient::new(tls_channel(raft1, &ca, Some((&foreign.0, &foreign.1))))
        .send(tokio_stream::iter(vec![hello(2, "http://evil.example")]))
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused"
    );

    // Node 3's real certificate speaking as node 2 (a forged MemberList entry and a
    // forged raft message) is dropped and counted.
    let series = "flotilla_peer_messages_rejected_total{reason=\"unverified_sender\"}";
    let before = flotilla_testkit::metrics::read(&rest1, series)
        .await
        .unwrap_or(0.0);
    let mut forged = raft::eraftpb::Message::default();
    forged.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    forged.from = 2;
    forged.to = 1;
    forged.term = 1_000;
    let batch = MessageBatch {
        from: 2,
        messages: vec![GroupMessage {
            group_id: 1,
            message: forged.write_to_bytes().expect("encode"),
        }],
        api_address: "http://evil.example".into(),
    };
    RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .send(tokio_stream::iter(vec![batch]))
        .await
        .expect("the stream itself is accepted (node 3 is a peer)");
    assert!(
        common::eventually(WAIT, async || flotilla_testkit::metrics::read(
            &rest1, series
        )
        .await
        .is_some_and(|v| v > before))
        .await,
        "the forged batch is counted as rejected"
    );
    let members = ClusterClient::new(plain_channel(api(&nodes[0])))
        .member_list(MemberListRequest {})
        .await
        .expect("members")
        .into_inner();
    let urls: Vec<String> = members
        .members
        .iter()
        .flat_map(|m| m.client_ur_ls.clone())
        .collect();
    assert!(
        !urls.iter().any(|u| u.contains("evil")),
        "a forged hello must not rewrite MemberList: {urls:?}"
    );
    // A message inside a genuine batch whose own `from` is another node is dropped too.
    let forged_from = "flotilla_peer_messages_rejected_total{reason=\"forged_from\"}";
    let batch = MessageBatch {
        from: 3,
        messages: vec![GroupMessage {
            group_id: 1,
            message: forged.write_to_bytes().expect("encode"),
        }],
        api_address: String::new(),
    };
    RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .send(tokio_stream::iter(vec![batch]))
        .await
        .expect("stream");
    assert!(
        common::eventually(WAIT, async || flotilla_testkit::metrics::read(
            &rest1,
            forged_from
        )
        .await
        .is_some_and(|v| v >= 1.0))
        .await,
        "a message claiming another sender inside a batch is counted"
    );

    // A snapshot stream claiming to come from node 2 on node 3's connection is refused
    // (before anything is staged) and counted.
    use flotilla_proto::flotilla::raft::v1::SnapshotChunk;
    let mut snapshot_msg = raft::eraftpb::Message::default();
    snapshot_msg.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    snapshot_msg.from = 2;
    snapshot_msg.to = 1;
    let header = |msg: &raft::eraftpb::Message| SnapshotChunk {
        group_id: 1,
        message: msg.write_to_bytes().expect("encode"),
        ..Default::default()
    };
    let unverified = "flotilla_peer_messages_rejected_total{reason=\"unverified_snapshot\"}";
    let refused = RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .snapshot(tokio_stream::iter(vec![header(&snapshot_msg)]))
        .await
        .expect_err("a snapshot from another sender is refused");
    assert!(
        refused.message().contains("does not speak for it"),
        "{refused:?}"
    );
    assert_eq!(
        flotilla_testkit::metrics::read(&rest1, unverified).await,
        Some(1.0),
        "the refused snapshot is counted"
    );

    // A snapshot stream over raft.max-snapshot-size-bytes (1 MiB on node 1) is cut off.
    snapshot_msg.from = 3;
    let oversized = vec![
        header(&snapshot_msg),
        SnapshotChunk {
            pairs: vec![flotilla_proto::flotilla::raft::v1::Pair {
                key: b"k".to_vec(),
                value: vec![0; 2 << 20],
            }],
            ..Default::default()
        },
    ];
    let refused = RaftClient::new(tls_channel(raft1, &ca, Some((&certs[2].0, &certs[2].1))))
        .snapshot(tokio_stream::iter(oversized))
        .await
        .expect_err("an oversized snapshot is refused");
    assert!(
        refused.message().contains("raft.max-snapshot-size-bytes"),
        "{refused:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}
