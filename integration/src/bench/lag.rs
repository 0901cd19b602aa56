//! Visibility lag of cross-cluster replication, for `flotilla-lag-bench`: a paced
//! open-loop writer on the leader cluster, an observer polling the follower cluster, and
//! the report of how long each key took to show up after its put was acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::{PutRequest, RangeRequest};
use tonic::transport::Channel;

use super::report::{ms, percentiles};

const PREFIX: &str = "lag/";
/// The end of the `lag/` prefix ('/' + 1 = '0').
const PREFIX_END: &[u8] = b"lag0";
/// Keys the observer asks for in one Range.
const RANGE_LIMIT: i64 = 10_000;

/// The `i`-th key written: `lag/000000123`, so keys sort by `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("{PREFIX}{i:09}").into_bytes()
}

/// The `i` of a [`key`], if `key` is one.
pub fn index(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(PREFIX)?
        .parse()
        .ok()
}

/// When one put was sent and acknowledged.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub sent: Instant,
    pub acked: Instant,
}

/// Puts keys 0..n at `rate` per second, open loop: each put runs in its own task so a slow
/// one does not hold back the next. Returns each key's send and ack time, in key order.
pub async fn write_paced(
    leader: &Channel,
    table: &str,
    n: u64,
    rate: u64,
    value_bytes: usize,
) -> Result<Vec<Write>, String> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64).max(Duration::from_nanos(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        ticker.tick().await;
        let mut kv = KvClient::new(leader.clone());
        let request = PutRequest {
            table: table.into(),
            key: key(i),
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
#[derive(Debug)]
pub struct Observed {
    /// By key index; `None` for a key never seen.
    pub visible: Vec<Option<Instant>>,
    pub polls: u64,
    pub elapsed: Duration,
}

/// Loops on the follower with a serializable keys-only Range from the first key not yet
/// seen to the end of the prefix, pausing `poll` between calls, until keys 0..n have all
/// been seen or `stop` is set. A key counts as visible when the answer naming it arrives.
pub async fn observe(
    follower: Channel,
    table: String,
    n: u64,
    poll: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Observed, String> {
    let mut kv = KvClient::new(follower).max_decoding_message_size(64 << 20);
    let mut visible: Vec<Option<Instant>> = vec![None; n as usize];
    let mut first = 0usize;
    let mut polls = 0u64;
    let started = Instant::now();
    while first < visible.len() && !stop.load(Ordering::Relaxed) {
        let response = kv
            .range(RangeRequest {
                table: table.as_bytes().to_vec(),
                key: key(first as u64),
                range_end: PREFIX_END.to_vec(),
                keys_only: true,
                limit: RANGE_LIMIT,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("range on the follower: {e}"))?
            .into_inner();
        let now = Instant::now();
        polls += 1;
        for kv in response.kvs {
            if let Some(slot) = index(&kv.key).and_then(|i| visible.get_mut(i as usize)) {
                slot.get_or_insert(now);
            }
        }
        while visible.get(first).is_some_and(Option::is_some) {
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

/// Lags above this count as slow.
const SLOW: Duration = Duration::from_millis(10);
/// Slow keys sent within this of each other form one burst (a stall somewhere, rather
/// than noise).
const BURST_GAP: Duration = Duration::from_millis(100);
const MAX_BURSTS_SHOWN: usize = 8;

/// One run of slow keys.
struct Burst {
    first_sent: Instant,
    last_sent: Instant,
    keys: u64,
    worst_lag: Duration,
    worst_put: Duration,
}

/// How many bursts of slow keys there were, and one line for each of the worst few (in
/// time order): when it started (from the first put), how long it lasted, how many keys,
/// the worst lag and the worst put latency in it. `lags` is by key, like `writes`.
fn slow_bursts(writes: &[Write], lags: &[Option<Duration>]) -> (usize, Vec<String>) {
    let Some(origin) = writes.first().map(|w| w.sent) else {
        return (0, Vec::new());
    };
    let mut bursts: Vec<Burst> = Vec::new();
    for (w, lag) in writes.iter().zip(lags) {
        let Some(lag) = lag.filter(|l| *l > SLOW) else {
            continue;
        };
        let put = w.acked - w.sent;
        match bursts.last_mut() {
            Some(b) if w.sent - b.last_sent <= BURST_GAP => {
                b.last_sent = w.sent;
                b.keys += 1;
                b.worst_lag = b.worst_lag.max(lag);
                b.worst_put = b.worst_put.max(put);
            }
            _ => bursts.push(Burst {
                first_sent: w.sent,
                last_sent: w.sent,
                keys: 1,
                worst_lag: lag,
                worst_put: put,
            }),
        }
    }
    let count = bursts.len();
    bursts.sort_by_key(|b| std::cmp::Reverse(b.worst_lag));
    bursts.truncate(MAX_BURSTS_SHOWN);
    bursts.sort_by_key(|b| b.first_sent);
    let lines = bursts
        .iter()
        .map(|b| {
            format!(
                "  at {:>6.2} s for {:>4.0} ms: {:>4} keys, worst lag {:.1} ms, worst put {:.1} ms",
                (b.first_sent - origin).as_secs_f64(),
                ms(b.last_sent - b.first_sent),
                b.keys,
                ms(b.worst_lag),
                ms(b.worst_put)
            )
        })
        .collect();
    (count, lines)
}

/// The lines of the lag report: write rate, put latency, lag (visible - ack, clamped at 0
/// for keys seen before their ack reached the writer), put sent -> visible, the observer's
/// polling period, and the bursts of slow keys.
pub fn report(writes: &[Write], observed: &Observed) -> Vec<String> {
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
    let mut lines = vec![
        format!(
            "writes: {} in {:.1} s = {:.0} puts/s (paced)",
            writes.len(),
            span,
            writes.len() as f64 / span
        ),
        format!(
            "put latency (leader ack): {}",
            percentiles(writes.iter().map(|w| w.acked - w.sent).collect())
        ),
        format!(
            "visibility lag (ack -> readable on follower): {}",
            percentiles(lags)
        ),
        format!(
            "put sent -> readable on follower: {}",
            percentiles(from_sent)
        ),
        format!(
            "keys seen on the follower before their ack arrived (lag clamped to 0): {clamped}; never seen: {missing}"
        ),
        format!(
            "observer: {} Ranges in {:.1} s, one every {:.3} ms",
            observed.polls,
            observed.elapsed.as_secs_f64(),
            ms(observed.elapsed) / observed.polls.max(1) as f64
        ),
    ];
    let slow = by_key.iter().flatten().filter(|l| **l > SLOW).count();
    let (count, worst) = slow_bursts(writes, &by_key);
    let mut line = format!("keys with lag > {} ms: {slow}", SLOW.as_millis());
    if count > 0 {
        line += &format!(
            ", in {count} bursts (keys sent within {} ms of each other); the worst {}:",
            BURST_GAP.as_millis(),
            worst.len()
        );
    }
    lines.push(line);
    lines.extend(worst);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_index_and_parse_back() {
        assert_eq!(key(123), b"lag/000000123");
        assert!(key(9) < key(10));
        assert!(key(999_999_999).as_slice() < PREFIX_END);
        assert_eq!(index(&key(42)), Some(42));
        assert_eq!(index(b"warm-up"), None);
    }

    fn write(origin: Instant, sent_ms: u64, put_ms: u64) -> Write {
        let sent = origin + Duration::from_millis(sent_ms);
        Write {
            sent,
            acked: sent + Duration::from_millis(put_ms),
        }
    }

    #[test]
    fn slow_keys_close_together_form_one_burst() {
        let origin = Instant::now();
        let writes: Vec<Write> = [0, 10, 20, 500, 1000].map(|t| write(origin, t, 1)).to_vec();
        let lag = |m| Some(Duration::from_millis(m));
        let lags = [lag(1), lag(20), lag(30), lag(1), lag(15)];
        let (count, lines) = slow_bursts(&writes, &lags);
        assert_eq!(count, 2);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains("   2 keys, worst lag 30.0 ms"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("   1 keys, worst lag 15.0 ms"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn report_counts_clamped_and_missing_keys() {
        let origin = Instant::now();
        let writes: Vec<Write> = [0, 1, 2].map(|t| write(origin, t, 5)).to_vec();
        let observed = Observed {
            // Key 0 seen before its ack, key 1 after, key 2 never.
            visible: vec![
                Some(origin + Duration::from_millis(2)),
                Some(origin + Duration::from_millis(8)),
                None,
            ],
            polls: 4,
            elapsed: Duration::from_millis(8),
        };
        let lines = report(&writes, &observed);
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("(lag clamped to 0): 1; never seen: 1"))
        );
        assert!(lines.iter().any(|l| l == "keys with lag > 10 ms: 0"));
    }
}
