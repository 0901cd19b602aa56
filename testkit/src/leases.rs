//! Which node of a follower cluster holds a table's replication worker (its lease is
//! the local raft leadership; the node shows it as `flotilla_replication_leased = 1`).

use std::time::Duration;

use crate::{eventually, metrics};

/// The series a node sets to 1 while its worker pulls `table`.
pub fn leased_series(table: &str) -> String {
    format!("flotilla_replication_leased{{table=\"{table}\"}}")
}

/// The ids of `nodes` (id, metrics address) whose worker holds `table` now.
pub async fn holders(nodes: &[(u64, String)], table: &str) -> Vec<u64> {
    let series = leased_series(table);
    let mut out = Vec::new();
    for (id, addr) in nodes {
        if metrics::read(addr, &series).await == Some(1.0) {
            out.push(*id);
        }
    }
    out
}

/// Waits up to `timeout` until exactly one of `nodes` holds `table`; its id, or the
/// holders last seen.
pub async fn one_holder(
    nodes: &[(u64, String)],
    table: &str,
    timeout: Duration,
) -> Result<u64, Vec<u64>> {
    let mut seen = Vec::new();
    let one = eventually(timeout, async || {
        seen = holders(nodes, table).await;
        seen.len() == 1
    })
    .await;
    match (one, seen.first()) {
        (true, Some(&id)) => Ok(id),
        _ => Err(seen),
    }
}
