//! Replication metrics of a follower node, labelled by table.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// What the follower's workers report.
#[derive(Debug, Clone)]
pub struct ReplicationMetrics {
    /// The leader cluster's applied index as last seen.
    pub leader_index: IntGaugeVec,
    /// The leader index this follower has applied.
    pub applied_leader_index: IntGaugeVec,
    /// Entries the follower is behind.
    pub lag_entries: IntGaugeVec,
    /// How long the follower has been behind what it last saw of the leader.
    pub lag_seconds: GaugeVec,
    /// 1 on the node whose worker holds the table.
    pub leased: IntGaugeVec,
    /// Snapshot recoveries downloaded.
    pub snapshot_recoveries: IntCounterVec,
    /// Uncompressed key/value bytes loaded by snapshot recoveries.
    pub snapshot_bytes: IntCounterVec,
    /// Throughput of the last snapshot download (key/value bytes per second).
    pub snapshot_bytes_per_second: GaugeVec,
    /// Errors by kind (leader_behind, table_not_found, stream, propose, protocol, snapshot).
    pub errors: IntCounterVec,
}

impl ReplicationMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let int_gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["table"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), &["table"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            leader_index: int_gauge(
                "flotilla_replication_leader_index",
                "Leader cluster's applied index, as last seen by this follower",
            )?,
            applied_leader_index: int_gauge(
                "flotilla_replication_applied_leader_index",
                "Leader index this follower has applied",
            )?,
            lag_entries: int_gauge(
                "flotilla_replication_lag_entries",
                "Entries this follower is behind the leader cluster",
            )?,
            lag_seconds: gauge(
                "flotilla_replication_lag_seconds",
                "Time this follower has been behind what it last saw of the leader",
            )?,
            leased: int_gauge(
                "flotilla_replication_leased",
                "1 on the follower node whose worker replicates the table",
            )?,
            snapshot_recoveries: counter(
                "flotilla_replication_snapshot_recoveries_total",
                "Snapshots downloaded from the leader cluster",
                &["table"],
            )?,
            snapshot_bytes: counter(
                "flotilla_replication_snapshot_bytes_total",
                "Key and value bytes loaded from leader snapshots",
                &["table"],
            )?,
            snapshot_bytes_per_second: gauge(
                "flotilla_replication_snapshot_bytes_per_second",
                "Key and value bytes per second of the last snapshot download",
            )?,
            errors: counter(
                "flotilla_replication_errors_total",
                "Replication errors by kind",
                &["table", "kind"],
            )?,
        })
    }

    pub(crate) fn snapshot_done(&self, table: &str, _compressed: u64, bytes: u64, secs: f64) {
        self.snapshot_recoveries.with_label_values(&[table]).inc();
        self.snapshot_bytes
            .with_label_values(&[table])
            .inc_by(bytes);
        self.snapshot_bytes_per_second
            .with_label_values(&[table])
            .set(bytes as f64 / secs);
    }

    pub(crate) fn forget(&self, table: &str) {
        for g in [
            &self.leader_index,
            &self.applied_leader_index,
            &self.lag_entries,
            &self.leased,
        ] {
            let _ = g.remove_label_values(&[table]);
        }
        let _ = self.lag_seconds.remove_label_values(&[table]);
    }
}
