//! Byte-compatibility tests for the Flotilla wire types.
//!
//! Every expected byte string below was written by hand from the protobuf encoding rules, NOT
//! produced by prost, so a mismatch means our `.proto` files diverge from the Armada wire contract
//! (field number, wire type, label/presence or oneof membership).
//!
//! Cheat sheet:
//! * tag byte(s) = varint((field_number << 3) | wire_type);
//!   wire type 0 = varint (ints, bools, enums), 2 = length-delimited (bytes, strings, messages, maps).
//! * proto3 implicit-presence fields are omitted when they hold the default value; fields with
//!   explicit presence (`optional`, oneof members, message fields) are written whenever set, even
//!   when the value is 0 / empty.
//! * prost writes fields in ascending field-number order (as Go does).

use flotilla_proto::maintenance::v1::{RestoreInfo, RestoreMessage, restore_message};
use flotilla_proto::mvcc::v1::{
    Command, Compare, KeyValue, RequestOp, ResponseOp, Txn, command, compare, request_op,
    response_op,
};
use flotilla_proto::regatta::v1::{
    CreateTableRequest, Member, MetricsResponse, RangeRequest, RangeResponse, ResponseHeader,
    StatusRequest, StatusResponse, TableInfo, TableStatus,
};
use flotilla_proto::replication::v1::{
    ReplicateCommand, ReplicateCommandsResponse, ReplicateErrResponse, ReplicateError,
    ReplicateResponse, SnapshotChunk, SnapshotQueryResponse, replicate_response,
    snapshot_query_response,
};
use prost::Message;
use std::collections::HashMap;

/// Asserts that `msg` encodes to exactly `expected` and that `expected` decodes back to `msg`.
#[track_caller]
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, expected: &[u8]) {
    let encoded = msg.encode_to_vec();
    assert_eq!(
        encoded, expected,
        "encoding of {msg:?}\n  got      {encoded:02x?}\n  expected {expected:02x?}"
    );
    let decoded = M::decode(expected).expect("hand-written bytes must decode");
    assert_eq!(&decoded, msg, "decoding of {expected:02x?}");
}

/// Decodes hand-written bytes (e.g. as Go would emit them) into `M`.
#[track_caller]
fn decode<M: Message + Default>(bytes: &[u8]) -> M {
    M::decode(bytes).expect("hand-written bytes must decode")
}

// ---------------------------------------------------------------------------------------------
// mvcc.v1.Compare
// ---------------------------------------------------------------------------------------------

#[test]
fn compare_value_absent_is_not_encoded() {
    let msg = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: b"k".to_vec(),
        target_union: None,
        range_end: vec![],
    };
    // result = EQUAL (0) and target = VALUE (0) are defaults: omitted.
    // 1a = field 3 (key), wire type 2; 01 = length 1; 6b = 'k'.
    // No field 4 at all: "value absent" => existence test.
    assert_wire(&msg, &[0x1a, 0x01, 0x6b]);
}

#[test]
fn compare_value_present_but_empty_is_encoded() {
    let msg = Compare {
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::Value(vec![])),
        ..Default::default()
    };
    // 1a 01 6b = key "k".
    // 22 = field 4 (value, oneof target_union), wire type 2; 00 = length 0.
    // Written although empty because oneof members have explicit presence.
    assert_wire(&msg, &[0x1a, 0x01, 0x6b, 0x22, 0x00]);

    // And the two forms decode to different things.
    let absent: Compare = decode(&[0x1a, 0x01, 0x6b]);
    assert_eq!(absent.target_union, None);
    let empty: Compare = decode(&[0x1a, 0x01, 0x6b, 0x22, 0x00]);
    assert_eq!(
        empty.target_union,
        Some(compare::TargetUnion::Value(vec![]))
    );
}

#[test]
fn compare_all_fields_and_range_end_64() {
    let msg = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Value as i32,
        key: b"a".to_vec(),
        target_union: Some(compare::TargetUnion::Value(b"b".to_vec())),
        range_end: b"c".to_vec(),
    };
    assert_wire(
        &msg,
        &[
            0x08, 0x01, // field 1 (result), varint: GREATER = 1
            // field 2 (target) = VALUE = 0: omitted
            0x1a, 0x01, 0x61, // field 3 (key), len 1, "a"
            0x22, 0x01, 0x62, // field 4 (value), len 1, "b"
            // field 64 (range_end), wire type 2: (64 << 3) | 2 = 514 = 0b100_0000010
            //   varint: low 7 bits 0000010 with continuation bit -> 0x82, then 514 >> 7 = 4 -> 0x04
            0x82, 0x04, 0x01, 0x63, // len 1, "c"
        ],
    );
}

#[test]
fn compare_enum_values() {
    // result = NOT_EQUAL (3): 08 03; result = LESS (2): 08 02.
    let ne = Compare {
        result: compare::CompareResult::NotEqual as i32,
        ..Default::default()
    };
    assert_wire(&ne, &[0x08, 0x03]);
    let lt = Compare {
        result: compare::CompareResult::Less as i32,
        ..Default::default()
    };
    assert_wire(&lt, &[0x08, 0x02]);
}

// ---------------------------------------------------------------------------------------------
// mvcc.v1.Command
// ---------------------------------------------------------------------------------------------

#[test]
fn command_leader_index_zero_is_present() {
    let msg = Command {
        table: b"t".to_vec(),
        r#type: command::CommandType::Dummy as i32,
        leader_index: Some(0),
        ..Default::default()
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x74, // field 1 (table), len 1, "t"
            0x10, 0x02, // field 2 (type), varint: DUMMY = 2
            0x28, 0x00, // field 5 (leader_index, optional), varint 0 -- present although zero
        ],
    );
}

#[test]
fn command_leader_index_none_is_absent() {
    let msg = Command {
        table: b"t".to_vec(),
        r#type: command::CommandType::Put as i32,
        leader_index: None,
        ..Default::default()
    };
    // 0a 01 74 = table "t"; type PUT = 0 omitted; no field 5.
    assert_wire(&msg, &[0x0a, 0x01, 0x74]);
    let decoded: Command = decode(&[0x0a, 0x01, 0x74]);
    assert_eq!(decoded.leader_index, None);
    let decoded: Command = decode(&[0x0a, 0x01, 0x74, 0x28, 0x00]);
    assert_eq!(decoded.leader_index, Some(0));
}

#[test]
fn command_range_end_presence() {
    let some_empty = Command {
        table: b"t".to_vec(),
        r#type: command::CommandType::Delete as i32,
        range_end: Some(vec![]),
        ..Default::default()
    };
    assert_wire(
        &some_empty,
        &[
            0x0a, 0x01, 0x74, // field 1 (table) "t"
            0x10, 0x01, // field 2 (type), DELETE = 1
            0x42, 0x00, // field 8 (range_end, optional bytes): (8 << 3) | 2 = 0x42, len 0
        ],
    );

    let none = Command {
        range_end: None,
        ..some_empty.clone()
    };
    // Same without field 8.
    assert_wire(&none, &[0x0a, 0x01, 0x74, 0x10, 0x01]);
}

#[test]
fn command_txn_presence() {
    let msg = Command {
        r#type: command::CommandType::Txn as i32,
        txn: Some(Txn::default()),
        ..Default::default()
    };
    // 10 05 = type TXN (5); 3a 00 = field 7 (txn, optional message): (7 << 3) | 2 = 0x3a, len 0.
    assert_wire(&msg, &[0x10, 0x05, 0x3a, 0x00]);
    let none = Command {
        txn: None,
        ..msg.clone()
    };
    assert_wire(&none, &[0x10, 0x05]);
}

#[test]
fn command_all_fields() {
    let msg = Command {
        table: b"t".to_vec(),
        r#type: command::CommandType::Sequence as i32,
        kv: Some(KeyValue {
            key: b"a".to_vec(),
            ..Default::default()
        }),
        leader_index: Some(300),
        batch: vec![KeyValue {
            key: b"b".to_vec(),
            ..Default::default()
        }],
        txn: None,
        range_end: Some(b"c".to_vec()),
        prev_kvs: true,
        sequence: vec![Command {
            r#type: command::CommandType::Gc as i32,
            ..Default::default()
        }],
        count: true,
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x74, // field 1 (table) "t"
            0x10, 0x06, // field 2 (type) SEQUENCE = 6
            0x1a, 0x03, 0x0a, 0x01, 0x61, // field 3 (kv), len 3: { field 1 (key) "a" }
            // (field 4 is reserved)
            0x28, 0xac, 0x02, // field 5 (leader_index) 300 = 0b10_0101100 -> ac 02
            0x32, 0x03, 0x0a, 0x01, 0x62, // field 6 (batch), len 3: { key "b" }
            // field 7 (txn) absent
            0x42, 0x01, 0x63, // field 8 (range_end) "c"
            0x48, 0x01, // field 9 (prev_kvs), varint true
            0x52, 0x02, 0x10, 0x07, // field 10 (sequence), len 2: { field 2 (type) GC = 7 }
            0x58, 0x01, // field 11 (count), varint true
        ],
    );
}

#[test]
fn command_type_numbers() {
    let expected = [
        (command::CommandType::Put, 0),
        (command::CommandType::Delete, 1),
        (command::CommandType::Dummy, 2),
        (command::CommandType::PutBatch, 3),
        (command::CommandType::DeleteBatch, 4),
        (command::CommandType::Txn, 5),
        (command::CommandType::Sequence, 6),
        (command::CommandType::Gc, 7),
    ];
    for (ty, n) in expected {
        assert_eq!(ty as i32, n, "{ty:?}");
    }
}

#[test]
fn keyvalue_fields() {
    let msg = KeyValue {
        key: b"k".to_vec(),
        create_revision: 1,
        mod_revision: 2,
        value: b"v".to_vec(),
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x6b, // field 1 (key) "k"
            0x10, 0x01, // field 2 (create_revision) 1
            0x18, 0x02, // field 3 (mod_revision) 2
            0x22, 0x01, 0x76, // field 4 (value) "v"
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// mvcc.v1.RequestOp / ResponseOp
// ---------------------------------------------------------------------------------------------

#[test]
fn request_op_delete_range_prev_kv_4_count_5() {
    let msg = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            request_op::DeleteRange {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prev_kv: true,
                count: true,
            },
        )),
    };
    assert_wire(
        &msg,
        &[
            0x1a, 0x0a, // field 3 (request_delete_range, oneof request), len 10:
            0x0a, 0x01, 0x61, //   field 1 (key) "a"
            0x12, 0x01, 0x62, //   field 2 (range_end) "b"
            // field 3 is reserved
            0x20, 0x01, //   field 4 (prev_kv) true: (4 << 3) | 0 = 0x20
            0x28, 0x01, //   field 5 (count) true: (5 << 3) | 0 = 0x28
        ],
    );
}

#[test]
fn request_op_range_and_put() {
    let range = RequestOp {
        request: Some(request_op::Request::RequestRange(request_op::Range {
            key: vec![0],
            range_end: vec![0],
            limit: 5,
            keys_only: true,
            count_only: false,
        })),
    };
    assert_wire(
        &range,
        &[
            0x0a, 0x0a, // field 1 (request_range), len 10 (3 + 3 + 2 + 2):
            0x0a, 0x01, 0x00, //   field 1 (key) "\x00"
            0x12, 0x01, 0x00, //   field 2 (range_end) "\x00"
            0x18, 0x05, //   field 3 (limit) 5
            0x20, 0x01, //   field 4 (keys_only) true
        ],
    );
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(request_op::Put {
            key: b"k".to_vec(),
            value: vec![],
            prev_kv: true,
        })),
    };
    assert_wire(
        &put,
        &[
            0x12, 0x05, // field 2 (request_put), len 5:
            0x0a, 0x01, 0x6b, //   field 1 (key) "k"
            // field 2 (value) empty: omitted (implicit presence)
            0x18, 0x01, //   field 3 (prev_kv) true
        ],
    );
    // An empty oneof member is still written: RequestOp{request_put{}} = 12 00.
    let empty_put = RequestOp {
        request: Some(request_op::Request::RequestPut(request_op::Put::default())),
    };
    assert_wire(&empty_put, &[0x12, 0x00]);
}

#[test]
fn response_op_variants() {
    let range = ResponseOp {
        response: Some(response_op::Response::ResponseRange(response_op::Range {
            kvs: vec![KeyValue {
                key: b"k".to_vec(),
                ..Default::default()
            }],
            more: true,
            count: 1,
        })),
    };
    assert_wire(
        &range,
        &[
            0x0a, 0x09, // field 1 (response_range), len 9:
            0x0a, 0x03, 0x0a, 0x01, 0x6b, //   field 1 (kvs), len 3: { key "k" }
            0x10, 0x01, //   field 2 (more) true
            0x18, 0x01, //   field 3 (count) 1
        ],
    );
    let put = ResponseOp {
        response: Some(response_op::Response::ResponsePut(response_op::Put {
            prev_kv: Some(KeyValue {
                key: b"k".to_vec(),
                ..Default::default()
            }),
        })),
    };
    // 12 05 = field 2 (response_put), len 5; 0a 03 = field 1 (prev_kv), len 3; 0a 01 6b = key "k".
    assert_wire(&put, &[0x12, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0x6b]);
    let del = ResponseOp {
        response: Some(response_op::Response::ResponseDeleteRange(
            response_op::DeleteRange {
                deleted: 2,
                prev_kvs: vec![],
            },
        )),
    };
    // 1a 02 = field 3 (response_delete_range), len 2; 08 02 = field 1 (deleted) 2.
    assert_wire(&del, &[0x1a, 0x02, 0x08, 0x02]);
}

// ---------------------------------------------------------------------------------------------
// regatta.v1
// ---------------------------------------------------------------------------------------------

#[test]
fn range_request_fields() {
    let msg = RangeRequest {
        table: b"t".to_vec(),
        key: b"a".to_vec(),
        range_end: vec![0],
        limit: -1,
        linearizable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 4,
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x74, // field 1 (table) "t"
            0x12, 0x01, 0x61, // field 2 (key) "a"
            0x1a, 0x01, 0x00, // field 3 (range_end) "\x00"
            // field 4 (limit, int64) -1: two's complement as a 10-byte varint
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x28,
            0x01, // field 5 (linearizable) true
            0x30, 0x01, // field 6 (keys_only) true
            0x38, 0x01, // field 7 (count_only) true
            0x40, 0x01, // field 8 (min_mod_revision) 1
            0x48, 0x02, // field 9 (max_mod_revision) 2
            0x50, 0x03, // field 10 (min_create_revision) 3
            0x58, 0x04, // field 11 (max_create_revision) 4
        ],
    );
}

#[test]
fn range_response_kvs_is_field_3() {
    let msg = RangeResponse {
        header: Some(ResponseHeader {
            shard_id: 1,
            ..Default::default()
        }),
        kvs: vec![KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }],
        more: true,
        count: 1,
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x02, 0x08, 0x01, // field 1 (header), len 2: { field 1 (shard_id) 1 }
            // field 2 is reserved: nothing
            0x1a, 0x06, // field 3 (kvs), len 6:
            0x0a, 0x01, 0x6b, //   field 1 (key) "k"
            0x22, 0x01, 0x76, //   field 4 (value) "v"
            0x20, 0x01, // field 4 (more) true
            0x28, 0x01, // field 5 (count) 1
        ],
    );
}

#[test]
fn response_header_fields() {
    let msg = ResponseHeader {
        shard_id: 10001,
        replica_id: 2,
        revision: 3,
        raft_term: 4,
        raft_leader_id: 5,
    };
    assert_wire(
        &msg,
        &[
            0x08, 0x91, 0x4e, // field 1 (shard_id) 10001 = 0b1001110_0010001 -> 91 4e
            0x10, 0x02, // field 2 (replica_id)
            0x18, 0x03, // field 3 (revision)
            0x20, 0x04, // field 4 (raft_term)
            0x28, 0x05, // field 5 (raft_leader_id)
        ],
    );
}

#[test]
fn member_urls_fields() {
    let msg = Member {
        id: "i".to_owned(),
        name: "n".to_owned(),
        peer_ur_ls: vec!["p".to_owned()],
        client_ur_ls: vec!["c".to_owned(), "d".to_owned()],
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x69, // field 1 (id) "i"
            0x12, 0x01, 0x6e, // field 2 (name) "n"
            0x1a, 0x01, 0x70, // field 3 (peerURLs) "p"
            0x22, 0x01, 0x63, // field 4 (clientURLs) "c"
            0x22, 0x01, 0x64, // field 4 (clientURLs) "d" (repeated string: one record each)
        ],
    );
}

#[test]
fn status_request_config_is_field_4() {
    let msg = StatusRequest { config: true };
    // 20 = field 4, wire type 0; 01 = true. (Fields 1..3 are reserved.)
    assert_wire(&msg, &[0x20, 0x01]);
}

#[test]
fn table_status_fields_4_to_7() {
    let msg = TableStatus {
        leader: "l".to_owned(),
        raft_index: 5,
        raft_term: 2,
        raft_applied_index: 6,
    };
    assert_wire(
        &msg,
        &[
            0x22, 0x01, 0x6c, // field 4 (leader) "l"
            0x28, 0x05, // field 5 (raftIndex) 5
            0x30, 0x02, // field 6 (raftTerm) 2
            0x38, 0x06, // field 7 (raftAppliedIndex) 6
        ],
    );
}

#[test]
fn status_response_map_and_errors() {
    let mut tables = HashMap::new();
    tables.insert(
        "t".to_owned(),
        TableStatus {
            leader: "l".to_owned(),
            raft_index: 5,
            raft_term: 2,
            raft_applied_index: 5,
        },
    );
    let msg = StatusResponse {
        id: "n".to_owned(),
        version: "v".to_owned(),
        info: String::new(),
        tables,
        config: None,
        errors: vec!["e".to_owned()],
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x6e, // field 1 (id) "n"
            0x12, 0x01, 0x76, // field 2 (version) "v"
            // field 3 (info) empty: omitted
            // field 4 (tables): one map entry = message { 1: key, 2: value }, len 14:
            0x22, 0x0e, //
            0x0a, 0x01, 0x74, //   entry field 1 (key) "t"
            0x12, 0x09, //   entry field 2 (value: TableStatus), len 9:
            0x22, 0x01, 0x6c, //     field 4 (leader) "l"
            0x28, 0x05, //     field 5 (raftIndex) 5
            0x30, 0x02, //     field 6 (raftTerm) 2
            0x38, 0x05, //     field 7 (raftAppliedIndex) 5
            // field 5 (config) absent; fields 6, 7 reserved
            0x42, 0x01, 0x65, // field 8 (errors): (8 << 3) | 2 = 0x42, "e"
        ],
    );
}

#[test]
fn status_response_map_entry_as_go_writes_it() {
    // Go always writes both key and value of a map entry, even when default; prost omits the
    // default value. Both must decode identically.
    // 22 05 = field 4 (tables), entry len 5; 0a 01 74 = key "t"; 12 00 = value: empty TableStatus.
    let go: StatusResponse = decode(&[0x22, 0x05, 0x0a, 0x01, 0x74, 0x12, 0x00]);
    assert_eq!(go.tables.len(), 1);
    assert_eq!(go.tables.get("t"), Some(&TableStatus::default()));
    // prost's own form: 22 03 0a 01 74 (value field omitted because it is the default).
    let mut tables = HashMap::new();
    tables.insert("t".to_owned(), TableStatus::default());
    let msg = StatusResponse {
        tables,
        ..Default::default()
    };
    assert_wire(&msg, &[0x22, 0x03, 0x0a, 0x01, 0x74]);
    assert_eq!(go, msg);
}

#[test]
fn create_table_request_config_is_field_5() {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "k".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("v".to_owned())),
        },
    );
    let msg = CreateTableRequest {
        name: "t".to_owned(),
        config: Some(prost_types::Struct { fields }),
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x01, 0x74, // field 1 (name) "t"
            0x2a,
            0x0a, // field 5 (config: google.protobuf.Struct): (5 << 3) | 2 = 0x2a, len 10:
            0x0a, 0x08, //   Struct field 1 (fields map) entry, len 8:
            0x0a, 0x01, 0x6b, //     entry key "k"
            0x12, 0x03, //     entry value (google.protobuf.Value), len 3:
            0x1a, 0x01, 0x76, //       Value field 3 (string_value) "v"
        ],
    );
    // An empty (but present) Struct is still written: 2a 00.
    let empty = CreateTableRequest {
        name: String::new(),
        config: Some(prost_types::Struct::default()),
    };
    assert_wire(&empty, &[0x2a, 0x00]);
}

#[test]
fn table_info_config_is_field_5() {
    let msg = TableInfo {
        name: "t".to_owned(),
        id: "1".to_owned(),
        config: Some(prost_types::Struct::default()),
    };
    // 0a 01 74 = name "t"; 12 01 31 = id "1"; 2a 00 = field 5 (config), empty Struct.
    assert_wire(&msg, &[0x0a, 0x01, 0x74, 0x12, 0x01, 0x31, 0x2a, 0x00]);
}

#[test]
fn metrics_response_fields() {
    let msg = MetricsResponse {
        metrics_data: "m".to_owned(),
        timestamp: 1,
    };
    // 0a 01 6d = field 1 (metrics_data) "m"; 10 01 = field 2 (timestamp) 1.
    assert_wire(&msg, &[0x0a, 0x01, 0x6d, 0x10, 0x01]);
}

// ---------------------------------------------------------------------------------------------
// replication.v1
// ---------------------------------------------------------------------------------------------

#[test]
fn replicate_response_use_snapshot_is_empty_submessage() {
    let msg = ReplicateResponse {
        response: Some(replicate_response::Response::ErrorResponse(
            ReplicateErrResponse {
                error: ReplicateError::UseSnapshot as i32,
            },
        )),
        leader_index: 8,
    };
    assert_wire(
        &msg,
        &[
            // field 2 (error_response, oneof response), len 0: the inner error is USE_SNAPSHOT = 0,
            // a default, so the sub-message is empty -- but the oneof member itself is present.
            0x12, 0x00, //
            0x40, 0x08, // field 8 (leader_index): (8 << 3) | 0 = 0x40, value 8
        ],
    );
}

#[test]
fn replicate_response_leader_behind_and_final_message() {
    let behind = ReplicateResponse {
        response: Some(replicate_response::Response::ErrorResponse(
            ReplicateErrResponse {
                error: ReplicateError::LeaderBehind as i32,
            },
        )),
        leader_index: 0,
    };
    // 12 02 = field 2 (error_response), len 2; 08 01 = field 1 (error) LEADER_BEHIND = 1.
    assert_wire(&behind, &[0x12, 0x02, 0x08, 0x01]);

    // Final message of a stream: no oneof set, just leader_index.
    let last = ReplicateResponse {
        response: None,
        leader_index: 8,
    };
    assert_wire(&last, &[0x40, 0x08]);
}

#[test]
fn replicate_response_commands() {
    let msg = ReplicateResponse {
        response: Some(replicate_response::Response::CommandsResponse(
            ReplicateCommandsResponse {
                commands: vec![ReplicateCommand {
                    leader_index: 7,
                    command: Some(Command {
                        table: b"t".to_vec(),
                        r#type: command::CommandType::Dummy as i32,
                        leader_index: Some(7),
                        ..Default::default()
                    }),
                }],
            },
        )),
        leader_index: 9,
    };
    assert_wire(
        &msg,
        &[
            0x0a, 0x0d, // field 1 (commands_response), len 13:
            0x0a, 0x0b, //   field 1 (commands), len 11:
            0x08, 0x07, //     field 1 (leader_index) 7
            0x12, 0x07, //     field 2 (command), len 7:
            0x0a, 0x01, 0x74, //       field 1 (table) "t"
            0x10, 0x02, //       field 2 (type) DUMMY
            0x28, 0x07, //       field 5 (leader_index) 7
            0x40, 0x09, // field 8 (leader_index) 9
        ],
    );
}

#[test]
fn snapshot_chunk_and_query_response() {
    let chunk = SnapshotChunk {
        data: b"ab".to_vec(),
        len: 2,
        index: 0,
    };
    // 0a 02 61 62 = field 1 (data) "ab"; 10 02 = field 2 (len) 2; index 0 omitted.
    assert_wire(&chunk, &[0x0a, 0x02, 0x61, 0x62, 0x10, 0x02]);

    let q = SnapshotQueryResponse {
        r#type: snapshot_query_response::SnapshotType::Full as i32,
        base_index: 1,
        tip_index: 2,
        object_key: "o".to_owned(),
        sha256: vec![0xaa],
        size_bytes: 3,
    };
    assert_wire(
        &q,
        &[
            0x08, 0x01, // field 1 (type) FULL = 1
            0x10, 0x01, // field 2 (base_index) 1
            0x18, 0x02, // field 3 (tip_index) 2
            0x22, 0x01, 0x6f, // field 4 (object_key) "o"
            0x2a, 0x01, 0xaa, // field 5 (sha256) [aa]
            0x30, 0x03, // field 6 (size_bytes) 3
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// maintenance.v1
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_message_oneof() {
    let info = RestoreMessage {
        data: Some(restore_message::Data::Info(RestoreInfo {
            table: b"t".to_vec(),
        })),
    };
    // 0a 03 = field 1 (info), len 3; 0a 01 74 = field 1 (table) "t".
    assert_wire(&info, &[0x0a, 0x03, 0x0a, 0x01, 0x74]);

    let chunk = RestoreMessage {
        data: Some(restore_message::Data::Chunk(SnapshotChunk {
            data: b"ab".to_vec(),
            len: 2,
            index: 0,
        })),
    };
    // 12 06 = field 2 (chunk), len 6; 0a 02 61 62 = data "ab"; 10 02 = len 2.
    assert_wire(&chunk, &[0x12, 0x06, 0x0a, 0x02, 0x61, 0x62, 0x10, 0x02]);
}

// ---------------------------------------------------------------------------------------------
// Descriptor set (gRPC reflection)
// ---------------------------------------------------------------------------------------------

mod descriptor {
    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MethodDescriptorProto, ServiceDescriptorProto,
    };

    fn fds() -> FileDescriptorSet {
        FileDescriptorSet::decode(flotilla_proto::FILE_DESCRIPTOR_SET)
            .expect("FILE_DESCRIPTOR_SET must decode")
    }

    fn file<'a>(set: &'a FileDescriptorSet, name: &str) -> &'a FileDescriptorProto {
        set.file
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("file {name} missing"))
    }

    /// Finds `package.Service` anywhere in the set.
    fn service<'a>(set: &'a FileDescriptorSet, full: &str) -> &'a ServiceDescriptorProto {
        set.file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .find(|(p, s)| format!("{p}.{}", s.name()) == full)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("service {full} missing"))
    }

    fn method<'a>(s: &'a ServiceDescriptorProto, name: &str) -> &'a MethodDescriptorProto {
        s.method
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("method {name} missing in {}", s.name()))
    }

    /// Finds a (possibly nested, `Outer.Inner`) message by its name relative to `file`'s package.
    fn message<'a>(f: &'a FileDescriptorProto, path: &str) -> &'a DescriptorProto {
        let mut parts = path.split('.');
        let first = parts.next().unwrap_or_default();
        let mut m = f
            .message_type
            .iter()
            .find(|m| m.name() == first)
            .unwrap_or_else(|| panic!("message {first} missing"));
        for part in parts {
            m = m
                .nested_type
                .iter()
                .find(|n| n.name() == part)
                .unwrap_or_else(|| panic!("nested message {part} missing"));
        }
        m
    }

    fn field<'a>(m: &'a DescriptorProto, name: &str) -> &'a FieldDescriptorProto {
        m.field
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("field {name} missing in {}", m.name()))
    }

    /// (input type, output type, client streaming, server streaming)
    fn sig(m: &MethodDescriptorProto) -> (&str, &str, bool, bool) {
        (
            m.input_type(),
            m.output_type(),
            m.client_streaming(),
            m.server_streaming(),
        )
    }

    #[test]
    fn files_packages_and_imports() {
        let set = fds();
        let expect = [
            (
                "armada.proto",
                "regatta.v1",
                &["google/protobuf/struct.proto", "mvcc.proto"][..],
            ),
            ("metrics.proto", "regatta.v1", &[][..]),
            ("mvcc.proto", "mvcc.v1", &[][..]),
            ("replication.proto", "replication.v1", &["mvcc.proto"][..]),
            (
                "maintenance.proto",
                "maintenance.v1",
                &["replication.proto"][..],
            ),
        ];
        for (name, package, deps) in expect {
            let f = file(&set, name);
            assert_eq!(f.package(), package, "{name}");
            assert_eq!(f.syntax(), "proto3", "{name}");
            let mut got: Vec<&str> = f.dependency.iter().map(String::as_str).collect();
            got.sort_unstable();
            assert_eq!(got, deps, "{name} imports");
        }
        // The imported well-known type is in the set too, so reflection clients can resolve it.
        assert_eq!(
            file(&set, "google/protobuf/struct.proto").package(),
            "google.protobuf"
        );
        assert!(file(&set, "mvcc.proto").service.is_empty());
    }

    #[test]
    fn regatta_services() {
        let set = fds();
        let kv = service(&set, "regatta.v1.KV");
        let names: Vec<&str> = kv.method.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            ["Range", "IterateRange", "Put", "DeleteRange", "Txn"]
        );
        assert_eq!(
            sig(method(kv, "Range")),
            (
                ".regatta.v1.RangeRequest",
                ".regatta.v1.RangeResponse",
                false,
                false
            )
        );
        assert_eq!(
            sig(method(kv, "IterateRange")),
            (
                ".regatta.v1.RangeRequest",
                ".regatta.v1.RangeResponse",
                false,
                true
            )
        );
        assert_eq!(
            sig(method(kv, "Put")),
            (
                ".regatta.v1.PutRequest",
                ".regatta.v1.PutResponse",
                false,
                false
            )
        );
        assert_eq!(
            sig(method(kv, "DeleteRange")),
            (
                ".regatta.v1.DeleteRangeRequest",
                ".regatta.v1.DeleteRangeResponse",
                false,
                false
            )
        );
        assert_eq!(
            sig(method(kv, "Txn")),
            (
                ".regatta.v1.TxnRequest",
                ".regatta.v1.TxnResponse",
                false,
                false
            )
        );

        let cluster = service(&set, "regatta.v1.Cluster");
        assert_eq!(
            sig(method(cluster, "MemberList")),
            (
                ".regatta.v1.MemberListRequest",
                ".regatta.v1.MemberListResponse",
                false,
                false
            )
        );
        assert_eq!(
            sig(method(cluster, "Status")),
            (
                ".regatta.v1.StatusRequest",
                ".regatta.v1.StatusResponse",
                false,
                false
            )
        );

        let tables = service(&set, "regatta.v1.Tables");
        for (m, req, resp) in [
            ("Create", "CreateTableRequest", "CreateTableResponse"),
            ("Delete", "DeleteTableRequest", "DeleteTableResponse"),
            ("List", "ListTablesRequest", "ListTablesResponse"),
        ] {
            let (i, o, cs, ss) = sig(method(tables, m));
            assert_eq!(i, format!(".regatta.v1.{req}"));
            assert_eq!(o, format!(".regatta.v1.{resp}"));
            assert!(!cs && !ss, "{m} must be unary");
        }

        // Metrics lives in metrics.proto but in package regatta.v1.
        let metrics_file = file(&set, "metrics.proto");
        assert_eq!(metrics_file.service.len(), 1);
        assert_eq!(metrics_file.service[0].name(), "Metrics");
        assert_eq!(
            sig(method(service(&set, "regatta.v1.Metrics"), "GetMetrics")),
            (
                ".regatta.v1.MetricsRequest",
                ".regatta.v1.MetricsResponse",
                false,
                false
            )
        );
    }

    #[test]
    fn replication_services() {
        let set = fds();
        let log = service(&set, "replication.v1.Log");
        assert_eq!(
            sig(method(log, "Replicate")),
            (
                ".replication.v1.ReplicateRequest",
                ".replication.v1.ReplicateResponse",
                false,
                true
            )
        );
        let meta = service(&set, "replication.v1.Metadata");
        assert_eq!(
            sig(method(meta, "Get")),
            (
                ".replication.v1.MetadataRequest",
                ".replication.v1.MetadataResponse",
                false,
                false
            )
        );
        let snap = service(&set, "replication.v1.Snapshot");
        let stream = method(snap, "Stream");
        assert_eq!(
            sig(stream),
            (
                ".replication.v1.SnapshotRequest",
                ".replication.v1.SnapshotChunk",
                false,
                true
            )
        );
        assert_eq!(
            stream.options.as_ref().map(|o| o.deprecated()),
            Some(true),
            "Snapshot/Stream must be deprecated"
        );
        let query = method(snap, "Query");
        assert_eq!(
            sig(query),
            (
                ".replication.v1.SnapshotQueryRequest",
                ".replication.v1.SnapshotQueryResponse",
                false,
                false
            )
        );
        assert!(!query.options.as_ref().is_some_and(|o| o.deprecated()));
    }

    #[test]
    fn maintenance_services() {
        let set = fds();
        let m = service(&set, "maintenance.v1.Maintenance");
        assert_eq!(
            sig(method(m, "Backup")),
            (
                ".maintenance.v1.BackupRequest",
                ".replication.v1.SnapshotChunk",
                false,
                true
            )
        );
        assert_eq!(
            sig(method(m, "Restore")),
            (
                ".maintenance.v1.RestoreMessage",
                ".maintenance.v1.RestoreResponse",
                true,
                false
            )
        );
        assert_eq!(
            sig(method(m, "Reset")),
            (
                ".maintenance.v1.ResetRequest",
                ".maintenance.v1.ResetResponse",
                false,
                false
            )
        );
    }

    #[test]
    fn explicit_presence_and_oneofs() {
        let set = fds();
        let mvcc = file(&set, "mvcc.proto");

        let cmd = message(mvcc, "Command");
        for (name, number, ty) in [
            ("leader_index", 5, Type::Uint64),
            ("txn", 7, Type::Message),
            ("range_end", 8, Type::Bytes),
        ] {
            let f = field(cmd, name);
            assert_eq!(f.number(), number, "{name}");
            assert_eq!(f.r#type(), ty, "{name}");
            assert!(
                f.proto3_optional(),
                "Command.{name} must be proto3 optional"
            );
        }
        assert_eq!(field(cmd, "txn").type_name(), ".mvcc.v1.Txn");
        assert_eq!(field(cmd, "sequence").label(), Label::Repeated);
        assert!(
            cmd.reserved_range
                .iter()
                .any(|r| r.start() == 4 && r.end() == 5),
            "Command reserves 4"
        );

        let cmp = message(mvcc, "Compare");
        let value = field(cmp, "value");
        assert_eq!(value.number(), 4);
        assert!(!value.proto3_optional());
        let idx =
            usize::try_from(value.oneof_index.expect("value is in a oneof")).expect("index fits");
        assert_eq!(cmp.oneof_decl[idx].name(), "target_union");
        assert_eq!(field(cmp, "range_end").number(), 64);
        assert!(field(cmp, "range_end").oneof_index.is_none());

        for (msg, oneof, members) in [
            (
                "RequestOp",
                "request",
                &["request_range", "request_put", "request_delete_range"][..],
            ),
            (
                "ResponseOp",
                "response",
                &["response_range", "response_put", "response_delete_range"][..],
            ),
        ] {
            let m = message(mvcc, msg);
            for member in members {
                let f = field(m, member);
                let i = usize::try_from(f.oneof_index.expect("oneof member")).expect("fits");
                assert_eq!(m.oneof_decl[i].name(), oneof, "{msg}.{member}");
            }
        }
        let del = message(mvcc, "RequestOp.DeleteRange");
        assert_eq!(field(del, "prev_kv").number(), 4);
        assert_eq!(field(del, "count").number(), 5);

        let repl = file(&set, "replication.proto");
        let rr = message(repl, "ReplicateResponse");
        for member in ["commands_response", "error_response"] {
            let i = usize::try_from(field(rr, member).oneof_index.expect("oneof member"))
                .expect("fits");
            assert_eq!(rr.oneof_decl[i].name(), "response");
        }
        assert_eq!(field(rr, "leader_index").number(), 8);
        assert_eq!(
            field(message(repl, "SnapshotQueryRequest"), "table").r#type(),
            Type::String
        );

        let maint = file(&set, "maintenance.proto");
        let rm = message(maint, "RestoreMessage");
        assert_eq!(rm.oneof_decl.len(), 1);
        assert_eq!(rm.oneof_decl[0].name(), "data");
        assert_eq!(
            field(rm, "chunk").type_name(),
            ".replication.v1.SnapshotChunk"
        );
    }

    #[test]
    fn regatta_field_names_and_map() {
        let set = fds();
        let armada = file(&set, "armada.proto");

        let member = message(armada, "Member");
        assert_eq!(field(member, "peerURLs").number(), 3);
        assert_eq!(field(member, "clientURLs").number(), 4);
        assert_eq!(field(member, "peerURLs").json_name(), "peerURLs");

        let ts = message(armada, "TableStatus");
        for (name, number) in [
            ("leader", 4),
            ("raftIndex", 5),
            ("raftTerm", 6),
            ("raftAppliedIndex", 7),
        ] {
            assert_eq!(field(ts, name).number(), number, "TableStatus.{name}");
        }
        let mut reserved_names = ts.reserved_name.clone();
        reserved_names.sort();
        assert_eq!(reserved_names, ["dbSize", "logSize"]);

        let sr = message(armada, "StatusResponse");
        let tables = field(sr, "tables");
        assert_eq!(tables.number(), 4);
        assert_eq!(tables.label(), Label::Repeated);
        assert_eq!(tables.type_name(), ".regatta.v1.StatusResponse.TablesEntry");
        let entry = message(armada, "StatusResponse.TablesEntry");
        assert!(
            entry.options.as_ref().is_some_and(|o| o.map_entry()),
            "TablesEntry must be a map entry"
        );
        assert_eq!(field(sr, "config").type_name(), ".google.protobuf.Struct");
        assert_eq!(field(sr, "errors").number(), 8);

        assert_eq!(
            field(message(armada, "RangeResponse"), "kvs").type_name(),
            ".mvcc.v1.KeyValue"
        );
        assert_eq!(field(message(armada, "RangeResponse"), "kvs").number(), 3);
        assert_eq!(
            field(message(armada, "CreateTableRequest"), "config").number(),
            5
        );
        assert_eq!(field(message(armada, "TableInfo"), "config").number(), 5);
        assert_eq!(
            field(message(armada, "StatusRequest"), "config").number(),
            4
        );
    }
}
