//! Cross-cluster replication benchmark, run against a leader cluster and a follower
//! cluster that are already running (`scripts/bench-replication.sh` starts them).
//!
//! **Visibility lag** (write acknowledged on the leader -> readable on the follower):
//!
//! `flotilla-replication-bench lag --leader API --follower API [--rate 1000] [--seconds 30]
//!  [--value-bytes 256] [--table lag] [--poll-micros 0] [--cpu-pids leader=PID,follower=PID]
//!  [--leader-rest REST] [--follower-rest REST]`
//!
//! One paced, open-loop writer puts unique sequential keys (`lag/000000123`) to the leader
//! at `--rate` per second, each put in its own task so a slow put does not hold back the
//! next, and records when each is acknowledged. One observer loops on the follower with a
//! serializable keys-only Range from the first key it has not seen to the end of the
//! prefix (sleeping `--poll-micros` between calls) and records when each key first shows
//! up (when the Range answer arrives). Lag = visible - ack, clamped at 0 when the key
//! showed up before the ack reached the writer (the count of such keys is printed). It
//! also prints put latency, put sent -> visible, the observer's polling period, and the
//! CPU used by each process in `--cpu-pids`, this one and the whole machine (from `/proc`),
//! the bursts of slow keys, and (given their `/metrics` addresses) each side's fsyncs.
//!
//! **Loading a table** for the snapshot measurement:
//!
//! `flotilla-replication-bench load --leader API [--table snap] [--bytes 1073741824]
//!  [--value-bytes 65536] [--writers 4]`
//!
//! Puts `--bytes / --value-bytes` keys (`snap/00000000`, ...) with incompressible values
//! from `--writers` concurrent writers, and prints the table's key + value bytes.
//!
//! **Snapshot recovery** of a brand-new follower:
//!
//! `flotilla-replication-bench recovery --leader-rest REST --follower-rest REST
//!  --follower-api API --started-unix-nanos T --table-bytes B [--table snap]
//!  [--timeout-secs 900] [--cpu-pids leader=PID,follower=PID]`
//!
//! Polls the follower, started at wall-clock time T, every 20 ms until its
//! `flotilla_replication_applied_leader_index{table}` reaches the leader's
//! `flotilla_raft_applied_index{table}`, printing when each step was first seen (metrics
//! up, table leased, snapshot downloaded, data readable, caught up), MB/s = B / time, the
//! follower's own snapshot metrics and the CPU used meanwhile.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::tables_client::TablesClient;
use flotilla_proto::regatta::v1::{CreateTableRequest, PutRequest, RangeRequest};
use flotilla_testkit::process;
use tonic::transport::Channel;

type Result<T> = std::result::Result<T, String>;

/// `--name value` pairs, checked against the flags a mode knows.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: impl Iterator<Item = String>, known: &[&str]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = args;
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .filter(|n| known.contains(n))
                .ok_or(format!("unknown flag {flag} (known: {})", known.join(", ")))?;
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Self(map))
    }

    fn text(&self, name: &str, default: &str) -> String {
        self.0.get(name).cloned().unwrap_or_else(|| default.into())
    }

    fn required(&self, name: &str) -> Result<String> {
        self.0
            .get(name)
            .cloned()
            .ok_or(format!("--{name} is required"))
    }

    fn num<T: FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            Some(v) => v.parse().map_err(|e| format!("--{name} {v}: {e}")),
            None => Ok(default),
        }
    }
}

async fn connect(api: &str) -> Result<Channel> {
    Channel::from_shared(format!("http://{api}"))
        .map_err(|e| format!("{api}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting to {api}: {e}"))
}

async fn create_table(channel: &Channel, name: &str) -> Result<()> {
    let created = TablesClient::new(channel.clone())
        .create(CreateTableRequest {
            name: name.into(),
            config: None,
        })
        .await;
    match created {
        Err(e) if e.message() != "table already exists" => {
            Err(format!("creating table {name} on the leader: {e}"))
        }
        _ => Ok(()),
    }
}

/// The text of `GET /metrics` on `rest`.
async fn metrics(rest: &str) -> Result<String> {
    flotilla_testkit::metrics::scrape(rest)
        .await
        .ok_or(format!("reading /metrics on {rest}"))
}

/// The value of `name{table="table"}` in a `/metrics` text.
fn series(body: &str, name: &str, table: &str) -> Option<f64> {
    flotilla_testkit::metrics::value(body, &format!("{name}{{table=\"{table}\"}}"))
}

/// The value of the unlabelled series `name` in a `/metrics` text.
fn plain(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Log-writer fsync rounds and total fsync seconds of one process so far.
async fn fsyncs(rest: &str) -> Result<(f64, f64)> {
    let body = metrics(rest).await?;
    let get = |name: &str| plain(&body, name).ok_or(format!("{name} missing on {rest}"));
    Ok((
        get("flotilla_log_writer_fsync_rounds_total")?,
        get("flotilla_log_writer_fsync_seconds_sum")?,
    ))
}

/// Fsync rounds and their mean duration between two [`fsyncs`] samples of `name`.
fn fsync_report(name: &str, a: (f64, f64), b: (f64, f64), writes: usize) -> String {
    let rounds = b.0 - a.0;
    format!(
        "{name}: {rounds} fsync rounds ({:.0} per 1000 writes), mean fsync {:.2} ms",
        rounds * 1000.0 / writes.max(1) as f64,
        (b.1 - a.1) * 1e3 / rounds.max(1.0)
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 .. p90 .. p99 .. max ..` of `v` in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    )
}

// ---- CPU accounting from /proc (testkit::process) ----

/// CPU ticks used so far by the machine and by some processes.
struct CpuSample {
    at: Instant,
    machine_busy: u64,
    machine_total: u64,
    procs: Vec<(String, Option<u64>)>,
}

fn cpu_sample(pids: &[(String, u32)]) -> CpuSample {
    let (machine_busy, machine_total) = process::machine_ticks();
    let mut procs: Vec<(String, Option<u64>)> = pids
        .iter()
        .map(|(name, pid)| (name.clone(), process::cpu_ticks(*pid)))
        .collect();
    procs.push(("bench".into(), process::cpu_ticks(std::process::id())));
    CpuSample {
        at: Instant::now(),
        machine_busy,
        machine_total,
        procs,
    }
}

fn cpu_report(a: &CpuSample, b: &CpuSample) -> String {
    let wall = (b.at - a.at).as_secs_f64().max(1e-3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut parts = Vec::new();
    let mut ours = 0.0;
    for ((name, t0), (_, t1)) in a.procs.iter().zip(&b.procs) {
        if let (Some(t0), Some(t1)) = (t0, t1) {
            let pct = (t1 - t0) as f64 / process::TICKS_PER_SECOND / wall * 100.0;
            ours += pct;
            parts.push(format!("{name} {pct:.0}%"));
        }
    }
    let total = (b.machine_total - a.machine_total).max(1) as f64;
    let busy_pct = (b.machine_busy - a.machine_busy) as f64 / total * 100.0 * cores as f64;
    format!(
        "cpu (% of one core): {}; machine busy {busy_pct:.0}% of {}% ({cores} cores), of which not ours {:.0}%",
        parts.join(", "),
        cores * 100,
        (busy_pct - ours).max(0.0)
    )
}

fn parse_pids(list: &str) -> Result<Vec<(String, u32)>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, pid) = item
                .split_once('=')
                .ok_or(format!("--cpu-pids: {item} is not name=pid"))?;
            let pid = pid
                .parse::<u32>()
                .map_err(|e| format!("--cpu-pids {item}: {e}"))?;
            Ok((name.to_owned(), pid))
        })
        .collect()
}

// ---- lag ----

const LAG_PREFIX: &str = "lag/";
/// The end of the `lag/` prefix ('/' + 1 = '0').
const LAG_PREFIX_END: &[u8] = b"lag0";

fn lag_key(i: u64) -> Vec<u8> {
    format!("{LAG_PREFIX}{i:09}").into_bytes()
}

fn lag_index(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(LAG_PREFIX)?
        .parse()
        .ok()
}

/// Puts `key` on the leader and waits (bounded) until the follower serves it: the table
/// exists there, its worker holds the lease and its stream is flowing.
async fn wait_until_replicating(leader: &Channel, follower: &Channel, table: &str) -> Result<()> {
    let key = b"warm-up".to_vec();
    KvClient::new(leader.clone())
        .put(PutRequest {
            table: table.into(),
            key: key.clone(),
            value: b"1".to_vec(),
            prev_kv: false,
        })
        .await
        .map_err(|e| format!("warm-up put on the leader: {e}"))?;
    let mut kv = KvClient::new(follower.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let r = kv
            .range(RangeRequest {
                table: table.into(),
                key: key.clone(),
                ..Default::default()
            })
            .await;
        if r.is_ok_and(|r| !r.into_inner().kvs.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "table {table} not replicated to the follower within 60 s"
    ))
}

/// When one put was sent and acknowledged.
#[derive(Clone, Copy)]
struct Write {
    sent: Instant,
    acked: Instant,
}

/// Puts keys 0..n at `rate` per second, open loop; returns each key's send and ack time.
async fn write_paced(
    leader: &Channel,
    table: &str,
    n: u64,
    rate: u64,
    value_bytes: usize,
) -> Result<Vec<Write>> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        ticker.tick().await;
        let mut kv = KvClient::new(leader.clone());
        let request = PutRequest {
            table: table.into(),
            key: lag_key(i),
            value: vec![b'v'; value_bytes],
            prev_kv: false,
        };
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            kv.put(request)
                .await
                .map_err(|e| format!("put {i} on the leader: {e}"))?;
            Ok::<_, String>(Write {
                sent,
                acked: Instant::now(),
            })
        }));
    }
    let mut writes = Vec::with_capacity(tasks.len());
    for t in tasks {
        writes.push(t.await.map_err(|e| format!("put task: {e}"))??);
    }
    Ok(writes)
}

/// What the observer saw: when each key first showed up, and how many Ranges it sent.
struct Observed {
    visible: Vec<Option<Instant>>,
    polls: u64,
    elapsed: Duration,
}

/// Loops on the follower until keys 0..n have all been seen or `stop` is set.
async fn observe(
    follower: Channel,
    table: String,
    n: u64,
    poll: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Observed> {
    let mut kv = KvClient::new(follower).max_decoding_message_size(64 << 20);
    let mut visible: Vec<Option<Instant>> = vec![None; n as usize];
    let mut first = 0u64;
    let mut polls = 0u64;
    let started = Instant::now();
    while first < n && !stop.load(Ordering::Relaxed) {
        let response = kv
            .range(RangeRequest {
                table: table.as_bytes().to_vec(),
                key: lag_key(first),
                range_end: LAG_PREFIX_END.to_vec(),
                keys_only: true,
                limit: 10_000,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("range on the follower: {e}"))?
            .into_inner();
        let now = Instant::now();
        polls += 1;
        for kv in response.kvs {
            if let Some(slot) = lag_index(&kv.key).and_then(|i| visible.get_mut(i as usize)) {
                slot.get_or_insert(now);
            }
        }
        while first < n && visible[first as usize].is_some() {
            first += 1;
        }
        if !poll.is_zero() {
            tokio::time::sleep(poll).await;
        }
    }
    Ok(Observed {
        visible,
        polls,
        elapsed: started.elapsed(),
    })
}

/// Lags above this count as slow; slow keys sent within [`BURST_GAP`] of each other form
/// one burst (a stall somewhere, rather than noise).
const SLOW: Duration = Duration::from_millis(10);
const BURST_GAP: Duration = Duration::from_millis(100);
const MAX_BURSTS_SHOWN: usize = 8;

/// How many bursts of slow keys there were, and one line for each of the worst few: when
/// it started (from the first put), how long it lasted, how many keys, the worst lag and
/// the worst put latency in it.
fn slow_bursts(writes: &[Write], lags: &[Option<Duration>]) -> (usize, Vec<String>) {
    let Some(origin) = writes.first().map(|w| w.sent) else {
        return (0, Vec::new());
    };
    // (first sent, last sent, keys, worst lag, worst put latency)
    let mut bursts: Vec<(Instant, Instant, u64, Duration, Duration)> = Vec::new();
    for (w, lag) in writes.iter().zip(lags) {
        let Some(lag) = lag.filter(|l| *l > SLOW) else {
            continue;
        };
        let put = w.acked - w.sent;
        match bursts.last_mut() {
            Some(b) if w.sent - b.1 <= BURST_GAP => {
                b.1 = w.sent;
                b.2 += 1;
                b.3 = b.3.max(lag);
                b.4 = b.4.max(put);
            }
            _ => bursts.push((w.sent, w.sent, 1, lag, put)),
        }
    }
    let count = bursts.len();
    // The worst few, in time order.
    bursts.sort_by_key(|b| std::cmp::Reverse(b.3));
    bursts.truncate(MAX_BURSTS_SHOWN);
    bursts.sort_by_key(|b| b.0);
    let lines = bursts
        .iter()
        .map(|(first, last, keys, lag, put)| {
            format!(
                "  at {:>6.2} s for {:>4.0} ms: {keys:>4} keys, worst lag {:.1} ms, worst put {:.1} ms",
                (*first - origin).as_secs_f64(),
                ms(*last - *first),
                ms(*lag),
                ms(*put)
            )
        })
        .collect();
    (count, lines)
}

fn report_lag(writes: &[Write], observed: &Observed) {
    let mut lags = Vec::new();
    let mut from_sent = Vec::new();
    let mut by_key = Vec::with_capacity(writes.len());
    let mut clamped = 0u64;
    let mut missing = 0u64;
    for (w, seen) in writes.iter().zip(&observed.visible) {
        let Some(seen) = *seen else {
            missing += 1;
            by_key.push(None);
            continue;
        };
        if seen < w.acked {
            clamped += 1;
        }
        let lag = seen.saturating_duration_since(w.acked);
        lags.push(lag);
        by_key.push(Some(lag));
        from_sent.push(seen.saturating_duration_since(w.sent));
    }
    let span = match (writes.first(), writes.last()) {
        (Some(a), Some(b)) => (b.sent - a.sent).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    println!(
        "writes: {} in {:.1} s = {:.0} puts/s (paced)",
        writes.len(),
        span,
        writes.len() as f64 / span
    );
    println!(
        "put latency (leader ack): {}",
        percentiles(writes.iter().map(|w| w.acked - w.sent).collect())
    );
    println!(
        "visibility lag (ack -> readable on follower): {}",
        percentiles(lags)
    );
    println!(
        "put sent -> readable on follower: {}",
        percentiles(from_sent)
    );
    println!(
        "keys seen on the follower before their ack arrived (lag clamped to 0): {clamped}; never seen: {missing}"
    );
    println!(
        "observer: {} Ranges in {:.1} s, one every {:.3} ms",
        observed.polls,
        observed.elapsed.as_secs_f64(),
        ms(observed.elapsed) / observed.polls.max(1) as f64
    );
    let slow = by_key.iter().flatten().filter(|l| **l > SLOW).count();
    let (count, worst) = slow_bursts(writes, &by_key);
    print!("keys with lag > {} ms: {slow}", SLOW.as_millis());
    if count > 0 {
        print!(
            ", in {count} bursts (keys sent within {} ms of each other); the worst {}:",
            BURST_GAP.as_millis(),
            worst.len()
        );
    }
    println!();
    for line in worst {
        println!("{line}");
    }
}

async fn lag(f: &Flags) -> Result<()> {
    let leader = connect(&f.required("leader")?).await?;
    let follower = connect(&f.required("follower")?).await?;
    let table = f.text("table", "lag");
    let rate: u64 = f.num("rate", 1000)?.max(1);
    let seconds: u64 = f.num("seconds", 30)?;
    let value_bytes: usize = f.num("value-bytes", 256)?;
    let poll = Duration::from_micros(f.num("poll-micros", 0)?);
    let pids = parse_pids(&f.text("cpu-pids", ""))?;
    create_table(&leader, &table).await?;
    wait_until_replicating(&leader, &follower, &table).await?;
    let n = rate * seconds;
    println!(
        "rate {rate}/s for {seconds} s ({n} keys), value {value_bytes} B, table {table}, observer pause {} us",
        poll.as_micros()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn(observe(follower, table.clone(), n, poll, stop.clone()));
    let rests = [
        ("leader", f.text("leader-rest", "")),
        ("follower", f.text("follower-rest", "")),
    ];
    let mut fsync0 = Vec::new();
    for (_, rest) in rests.iter().filter(|(_, r)| !r.is_empty()) {
        fsync0.push(fsyncs(rest).await?);
    }
    let cpu0 = cpu_sample(&pids);
    let writes = write_paced(&leader, &table, n, rate, value_bytes).await?;
    let cpu1 = cpu_sample(&pids);
    let mut fsync_lines = Vec::new();
    for ((name, rest), before) in rests.iter().filter(|(_, r)| !r.is_empty()).zip(fsync0) {
        fsync_lines.push(fsync_report(
            name,
            before,
            fsyncs(rest).await?,
            writes.len(),
        ));
    }
    // Give the last keys up to 10 s to show up, then stop the observer.
    let grace = Instant::now() + Duration::from_secs(10);
    while !observer.is_finished() && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let observed = observer
        .await
        .map_err(|e| format!("observer task: {e}"))??;
    report_lag(&writes, &observed);
    println!("{}", cpu_report(&cpu0, &cpu1));
    for line in fsync_lines {
        println!("{line}");
    }
    Ok(())
}

// ---- load ----

const SNAP_PREFIX: &str = "snap/";

/// `len` bytes that Snappy cannot shrink (xorshift64 seeded by `seed`).
fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writer `w` of `writers` puts keys w, w + writers, ... below `keys`; returns its bytes.
async fn load_writer(
    mut kv: KvClient<Channel>,
    table: String,
    w: u64,
    writers: u64,
    keys: u64,
    value_bytes: usize,
) -> Result<u64> {
    let mut bytes = 0;
    for i in (w..keys).step_by(writers as usize) {
        let key = format!("{SNAP_PREFIX}{i:08}").into_bytes();
        bytes += (key.len() + value_bytes) as u64;
        kv.put(PutRequest {
            table: table.as_bytes().to_vec(),
            key,
            value: incompressible(i, value_bytes),
            prev_kv: false,
        })
        .await
        .map_err(|e| format!("put {i} on the leader: {e}"))?;
    }
    Ok(bytes)
}

async fn load(f: &Flags) -> Result<()> {
    let leader = connect(&f.required("leader")?).await?;
    let table = f.text("table", "snap");
    let total: u64 = f.num("bytes", 1 << 30)?;
    let value_bytes: usize = f.num("value-bytes", 64 << 10)?;
    let writers: u64 = f.num("writers", 4)?.max(1);
    let keys = total.div_ceil(value_bytes.max(1) as u64);
    create_table(&leader, &table).await?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let kv = KvClient::new(leader.clone());
            tokio::spawn(load_writer(
                kv,
                table.clone(),
                w,
                writers,
                keys,
                value_bytes,
            ))
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.map_err(|e| format!("load task: {e}"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {keys} keys x {value_bytes} B values into {table} with {writers} writers: {bytes} key+value bytes in {secs:.1} s = {:.1} MB/s",
        bytes as f64 / secs / 1e6
    );
    println!("table bytes: {bytes}");
    Ok(())
}

// ---- recovery ----

/// When each step of a follower's recovery was first seen, from process start.
#[derive(Default)]
struct Steps {
    metrics_up: Option<Duration>,
    leased: Option<Duration>,
    snapshot_downloaded: Option<Duration>,
    readable: Option<Duration>,
    caught_up: Option<Duration>,
}

impl Steps {
    fn print(&self) {
        let show = |name: &str, d: Option<Duration>| match d {
            Some(d) => println!("  {name:<58} {:>8.2} s", d.as_secs_f64()),
            None => println!("  {name:<58} {:>8}", "never"),
        };
        show("follower /metrics answers", self.metrics_up);
        show("table created and leased (worker pulling)", self.leased);
        show(
            "snapshot downloaded into an SST (snapshot_recoveries_total 1)",
            self.snapshot_downloaded,
        );
        show("data readable on the follower (first key)", self.readable);
        show(
            "applied_leader_index = leader applied index",
            self.caught_up,
        );
    }
}

/// Whether the follower serves any key of the loaded prefix (the snapshot lands in one
/// SST ingest, so one key means all of them).
async fn readable(kv: &mut Option<KvClient<Channel>>, api: &str, table: &str) -> bool {
    if kv.is_none() {
        *kv = connect(api).await.ok().map(KvClient::new);
    }
    let Some(client) = kv.as_mut() else {
        return false;
    };
    let response = client
        .range(RangeRequest {
            table: table.as_bytes().to_vec(),
            key: SNAP_PREFIX.as_bytes().to_vec(),
            range_end: b"snap0".to_vec(),
            keys_only: true,
            limit: 1,
            ..Default::default()
        })
        .await;
    response.is_ok_and(|r| !r.into_inner().kvs.is_empty())
}

/// Keys of the loaded prefix the follower serves (count_only Range; after the timing).
async fn count_keys(api: &str, table: &str) -> Result<i64> {
    let response = KvClient::new(connect(api).await?)
        .range(RangeRequest {
            table: table.as_bytes().to_vec(),
            key: SNAP_PREFIX.as_bytes().to_vec(),
            range_end: b"snap0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("count on the follower: {e}"))?;
    Ok(response.into_inner().count)
}

/// Polls the follower until caught up; fills `steps` as it goes.
async fn watch_recovery(
    f: &Flags,
    started: SystemTime,
    leader_index: f64,
    steps: &mut Steps,
) -> Result<String> {
    let rest = f.required("follower-rest")?;
    let api = f.required("follower-api")?;
    let table = f.text("table", "snap");
    let timeout = Duration::from_secs(f.num("timeout-secs", 900)?);
    let mut kv = None;
    let since = || {
        SystemTime::now()
            .duration_since(started)
            .unwrap_or_default()
    };
    while since() < timeout {
        let now = since();
        if let Ok(body) = metrics(&rest).await {
            steps.metrics_up.get_or_insert(now);
            if series(&body, "flotilla_replication_leased", &table) == Some(1.0) {
                steps.leased.get_or_insert(now);
            }
            let recoveries = series(
                &body,
                "flotilla_replication_snapshot_recoveries_total",
                &table,
            );
            if recoveries.is_some_and(|r| r >= 1.0) {
                steps.snapshot_downloaded.get_or_insert(now);
            }
            if steps.readable.is_none() && readable(&mut kv, &api, &table).await {
                steps.readable = Some(since());
            }
            let applied = series(&body, "flotilla_replication_applied_leader_index", &table);
            if applied.is_some_and(|a| a >= leader_index) {
                steps.caught_up = Some(now);
                return Ok(body);
            }
        } else if now > Duration::from_secs(30) {
            return Err(format!("follower /metrics on {rest} not up after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "follower not caught up within {} s",
        timeout.as_secs()
    ))
}

async fn recovery(f: &Flags) -> Result<()> {
    let table = f.text("table", "snap");
    let nanos = f.required("started-unix-nanos")?;
    let nanos = nanos
        .parse()
        .map_err(|e| format!("--started-unix-nanos {nanos}: {e}"))?;
    let started = UNIX_EPOCH + Duration::from_nanos(nanos);
    let table_bytes: u64 = f.num("table-bytes", 0)?;
    if table_bytes == 0 {
        return Err("--table-bytes is required".into());
    }
    let leader_body = metrics(&f.required("leader-rest")?).await?;
    let leader_index = series(&leader_body, "flotilla_raft_applied_index", &table).ok_or(
        format!("flotilla_raft_applied_index of {table} missing on the leader"),
    )?;
    let pids = parse_pids(&f.text("cpu-pids", ""))?;
    let mut steps = Steps::default();
    let cpu0 = cpu_sample(&pids);
    let outcome = watch_recovery(f, started, leader_index, &mut steps).await;
    let cpu1 = cpu_sample(&pids);
    println!("leader applied index of {table}: {leader_index}");
    println!("from follower process start:");
    steps.print();
    let body = outcome?;
    let mbps = |d: Option<Duration>| {
        d.map_or(0.0, |d| {
            table_bytes as f64 / d.as_secs_f64().max(1e-3) / 1e6
        })
    };
    println!(
        "end to end: {:.1} MB/s to caught up, {:.1} MB/s to readable ({} table bytes)",
        mbps(steps.caught_up),
        mbps(steps.readable),
        table_bytes
    );
    let m = |name: &str| series(&body, name, &table).unwrap_or(f64::NAN);
    println!(
        "follower metrics: snapshot_bytes_total {}, snapshot_bytes_per_second {:.0} ({:.1} MB/s), snapshot_recoveries_total {}",
        m("flotilla_replication_snapshot_bytes_total"),
        m("flotilla_replication_snapshot_bytes_per_second"),
        m("flotilla_replication_snapshot_bytes_per_second") / 1e6,
        m("flotilla_replication_snapshot_recoveries_total")
    );
    println!("{}", cpu_report(&cpu0, &cpu1));
    let keys = count_keys(&f.required("follower-api")?, &table).await?;
    println!("follower serves {keys} keys of {table}");
    Ok(())
}

const USAGE: &str = "usage: flotilla-replication-bench lag|load|recovery --flag value ... (see the doc comment at the top of integration/src/bin/flotilla-replication-bench.rs)";

async fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or(USAGE)?;
    match mode.as_str() {
        "lag" => {
            let known = [
                "leader",
                "follower",
                "table",
                "rate",
                "seconds",
                "value-bytes",
                "poll-micros",
                "cpu-pids",
                "leader-rest",
                "follower-rest",
            ];
            lag(&Flags::parse(args, &known)?).await
        }
        "load" => {
            let known = ["leader", "table", "bytes", "value-bytes", "writers"];
            load(&Flags::parse(args, &known)?).await
        }
        "recovery" => {
            let known = [
                "leader-rest",
                "follower-rest",
                "follower-api",
                "table",
                "started-unix-nanos",
                "table-bytes",
                "timeout-secs",
                "cpu-pids",
            ];
            recovery(&Flags::parse(args, &known)?).await
        }
        _ => Err(USAGE.into()),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("flotilla-replication-bench: {e}");
        std::process::exit(1);
    }
}
