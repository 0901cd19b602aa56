//! `regatta.v1.KV`: Range, IterateRange, Put, DeleteRange, Txn.

use std::pin::Pin;

use flotilla_proto::mvcc::v1::{Command, KeyValue, Txn, command::CommandType, response_op};
use flotilla_proto::regatta::v1::kv_server::Kv;
use flotilla_proto::regatta::v1::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use flotilla_tables::range::RangeQuery;
use flotilla_tables::table::read_page_at;
use flotilla_tables::{Error, Table};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::api::{Api, table_name};
use crate::status::kv_status;
use crate::validate;

/// The KV service.
#[derive(Debug, Clone)]
pub struct KvService {
    api: Api,
}

impl KvService {
    /// A KV service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    async fn table(&self, name: &[u8]) -> Result<Table, Status> {
        let name = table_name(name)?;
        if let Ok(table) = self.api.node.table(name) {
            return Ok(table);
        }
        // This replica's catalog may lag a create acknowledged through another node:
        // catch up with the catalog once before answering NotFound.
        if let Err(e) = self.api.node.catalog_barrier().await {
            tracing::debug!("catalog barrier: {e}");
        }
        self.api.node.table(name).map_err(kv_status)
    }

    async fn range_impl(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        validate::range(&req, false)?;
        let table = self.table(&req.table).await?;
        if req.linearizable {
            table.read_barrier().await.map_err(kv_status)?;
        }
        let page = table.read_page(query_of(&req)).await.map_err(kv_status)?;
        Ok(RangeResponse {
            header: Some(self.api.header(&table, 0)),
            kvs: page.kvs,
            more: page.more,
            count: page.count as i64,
        })
    }

    async fn put_impl(&self, req: PutRequest) -> Result<PutResponse, Status> {
        validate::put(&req)?;
        if let Some(follower) = &self.api.follower {
            let name = req.table.clone();
            let forwarded = follower.leader_kv().put(req).await;
            return self.forwarded(&name, forwarded, |r| &r.header).await;
        }
        let table = self.table(&req.table).await?;
        let cmd = Command {
            table: req.table,
            r#type: CommandType::Put as i32,
            kv: Some(KeyValue {
                key: req.key,
                value: req.value,
                ..Default::default()
            }),
            prev_kvs: req.prev_kv,
            ..Default::default()
        };
        let out = match table.propose(&cmd).await {
            Ok(out) => out,
            // Committed, and a Put without prev_kv returns nothing but its revision.
            Err(Error::CommittedWithoutResult { revision }) if !req.prev_kv => {
                return Ok(PutResponse {
                    header: Some(self.api.header(&table, revision)),
                    prev_kv: None,
                });
            }
            Err(e) => return Err(kv_status(e)),
        };
        let prev_kv = out.responses.into_iter().find_map(|r| match r.response {
            Some(response_op::Response::ResponsePut(p)) => p.prev_kv,
            _ => None,
        });
        Ok(PutResponse {
            header: Some(self.api.header(&table, out.revision)),
            prev_kv,
        })
    }

    async fn delete_impl(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        validate::delete_range(&req)?;
        if let Some(follower) = &self.api.follower {
            let name = req.table.clone();
            let forwarded = follower.leader_kv().delete_range(req).await;
            return self.forwarded(&name, forwarded, |r| &r.header).await;
        }
        let table = self.table(&req.table).await?;
        let cmd = Command {
            table: req.table,
            r#type: CommandType::Delete as i32,
            kv: Some(KeyValue {
                key: req.key,
                ..Default::default()
            }),
            range_end: (!req.range_end.is_empty()).then_some(req.range_end),
            prev_kvs: req.prev_kv,
            count: req.count,
            ..Default::default()
        };
        let out = match table.propose(&cmd).await {
            Ok(out) => out,
            // Committed, and without prev_kv or count the reply is only its revision.
            Err(Error::CommittedWithoutResult { revision }) if !req.prev_kv && !req.count => {
                return Ok(DeleteRangeResponse {
                    header: Some(self.api.header(&table, revision)),
                    ..Default::default()
                });
            }
            Err(e) => return Err(kv_status(e)),
        };
        let mut resp = DeleteRangeResponse {
            header: Some(self.api.header(&table, out.revision)),
            ..Default::default()
        };
        if let Some(response_op::Response::ResponseDeleteRange(d)) =
            out.responses.into_iter().next().and_then(|r| r.response)
        {
            resp.deleted = d.deleted;
            resp.prev_kvs = d.prev_kvs;
        }
        Ok(resp)
    }

    async fn txn_impl(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        validate::txn(&req)?;
        let read_only = validate::is_read_only(&req);
        if let Some(follower) = &self.api.follower
            && !read_only
        {
            let name = req.table.clone();
            let forwarded = follower.leader_kv().txn(req).await;
            return self.forwarded(&name, forwarded, |r| &r.header).await;
        }
        let table = self.table(&req.table).await?;
        let txn = Txn {
            compare: req.compare,
            success: req.success,
            failure: req.failure,
        };
        if read_only {
            // No log entry for reads: a linearizable read, revision 0 (WIRE.md §5.4).
            table.read_barrier().await.map_err(kv_status)?;
            let (succeeded, responses) = table.read_txn(txn).await.map_err(kv_status)?;
            return Ok(TxnResponse {
                header: Some(self.api.header(&table, 0)),
                succeeded,
                responses,
            });
        }
        let cmd = Command {
            table: req.table,
            r#type: CommandType::Txn as i32,
            txn: Some(txn),
            ..Default::default()
        };
        let out = table.propose(&cmd).await.map_err(kv_status)?;
        Ok(TxnResponse {
            header: Some(self.api.header(&table, out.revision)),
            succeeded: out.succeeded,
            responses: out.responses,
        })
    }
}

impl KvService {
    /// Finishes a write forwarded to the leader cluster: its error as the caller sees it
    /// (WIRE.md §5.7), or its reply once this follower has applied the write's revision.
    async fn forwarded<T>(
        &self,
        table: &[u8],
        reply: Result<tonic::Response<T>, Status>,
        header: impl Fn(&T) -> &Option<flotilla_proto::regatta::v1::ResponseHeader>,
    ) -> Result<T, Status> {
        let reply = reply.map_err(leader_error)?.into_inner();
        let revision = header(&reply).as_ref().map_or(0, |h| h.revision);
        self.wait_replicated(table, revision).await?;
        Ok(reply)
    }

    /// Waits until this follower has applied leader revision `revision` of `name`
    /// (read-your-writes for a forwarded write). The caller's deadline bounds the wait:
    /// the write is committed on the leader either way.
    async fn wait_replicated(&self, name: &[u8], revision: u64) -> Result<(), Status> {
        let name = table_name(name)?;
        let table = loop {
            match self.api.node.table(name) {
                Ok(t) => break t,
                Err(_) => {
                    // Created on the leader, not here yet: reconcile now.
                    if let Some(f) = &self.api.follower {
                        f.reconcile_soon();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        let mut applied = table.applied_watch();
        loop {
            // Seen before the check: an apply landing in between still wakes us.
            applied.borrow_and_update();
            if table.applied_leader_index() >= revision {
                return Ok(());
            }
            if applied.changed().await.is_err() {
                return Err(Status::unavailable("table stopped"));
            }
        }
    }
}

/// A forwarded write's failure as the follower's caller sees it (WIRE.md §5.7).
fn leader_error(status: Status) -> Status {
    Status::new(
        status.code(),
        format!(
            "leader error: rpc error: code = {:?} desc = {}",
            status.code(),
            status.message()
        ),
    )
}

fn query_of(req: &RangeRequest) -> RangeQuery {
    RangeQuery {
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        limit: req.limit.max(0) as u64,
        keys_only: req.keys_only,
        count_only: req.count_only,
        min_mod_revision: req.min_mod_revision.max(0) as u64,
        max_mod_revision: req.max_mod_revision.max(0) as u64,
        min_create_revision: req.min_create_revision.max(0) as u64,
        max_create_revision: req.max_create_revision.max(0) as u64,
    }
}

/// Pages of an IterateRange call, in flight at most this many at a time: the stream
/// never holds more than a couple of 4 MiB pages in memory.
const STREAM_PAGES_IN_FLIGHT: usize = 2;

type RangeStream = Pin<Box<dyn Stream<Item = Result<RangeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        self.api
            .unary("Range", request, |r| self.range_impl(r))
            .await
            .map(Response::new)
    }

    type IterateRangeStream = RangeStream;

    async fn iterate_range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<Self::IterateRangeStream>, Status> {
        let req = request.into_inner();
        let setup = async {
            validate::range(&req, true)?;
            let table = self.table(&req.table).await?;
            if req.linearizable {
                table.read_barrier().await.map_err(kv_status)?;
            }
            // Every page reads this one instant (Armada's RFC 002): a writer running
            // alongside can never produce a torn answer across pages.
            let at = table.point_in_time();
            Ok((table, at))
        };
        let (table, at) = self.api.grpc.observe("IterateRange", setup).await?;
        let (tx, rx) = mpsc::channel(STREAM_PAGES_IN_FLIGHT);
        let api = self.api.clone();
        tokio::spawn(async move {
            let mut query = Some(query_of(&req));
            while let Some(q) = query.take() {
                let result = read_page_at(at.clone(), q.clone()).await;
                let msg = match result {
                    Ok(page) => {
                        query = q.next_page(&page);
                        Ok(RangeResponse {
                            header: Some(api.header(&table, 0)),
                            more: page.more,
                            count: page.count as i64,
                            kvs: page.kvs,
                        })
                    }
                    Err(e) => Err(kv_status(e)),
                };
                // The client went away (cancelled): stop quietly.
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.api
            .unary("Put", request, |r| self.put_impl(r))
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.api
            .unary("DeleteRange", request, |r| self.delete_impl(r))
            .await
            .map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.api
            .unary("Txn", request, |r| self.txn_impl(r))
            .await
            .map(Response::new)
    }
}
