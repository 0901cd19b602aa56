//! Property tests of [`receive`] over arbitrary chunk sequences and over valid streams
//! damaged: it returns a snapshot or an error, never panics, takes only a well-formed
//! stream, and leaves no file behind when it fails. See docs/FUZZING.md.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use raft::eraftpb::Snapshot;

use super::*;
use crate::fsm::fuzz::config;
use crate::values::StoredValue;

/// What the stream yields next: a chunk, or a transport error.
#[derive(Debug, Clone)]
enum Item {
    Chunk(SnapshotChunk),
    Fail,
}

/// An encoded raft message of type `kind` (a snapshot's metadata only, as raft builds it).
fn message(kind: MessageType, index: u64) -> Vec<u8> {
    let mut msg = Message::default();
    msg.set_msg_type(kind);
    msg.to = 2;
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = 1;
    msg.set_snapshot(snap);
    msg.write_to_bytes().expect("encode")
}

fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u64>().prop_map(|i| message(MessageType::MsgSnapshot, i)),
        any::<u64>().prop_map(|i| message(MessageType::MsgAppend, i)),
        vec(any::<u8>(), 0..16),
    ]
}

fn applied_bytes() -> impl Strategy<Value = Vec<u8>> {
    let state = (
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(|(index, term, leader_index, gc_horizon)| {
            AppliedState {
                index,
                term,
                leader_index,
                gc_horizon,
            }
            .encode()
        });
    prop_oneof![state, vec(any::<u8>(), 0..40)]
}

fn stored_value() -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..8)).prop_map(|(c, m, value)| {
        StoredValue {
            create_revision: c,
            mod_revision: m,
            value,
        }
        .encode()
    })
}

fn pair() -> impl Strategy<Value = Pair> {
    (
        vec(any::<u8>(), 0..4),
        prop_oneof![stored_value(), vec(any::<u8>(), 0..20)],
    )
        .prop_map(|(key, value)| Pair { key, value })
}

/// Any chunk: any group, message, applied state and pairs, last or not.
fn chunk() -> impl Strategy<Value = SnapshotChunk> {
    (
        prop_oneof![Just(5u64), any::<u64>()],
        prop_oneof![Just(Vec::new()), message_bytes()],
        prop_oneof![Just(Vec::new()), applied_bytes()],
        vec(pair(), 0..4),
        proptest::bool::weighted(0.3),
    )
        .prop_map(
            |(group_id, message, applied_state, pairs, last)| SnapshotChunk {
                group_id,
                message,
                applied_state,
                pairs,
                last,
            },
        )
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![9 => chunk().prop_map(Item::Chunk), 1 => Just(Item::Fail)]
}

/// A valid stream of group 5 as [`read_chunks`] sends it: the header, the applied state,
/// then pairs of distinct ascending keys in chunks, the last one marked.
fn valid() -> impl Strategy<Value = Vec<Item>> {
    let pairs = proptest::collection::btree_map(vec(any::<u8>(), 0..4), stored_value(), 0..12);
    (
        any::<u64>(),
        applied_bytes(),
        pairs,
        vec(any::<Index>(), 0..3),
    )
        .prop_map(|(index, applied_state, pairs, cuts)| {
            let applied_state = if AppliedState::decode(5, &applied_state).is_ok() {
                applied_state
            } else {
                AppliedState::default().encode()
            };
            let pairs: Vec<Pair> = pairs
                .into_iter()
                .map(|(key, value)| Pair { key, value })
                .collect();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(pairs.len() + 1)).collect();
            at.sort_unstable();
            at.push(pairs.len());
            let mut chunks = vec![
                SnapshotChunk {
                    group_id: 5,
                    message: message(MessageType::MsgSnapshot, index),
                    ..Default::default()
                },
                SnapshotChunk {
                    applied_state,
                    ..Default::default()
                },
            ];
            let mut from = 0;
            for to in at {
                chunks.push(SnapshotChunk {
                    pairs: pairs[from..to].to_vec(),
                    ..Default::default()
                });
                from = to;
            }
            if let Some(last) = chunks.last_mut() {
                last.last = true;
            }
            chunks.into_iter().map(Item::Chunk).collect()
        })
}

/// One way to damage a stream.
#[derive(Debug, Clone)]
enum Damage {
    /// Replace one byte of a pair's key or value.
    Byte(Index, Index, bool, u8),
    /// Cut a pair's value to some of its bytes.
    CutValue(Index, Index, Index),
    SwapPairs(Index, Index, Index),
    DuplicatePair(Index, Index),
    DuplicateChunk(Index),
    DropChunk(Index),
    SwapChunks(Index, Index),
    FlipLast(Index),
    Insert(Index, Item),
    Replace(Index, Item),
}

fn damage() -> impl Strategy<Value = Damage> {
    let i = any::<Index>;
    prop_oneof![
        (i(), i(), any::<bool>(), any::<u8>()).prop_map(|(c, p, k, b)| Damage::Byte(c, p, k, b)),
        (i(), i(), i()).prop_map(|(c, p, n)| Damage::CutValue(c, p, n)),
        (i(), i(), i()).prop_map(|(c, p, q)| Damage::SwapPairs(c, p, q)),
        (i(), i()).prop_map(|(c, p)| Damage::DuplicatePair(c, p)),
        i().prop_map(Damage::DuplicateChunk),
        i().prop_map(Damage::DropChunk),
        (i(), i()).prop_map(|(a, b)| Damage::SwapChunks(a, b)),
        i().prop_map(Damage::FlipLast),
        (i(), item()).prop_map(|(a, it)| Damage::Insert(a, it)),
        (i(), item()).prop_map(|(a, it)| Damage::Replace(a, it)),
    ]
}

/// The pairs of the `c`-th item, if it is a chunk with some.
fn pairs_of(items: &mut [Item], c: Index) -> Option<&mut Vec<Pair>> {
    if items.is_empty() {
        return None;
    }
    let n = items.len();
    match &mut items[c.index(n)] {
        Item::Chunk(chunk) if !chunk.pairs.is_empty() => Some(&mut chunk.pairs),
        _ => None,
    }
}

fn apply(items: &mut Vec<Item>, damage: Damage) {
    let n = items.len();
    match damage {
        Damage::Byte(c, p, key, b) => {
            if let Some(pairs) = pairs_of(items, c) {
                let len = pairs.len();
                let pair = &mut pairs[p.index(len)];
                let bytes = if key { &mut pair.key } else { &mut pair.value };
                if !bytes.is_empty() {
                    let at = p.index(bytes.len());
                    bytes[at] = b;
                }
            }
        }
        Damage::CutValue(c, p, keep) => {
            if let Some(pairs) = pairs_of(items, c) {
                let len = pairs.len();
                let value = &mut pairs[p.index(len)].value;
                value.truncate(keep.index(value.len() + 1));
            }
        }
        Damage::SwapPairs(c, p, q) => {
            if let Some(pairs) = pairs_of(items, c) {
                let len = pairs.len();
                pairs.swap(p.index(len), q.index(len));
            }
        }
        Damage::DuplicatePair(c, p) => {
            if let Some(pairs) = pairs_of(items, c) {
                let at = p.index(pairs.len());
                let dup = pairs[at].clone();
                pairs.insert(at, dup);
            }
        }
        Damage::DuplicateChunk(c) if n > 0 => {
            let dup = items[c.index(n)].clone();
            items.insert(c.index(n), dup);
        }
        Damage::DropChunk(c) if n > 0 => {
            items.remove(c.index(n));
        }
        Damage::SwapChunks(a, b) if n > 0 => items.swap(a.index(n), b.index(n)),
        Damage::FlipLast(c) if n > 0 => {
            if let Item::Chunk(chunk) = &mut items[c.index(n)] {
                chunk.last = !chunk.last;
            }
        }
        Damage::Insert(at, item) => items.insert(at.index(n + 1), item),
        Damage::Replace(at, item) if n > 0 => items[at.index(n)] = item,
        _ => {}
    }
}

/// `Some` if `items` are a snapshot: a MsgSnapshot header, a valid applied state, then
/// pairs of ascending keys and stored values up to a chunk marked last, all before any
/// transport error.
fn model(items: &[Item]) -> Option<()> {
    let mut chunks = items.iter().map(|item| match item {
        Item::Chunk(c) => Some(c),
        Item::Fail => None,
    });
    let header = chunks.next()??;
    let msg = Message::parse_from_bytes(&header.message).ok()?;
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return None;
    }
    AppliedState::decode(header.group_id, &chunks.next()??.applied_state).ok()?;
    let mut last: Option<&[u8]> = None;
    for chunk in chunks {
        let chunk = chunk?;
        for pair in &chunk.pairs {
            if StoredValue::decode(&pair.value).is_none() || last >= Some(&pair.key[..]) {
                return None;
            }
            last = Some(&pair.key);
        }
        if chunk.last {
            return Some(());
        }
    }
    None
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Receives `items` into a fresh directory and checks the outcome against [`model`].
fn check(items: Vec<Item>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("snapshots");
    let expected = model(&items);
    let header = match items.first() {
        Some(Item::Chunk(c)) => Some(c.clone()),
        _ => None,
    };
    let stream = items.into_iter().map(|item| match item {
        Item::Chunk(c) => Ok(c),
        Item::Fail => Err(Error::SnapshotStream("the peer went away".into())),
    });
    match (receive(&dir, stream, |_| true), expected) {
        (Err(_), None) => {
            let left = files_in(&dir);
            prop_assert!(left.is_empty(), "a refused stream left {left:?}");
        }
        (Ok((group, msg)), Some(())) => {
            let header = header.expect("a header");
            prop_assert_eq!(group, header.group_id);
            let staged = StagedSnapshot::decode(&msg.get_snapshot().data[..]).expect("staged");
            let applied = AppliedState::decode(group, &staged.applied_state).expect("applied");
            let meta = msg.get_snapshot().get_metadata();
            prop_assert_eq!((meta.index, meta.term), (applied.index, applied.term));
            prop_assert_eq!(files_in(&dir), vec![PathBuf::from(&staged.sst_path)]);
            discard(&msg.get_snapshot().data);
            prop_assert!(files_in(&dir).is_empty());
        }
        (Ok(_), None) => prop_assert!(false, "a bad stream was taken"),
        (Err(e), Some(_)) => prop_assert!(false, "a valid stream was refused: {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn fuzz_receive_arbitrary_chunks(items in vec(item(), 0..6)) {
        check(items)?;
    }
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn fuzz_receive_a_damaged_stream(mut items in valid(), damages in vec(damage(), 0..3)) {
        for d in damages {
            apply(&mut items, d);
        }
        check(items)?;
    }
}
