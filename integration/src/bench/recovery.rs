//! Watching a brand-new follower recover a table from a leader snapshot, for
//! `flotilla-recovery-bench`: when each step was first seen, from the follower's process
//! start, until its applied leader index reaches the leader's applied index.

use std::time::{Duration, SystemTime};

use flotilla_proto::regatta::v1::RangeRequest;
use flotilla_proto::regatta::v1::kv_client::KvClient;
use tonic::transport::Channel;

use super::replication::{connect, scrape, table_metric};
use super::snapshot::{PREFIX, PREFIX_END};

/// How often the follower is polled.
const POLL: Duration = Duration::from_millis(20);
/// How long the follower's `/metrics` may take to answer at all.
const METRICS_UP_WITHIN: Duration = Duration::from_secs(30);

/// When each step of a follower's recovery was first seen, from its process start.
#[derive(Debug, Default)]
pub struct Steps {
    pub metrics_up: Option<Duration>,
    pub leased: Option<Duration>,
    pub snapshot_downloaded: Option<Duration>,
    pub readable: Option<Duration>,
    pub caught_up: Option<Duration>,
}

impl Steps {
    /// One line per step, with its time in seconds or `never`.
    pub fn lines(&self) -> Vec<String> {
        let show = |name: &str, d: Option<Duration>| match d {
            Some(d) => format!("  {name:<58} {:>8.2} s", d.as_secs_f64()),
            None => format!("  {name:<58} {:>8}", "never"),
        };
        vec![
            show("follower /metrics answers", self.metrics_up),
            show("table created and leased (worker pulling)", self.leased),
            show(
                "snapshot downloaded into an SST (snapshot_recoveries_total 1)",
                self.snapshot_downloaded,
            ),
            show("data readable on the follower (first key)", self.readable),
            show(
                "applied_leader_index = leader applied index",
                self.caught_up,
            ),
        ]
    }
}

/// A follower being watched.
#[derive(Debug)]
pub struct Follower {
    /// Its `/metrics` address (`host:port`).
    pub rest: String,
    /// Its API address (`host:port`).
    pub api: String,
    /// The recovering table (its keys are [`super::snapshot::key`]s).
    pub table: String,
    /// Wall-clock time its process was started.
    pub started: SystemTime,
}

impl Follower {
    /// Polls the follower every 20 ms until its
    /// `flotilla_replication_applied_leader_index{table}` reaches `leader_index`, filling
    /// `steps` as it goes (so they can be shown even on failure); returns its last
    /// `/metrics` page. Fails when `/metrics` is not up 30 s after the start, or the
    /// follower has not caught up `timeout` after it.
    pub async fn watch(
        &self,
        leader_index: f64,
        timeout: Duration,
        steps: &mut Steps,
    ) -> Result<String, String> {
        let table = self.table.as_str();
        let mut kv = None;
        let since = || {
            SystemTime::now()
                .duration_since(self.started)
                .unwrap_or_default()
        };
        while since() < timeout {
            let now = since();
            if let Ok(page) = scrape(&self.rest).await {
                steps.metrics_up.get_or_insert(now);
                if table_metric(&page, "flotilla_replication_leased", table) == Some(1.0) {
                    steps.leased.get_or_insert(now);
                }
                let recoveries = table_metric(
                    &page,
                    "flotilla_replication_snapshot_recoveries_total",
                    table,
                );
                if recoveries.is_some_and(|r| r >= 1.0) {
                    steps.snapshot_downloaded.get_or_insert(now);
                }
                if steps.readable.is_none() && self.readable(&mut kv).await {
                    steps.readable = Some(since());
                }
                let applied =
                    table_metric(&page, "flotilla_replication_applied_leader_index", table);
                if applied.is_some_and(|a| a >= leader_index) {
                    steps.caught_up = Some(now);
                    return Ok(page);
                }
            } else if now > METRICS_UP_WITHIN {
                return Err(format!(
                    "follower /metrics on {} not up after {} s",
                    self.rest,
                    METRICS_UP_WITHIN.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!(
            "follower not caught up within {} s",
            timeout.as_secs()
        ))
    }

    /// Whether the follower serves any key of the table (the snapshot lands in one SST
    /// ingest, so one key means all of them); connects `kv` on first use.
    async fn readable(&self, kv: &mut Option<KvClient<Channel>>) -> bool {
        if kv.is_none() {
            *kv = connect(&self.api).await.ok().map(KvClient::new);
        }
        let Some(client) = kv.as_mut() else {
            return false;
        };
        let response = client
            .range(RangeRequest {
                table: self.table.as_bytes().to_vec(),
                key: PREFIX.as_bytes().to_vec(),
                range_end: PREFIX_END.to_vec(),
                keys_only: true,
                limit: 1,
                ..Default::default()
            })
            .await;
        response.is_ok_and(|r| !r.into_inner().kvs.is_empty())
    }

    /// How many keys of the table the follower serves (a count-only Range, for after the
    /// timing).
    pub async fn count_keys(&self) -> Result<i64, String> {
        let response = KvClient::new(connect(&self.api).await?)
            .range(RangeRequest {
                table: self.table.as_bytes().to_vec(),
                key: PREFIX.as_bytes().to_vec(),
                range_end: PREFIX_END.to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("count on the follower: {e}"))?;
        Ok(response.into_inner().count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_not_seen_show_as_never() {
        let steps = Steps {
            metrics_up: Some(Duration::from_millis(1500)),
            ..Steps::default()
        };
        let lines = steps.lines();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].ends_with("    1.50 s"), "{}", lines[0]);
        assert!(lines[4].ends_with("   never"), "{}", lines[4]);
    }
}
