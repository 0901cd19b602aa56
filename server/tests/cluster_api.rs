//! Three in-process servers forming one cluster over real gRPC on loopback: requests to
//! any node work (forwarded to leaders), MemberList lists everyone with their client
//! addresses, Status reports each table, and every node shuts down gracefully even though
//! peers hold streams open to it.

mod common;

use std::time::Duration;

use flotilla_proto::regatta::v1::{
    CreateTableRequest, MemberListRequest, PutRequest, RangeRequest, StatusRequest,
    cluster_client::ClusterClient, kv_client::KvClient, tables_client::TablesClient,
};
use flotilla_server::Running;
use tonic::transport::Channel;

async fn channel(running: &Running) -> Channel {
    Channel::from_shared(format!(
        "http://{}",
        running.api_addr.expect("TCP API address")
    ))
    .expect("uri")
    .connect()
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_and_every_node_stops_gracefully() {
    let ports: Vec<u16> = common::free_ports(3);
    let members = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut s = common::settings(dir.path());
        s.raft.node_id = i as u64 + 1;
        s.raft.address = format!("127.0.0.1:{}", ports[i]);
        s.raft.initial_members = members.clone();
        s.raft.rtt = "10ms".into();
        s.api.advertise_address = format!("http://node{}.example:8443", i + 1);
        nodes.push(
            flotilla_server::start(s, flotilla_server::Role::Leader)
                .await
                .expect("node starts"),
        );
    }
    let channels = [
        channel(&nodes[0]).await,
        channel(&nodes[1]).await,
        channel(&nodes[2]).await,
    ];

    // Table admin and writes through different nodes.
    let mut tables = TablesClient::new(channels[1].clone());
    assert!(
        common::eventually(Duration::from_secs(20), async || tables
            .create(CreateTableRequest {
                name: "t".into(),
                config: None
            })
            .await
            .is_ok())
        .await,
        "create through node 2"
    );
    let mut kv = KvClient::new(channels[2].clone());
    let put = kv
        .put(PutRequest {
            table: b"t".to_vec(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put through node 3")
        .into_inner();
    let revision = put.header.expect("header").revision;
    // A linearizable read through node 1 sees it.
    let got = KvClient::new(channels[0].clone())
        .range(RangeRequest {
            table: b"t".to_vec(),
            key: b"k".to_vec(),
            linearizable: true,
            ..Default::default()
        })
        .await
        .expect("read through node 1")
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].mod_revision as u64, revision);

    // Every node lists all three members with the client address each announced.
    let mut cluster = ClusterClient::new(channels[0].clone());
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            let list = cluster
                .member_list(MemberListRequest {})
                .await
                .expect("member list")
                .into_inner();
            list.members.len() == 3
                && list
                    .members
                    .iter()
                    .all(|m| m.client_ur_ls == vec![format!("http://node{}.example:8443", m.id)])
        })
        .await,
        "MemberList shows every member's client URL"
    );
    let status = cluster
        .status(StatusRequest { config: false })
        .await
        .expect("status")
        .into_inner();
    let t = &status.tables["t"];
    assert_ne!(t.leader, "0");
    assert!(t.raft_index >= revision && t.raft_applied_index >= revision);

    for node in nodes {
        tokio::time::timeout(Duration::from_secs(20), node.shutdown())
            .await
            .expect("graceful shutdown completes while peers hold streams open");
    }
}
