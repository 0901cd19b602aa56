use std::collections::BTreeMap;

use flotilla_proto::mvcc::v1::{Compare, compare::CompareResult};
use proptest::prelude::*;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Engine,
    fsm: TableFsm,
    state: AppliedState,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let fsm = TableFsm::new(engine.clone(), 42);
        Self {
            _dir: dir,
            engine,
            fsm,
            state: AppliedState::default(),
            index: 0,
        }
    }

    fn apply(&mut self, cmd: &Command) -> ApplyOutput {
        self.index += 1;
        self.fsm
            .apply_entry(self.index, 1, &cmd.encode_to_vec(), &mut self.state)
            .expect("apply")
    }

    /// Applies `cmd` as a follower's replicated batch continuing from `continues_from`.
    fn apply_replicated(&mut self, continues_from: u64, cmd: &Command) -> ApplyOutput {
        self.index += 1;
        self.fsm
            .apply_entry(
                self.index,
                1,
                &encode_replicated(continues_from, cmd),
                &mut self.state,
            )
            .expect("apply")
    }

    fn get(&self, key: &str) -> Option<StoredValue> {
        DbView::new(&self.engine, 42)
            .get(key.as_bytes())
            .expect("get")
    }

    fn dump(&self) -> BTreeMap<Vec<u8>, (u64, u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        DbView::new(&self.engine, 42)
            .scan(b"", End::TableEnd, &mut |k, v| {
                out.insert(
                    k.to_vec(),
                    (v.create_revision, v.mod_revision, v.value.clone()),
                );
                true
            })
            .expect("scan");
        out
    }
}

fn kv(k: &str, v: &str) -> Option<KeyValue> {
    Some(KeyValue {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..Default::default()
    })
}

fn put_cmd(k: &str, v: &str) -> Command {
    Command {
        r#type: CommandType::Put as i32,
        kv: kv(k, v),
        prev_kvs: true,
        ..Default::default()
    }
}

fn delete_cmd(k: &str, end: Option<&str>) -> Command {
    Command {
        r#type: CommandType::Delete as i32,
        kv: kv(k, ""),
        range_end: end.map(|e| e.as_bytes().to_vec()),
        prev_kvs: true,
        count: true,
        ..Default::default()
    }
}

fn delete_response(prev_kvs: Vec<KeyValue>, deleted: i64) -> ResponseOp {
    ResponseOp {
        response: Some(response_op::Response::ResponseDeleteRange(
            response_op::DeleteRange { deleted, prev_kvs },
        )),
    }
}

fn value_cmp(k: &str, op: CompareResult, v: Option<&str>) -> Compare {
    Compare {
        result: op as i32,
        key: k.as_bytes().to_vec(),
        target_union: v.map(|v| compare::TargetUnion::Value(v.as_bytes().to_vec())),
        ..Default::default()
    }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(request_op::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            prev_kv: false,
        })),
    }
}

#[test]
fn put_keeps_create_revision_and_returns_prev() {
    let mut f = Fixture::new();
    let out = f.apply(&put_cmd("a", "1"));
    assert_eq!(out.revision, 1);
    assert_eq!(out.responses, vec![put_response(None)]);
    let out = f.apply(&put_cmd("a", "2"));
    let Some(response_op::Response::ResponsePut(p)) = &out.responses[0].response else {
        panic!("not a put response")
    };
    assert_eq!(
        p.prev_kv.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"1"[..])
    );
    let v = f.get("a").expect("a exists");
    assert_eq!(
        (v.create_revision, v.mod_revision, v.value),
        (1, 2, b"2".to_vec())
    );
    assert_eq!(f.state.index, 2);
}

#[test]
fn delete_single_range_and_to_end() {
    let mut f = Fixture::new();
    for k in ["a", "b", "c", "d"] {
        f.apply(&put_cmd(k, k));
    }
    let out = f.apply(&delete_cmd("a", None));
    assert_eq!(
        out.responses,
        vec![delete_response(
            vec![KeyValue {
                key: b"a".to_vec(),
                create_revision: 1,
                mod_revision: 1,
                value: b"a".to_vec()
            }],
            1
        )]
    );
    let out = f.apply(&delete_cmd("b", Some("c")));
    let Some(response_op::Response::ResponseDeleteRange(d)) = &out.responses[0].response else {
        panic!("not a delete response")
    };
    assert_eq!(d.deleted, 1);
    f.apply(&delete_cmd("c", Some("\0")));
    assert!(f.dump().is_empty());
    // Deleting a missing key is fine and still consumes the index.
    let out = f.apply(&delete_cmd("zz", None));
    assert_eq!(out.revision, 8);
}

#[test]
fn delete_without_count_or_prev_reports_zero() {
    let mut f = Fixture::new();
    f.apply(&put_cmd("a", "1"));
    let mut cmd = delete_cmd("a", Some("\0"));
    cmd.count = false;
    cmd.prev_kvs = false;
    let out = f.apply(&cmd);
    assert_eq!(out.responses, vec![delete_response(vec![], 0)]);
    assert!(f.get("a").is_none());
}

#[test]
fn put_batch_and_delete_batch() {
    let mut f = Fixture::new();
    let batch = Command {
        r#type: CommandType::PutBatch as i32,
        batch: vec![kv("a", "1"), kv("b", "2"), kv("a", "3")]
            .into_iter()
            .flatten()
            .collect(),
        ..Default::default()
    };
    f.apply(&batch);
    assert_eq!(f.get("a").map(|v| v.value), Some(b"3".to_vec()));
    let del = Command {
        r#type: CommandType::DeleteBatch as i32,
        batch: vec![kv("a", ""), kv("zz", "")]
            .into_iter()
            .flatten()
            .collect(),
        ..Default::default()
    };
    f.apply(&del);
    assert_eq!(
        f.dump().keys().cloned().collect::<Vec<_>>(),
        vec![b"b".to_vec()]
    );
}

#[test]
fn txn_guard_branches_and_later_ops_see_earlier_writes() {
    let mut f = Fixture::new();
    f.apply(&put_cmd("a", "5"));
    let txn = |cmp: Compare| Command {
        r#type: CommandType::Txn as i32,
        txn: Some(Txn {
            compare: vec![cmp],
            success: vec![
                put_op("b", "x"),
                put_op("b", "y"),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(request_op::Range {
                        key: b"b".to_vec(),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![put_op("c", "f")],
        }),
        ..Default::default()
    };
    let out = f.apply(&txn(value_cmp("a", CompareResult::Greater, Some("4"))));
    assert!(out.succeeded);
    assert_eq!(out.responses.len(), 3);
    let Some(response_op::Response::ResponseRange(r)) = &out.responses[2].response else {
        panic!("not a range response")
    };
    assert_eq!(r.kvs[0].value, b"y");
    let out = f.apply(&txn(value_cmp(
        "missing",
        CompareResult::NotEqual,
        Some("4"),
    )));
    assert!(
        !out.succeeded,
        "a missing key fails every operator, NOT_EQUAL too"
    );
    assert_eq!(f.get("c").map(|v| v.value), Some(b"f".to_vec()));
}

#[test]
fn compare_presence_and_range_rules() {
    let mut f = Fixture::new();
    f.apply(&put_cmd("k1", ""));
    f.apply(&put_cmd("k2", "b"));
    let view = DbView::new(&f.engine, 42);
    // value absent: existence; present-but-empty: compare with "".
    assert!(compare_holds(&view, &value_cmp("k1", CompareResult::Equal, None)).expect("cmp"));
    assert!(compare_holds(&view, &value_cmp("k1", CompareResult::Equal, Some(""))).expect("cmp"));
    assert!(!compare_holds(&view, &value_cmp("k2", CompareResult::Equal, Some(""))).expect("cmp"));
    let range = |op, v: Option<&str>, start: &str, end: &str| Compare {
        range_end: end.as_bytes().to_vec(),
        ..value_cmp(start, op, v)
    };
    assert!(compare_holds(&view, &range(CompareResult::Less, Some("c"), "", "\0")).expect("cmp"));
    assert!(!compare_holds(&view, &range(CompareResult::Less, Some("b"), "", "\0")).expect("cmp"));
    assert!(!compare_holds(&view, &range(CompareResult::Equal, None, "x", "\0")).expect("cmp"));
    assert!(compare_holds(&view, &range(CompareResult::Equal, None, "k", "l")).expect("cmp"));
}

#[test]
fn sequence_skips_already_applied_leader_indexes() {
    let mut f = Fixture::new();
    let with_li = |mut c: Command, li: u64| {
        c.leader_index = Some(li);
        c
    };
    let seq = |cmds: Vec<Command>, last: u64| Command {
        r#type: CommandType::Sequence as i32,
        sequence: cmds,
        leader_index: Some(last),
        ..Default::default()
    };
    f.apply_replicated(
        0,
        &seq(
            vec![
                with_li(put_cmd("a", "1"), 10),
                with_li(put_cmd("b", "1"), 11),
            ],
            11,
        ),
    );
    // Overlapping re-delivery: 11 again (skipped) and 12 (new).
    f.apply_replicated(
        10,
        &seq(
            vec![
                with_li(put_cmd("b", "stale"), 11),
                with_li(put_cmd("c", "1"), 12),
            ],
            12,
        ),
    );
    // A batch that continues from beyond what is stored would skip 13..=14: refused
    // whole, nothing applied, the leader index unchanged.
    let out = f.apply_replicated(14, &seq(vec![with_li(put_cmd("d", "1"), 15)], 15));
    assert_eq!(
        out.refused,
        Some(Refusal::Gap {
            stored: 12,
            continues_from: 14
        })
    );
    assert!(f.get("d").is_none());
    assert_eq!(f.state.leader_index, Some(12));
    assert_eq!(
        f.state.index, f.index,
        "a refused batch still consumes its index"
    );
    assert_eq!(f.state.leader_index, Some(12));
    let b = f.get("b").expect("b");
    assert_eq!((b.value, b.mod_revision), (b"1".to_vec(), 11));
    assert_eq!(f.get("c").map(|v| v.create_revision), Some(12));
    // Replicated commands build no responses: the leader answered the writer.
    let out = f.apply_replicated(12, &seq(vec![with_li(put_cmd("e", "1"), 13)], 13));
    assert!(out.responses.is_empty());
    // DUMMY with leader index 0 resets it (follower Reset).
    f.apply(&Command {
        r#type: CommandType::Dummy as i32,
        leader_index: Some(0),
        ..Default::default()
    });
    assert_eq!(f.state.leader_index, Some(0));
}

#[test]
fn dummy_gc_and_empty_entries_only_advance_state() {
    let mut f = Fixture::new();
    f.apply(&Command {
        r#type: CommandType::Dummy as i32,
        ..Default::default()
    });
    f.apply(&Command {
        r#type: CommandType::Gc as i32,
        leader_index: Some(7),
        ..Default::default()
    });
    assert_eq!(f.state.gc_horizon, 7);
    assert_eq!(
        f.state.leader_index, None,
        "a GC's index is a horizon, not a replication position"
    );
    f.fsm
        .apply_entry(3, 1, &[], &mut f.state)
        .expect("empty entry");
    assert_eq!(f.state.index, 3);
    assert!(f.dump().is_empty());
    // applied state is persisted with the batch
    let stored = f
        .engine
        .get(keys::CF_META, &keys::applied_key(42))
        .expect("get")
        .expect("present");
    assert_eq!(AppliedState::decode(42, &stored).expect("decode"), f.state);
}

#[test]
fn a_replicated_gc_records_the_horizon_and_the_sequence_the_leader_index() {
    let mut f = Fixture::new();
    f.apply(&Command {
        r#type: CommandType::Sequence as i32,
        sequence: vec![Command {
            r#type: CommandType::Gc as i32,
            leader_index: Some(9),
            ..Default::default()
        }],
        leader_index: Some(9),
        ..Default::default()
    });
    assert_eq!(f.state.gc_horizon, 9);
    assert_eq!(f.state.leader_index, Some(9));
}

#[test]
fn undecodable_entries_are_errors_naming_the_table() {
    let mut f = Fixture::new();
    let err = f
        .fsm
        .apply_entry(1, 1, &[0xff, 0xff, 0xff], &mut f.state)
        .expect_err("garbage must not apply");
    assert!(
        matches!(err, Error::Corrupt { table: 42, .. }),
        "unexpected error {err:?}"
    );
    let err = f
        .fsm
        .apply_entry(1, 1, &[0x00, b'R', 1, 2], &mut f.state)
        .expect_err("a cut replicated batch must not apply");
    assert!(matches!(err, Error::Corrupt { table: 42, .. }));
    assert_eq!(f.state.index, 0);
}

#[test]
fn a_delete_range_whose_prev_kvs_exceed_a_response_is_refused_and_changes_nothing() {
    let mut f = Fixture::new();
    let big = "x".repeat(1 << 20);
    for k in ["a", "b", "c", "d", "e"] {
        f.apply(&put_cmd(k, &big));
    }
    let before = f.dump();
    let out = f.apply(&delete_cmd("a", Some("\0")));
    assert!(
        matches!(out.refused, Some(Refusal::Invalid(_))),
        "{:?}",
        out.refused
    );
    assert_eq!(f.dump(), before);
    // Without prev_kv the same range is deleted (by a range deletion, unread).
    let mut cmd = delete_cmd("a", Some("\0"));
    cmd.prev_kvs = false;
    let out = f.apply(&cmd);
    assert_eq!(out.refused, None);
    assert!(f.dump().is_empty());
}

#[test]
fn a_txn_whose_ranges_exceed_a_response_is_cut_with_more() {
    let mut f = Fixture::new();
    let big = "y".repeat(3 << 20);
    f.apply(&put_cmd("a", &big));
    f.apply(&put_cmd("b", &big));
    let range = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestRange(request_op::Range {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    let out = f.apply(&Command {
        r#type: CommandType::Txn as i32,
        txn: Some(Txn {
            success: vec![put_op("c", "1"), range("a"), range("b")],
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(out.refused, None);
    assert!(f.get("c").is_some());
    let encoded: usize = out.responses.iter().map(|r| r.encoded_len() + 8).sum();
    assert!(encoded <= crate::range::MAX_RESPONSE_BYTES, "{encoded}");
    let Some(response_op::Response::ResponseRange(second)) = &out.responses[2].response else {
        panic!("not a range response")
    };
    assert!(
        second.kvs.is_empty() && second.more,
        "the range that did not fit says more"
    );
}

// ---- property test: TableFsm against a BTreeMap model ----

type Model = BTreeMap<Vec<u8>, (u64, u64, Vec<u8>)>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    Txn {
        key: u8,
        expect: Option<u8>,
        then_put: (u8, u8),
        else_delete: u8,
    },
    Seq(Vec<(u8, u8)>, u64),
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + (k % 8)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v % 4)),
        (any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(k, e)| Op::Delete(k, e)),
        (
            any::<u8>(),
            proptest::option::of(0u8..4),
            (any::<u8>(), 0u8..4),
            any::<u8>()
        )
            .prop_map(|(key, expect, then_put, else_delete)| Op::Txn {
                key,
                expect,
                then_put,
                else_delete
            }),
        (
            proptest::collection::vec((any::<u8>(), 0u8..4), 1..4),
            0u64..30
        )
            .prop_map(|(puts, li)| Op::Seq(puts, li)),
    ]
}

fn model_put(m: &mut Model, k: Vec<u8>, v: Vec<u8>, rev: u64) {
    let create = m.get(&k).map_or(rev, |e| e.0);
    m.insert(k, (create, rev, v));
}

fn to_command(op: &Op) -> Command {
    match op {
        Op::Put(k, v) => Command {
            r#type: CommandType::Put as i32,
            kv: Some(KeyValue {
                key: key(*k),
                value: vec![*v],
                ..Default::default()
            }),
            ..Default::default()
        },
        Op::Delete(k, end) => Command {
            r#type: CommandType::Delete as i32,
            kv: Some(KeyValue {
                key: key(*k),
                ..Default::default()
            }),
            range_end: end.map(key),
            ..Default::default()
        },
        Op::Txn {
            key: k,
            expect,
            then_put,
            else_delete,
        } => Command {
            r#type: CommandType::Txn as i32,
            txn: Some(Txn {
                compare: vec![Compare {
                    key: key(*k),
                    target_union: expect.map(|v| compare::TargetUnion::Value(vec![v])),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(request_op::Put {
                        key: key(then_put.0),
                        value: vec![then_put.1],
                        prev_kv: false,
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        request_op::DeleteRange {
                            key: key(*else_delete),
                            ..Default::default()
                        },
                    )),
                }],
            }),
            ..Default::default()
        },
        Op::Seq(puts, li) => Command {
            r#type: CommandType::Sequence as i32,
            leader_index: Some(li + puts.len() as u64),
            sequence: puts
                .iter()
                .enumerate()
                .map(|(i, (k, v))| Command {
                    r#type: CommandType::Put as i32,
                    kv: Some(KeyValue {
                        key: key(*k),
                        value: vec![*v],
                        ..Default::default()
                    }),
                    leader_index: Some(li + 1 + i as u64),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    }
}

fn apply_model(m: &mut Model, leader_index: &mut Option<u64>, op: &Op, rev: u64) {
    match op {
        Op::Put(k, v) => model_put(m, key(*k), vec![*v], rev),
        Op::Delete(k, None) => {
            m.remove(&key(*k));
        }
        Op::Delete(k, Some(e)) => {
            let (s, e) = (key(*k), key(*e));
            m.retain(|k, _| !(*k >= s && *k < e));
        }
        Op::Txn {
            key: k,
            expect,
            then_put,
            else_delete,
        } => {
            let holds = match (m.get(&key(*k)), expect) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(e), Some(v)) => e.2 == vec![*v],
            };
            if holds {
                model_put(m, key(then_put.0), vec![then_put.1], rev);
            } else {
                m.remove(&key(*else_delete));
            }
        }
        Op::Seq(puts, li) => {
            if *li > leader_index.unwrap_or(0) {
                return; // a gap: refused whole
            }
            for (i, (k, v)) in puts.iter().enumerate() {
                let l = li + 1 + i as u64;
                if leader_index.is_some_and(|s| l <= s) {
                    continue;
                }
                *leader_index = Some(l);
                model_put(m, key(*k), vec![*v], l);
            }
            let last = li + puts.len() as u64;
            *leader_index = Some(leader_index.map_or(last, |s| s.max(last)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn fsm_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let mut f = Fixture::new();
        let mut model = Model::new();
        let mut leader_index = None;
        for op in &ops {
            let cmd = to_command(op);
            // Replays are part of the model: apply every Sequence twice.
            let replicated_from = match op {
                Op::Seq(_, li) => Some(*li),
                _ => None,
            };
            let apply = |f: &mut Fixture| match replicated_from {
                Some(from) => f.apply_replicated(from, &cmd),
                None => f.apply(&cmd),
            };
            let out = apply(&mut f);
            apply_model(&mut model, &mut leader_index, op, f.index);
            prop_assert_eq!(out.revision >= 1, true);
            if replicated_from.is_some() {
                apply(&mut f);
            }
            prop_assert_eq!(&f.dump(), &model);
            prop_assert_eq!(f.state.leader_index, leader_index);
        }
    }
}
