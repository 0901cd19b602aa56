//! The register workload: clients issuing puts, CAS transactions, deletes and reads
//! ([`super::register`]) on a few keys of a few tables, each on a random table, key and
//! node, until stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::history::History;
use super::register::{ReadMode, RegisterClient};
use super::rng::Rng;

/// Pause after a failed call, so clients aimed at a dead node do not spin.
const BACKOFF: Duration = Duration::from_millis(50);
/// Pause between a client's calls, so histories stay a size the checker takes quickly
/// and the clients leave the two CI cores to the nodes.
const THINK: Duration = Duration::from_millis(5);

/// A node the workload may send calls to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name in logs, e.g. `leader 2` or `follower 1`.
    pub name: String,
    /// A channel to it (see [`super::register::channel`]).
    pub channel: Channel,
    /// Whether reads go there too. Reads of a follower cluster are linearizable only
    /// within it, so only writes (forwarded to the leader cluster) go to followers.
    pub reads: bool,
}

/// What the workload runs against.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Seed of the clients' choices (each client derives its own stream from it).
    pub seed: u64,
    /// Number of concurrent clients.
    pub clients: u64,
    /// The tables, which must exist.
    pub tables: Vec<String>,
    /// Keys per table (`k0`, `k1`, ...).
    pub keys: usize,
    /// How reads are issued.
    pub read_mode: ReadMode,
}

/// Clients running in the background until [`Workload::stop`].
#[derive(Debug)]
pub struct Workload {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Read,
    Put,
    Cas,
    Delete,
}

impl Workload {
    /// Starts the clients (ids `1..=clients`) on `targets`, recording into `history`.
    pub fn start(options: &WorkloadOptions, targets: Vec<Target>, history: Arc<History>) -> Self {
        let stop = CancellationToken::new();
        let targets = Arc::new(targets);
        let tasks = (1..=options.clients)
            .map(|id| {
                let client = RegisterClient::new(id, history.clone(), options.read_mode);
                let rng = Rng::new(options.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                tokio::spawn(run_client(
                    client,
                    rng,
                    options.clone(),
                    targets.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients after their calls in flight end (each within
    /// [`super::register::CALL_TIMEOUT`]), so every call sent is recorded.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("client task");
        }
    }
}

async fn run_client(
    mut client: RegisterClient,
    mut rng: Rng,
    options: WorkloadOptions,
    targets: Arc<Vec<Target>>,
    stop: CancellationToken,
) {
    let readers: Vec<&Target> = targets.iter().filter(|t| t.reads).collect();
    // What this client last saw in each key: its CAS expectation.
    let mut seen: BTreeMap<(usize, usize), Option<Vec<u8>>> = BTreeMap::new();
    while !stop.is_cancelled() {
        let (t, k) = (rng.index(options.tables.len()), rng.index(options.keys));
        let (table, key) = (options.tables[t].as_str(), format!("k{k}"));
        let kind = rng.weighted(&[
            (40, Kind::Read),
            (25, Kind::Put),
            (25, Kind::Cas),
            (10, Kind::Delete),
        ]);
        let pool: Vec<&Target> = match kind {
            Kind::Read => readers.clone(),
            _ => targets.iter().collect(),
        };
        let target = pool[rng.index(pool.len())];
        let channel = target.channel.clone();
        client.error_prefix = if target.reads { "" } else { "follower:" };
        let ok = match kind {
            Kind::Read => match client.read(channel, table, &key).await {
                Some(observed) => {
                    seen.insert((t, k), observed);
                    true
                }
                None => false,
            },
            Kind::Put => client
                .put(channel, table, &key)
                .await
                .map(|v| seen.insert((t, k), Some(v)))
                .is_ok(),
            Kind::Cas => {
                let expected = seen.get(&(t, k)).cloned().flatten();
                match client.cas(channel, table, &key, expected).await {
                    Ok(Some(new)) => {
                        seen.insert((t, k), Some(new));
                        true
                    }
                    Ok(None) => {
                        // Whatever the key holds now, it is not what we expected.
                        seen.remove(&(t, k));
                        true
                    }
                    Err(_) => false,
                }
            }
            Kind::Delete => client
                .delete(channel, table, &key)
                .await
                .map(|()| seen.insert((t, k), None))
                .is_ok(),
        };
        if !target.reads {
            client
                .history
                .count("via follower", if ok { "ok" } else { "failed" });
        }
        tokio::time::sleep(if ok { THINK } else { BACKOFF }).await;
    }
}
