//! Closed-loop load: `clients` tasks share a few connections, each sending one request
//! at a time for a fixed duration over a fixed key space, recording every latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::Status;

use super::store::Store;

/// What every client sends in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Put of a random key of the key space.
    Put,
    /// Point read from the answering node's own state.
    SerializableGet,
    /// Point read confirmed with the leader (ReadIndex in both systems).
    LinearizableGet,
    /// Serializable read of 10 consecutive keys from a random one.
    Scan,
}

/// Keys and values of a run: the same for both systems.
#[derive(Clone, Copy, Debug)]
pub struct KeySpace {
    /// Distinct keys; reads pick among them, so preload all of them first.
    pub keys: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
}

impl KeySpace {
    /// The `i`-th key: `k` and zero-padded digits, `key_bytes` long, so keys sort by `i`.
    pub fn key(&self, i: u64) -> Vec<u8> {
        let digits = self.key_bytes.saturating_sub(1).max(1);
        format!("k{i:0digits$}").into_bytes()
    }

    fn value(&self) -> Vec<u8> {
        vec![b'v'; self.value_bytes]
    }
}

/// What one round measured.
#[derive(Debug)]
pub struct RoundResult {
    pub ops: usize,
    pub elapsed: Duration,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
}

impl RoundResult {
    /// Requests answered per second.
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of latency.
    pub fn quantile(&self, q: f64) -> Duration {
        let last = self.latencies.len().saturating_sub(1);
        let at = ((self.latencies.len() as f64 * q) as usize).min(last);
        self.latencies.get(at).copied().unwrap_or_default()
    }
}

/// A small deterministic generator (splitmix64): each client walks its own sequence of
/// keys, the same for both systems, without a dependency.
struct KeyPicker(u64);

impl KeyPicker {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % below.max(1)
    }
}

/// Runs `workload` for `duration` with `clients` tasks; client `c` uses connection
/// `c % connections.len()`. The first failed request ends the round with its error.
pub async fn round(
    connections: &[Store],
    clients: usize,
    workload: Workload,
    space: KeySpace,
    duration: Duration,
) -> Result<RoundResult, Status> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut store = connections[c % connections.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut picker = KeyPicker(c as u64);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let key = space.key(picker.next(space.keys));
                let started = Instant::now();
                match workload {
                    Workload::Put => store.put(key, space.value()).await?,
                    Workload::SerializableGet => drop(store.read(key, 1, false).await?),
                    Workload::LinearizableGet => drop(store.read(key, 1, true).await?),
                    Workload::Scan => drop(store.read(key, 10, false).await?),
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, Status>(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(Status::internal(format!("client task: {e}")))),
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = failure {
        return Err(e);
    }
    latencies.sort_unstable();
    Ok(RoundResult {
        ops: latencies.len(),
        elapsed,
        latencies,
    })
}

/// Writes every key of `space` once, `clients` at a time, so reads always find their key.
/// A failed put is retried for up to a minute: tables just created may still be electing.
pub async fn preload(connections: &[Store], clients: usize, space: KeySpace) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut store = connections[c % connections.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= space.keys {
                    return Ok::<_, Status>(());
                }
                while let Err(e) = store.put(space.key(i), space.value()).await {
                    if tokio::time::Instant::now() > deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Status::internal(format!("preload task: {e}")))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_length_and_sort_by_index() {
        let space = KeySpace {
            keys: 10_000,
            key_bytes: 16,
            value_bytes: 256,
        };
        assert_eq!(space.key(7).len(), 16);
        assert!(space.key(9) < space.key(10));
        assert!(space.key(999) < space.key(1000));
    }

    #[test]
    fn picked_keys_stay_in_the_key_space_and_cover_it() {
        let mut picker = KeyPicker(3);
        let mut seen = [false; 100];
        for _ in 0..10_000 {
            let k = picker.next(100) as usize;
            seen[k] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
