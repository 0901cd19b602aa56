//! The one writer that makes every group's raft log durable.
//!
//! Groups hand it their new entries and hard state ([`LogWrite`]) without waiting. It
//! merges everything that is waiting, from all groups, into one RocksDB write batch, writes
//! it with a single fsync, then tells each group which of its readies are durable
//! (raft-rs asynchronous ready). Many tables writing at once cost one fsync per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use rocksdb::WriteBatch;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys;

/// What one group asks to persist for one raft Ready.
#[derive(Debug, Default)]
pub struct LogWrite {
    /// Key/value pairs for the raft family (entries, hard state).
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// A `[start, end)` range of the raft family to delete first (log entries a leader
    /// overwrote with a conflicting suffix).
    pub delete_range: Option<(Vec<u8>, Vec<u8>)>,
    /// Must be fsynced: new entries, or a new term or vote. A hard state whose only
    /// change is the commit index need not be (raft recovers it), so it rides along
    /// unsynced unless another request in the round needs a sync.
    pub sync: bool,
}

impl LogWrite {
    /// True when there is nothing to write (the request only orders an acknowledgement).
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.delete_range.is_none()
    }

    /// Bytes this write holds in memory until it is persisted.
    fn bytes(&self) -> u64 {
        self.puts
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Adds this write to `batch` (the range delete first, so puts inside it survive).
    pub fn add_to(&self, engine: &Engine, batch: &mut WriteBatch) {
        let cf = engine.cf(keys::CF_RAFT);
        if let Some((start, end)) = &self.delete_range {
            batch.delete_range_cf(cf, start, end);
        }
        for (k, v) in &self.puts {
            batch.put_cf(cf, k, v);
        }
    }
}

/// Called once the write is durable (or failed); runs on the log writer thread, so it
/// must only hand the news on (e.g. send on a channel).
pub type Done = Box<dyn FnOnce(Result<()>) + Send>;

struct Request {
    write: LogWrite,
    bytes: u64,
    done: Done,
}

enum Msg {
    Write(Request),
    /// Finish what came before, then end the thread (releasing its engine handle).
    Stop,
}

/// Counters that show how well writes are batched.
#[derive(Debug, Clone)]
pub struct LogWriterMetrics {
    /// Rounds that wrote and fsynced something.
    pub fsync_rounds: IntCounter,
    /// Requests (group readies) persisted; divided by rounds = batching factor.
    pub writes: IntCounter,
    /// Time spent in each synced write.
    pub fsync_seconds: Histogram,
    /// Bytes submitted and not yet persisted.
    pub queued_bytes: IntGauge,
}

impl LogWriterMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            fsync_rounds: IntCounter::new(
                "flotilla_log_writer_fsync_rounds_total",
                "Synced write rounds of the raft log writer",
            )?,
            writes: IntCounter::new(
                "flotilla_log_writer_writes_total",
                "Group persist requests handled by the raft log writer",
            )?,
            fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "flotilla_log_writer_fsync_seconds",
                    "Latency of one synced raft log write",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
            )?,
            queued_bytes: IntGauge::new(
                "flotilla_log_writer_queued_bytes",
                "Bytes of raft log writes submitted and not yet persisted",
            )?,
        };
        registry.register(Box::new(m.fsync_rounds.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        registry.register(Box::new(m.fsync_seconds.clone()))?;
        registry.register(Box::new(m.queued_bytes.clone()))?;
        Ok(m)
    }
}

/// Handle for submitting writes; cheap to clone. The thread stops on [`LogWriter::stop`]
/// or when every handle is dropped, after finishing what was submitted.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::UnboundedSender<Msg>,
    queue: Arc<Queue>,
}

/// What is waiting for the disk, shared by the handles and the thread.
#[derive(Debug)]
struct Queue {
    bytes: AtomicU64,
    limit: u64,
}

/// Bytes of log writes the writer may hold before groups refuse new proposals (see
/// [`LogWriter::is_overloaded`]). The queue never refuses a write itself: raft's own
/// appends (and its acknowledgements) must always get through.
pub const DEFAULT_QUEUE_LIMIT: u64 = 256 << 20;

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl LogWriter {
    /// Starts the writer thread; `queue_limit` is where [`LogWriter::is_overloaded`]
    /// starts saying yes.
    pub fn start(
        engine: Engine,
        metrics: LogWriterMetrics,
        queue_limit: u64,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue {
            bytes: AtomicU64::new(0),
            limit: queue_limit,
        });
        let thread_queue = queue.clone();
        let handle = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || run(engine, metrics, thread_queue, rx))?;
        Ok((Self { tx, queue }, handle))
    }

    /// Queues `write`; `done` runs once it is durable. Requests are persisted in the order
    /// submitted, so a group's acknowledgements arrive in its ready order.
    pub fn submit(&self, write: LogWrite, done: Done) {
        let bytes = write.bytes();
        self.queue.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(Msg::Write(req))) =
            self.tx.send(Msg::Write(Request { write, bytes, done }))
        {
            self.queue.bytes.fetch_sub(bytes, Ordering::Relaxed);
            (req.done)(Err(Error::ShuttingDown));
        }
    }

    /// Whether more is waiting for the disk than the limit: groups then refuse new
    /// proposals (clients get RESOURCE_EXHAUSTED) until the disk catches up.
    pub fn is_overloaded(&self) -> bool {
        self.queue.bytes.load(Ordering::Relaxed) > self.queue.limit
    }

    /// Asks the thread to finish what was submitted and exit; later submissions fail
    /// with `ShuttingDown`.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Most requests merged into one round; bounds the latency of the first one.
const MAX_BATCH: usize = 4096;

fn run(
    engine: Engine,
    metrics: LogWriterMetrics,
    queue: Arc<Queue>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let span = tracing::info_span!("log_writer");
    let _guard = span.enter();
    let mut pending = Vec::with_capacity(256);
    let mut stopping = false;
    while !stopping {
        match rx.blocking_recv() {
            Some(Msg::Write(first)) => pending.push(first),
            Some(Msg::Stop) | None => break,
        }
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Write(req)) => pending.push(req),
                Ok(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let result = write_round(&engine, &metrics, &pending);
        if let Err(e) = &result {
            tracing::error!("raft log write failed: {e}");
        }
        let done: u64 = pending.iter().map(|r| r.bytes).sum();
        let left = queue.bytes.fetch_sub(done, Ordering::Relaxed) - done;
        metrics
            .queued_bytes
            .set(i64::try_from(left).unwrap_or(i64::MAX));
        for req in pending.drain(..) {
            (req.done)(result.clone().map_err(Error::Storage));
        }
    }
}

fn write_round(
    engine: &Engine,
    metrics: &LogWriterMetrics,
    reqs: &[Request],
) -> Result<(), rocksdb::Error> {
    metrics.writes.inc_by(reqs.len() as u64);
    if reqs.iter().all(|r| r.write.is_empty()) {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for req in reqs {
        req.write.add_to(engine, &mut batch);
    }
    if !reqs.iter().any(|r| r.write.sync) {
        return engine.write_batch(batch, false);
    }
    let started = Instant::now();
    engine.write_batch(batch, true)?;
    metrics
        .fsync_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.fsync_rounds.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;

    fn write_of(bytes: usize) -> LogWrite {
        LogWrite {
            puts: vec![(b"k".to_vec(), vec![0; bytes])],
            delete_range: None,
            sync: true,
        }
    }

    #[test]
    fn a_slow_disk_overloads_the_queue_until_it_catches_up() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::open(dir.path()).expect("open");
        let metrics = LogWriterMetrics::new(&Registry::new()).expect("metrics");
        let (writer, thread) = LogWriter::start(engine, metrics.clone(), 1024).expect("start");
        // The first write's completion holds the writer thread: the disk is "slow".
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, released) = std_mpsc::channel::<()>();
        writer.submit(
            write_of(10),
            Box::new(move |r| {
                r.expect("first write");
                entered_tx.send(()).expect("signal");
                released.recv().expect("release");
            }),
        );
        entered.recv().expect("the writer is busy");
        assert!(!writer.is_overloaded());
        // What piles up behind it is counted; over the limit, groups refuse proposals.
        let (done_tx, done) = std_mpsc::channel();
        writer.submit(
            write_of(4096),
            Box::new(move |r| done_tx.send(r.is_ok()).expect("done")),
        );
        assert!(writer.is_overloaded(), "4 KiB waits behind a 1 KiB limit");
        release.send(()).expect("release");
        assert!(done.recv().expect("second write done"), "persisted");
        // The count drops before the completions run.
        assert!(!writer.is_overloaded());
        assert_eq!(metrics.queued_bytes.get(), 0);
        writer.stop();
        thread.join().expect("writer thread");
    }
}
