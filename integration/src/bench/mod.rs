//! Library code of the benchmark binaries.
//!
//! The load generator behind `flotilla-vs-etcd` ([`etcd`], [`load`], [`store`]): the same
//! closed-loop workloads driven against Flotilla and etcd, so their ratio can be measured
//! side by side in one run.
//!
//! The cross-cluster replication benchmarks (`flotilla-lag-bench`, `flotilla-load-table`,
//! `flotilla-recovery-bench`): [`replication`] (connecting, per-table metrics, waiting for
//! a table to flow), [`lag`] (visibility lag), [`snapshot`] (loading the table a snapshot
//! transfers), [`recovery`] (watching a new follower recover), and [`report`] (latency,
//! CPU and fsync lines).

pub mod etcd;
pub mod lag;
pub mod load;
pub mod recovery;
pub mod replication;
pub mod report;
pub mod snapshot;
pub mod store;
