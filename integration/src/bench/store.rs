//! The two systems under test behind one interface, so every workload sends the same
//! requests to Flotilla (Armada's `regatta.v1.KV`, over one or more tables) and to etcd
//! (`etcdserverpb.KV`).

use std::sync::Arc;

use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::tables_client::TablesClient;
use flotilla_proto::regatta::v1::{CreateTableRequest, PutRequest, RangeRequest};
use tonic::Status;
use tonic::transport::Channel;

use super::etcd;

/// Which system a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Flotilla,
    Etcd,
}

impl System {
    /// The name used in the benchmark's output.
    pub fn name(self) -> &'static str {
        match self {
            System::Flotilla => "flotilla",
            System::Etcd => "etcd",
        }
    }
}

/// One client of one system over a shared connection (cheap to clone).
#[derive(Clone)]
pub enum Store {
    /// Flotilla: each key lives in one of `tables`, always the same one (see `table_of`).
    Flotilla {
        kv: KvClient<Channel>,
        tables: Arc<[Vec<u8>]>,
    },
    Etcd(etcd::EtcdKv),
}

/// `range_end` meaning "every key from `key` on" in both APIs.
const TO_THE_END: &[u8] = &[0];

impl Store {
    /// A client of `system` on `channel`; Flotilla keys are spread over `tables`.
    pub fn new(system: System, channel: Channel, tables: &[String]) -> Self {
        match system {
            System::Flotilla => Store::Flotilla {
                kv: KvClient::new(channel),
                tables: tables.iter().map(|t| t.as_bytes().to_vec()).collect(),
            },
            System::Etcd => Store::Etcd(etcd::EtcdKv::new(channel)),
        }
    }

    /// Writes `key` = `value`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), Status> {
        match self {
            Store::Flotilla { kv, tables } => kv
                .put(PutRequest {
                    table: table_of(tables, &key).to_vec(),
                    key,
                    value,
                    prev_kv: false,
                })
                .await
                .map(drop),
            Store::Etcd(kv) => kv.put(etcd::PutRequest { key, value }).await.map(drop),
        }
    }

    /// Reads up to `limit` keys from `key` on (`limit` 1 reads `key` alone), linearizably
    /// or from the answering node's own state; returns how many keys came back.
    pub async fn read(
        &mut self,
        key: Vec<u8>,
        limit: i64,
        linearizable: bool,
    ) -> Result<usize, Status> {
        let range_end = if limit > 1 {
            TO_THE_END.to_vec()
        } else {
            Vec::new()
        };
        match self {
            Store::Flotilla { kv, tables } => kv
                .range(RangeRequest {
                    table: table_of(tables, &key).to_vec(),
                    key,
                    range_end,
                    limit,
                    linearizable,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().kvs.len()),
            Store::Etcd(kv) => kv
                .range(etcd::RangeRequest {
                    key,
                    range_end,
                    limit,
                    serializable: !linearizable,
                })
                .await
                .map(|r| r.kvs.len()),
        }
    }
}

/// The table `key` lives in: a hash of the key, so a read finds what a put wrote (a scan
/// reads from the table of its first key).
fn table_of<'t>(tables: &'t [Vec<u8>], key: &[u8]) -> &'t [u8] {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    &tables[(hash % tables.len().max(1) as u64) as usize]
}

/// Creates Flotilla table `table` through `channel` unless it already exists.
pub async fn create_table(channel: Channel, table: &str) -> Result<(), Status> {
    let created = TablesClient::new(channel)
        .create(CreateTableRequest {
            name: table.to_string(),
            config: None,
        })
        .await;
    match created {
        Err(e) if e.message() != "table already exists" => Err(e),
        _ => Ok(()),
    }
}
