//! Helpers shared by Flotilla's tests and benchmarks, in one copy: waiting for a
//! condition with a deadline ([`eventually`]), reading `/metrics` ([`metrics`]),
//! loopback ports that survive restarts ([`ports`]), certificates made at test time
//! ([`certs`]), and the in-memory raft network of the in-process multi-node tests
//! ([`memory_network`]). Never a dependency of the
//! product's own crates.

pub mod certs;
pub mod leases;
pub mod memory_network;
pub mod metrics;
pub mod ports;
pub mod process;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns whether
/// it did. Tests wait for conditions this way, never with fixed sleeps.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
