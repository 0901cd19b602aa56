//! TableFsm: applies `mvcc.v1.Command`s to one table.
//!
//! [`execute`] is the pure logic over any [`KvRead`] (tested against an in-memory model);
//! [`TableFsm::apply_entry`] runs it on RocksDB and writes the resulting key changes and
//! the new [`AppliedState`] in **one** write batch.
//!
//! Two kinds of commands, told apart by whether they carry a leader index:
//! - **Local** commands (a leader cluster's own writes) build the responses their
//!   proposer gets, bounded by [`ResponseBudget`]: a command whose results cannot fit a
//!   4 MiB response is refused as a whole, identically on every replica (same data, same
//!   verdict), and changes nothing.
//! - **Replicated** commands (a follower cluster applying its leader's log) build no
//!   responses (the leader answered the writer) and are never refused for size: the
//!   leader applied them, so must we. They arrive in a [replicated batch](encode_replicated)
//!   that names the leader index it continues from; a batch that would skip commands (it
//!   continues from beyond what this replica stored) is refused whole, never half-applied.

use flotilla_proto::keys::is_all_sentinel;
use flotilla_proto::mvcc::v1::{
    Command, KeyValue, RequestOp, ResponseOp, Txn, command::CommandType, compare, request_op,
    response_op,
};
use prost::Message as _;
use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys;
use crate::range::{RangeQuery, ResponseBudget};
use crate::values::StoredValue;
use crate::view::{DbView, End, KvRead, Overlay};

/// What applying one command produced for its proposer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutput {
    /// The MVCC revision the command's writes got (raft index, or the carried leader index).
    pub revision: u64,
    /// One response per op, in application order (Txn: ops of the executed branch).
    pub responses: Vec<ResponseOp>,
    /// For Txn: whether the guard held. True for every other command.
    pub succeeded: bool,
    /// The command was skipped because its leader index was already applied.
    pub skipped: bool,
    /// The command was refused as a whole and changed nothing but the applied index.
    pub refused: Option<Refusal>,
}

/// Why a committed command was refused (deterministically: every replica with the same
/// state refuses it the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its results would exceed a response, or it is malformed; the text says which.
    Invalid(String),
    /// A replicated batch continues from a leader index beyond the one stored here.
    Gap {
        /// The leader index this replica holds.
        stored: u64,
        /// The leader index the batch continues from.
        continues_from: u64,
    },
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(msg) => Error::InvalidArgument(msg),
            Refusal::Gap {
                stored,
                continues_from,
            } => Error::ReplicationGap {
                stored,
                continues_from,
            },
        }
    }
}

/// First bytes of a replicated batch entry. Like load markers (see `crate::import`) it
/// starts with 0x00, which no protobuf message does, so it is never taken for a command.
const REPLICATED_PREFIX: [u8; 2] = [0x00, b'R'];

/// The log entry of a follower's replicated batch: `cmd` (a SEQUENCE of the leader's
/// commands, each with its leader index) continues the leader's log from
/// `continues_from`, the last leader index the puller had before it.
pub fn encode_replicated(continues_from: u64, cmd: &Command) -> Vec<u8> {
    let mut out = REPLICATED_PREFIX.to_vec();
    out.extend_from_slice(&continues_from.to_be_bytes());
    cmd.encode(&mut out)
        .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
    out
}

/// What a table log entry holds.
enum Entry {
    Empty,
    Local(Command),
    Replicated(u64, Command),
}

fn classify(table: u64, index: u64, data: &[u8]) -> Result<Entry> {
    if data.is_empty() {
        return Ok(Entry::Empty);
    }
    if let Some(rest) = data.strip_prefix(&REPLICATED_PREFIX[..]) {
        let from = rest
            .get(..8)
            .and_then(keys::decode_u64)
            .ok_or_else(|| Error::corrupt(table, format!("replicated batch at {index}")))?;
        let cmd = Command::decode(&rest[8..])
            .map_err(|e| Error::corrupt(table, format!("replicated batch at {index}: {e}")))?;
        return Ok(Entry::Replicated(from, cmd));
    }
    Command::decode(data)
        .map(Entry::Local)
        .map_err(|e| Error::corrupt(table, format!("command at {index}: {e}")))
}

/// Applies committed entries of one table to RocksDB.
#[derive(Debug, Clone)]
pub struct TableFsm {
    engine: Engine,
    table_id: u64,
}

impl TableFsm {
    /// The state machine of table `table_id`.
    pub fn new(engine: Engine, table_id: u64) -> Self {
        Self { engine, table_id }
    }

    /// Applies the committed entry (`index`, `term`, `data`) and advances `state`, all in
    /// one RocksDB write. Empty `data` (raft's leader no-op) changes only the applied index.
    /// An entry that does not decode is an error: replaying it can only fail again, and
    /// skipping it would let replicas differ.
    pub fn apply_entry(
        &self,
        index: u64,
        term: u64,
        data: &[u8],
        state: &mut AppliedState,
    ) -> Result<ApplyOutput> {
        let view = DbView::new(&self.engine, self.table_id);
        let mut overlay = Overlay::new(&view);
        let mut next = AppliedState {
            index,
            term,
            ..*state
        };
        let executed = match classify(self.table_id, index, data)? {
            Entry::Empty => Ok(ApplyOutput {
                revision: index,
                succeeded: true,
                ..Default::default()
            }),
            Entry::Local(cmd) => {
                let mut budget = ResponseBudget::page();
                execute(cmd, index, &mut overlay, &mut next, &mut budget)
            }
            Entry::Replicated(continues_from, cmd) => {
                let stored = state.leader_index.unwrap_or(0);
                if continues_from > stored {
                    Err(Stop::Refused(Refusal::Gap {
                        stored,
                        continues_from,
                    }))
                } else {
                    execute(
                        cmd,
                        index,
                        &mut overlay,
                        &mut next,
                        &mut ResponseBudget::unlimited(),
                    )
                }
            }
        };
        let output = match executed {
            Ok(output) => output,
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::Refused(refusal)) => {
                overlay.clear();
                next = AppliedState {
                    index,
                    term,
                    ..*state
                };
                ApplyOutput {
                    revision: index,
                    refused: Some(refusal),
                    ..Default::default()
                }
            }
        };
        let mut batch = WriteBatch::default();
        let data_cf = self.engine.cf(keys::CF_DATA);
        let meta_cf = self.engine.cf(keys::CF_META);
        // Leader tables remember what they delete, for incremental snapshots; a table
        // replicated from a leader cluster (it has a leader index) serves none, and its
        // revisions are the leader's, which its own log compaction could not age out.
        let keep_tombstones = next.leader_index.is_none();
        let pending = overlay.into_writes();
        let id = self.table_id;
        // Range deletes first: every key write that survives one is newer than it.
        for (start, end) in &pending.ranges {
            let upper = match end {
                Some(k) => keys::data_key(id, k),
                None => keys::table_end(id),
            };
            batch.delete_range_cf(data_cf, keys::data_key(id, start), upper);
            if keep_tombstones {
                let end = end.as_deref().unwrap_or_default();
                let tombstone = keys::range_tombstone_key(id, output.revision, start, end);
                batch.put_cf(meta_cf, tombstone, []);
            }
        }
        for (key, value) in pending.writes {
            let dkey = keys::data_key(id, &key);
            match value {
                Some(v) => batch.put_cf(data_cf, dkey, v.encode()),
                None => {
                    batch.delete_cf(data_cf, dkey);
                    if keep_tombstones {
                        let tombstone = keys::tombstone_key(id, output.revision, &key);
                        batch.put_cf(meta_cf, tombstone, []);
                    }
                }
            }
        }
        batch.put_cf(meta_cf, keys::applied_key(id), next.encode());
        // No sync: the raft log is durable, and replay restarts from the applied index
        // stored in this same batch.
        self.engine.write(batch, false)?;
        *state = next;
        Ok(output)
    }
}

/// Why executing a command stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The command is refused as a whole (see [`Refusal`]).
    Refused(Refusal),
    /// Storage failed: the state machine cannot go on.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Refused(Refusal::Invalid(msg.into())))
}

/// Applies `cmd` (raft `index`) to `view`, updating `state`'s leader index and GC horizon.
/// Responses spend `budget`; replicated commands (those carrying a leader index, and the
/// commands of a SEQUENCE) build none. Takes the command by value so keys and values
/// move into the overlay uncopied.
pub fn execute<R: KvRead>(
    cmd: Command,
    index: u64,
    view: &mut Overlay<'_, R>,
    state: &mut AppliedState,
    budget: &mut ResponseBudget,
) -> Result<ApplyOutput, Stop> {
    // `r#type()` would read an unknown type as PUT (the default).
    if CommandType::try_from(cmd.r#type).is_err() {
        return refuse(format!("a command of unknown type {}", cmd.r#type));
    }
    // A DUMMY carrying leader index 0 is a follower reset: forget the stored leader index
    // so the next pull starts from scratch (WIRE.md §5.9).
    if cmd.r#type() == CommandType::Dummy && cmd.leader_index == Some(0) {
        state.leader_index = Some(0);
        return Ok(ApplyOutput {
            revision: index,
            succeeded: true,
            ..Default::default()
        });
    }
    let mut out = ApplyOutput {
        revision: index,
        succeeded: true,
        ..Default::default()
    };
    // A GC command's leader index is the horizon it records (WIRE.md §5.8-5), never a
    // replication position: a leader table proposes it on log compaction and must not
    // look replicated; on a follower the enclosing Sequence advances the leader index.
    // Re-applying it is harmless (a max).
    if cmd.r#type() == CommandType::Gc {
        state.gc_horizon = state.gc_horizon.max(cmd.leader_index.unwrap_or(0));
        out.revision = cmd.leader_index.unwrap_or(index);
        return Ok(out);
    }
    if cmd.r#type() == CommandType::Sequence {
        for sub in cmd.sequence {
            let sub_out = execute(sub, index, view, state, budget)?;
            out.revision = sub_out.revision;
        }
        if let Some(li) = cmd.leader_index {
            state.leader_index = Some(state.leader_index.map_or(li, |s| s.max(li)));
            out.revision = li.max(out.revision);
        }
        return Ok(out);
    }
    let outputs = cmd.leader_index.is_none();
    if let Some(li) = cmd.leader_index {
        if state.leader_index.is_some_and(|stored| li <= stored) {
            out.skipped = true;
            out.revision = li;
            return Ok(out);
        }
        state.leader_index = Some(li);
        out.revision = li;
    }
    let rev = out.revision;
    let kind = cmd.r#type();
    let ops = Ops { rev, outputs };
    match kind {
        CommandType::Put => {
            let Some(kv) = cmd.kv else {
                return refuse("a PUT command without a key-value");
            };
            let prev = ops.put(view, kv.key, kv.value, cmd.prev_kvs, budget)?;
            if outputs {
                out.responses.push(put_response(prev));
            }
        }
        CommandType::Delete => {
            let Some(kv) = cmd.kv else {
                return refuse("a DELETE command without a key");
            };
            let end = cmd.range_end.unwrap_or_default();
            let deleted = ops.delete(view, &kv.key, &end, cmd.prev_kvs, cmd.count, budget)?;
            if outputs {
                out.responses.push(deleted);
            }
        }
        CommandType::PutBatch => {
            for kv in cmd.batch {
                ops.put(view, kv.key, kv.value, false, budget)?;
            }
        }
        CommandType::DeleteBatch => {
            for kv in &cmd.batch {
                ops.delete(view, &kv.key, &[], false, false, budget)?;
            }
        }
        CommandType::Txn => {
            let txn = cmd.txn.unwrap_or_default();
            let mut txn_budget = if outputs {
                ResponseBudget::txn(txn.success.len().max(txn.failure.len()))
            } else {
                ResponseBudget::unlimited()
            };
            let (succeeded, responses) = ops.txn(view, txn, &mut txn_budget)?;
            out.succeeded = succeeded;
            out.responses = responses;
        }
        CommandType::Dummy | CommandType::Sequence | CommandType::Gc => {}
    }
    Ok(out)
}

/// The write ops of one command: its revision, and whether it builds responses.
#[derive(Debug, Clone, Copy)]
struct Ops {
    rev: u64,
    outputs: bool,
}

impl Ops {
    /// Writes `key`; returns its previous pair when `want_prev` (and responses are built).
    fn put<R: KvRead>(
        self,
        view: &mut Overlay<'_, R>,
        key: Vec<u8>,
        value: Vec<u8>,
        want_prev: bool,
        budget: &mut ResponseBudget,
    ) -> Result<Option<KeyValue>, Stop> {
        let prev = view.get(&key)?;
        let create_revision = prev.as_ref().map_or(self.rev, |p| p.create_revision);
        let prev_kv = match prev {
            Some(p) if want_prev && self.outputs => {
                let kv = KeyValue {
                    key: key.clone(),
                    create_revision: p.create_revision as i64,
                    mod_revision: p.mod_revision as i64,
                    value: p.value,
                };
                if !budget.take(&kv, true) {
                    return refuse("the previous values of this Txn's puts exceed 4 MiB");
                }
                Some(kv)
            }
            _ => None,
        };
        view.put(
            key,
            StoredValue {
                create_revision,
                mod_revision: self.rev,
                value,
            },
        );
        Ok(prev_kv)
    }

    /// Deletes the live keys of `[key, end)` (only `key` if `end` is empty). A range is
    /// deleted without reading it unless its keys are to be counted or returned.
    fn delete<R: KvRead>(
        self,
        view: &mut Overlay<'_, R>,
        key: &[u8],
        end: &[u8],
        prev_kv: bool,
        count: bool,
        budget: &mut ResponseBudget,
    ) -> Result<ResponseOp, Stop> {
        let (prev_kv, count) = (prev_kv && self.outputs, count && self.outputs);
        let mut deleted = 0i64;
        let mut prev_kvs = Vec::new();
        let mut over_budget = false;
        let mut found = |k: &[u8], v: &StoredValue| {
            deleted += 1;
            if prev_kv {
                let kv = KeyValue {
                    key: k.to_vec(),
                    create_revision: v.create_revision as i64,
                    mod_revision: v.mod_revision as i64,
                    value: v.value.clone(),
                };
                if !budget.take(&kv, prev_kvs.is_empty()) {
                    over_budget = true;
                    return false;
                }
                prev_kvs.push(kv);
            }
            true
        };
        if end.is_empty() {
            if let Some(v) = view.get(key)? {
                found(key, &v);
                view.delete(key.to_vec());
            }
        } else {
            let end = if is_all_sentinel(end) {
                End::TableEnd
            } else {
                End::Key(end)
            };
            if prev_kv || count {
                view.scan(key, end, &mut found)?;
            }
            view.delete_range(key, end);
        }
        if over_budget {
            return refuse(
                "the deleted pairs exceed 4 MiB: delete in smaller ranges, or without prev_kv",
            );
        }
        let reported = if prev_kv || count { deleted } else { 0 };
        Ok(ResponseOp {
            response: Some(response_op::Response::ResponseDeleteRange(
                response_op::DeleteRange {
                    deleted: reported,
                    prev_kvs,
                },
            )),
        })
    }

    /// Evaluates the guard and runs the chosen branch; returns (guard result, responses).
    fn txn<R: KvRead>(
        self,
        view: &mut Overlay<'_, R>,
        txn: Txn,
        budget: &mut ResponseBudget,
    ) -> Result<(bool, Vec<ResponseOp>), Stop> {
        let mut succeeded = true;
        for cmp in &txn.compare {
            if !compare_holds(view, cmp)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        let mut responses = Vec::with_capacity(if self.outputs { ops.len() } else { 0 });
        for op in ops {
            if let Some(response) = self.op(view, op, budget)? {
                responses.push(response);
            }
        }
        Ok((succeeded, responses))
    }

    fn op<R: KvRead>(
        self,
        view: &mut Overlay<'_, R>,
        op: RequestOp,
        budget: &mut ResponseBudget,
    ) -> Result<Option<ResponseOp>, Stop> {
        let response = match op.request {
            // A read changes nothing: replicated commands skip it.
            Some(request_op::Request::RequestRange(_)) if !self.outputs => return Ok(None),
            Some(request_op::Request::RequestRange(r)) => {
                let query = RangeQuery {
                    key: r.key,
                    range_end: r.range_end,
                    limit: r.limit.max(0) as u64,
                    keys_only: r.keys_only,
                    // inside a Txn keys_only wins silently (WIRE.md §5.2)
                    count_only: r.count_only && !r.keys_only,
                    ..Default::default()
                };
                let page = query.read_page(view, budget)?;
                ResponseOp {
                    response: Some(response_op::Response::ResponseRange(response_op::Range {
                        kvs: page.kvs,
                        more: page.more,
                        count: page.count as i64,
                    })),
                }
            }
            Some(request_op::Request::RequestPut(p)) => {
                put_response(self.put(view, p.key, p.value, p.prev_kv, budget)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                self.delete(view, &d.key, &d.range_end, d.prev_kv, d.count, budget)?
            }
            None => ResponseOp { response: None },
        };
        Ok(self.outputs.then_some(response))
    }
}

fn put_response(prev_kv: Option<KeyValue>) -> ResponseOp {
    ResponseOp {
        response: Some(response_op::Response::ResponsePut(response_op::Put {
            prev_kv,
        })),
    }
}

/// Evaluates a read-only Txn (every op a Range) against `view`, e.g. one RocksDB snapshot,
/// within one response's budget.
pub fn read_txn<R: KvRead>(view: &R, txn: Txn) -> Result<(bool, Vec<ResponseOp>), Stop> {
    let mut overlay = Overlay::new(view);
    let mut budget = ResponseBudget::txn(txn.success.len().max(txn.failure.len()));
    let ops = Ops {
        rev: 0,
        outputs: true,
    };
    ops.txn(&mut overlay, txn, &mut budget)
}

/// One guard predicate (WIRE.md §5.4).
pub fn compare_holds(view: &impl KvRead, cmp: &flotilla_proto::mvcc::v1::Compare) -> Result<bool> {
    use flotilla_proto::mvcc::v1::compare::{CompareResult, CompareTarget};
    let operand = match (&cmp.target_union, cmp.target()) {
        (Some(compare::TargetUnion::Value(v)), CompareTarget::Value) => Some(v.as_slice()),
        // Value absent, or a target we do not know: an existence test.
        _ => None,
    };
    let op = cmp.result();
    let holds = |stored: &[u8]| -> bool {
        let Some(given) = operand else { return true };
        match op {
            CompareResult::Equal => stored == given,
            CompareResult::Greater => stored > given,
            CompareResult::Less => stored < given,
            CompareResult::NotEqual => stored != given,
        }
    };
    if cmp.range_end.is_empty() {
        return Ok(view.get(&cmp.key)?.is_some_and(|v| holds(&v.value)));
    }
    let end = if is_all_sentinel(&cmp.range_end) {
        End::TableEnd
    } else {
        End::Key(&cmp.range_end)
    };
    let (mut any, mut all) = (false, true);
    view.scan(&cmp.key, end, &mut |_, v| {
        any = true;
        if operand.is_none() {
            return false; // existence is all we need
        }
        all = holds(&v.value);
        all
    })?;
    Ok(any && all)
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fsm_fuzz.rs"]
pub(crate) mod fuzz;
