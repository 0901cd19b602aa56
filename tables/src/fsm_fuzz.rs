//! Property tests of [`TableFsm::apply_entry`] over arbitrary entry bytes (garbage,
//! replicated-batch framing, commands of any shape and their mutated encodings) on a
//! fresh engine: a result or an [`Error::Corrupt`] naming the table, never a panic, and
//! an entry refused or failed changes nothing. See docs/FUZZING.md.

use flotilla_proto::mvcc::v1::Compare;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

/// `cases`, unless `PROPTEST_CASES` asks for another number.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

const TABLE: u64 = 42;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn key_value() -> impl Strategy<Value = KeyValue> {
    (bytes(4), any::<i64>(), any::<i64>(), bytes(6)).prop_map(|(key, c, m, value)| KeyValue {
        key,
        create_revision: c,
        mod_revision: m,
        value,
    })
}

fn request_op() -> impl Strategy<Value = RequestOp> {
    let range = (
        bytes(3),
        bytes(3),
        any::<i64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(key, range_end, limit, keys_only, count_only)| {
            request_op::Request::RequestRange(request_op::Range {
                key,
                range_end,
                limit,
                keys_only,
                count_only,
            })
        });
    let put = (bytes(3), bytes(4), any::<bool>()).prop_map(|(key, value, prev_kv)| {
        request_op::Request::RequestPut(request_op::Put {
            key,
            value,
            prev_kv,
        })
    });
    let delete = (bytes(3), bytes(3), any::<bool>(), any::<bool>()).prop_map(
        |(key, range_end, prev_kv, count)| {
            request_op::Request::RequestDeleteRange(request_op::DeleteRange {
                key,
                range_end,
                prev_kv,
                count,
            })
        },
    );
    proptest::option::of(prop_oneof![range, put, delete]).prop_map(|request| RequestOp { request })
}

fn txn() -> impl Strategy<Value = Txn> {
    let cmp = (
        any::<i32>(),
        any::<i32>(),
        bytes(3),
        bytes(3),
        proptest::option::of(bytes(3)),
    )
        .prop_map(|(result, target, key, range_end, v)| Compare {
            result,
            target,
            key,
            range_end,
            target_union: v.map(compare::TargetUnion::Value),
        });
    (
        vec(cmp, 0..3),
        vec(request_op(), 0..3),
        vec(request_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| Txn {
            compare,
            success,
            failure,
        })
}

/// Any command: known and unknown types, any fields, SEQUENCEs of them.
fn command() -> impl Strategy<Value = Command> {
    let leaf = (
        (bytes(3), prop_oneof![4 => 0i32..8, 1 => any::<i32>()]),
        proptest::option::of(key_value()),
        proptest::option::of(prop_oneof![Just(0u64), 1u64..10, any::<u64>()]),
        vec(key_value(), 0..3),
        proptest::option::of(txn()),
        proptest::option::of(bytes(3)),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((table, r#type), kv, leader_index, batch, txn, range_end, (prev_kvs, count))| {
                Command {
                    table,
                    r#type,
                    kv,
                    leader_index,
                    batch,
                    txn,
                    range_end,
                    prev_kvs,
                    count,
                    sequence: Vec::new(),
                }
            },
        );
    leaf.prop_recursive(2, 12, 4, |inner| {
        (vec(inner, 0..4), proptest::option::of(any::<u64>())).prop_map(|(sequence, li)| Command {
            r#type: CommandType::Sequence as i32,
            leader_index: li,
            sequence,
            ..Default::default()
        })
    })
}

/// Entry bytes: garbage, a load or restore marker, a replicated batch's framing around anything,
/// or a command's encoding, possibly with bytes replaced or cut.
fn entry() -> impl Strategy<Value = Vec<u8>> {
    let encoded = prop_oneof![
        command().prop_map(|c| c.encode_to_vec()),
        (any::<u64>(), command()).prop_map(|(from, c)| encode_replicated(from, &c)),
    ];
    let mutated = (
        encoded.clone(),
        vec((any::<Index>(), any::<u8>()), 1..3),
        any::<bool>(),
    )
        .prop_map(|(mut bytes, edits, cut)| {
            if !bytes.is_empty() {
                let n = bytes.len();
                for (at, b) in &edits {
                    bytes[at.index(n)] = *b;
                }
                if cut {
                    bytes.truncate(edits[0].0.index(n));
                }
            }
            bytes
        });
    prop_oneof![
        bytes(64),
        (any::<u64>(), any::<u64>()).prop_map(|(leader_index, holder)| {
            crate::import::encode_marker(crate::import::LoadMarker::leader_snapshot(
                leader_index,
                holder,
            ))
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(upload, holder)| {
            crate::import::encode_marker(crate::import::LoadMarker::restore(upload, holder))
        }),
        bytes(24).prop_map(|tail| [&REPLICATED_PREFIX[..], &tail].concat()),
        encoded,
        mutated,
    ]
}

/// Whether `cmd` or any command in it has a type this version does not know.
fn has_unknown_type(cmd: &Command) -> bool {
    CommandType::try_from(cmd.r#type).is_err() || cmd.sequence.iter().any(has_unknown_type)
}

fn table_is_empty(engine: &Engine) -> bool {
    let mut empty = true;
    DbView::new(engine, TABLE)
        .scan(b"", End::TableEnd, &mut |_, _| {
            empty = false;
            false
        })
        .expect("scan");
    empty
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn fuzz_apply_entry(
        data in entry(),
        leader_index in proptest::option::of(0u64..5),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let fsm = TableFsm::new(engine.clone(), TABLE);
        let before = AppliedState {
            index: 6,
            term: 1,
            leader_index,
            gc_horizon: 0,
        };
        let mut state = before;
        match fsm.apply_entry(7, 1, &data, &mut state) {
            Err(Error::Corrupt { table, .. }) => {
                prop_assert_eq!(table, TABLE);
                prop_assert_eq!(state, before);
                prop_assert!(table_is_empty(&engine));
                let applied = engine.get(keys::CF_META, &keys::applied_key(TABLE)).expect("get");
                prop_assert!(applied.is_none(), "a failed entry wrote its applied state");
            }
            Err(e) => prop_assert!(false, "not a corruption of the table: {e}"),
            Ok(out) => {
                prop_assert_eq!((state.index, state.term), (7, 1));
                if out.refused.is_some() {
                    prop_assert_eq!(state, AppliedState { index: 7, ..before });
                    prop_assert!(table_is_empty(&engine), "a refused entry wrote data");
                }
                let cmd = match data.strip_prefix(&REPLICATED_PREFIX[..]) {
                    Some(rest) => Command::decode(&rest[8..]),
                    None => Command::decode(&data[..]),
                };
                if let Ok(cmd) = cmd
                    && has_unknown_type(&cmd)
                {
                    prop_assert!(
                        out.refused.is_some() || out.skipped,
                        "a command of unknown type was applied: {cmd:?}"
                    );
                }
            }
        }
    }
}
