//! The part of etcd's v3 KV API (`etcdserverpb.KV`, as served by etcd 3.4) that the
//! benchmark speaks: Range and Put. The messages are written out by hand with prost's
//! derive instead of compiling etcd's `.proto` files, because only these few fields are
//! needed and the wire format is fixed by their numbers.

use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

/// etcd's `ResponseHeader`; the benchmark reads nothing from it, but decoding it checks
/// that an answer is what etcd sends.
#[derive(Clone, PartialEq, Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// etcd's `RangeRequest` (sort and revision filters left out: they stay at their defaults).
#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    /// Served from the answering member's state without a quorum round (etcd's default
    /// is linearizable, the opposite of Armada's).
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// etcd's `RangeResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub more: bool,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

/// etcd's `PutRequest` (lease and prev_kv left out).
#[derive(Clone, PartialEq, Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// etcd's `PutResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// A client of `etcdserverpb.KV` over one gRPC channel.
#[derive(Clone)]
pub struct EtcdKv {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdKv {
    /// A client sending on `channel` (cheap to clone; clones share the connection).
    pub fn new(channel: Channel) -> Self {
        EtcdKv {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// `KV/Range`.
    pub async fn range(&mut self, request: RangeRequest) -> Result<RangeResponse, Status> {
        self.unary(request, "/etcdserverpb.KV/Range").await
    }

    /// `KV/Put`.
    pub async fn put(&mut self, request: PutRequest) -> Result<PutResponse, Status> {
        self.unary(request, "/etcdserverpb.KV/Put").await
    }

    async fn unary<Req, Resp>(&mut self, request: Req, path: &'static str) -> Result<Resp, Status>
    where
        Req: Message + Send + Sync + 'static,
        Resp: Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("etcd connection: {e}")))?;
        let response = self
            .grpc
            .unary(
                Request::new(request),
                PathAndQuery::from_static(path),
                ProstCodec::<Req, Resp>::default(),
            )
            .await?;
        Ok(response.into_inner())
    }
}
