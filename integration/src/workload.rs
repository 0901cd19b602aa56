//! Writes whose outcome is recorded, and whole-table reads to check replicas against them.
//!
//! During elections and node failures a write may fail with its outcome unknown, so a
//! [`WriteLog`] keeps two sets: every write *attempted* (may or may not be applied) and every
//! write *acknowledged* (must be applied, at the acknowledged revision). A replica is correct
//! when it holds every acknowledged write exactly and nothing that was never attempted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_proto::regatta::v1::{PutRequest, RangeRequest, kv_client::KvClient};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::eventually;

/// Deadline of every single request, so a caller never hangs on a dead or cut-off node.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of a whole-table read (a stream that may span many messages).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed write, so writers aimed at a dead node do not spin.
const BACKOFF: Duration = Duration::from_millis(50);

/// A channel to `addr` (`host:port`) that connects on first use and reconnects after
/// failures, with a 1 s connect timeout and [`REQUEST_TIMEOUT`] per request.
pub fn lazy_channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy()
}

/// One stored key, as a replica returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its value.
    pub value: Vec<u8>,
    /// Revision of its latest write.
    pub mod_revision: i64,
    /// Revision of the write that created it.
    pub create_revision: i64,
}

/// A replica's whole table: key -> entry.
pub type TableData = BTreeMap<Vec<u8>, Entry>;

/// What writers sent and what the cluster acknowledged.
#[derive(Debug, Default, Clone)]
pub struct WriteLog {
    /// key -> (value, revision) of every acknowledged put.
    pub acked: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    /// key -> value of every put sent, acknowledged or not.
    pub attempted: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A [`WriteLog`] shared by writers and the test.
pub type SharedLog = Arc<Mutex<WriteLog>>;

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Puts `key = value` into `table` through `channel`, recording the attempt first and, on
/// success, the acknowledged revision (0 if the response had no header, which the checks
/// then report). Every key must be written at most once per log.
pub async fn put(
    channel: Channel,
    log: &Mutex<WriteLog>,
    table: &str,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<i64, Status> {
    log.lock()
        .expect("log lock")
        .attempted
        .insert(key.clone(), value.clone());
    let mut req = tonic::Request::new(PutRequest {
        table: table.as_bytes().to_vec(),
        key: key.clone(),
        value: value.clone(),
        prev_kv: false,
    });
    req.set_timeout(REQUEST_TIMEOUT);
    let resp = KvClient::new(channel).put(req).await?.into_inner();
    let revision = resp
        .header
        .map_or(0, |h| i64::try_from(h.revision).expect("revision fits i64"));
    log.lock()
        .expect("log lock")
        .acked
        .insert(key, (value, revision));
    Ok(revision)
}

/// Background writers, each putting unique keys `{prefix}w{NN}-{IIIIIIII}` round-robin
/// through the current targets, tolerating every error (elections, dead nodes).
#[derive(Debug)]
pub struct Writers {
    log: SharedLog,
    targets: Arc<RwLock<Vec<Channel>>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Starts `count` writers on `table` through `targets`, recording into `log`.
    pub fn start(
        table: &str,
        prefix: &str,
        count: usize,
        targets: Vec<Channel>,
        log: SharedLog,
    ) -> Self {
        let targets = Arc::new(RwLock::new(targets));
        let stop = CancellationToken::new();
        let tasks = (0..count)
            .map(|w| {
                let (table, prefix) = (table.to_owned(), prefix.to_owned());
                let (log, targets, stop) = (log.clone(), targets.clone(), stop.clone());
                tokio::spawn(async move {
                    for i in 0u64.. {
                        if stop.is_cancelled() {
                            return;
                        }
                        let target = {
                            let t = targets.read().expect("targets lock");
                            let n = usize::try_from(i).expect("usize");
                            (!t.is_empty()).then(|| t[(w + n) % t.len()].clone())
                        };
                        let Some(channel) = target else {
                            tokio::time::sleep(BACKOFF).await;
                            continue;
                        };
                        let key = format!("{prefix}w{w:02}-{i:08}").into_bytes();
                        let value = format!("{prefix}value-{w}-{i}").into_bytes();
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => return,
                            r = put(channel, &log, &table, key, value) => {
                                if r.is_err() {
                                    tokio::time::sleep(BACKOFF).await;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            log,
            targets,
            stop,
            tasks,
        }
    }

    /// Sends subsequent writes through `targets` instead.
    pub fn set_targets(&self, targets: Vec<Channel>) {
        *self.targets.write().expect("targets lock") = targets;
    }

    /// Number of acknowledged writes so far (including any the test recorded in the log).
    pub fn acked(&self) -> usize {
        self.log.lock().expect("log lock").acked.len()
    }

    /// Waits until at least `n` writes are acknowledged; false after `timeout`.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) -> bool {
        eventually(timeout, async || self.acked() >= n).await
    }

    /// Asserts that `more` writes are acknowledged within `timeout` from now; `what` says
    /// when or through whom, for the failure message.
    pub async fn assert_more_acked(&self, more: usize, timeout: Duration, what: &str) {
        let mark = self.acked();
        assert!(
            self.wait_acked(mark + more, timeout).await,
            "writers keep going {what} ({mark} then {})",
            self.acked()
        );
    }

    /// Stops the writers (abandoning in-flight writes: they stay "attempted") and returns a
    /// copy of the log.
    pub async fn stop(self) -> WriteLog {
        self.stop.cancel();
        for t in self.tasks {
            t.await.expect("writer task");
        }
        self.log.lock().expect("log lock").clone()
    }
}

/// Reads all of `table` from the node behind `channel`, from its local replica
/// (serializable: `linearizable = false`), streaming with IterateRange.
pub async fn read_table(channel: Channel, table: &str) -> Result<TableData, Status> {
    let mut req = tonic::Request::new(RangeRequest {
        table: table.as_bytes().to_vec(),
        // IterateRange takes no "\0" start sentinel; every test key starts above 0x01.
        key: b"\x01".to_vec(),
        range_end: flotilla_proto::ALL_SENTINEL.to_vec(),
        linearizable: false,
        ..Default::default()
    });
    req.set_timeout(READ_TIMEOUT);
    let mut stream = KvClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .iterate_range(req)
        .await?
        .into_inner();
    let mut data = TableData::new();
    while let Some(page) = stream.message().await? {
        for kv in page.kvs {
            let entry = Entry {
                value: kv.value,
                mod_revision: kv.mod_revision,
                create_revision: kv.create_revision,
            };
            if data.insert(kv.key.clone(), entry).is_some() {
                return Err(Status::internal(format!(
                    "key {} returned twice",
                    lossy(&kv.key)
                )));
            }
        }
    }
    Ok(data)
}

/// Whether `data` holds exactly what `log` allows: every acknowledged key with its value,
/// created and last modified at the acknowledged revision; every other key one that was
/// attempted, with the attempted value; and no two keys at the same revision (each put is
/// its own log entry). The error names the first violation.
pub fn check_holds(data: &TableData, log: &WriteLog) -> Result<(), String> {
    for (key, (value, revision)) in &log.acked {
        let Some(e) = data.get(key) else {
            let present = log.acked.keys().filter(|k| data.contains_key(*k)).count();
            return Err(format!(
                "acknowledged key {} missing ({present} of {} acknowledged keys present)",
                lossy(key),
                log.acked.len()
            ));
        };
        if e.value != *value {
            return Err(format!("value of {}: {:?}", lossy(key), lossy(&e.value)));
        }
        if (e.mod_revision, e.create_revision) != (*revision, *revision) {
            return Err(format!(
                "revisions (mod, create) of {}: ({}, {}), acknowledged at {revision}",
                lossy(key),
                e.mod_revision,
                e.create_revision
            ));
        }
    }
    for (key, e) in data {
        match log.attempted.get(key) {
            None => return Err(format!("key {} was never written", lossy(key))),
            Some(v) if *v != e.value => {
                return Err(format!(
                    "unacknowledged key {} has value {:?}, not the attempted one",
                    lossy(key),
                    lossy(&e.value)
                ));
            }
            Some(_) => {}
        }
    }
    let revisions: BTreeSet<i64> = data.values().map(|e| e.mod_revision).collect();
    if revisions.len() != data.len() {
        return Err(format!(
            "{} keys share {} revisions",
            data.len(),
            revisions.len()
        ));
    }
    Ok(())
}

/// Waits until every given node's replica of `table` passes [`check_holds`] and all of them
/// are identical (nodes may lag, so this polls); returns the common data, or panics after
/// `timeout` with the last problem seen.
pub async fn assert_converged(
    nodes: &[(u64, Channel)],
    table: &str,
    log: &WriteLog,
    timeout: Duration,
) -> TableData {
    let mut problem = String::from("never checked");
    let mut common = None;
    let ok = eventually(timeout, async || {
        let mut first: Option<(u64, TableData)> = None;
        for (id, channel) in nodes {
            let data = match read_table(channel.clone(), table).await {
                Ok(d) => d,
                Err(e) => {
                    problem = format!("node {id}: read failed: {e}");
                    return false;
                }
            };
            if let Err(e) = check_holds(&data, log) {
                problem = format!("node {id}: {e}");
                return false;
            }
            match &first {
                None => first = Some((*id, data)),
                Some((fid, fdata)) if *fdata != data => {
                    problem = format!(
                        "nodes {fid} and {id} differ: {} vs {} keys",
                        fdata.len(),
                        data.len()
                    );
                    return false;
                }
                Some(_) => {}
            }
        }
        common = first.map(|(_, d)| d);
        true
    })
    .await;
    assert!(
        ok,
        "replicas did not converge within {timeout:?}: {problem}"
    );
    common.expect("at least one node")
}
