//! The load generator behind `flotilla-vs-etcd`: the same closed-loop workloads driven
//! against Flotilla and etcd, so their ratio can be measured side by side in one run.

pub mod etcd;
pub mod load;
pub mod store;
