//! Tables, Cluster and Metrics services, and the REST endpoints.

mod common;

use common::{TestServer, http_get, metric_value};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, DeleteTableRequest, ListTablesRequest, MemberListRequest, MetricsRequest,
    PutRequest, StatusRequest,
};
use tonic::Code;

#[tokio::test]
async fn tables_create_list_delete_and_errors() {
    let s = TestServer::start().await;
    let id_b = s.create_table("b").await;
    let id_a = s.create_table("a").await;
    assert_ne!(id_a, id_b);
    let list = s
        .tables()
        .list(ListTablesRequest {})
        .await
        .expect("list")
        .into_inner()
        .tables;
    let names: Vec<_> = list.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "sorted by name");
    assert_eq!(list[0].id, id_a.to_string());
    let create = |name: &str| CreateTableRequest {
        name: name.into(),
        config: None,
    };
    let err = s.tables().create(create("")).await.expect_err("empty");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "name must be set")
    );
    let err = s.tables().create(create("a")).await.expect_err("dup");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "table already exists")
    );
    let err = s
        .tables()
        .delete(DeleteTableRequest { name: "zz".into() })
        .await
        .expect_err("missing");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "table not found")
    );
    let err = s
        .tables()
        .delete(DeleteTableRequest {
            name: String::new(),
        })
        .await
        .expect_err("empty");
    assert_eq!(err.message(), "name must be set");

    // A table is usable at once, and its data goes with it when dropped.
    s.put("a", b"k", b"v").await;
    s.tables()
        .delete(DeleteTableRequest { name: "a".into() })
        .await
        .expect("delete");
    let err = s
        .kv()
        .put(PutRequest {
            table: b"a".to_vec(),
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("dropped");
    assert_eq!(err.code(), Code::NotFound);
    let id_again = s.create_table("a").await;
    assert!(id_again > id_a, "ids are never reused");
    assert_eq!(
        s.range("a", b"k", b"").await.count,
        0,
        "a re-created table starts empty"
    );

    // The catalog survives a restart.
    let s = s.restart().await;
    let list = s
        .tables()
        .list(ListTablesRequest {})
        .await
        .expect("list")
        .into_inner()
        .tables;
    assert_eq!(
        list.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(list[0].id, id_again.to_string());
    s.put("b", b"k", b"v").await;
    s.shutdown().await;
}

#[tokio::test]
async fn cluster_member_list_and_status() {
    let s = TestServer::start().await;
    s.create_table("t").await;
    s.put("t", b"k", b"v").await;
    let ml = s
        .cluster()
        .member_list(MemberListRequest {})
        .await
        .expect("members")
        .into_inner();
    assert_eq!(ml.cluster, "default");
    assert_eq!(ml.members.len(), 1);
    assert_eq!(ml.members[0].id, "1");
    assert_eq!(ml.members[0].peer_ur_ls, ["127.0.0.1:5012"]);
    let st = s
        .cluster()
        .status(StatusRequest { config: false })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.id, "1");
    assert!(!st.version.is_empty());
    assert!(st.config.is_none());
    let t = st.tables.get("t").expect("table t in status");
    assert_eq!(t.leader, "1");
    assert!(t.raft_term >= 1);
    assert!(t.raft_applied_index >= 2 && t.raft_index >= t.raft_applied_index);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    let st = s
        .cluster()
        .status(StatusRequest { config: true })
        .await
        .expect("status")
        .into_inner();
    let cfg = st.config.expect("config requested");
    assert!(cfg.fields.contains_key("api.address"));
    assert!(cfg.fields.contains_key("raft.node-id"));
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_over_grpc_and_rest() {
    let s = TestServer::start().await;
    s.create_table("m").await;
    s.put("m", b"k", b"v").await;
    let err = s
        .metrics()
        .get_metrics(MetricsRequest {
            format: "json".into(),
        })
        .await
        .expect_err("format");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unimplemented, "format is not yet supported")
    );
    let m = s
        .metrics()
        .get_metrics(MetricsRequest {
            format: String::new(),
        })
        .await
        .expect("metrics")
        .into_inner();
    assert!(m.timestamp > 1_600_000_000);
    for name in [
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\"}",
        "grpc_server_handling_seconds_bucket",
        "flotilla_raft_applied_index{table=\"m\"}",
        "flotilla_raft_term{table=\"m\"}",
        "flotilla_raft_leader_id{table=\"m\"} 1",
        "flotilla_raft_commit_index{table=\"m\"}",
        "flotilla_raft_proposals_total{table=\"m\"}",
        "flotilla_log_writer_fsync_rounds_total",
        "flotilla_log_writer_fsync_seconds_bucket",
        "flotilla_rocksdb_size_bytes",
    ] {
        assert!(m.metrics_data.contains(name), "missing {name}");
    }
    let (code, body) = http_get(s.rest_addr(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("flotilla_log_writer_writes_total"));
    assert!(metric_value(&body, "flotilla_rocksdb_size_bytes").is_some());
    let (code, _) = http_get(s.rest_addr(), "/healthz").await;
    assert_eq!(code, 200);
    let (code, _) = http_get(s.rest_addr(), "/nope").await;
    assert_eq!(code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn reflection_lists_services_and_serves_descriptors() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let s = TestServer::start().await;
    let mut client = ServerReflectionClient::new(s.channel.clone());
    let requests = futures::stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("regatta.v1.KV".into())),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .message()
        .await
        .expect("first")
        .and_then(|r| r.message_response)
    else {
        panic!("expected a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "regatta.v1.KV",
        "regatta.v1.Tables",
        "regatta.v1.Cluster",
        "regatta.v1.Metrics",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) = responses
        .message()
        .await
        .expect("second")
        .and_then(|r| r.message_response)
    else {
        panic!("expected file descriptors")
    };
    let file_names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(b.as_slice())
                .expect("descriptor")
                .name()
                .to_owned()
        })
        .collect();
    assert!(
        file_names.iter().any(|n| n == "armada.proto"),
        "{file_names:?}"
    );
    s.shutdown().await;
}
