//! The register operations: puts, CAS transactions, deletes and reads of one key of a
//! table through one node, each call recorded in a [`History`] for the linearizability
//! checker (the workload that issues them is [`super::clients`]).
//!
//! Every write stores a value no other write stores (`c{client}-{counter}`), so the
//! checker can tell which write a read saw. The checker's register is `table/key`.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::mvcc::v1::{
    Compare, RequestOp,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op,
};
use flotilla_proto::regatta::v1::{
    DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, kv_client::KvClient,
};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::history::{History, Outcome, classify};
use crate::linearizability::Op;

/// Deadline of every call, so a stopped or cut-off node never hangs a client.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazy channel to `addr` (`host:port`) with a 1 s connect timeout and
/// [`CALL_TIMEOUT`] per call; it reconnects after the node comes back.
pub fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL_TIMEOUT)
        .connect_lazy()
}

/// How reads are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `linearizable: true` (ReadIndex through the table's leader): what the checker
    /// demands of reads.
    Linearizable,
    /// `linearizable: false` (local and immediate), yet recorded as if linearizable: only
    /// for the self-test that shows the harness catches stale reads.
    Serializable,
}

/// The key of the checker's register for `key` of `table`.
pub fn register(table: &str, key: &str) -> Vec<u8> {
    format!("{table}/{key}").into_bytes()
}

/// One client: issues calls and records each in the history under its id.
#[derive(Debug)]
pub struct RegisterClient {
    id: u64,
    pub(super) history: Arc<History>,
    read_mode: ReadMode,
    /// Writes issued, for unique values.
    written: u64,
    /// Prefix of the error counts of the next call (where it is sent).
    pub(super) error_prefix: &'static str,
}

impl RegisterClient {
    /// Client `id` recording into `history`, reading in `read_mode`.
    pub fn new(id: u64, history: Arc<History>, read_mode: ReadMode) -> Self {
        Self {
            id,
            history,
            read_mode,
            written: 0,
            error_prefix: "",
        }
    }

    fn next_value(&mut self) -> Vec<u8> {
        self.written += 1;
        format!("c{}-{}", self.id, self.written).into_bytes()
    }

    /// Records a mutation that returned `result`, unless it is known not to have been
    /// applied; `op` is built from the response (CAS needs its `succeeded`).
    fn finish<T>(
        &self,
        kind: &'static str,
        call: u64,
        result: Result<T, Status>,
        op: impl FnOnce(Option<&T>) -> Op,
    ) -> Result<T, Status> {
        let ret = self.history.now();
        match &result {
            Ok(response) => {
                self.history.count(kind, "ok");
                self.history
                    .record(self.id, op(Some(response)), call, Some(ret));
            }
            Err(status) => {
                self.history.count_error(self.error_prefix, status);
                match classify(status) {
                    Outcome::NotApplied => self.history.count(kind, "not applied"),
                    Outcome::Unknown => {
                        self.history.count(kind, "unknown");
                        self.history.record(self.id, op(None), call, None);
                    }
                }
            }
        }
        result
    }

    /// Reads `key` of `table`; the value (`None`: absent) if the read succeeded, which is
    /// then recorded. Failed reads say nothing and are left out.
    pub async fn read(
        &mut self,
        channel: Channel,
        table: &str,
        key: &str,
    ) -> Option<Option<Vec<u8>>> {
        let mut req = tonic::Request::new(RangeRequest {
            table: table.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            linearizable: self.read_mode == ReadMode::Linearizable,
            ..Default::default()
        });
        req.set_timeout(CALL_TIMEOUT);
        let call = self.history.now();
        match KvClient::new(channel).range(req).await {
            Ok(response) => {
                let ret = self.history.now();
                let observed = response
                    .into_inner()
                    .kvs
                    .into_iter()
                    .next()
                    .map(|kv| kv.value);
                self.history.count("read", "ok");
                let op = Op::Read {
                    key: register(table, key),
                    observed: observed.clone(),
                };
                self.history.record(self.id, op, call, Some(ret));
                Some(observed)
            }
            Err(status) => {
                self.history.count("read", "failed");
                self.history.count_error(self.error_prefix, &status);
                None
            }
        }
    }

    /// Puts a fresh value into `key` of `table`; the value if acknowledged.
    pub async fn put(
        &mut self,
        channel: Channel,
        table: &str,
        key: &str,
    ) -> Result<Vec<u8>, Status> {
        let value = self.next_value();
        let mut req = tonic::Request::new(PutRequest {
            table: table.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            value: value.clone(),
            prev_kv: false,
        });
        req.set_timeout(CALL_TIMEOUT);
        let call = self.history.now();
        let result = KvClient::new(channel).put(req).await;
        let op = |_: Option<&_>| Op::Write {
            key: register(table, key),
            value: value.clone(),
        };
        self.finish("put", call, result, op).map(|_| value.clone())
    }

    /// Deletes `key` of `table`.
    pub async fn delete(&mut self, channel: Channel, table: &str, key: &str) -> Result<(), Status> {
        let mut req = tonic::Request::new(DeleteRangeRequest {
            table: table.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            ..Default::default()
        });
        req.set_timeout(CALL_TIMEOUT);
        let call = self.history.now();
        let result = KvClient::new(channel).delete_range(req).await;
        let op = |_: Option<&_>| Op::Delete {
            key: register(table, key),
        };
        self.finish("delete", call, result, op).map(|_| ())
    }

    /// If `key` of `table` holds `expected` (`None`: absent), sets it to a fresh value, in
    /// one Txn; the new value if the swap happened, `None` if the comparison failed.
    ///
    /// "Equals `v`" is a value compare guarding a put; "absent" is an existence compare
    /// with the put in the failure branch (a single-key compare is false on an absent key
    /// for every operator, WIRE.md §5.4).
    pub async fn cas(
        &mut self,
        channel: Channel,
        table: &str,
        key: &str,
        expected: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, Status> {
        let new = self.next_value();
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(request_op::Put {
                key: key.as_bytes().to_vec(),
                value: new.clone(),
                prev_kv: false,
            })),
        };
        let compare = Compare {
            result: CompareResult::Equal.into(),
            target: CompareTarget::Value.into(),
            key: key.as_bytes().to_vec(),
            target_union: expected.clone().map(TargetUnion::Value),
            range_end: Vec::new(),
        };
        let swap_on_absent = expected.is_none();
        let (success, failure) = if swap_on_absent {
            (Vec::new(), vec![put])
        } else {
            (vec![put], Vec::new())
        };
        let mut req = tonic::Request::new(TxnRequest {
            table: table.as_bytes().to_vec(),
            compare: vec![compare],
            success,
            failure,
        });
        req.set_timeout(CALL_TIMEOUT);
        let call = self.history.now();
        let result = KvClient::new(channel).txn(req).await;
        let swapped = |r: &tonic::Response<flotilla_proto::regatta::v1::TxnResponse>| {
            r.get_ref().succeeded != swap_on_absent
        };
        let op = |r: Option<&tonic::Response<_>>| Op::Cas {
            key: register(table, key),
            expected: expected.clone(),
            new: new.clone(),
            succeeded: r.is_some_and(swapped),
        };
        let response = self.finish("cas", call, result, op)?;
        if swapped(&response) {
            self.history.count("cas", "swapped");
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }
}
