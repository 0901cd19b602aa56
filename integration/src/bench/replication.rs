//! What the cross-cluster replication benchmarks (`flotilla-lag-bench`,
//! `flotilla-load-table`, `flotilla-recovery-bench`) share: connecting to an already
//! running cluster, reading its per-table metrics, and waiting until a table flows from
//! the leader cluster to the follower cluster.

use std::time::{Duration, Instant};

use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::{PutRequest, RangeRequest};
use flotilla_testkit::metrics;
use tonic::transport::Channel;

/// A gRPC channel to the API at `api` (`host:port`), giving up after 5 s.
pub async fn connect(api: &str) -> Result<Channel, String> {
    Channel::from_shared(format!("http://{api}"))
        .map_err(|e| format!("{api}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting to {api}: {e}"))
}

/// The text of the `/metrics` page on `rest` (`host:port`), or an error naming it.
pub async fn scrape(rest: &str) -> Result<String, String> {
    metrics::scrape(rest)
        .await
        .ok_or(format!("reading /metrics on {rest}"))
}

/// The value of the per-table series `name{table="table"}` in a scraped `page`.
pub fn table_metric(page: &str, name: &str, table: &str) -> Option<f64> {
    metrics::value(page, &format!("{name}{{table=\"{table}\"}}"))
}

/// How long [`wait_until_replicating`] waits.
const REPLICATING_WITHIN: Duration = Duration::from_secs(60);

/// Puts a warm-up key on the leader and waits (up to a minute) until the follower serves
/// it: the table exists there, its worker holds the lease and its stream is flowing, so
/// a measurement that follows does not include the start-up.
pub async fn wait_until_replicating(
    leader: &Channel,
    follower: &Channel,
    table: &str,
) -> Result<(), String> {
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
    let deadline = Instant::now() + REPLICATING_WITHIN;
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
        "table {table} not replicated to the follower within {} s",
        REPLICATING_WITHIN.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_metric_matches_the_table_label_exactly() {
        let page = "# TYPE x gauge\nx{table=\"snap\"} 7\nx{table=\"snap2\"} 9\n";
        assert_eq!(table_metric(page, "x", "snap"), Some(7.0));
        assert_eq!(table_metric(page, "x", "snap2"), Some(9.0));
        assert_eq!(table_metric(page, "x", "lag"), None);
    }
}
