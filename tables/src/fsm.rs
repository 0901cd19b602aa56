//! TableFsm: applies `mvcc.v1.Command`s to one table.
//!
//! [`execute`] is the pure logic over any [`KvRead`] (tested against an in-memory model);
//! [`TableFsm::apply_entry`] runs it on RocksDB and writes the resulting key changes and
//! the new [`AppliedState`] in **one** write batch.

use flotilla_proto::mvcc::v1::{
    Command, KeyValue, RequestOp, ResponseOp, Txn, command::CommandType, compare, request_op,
    response_op,
};
use prost::Message as _;
use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::Result;
use crate::keys;
use crate::range::RangeQuery;
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
    /// An entry that does not decode is applied as a no-op on every replica alike, so the
    /// replicas stay identical; the error is logged.
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
        let output = if data.is_empty() {
            ApplyOutput {
                revision: index,
                succeeded: true,
                ..Default::default()
            }
        } else {
            match Command::decode(data) {
                Ok(cmd) => execute(cmd, index, &mut overlay, &mut next)?,
                Err(e) => {
                    tracing::error!(table = self.table_id, index, "undecodable command: {e}");
                    ApplyOutput {
                        revision: index,
                        ..Default::default()
                    }
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
        for (key, value) in overlay.into_writes() {
            let dkey = keys::data_key(self.table_id, &key);
            match value {
                Some(v) => batch.put_cf(data_cf, dkey, v.encode()),
                None => {
                    batch.delete_cf(data_cf, dkey);
                    if keep_tombstones {
                        let tombstone = keys::tombstone_key(self.table_id, output.revision, &key);
                        batch.put_cf(meta_cf, tombstone, []);
                    }
                }
            }
        }
        batch.put_cf(meta_cf, keys::applied_key(self.table_id), next.encode());
        // No sync: the raft log is durable, and replay restarts from the applied index
        // stored in this same batch.
        self.engine.write(batch, false)?;
        *state = next;
        Ok(output)
    }
}

/// Applies `cmd` (raft `index`) to `view`, updating `state`'s leader index and GC horizon.
/// Takes the command by value so keys and values move into the overlay uncopied.
pub fn execute<R: KvRead>(
    cmd: Command,
    index: u64,
    view: &mut Overlay<'_, R>,
    state: &mut AppliedState,
) -> Result<ApplyOutput> {
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
            let sub_out = execute(sub, index, view, state)?;
            out.revision = sub_out.revision;
            out.responses.extend(sub_out.responses);
        }
        if let Some(li) = cmd.leader_index {
            state.leader_index = Some(state.leader_index.map_or(li, |s| s.max(li)));
            out.revision = li.max(out.revision);
        }
        return Ok(out);
    }
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
    let kv = cmd.kv.unwrap_or_default();
    match kind {
        CommandType::Put => {
            let prev = put(view, kv.key, kv.value, rev)?;
            out.responses.push(put_response(prev, cmd.prev_kvs));
        }
        CommandType::Delete => {
            let end = cmd.range_end.unwrap_or_default();
            let deleted = delete(view, &kv.key, &end)?;
            out.responses
                .push(delete_response(deleted, cmd.prev_kvs, cmd.count));
        }
        CommandType::PutBatch => {
            for kv in cmd.batch {
                put(view, kv.key, kv.value, rev)?;
            }
        }
        CommandType::DeleteBatch => {
            for kv in &cmd.batch {
                delete(view, &kv.key, &[])?;
            }
        }
        CommandType::Txn => {
            let txn = cmd.txn.unwrap_or_default();
            let (succeeded, responses) = execute_txn(view, txn, rev)?;
            out.succeeded = succeeded;
            out.responses = responses;
        }
        CommandType::Dummy | CommandType::Sequence | CommandType::Gc => {}
    }
    Ok(out)
}

fn put<R: KvRead>(
    view: &mut Overlay<'_, R>,
    key: Vec<u8>,
    value: Vec<u8>,
    rev: u64,
) -> Result<Option<KeyValue>> {
    let prev = view.get(&key)?;
    let create_revision = prev.as_ref().map_or(rev, |p| p.create_revision);
    let prev_kv = prev.map(|p| KeyValue {
        key: key.clone(),
        create_revision: p.create_revision as i64,
        mod_revision: p.mod_revision as i64,
        value: p.value,
    });
    view.put(
        key,
        StoredValue {
            create_revision,
            mod_revision: rev,
            value,
        },
    );
    Ok(prev_kv)
}

fn put_response(prev: Option<KeyValue>, want_prev: bool) -> ResponseOp {
    ResponseOp {
        response: Some(response_op::Response::ResponsePut(response_op::Put {
            prev_kv: prev.filter(|_| want_prev),
        })),
    }
}

/// Deletes the live keys of `[key, end)` (single key if `end` is empty) and returns them.
fn delete<R: KvRead>(view: &mut Overlay<'_, R>, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
    let query = RangeQuery {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    };
    let found = query.read_page(view, usize::MAX)?.kvs;
    for kv in &found {
        view.delete(kv.key.clone());
    }
    Ok(found)
}

fn delete_response(deleted: Vec<KeyValue>, prev_kv: bool, count: bool) -> ResponseOp {
    let n = if prev_kv || count {
        deleted.len() as i64
    } else {
        0
    };
    ResponseOp {
        response: Some(response_op::Response::ResponseDeleteRange(
            response_op::DeleteRange {
                deleted: n,
                prev_kvs: if prev_kv { deleted } else { Vec::new() },
            },
        )),
    }
}

/// Evaluates the guard and runs the chosen branch; returns (guard result, responses).
pub fn execute_txn<R: KvRead>(
    view: &mut Overlay<'_, R>,
    txn: Txn,
    rev: u64,
) -> Result<(bool, Vec<ResponseOp>)> {
    let mut succeeded = true;
    for cmp in &txn.compare {
        if !compare_holds(view, cmp)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(execute_op(view, op, rev)?);
    }
    Ok((succeeded, responses))
}

fn execute_op<R: KvRead>(view: &mut Overlay<'_, R>, op: RequestOp, rev: u64) -> Result<ResponseOp> {
    Ok(match op.request {
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
            let page = query.read_page(view, usize::MAX)?;
            ResponseOp {
                response: Some(response_op::Response::ResponseRange(response_op::Range {
                    kvs: page.kvs,
                    more: page.more,
                    count: page.count as i64,
                })),
            }
        }
        Some(request_op::Request::RequestPut(p)) => {
            let prev = put(view, p.key, p.value, rev)?;
            put_response(prev, p.prev_kv)
        }
        Some(request_op::Request::RequestDeleteRange(d)) => {
            let deleted = delete(view, &d.key, &d.range_end)?;
            delete_response(deleted, d.prev_kv, d.count)
        }
        None => ResponseOp { response: None },
    })
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
    let end = if flotilla_proto::keys::is_all_sentinel(&cmp.range_end) {
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
