//! Flotilla's wire types: prost messages and tonic clients/servers for the Armada KV
//! (ex-Regatta) gRPC API, generated from the `.proto` files in `proto/proto/`.
//!
//! The module tree mirrors the protobuf packages (`regatta.v1`, `mvcc.v1`, `replication.v1`,
//! `maintenance.v1`), so cross-package references in the generated code resolve naturally.

#![warn(missing_docs)]

pub mod keys;

pub use keys::{ALL_SENTINEL, contains_null, is_all_sentinel, prefix_end};

/// Package `regatta.v1`: the public KV, Cluster, Tables and Metrics services.
pub mod regatta {
    /// Version 1 of the public API (`armada.proto` and `metrics.proto`).
    #[allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/regatta.v1.rs"));
    }
}

/// Package `mvcc.v1`: key-value pairs, transactions and the replicated log command.
pub mod mvcc {
    /// Version 1 of the MVCC data model (`mvcc.proto`).
    #[allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mvcc.v1.rs"));
    }
}

/// Package `replication.v1`: the leader-to-follower replication services.
pub mod replication {
    /// Version 1 of the replication API (`replication.proto`).
    #[allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/replication.v1.rs"));
    }
}

/// Package `maintenance.v1`: backup, restore and reset.
pub mod maintenance {
    /// Version 1 of the maintenance API (`maintenance.proto`).
    #[allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/maintenance.v1.rs"));
    }
}

/// Flotilla's own packages: `flotilla.v1` (what Armada lacks: table identities, replica
/// inspection) and `flotilla.raft.v1` (node-to-node raft traffic inside one cluster,
/// internal).
pub mod flotilla {
    /// Version 1 of Flotilla's own public API (`flotilla.proto`).
    #[allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        rust_2018_idioms
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/flotilla.v1.rs"));
    }

    /// Raft messages and snapshots between members (`flotilla_raft.proto`).
    pub mod raft {
        /// Version 1 of the internal protocol.
        #[allow(
            missing_docs,
            unreachable_pub,
            clippy::all,
            clippy::pedantic,
            clippy::nursery,
            rust_2018_idioms
        )]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/flotilla.raft.v1.rs"));
        }
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of all Flotilla protos (including the
/// `google/protobuf/struct.proto` dependency), for gRPC server reflection
/// (`tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin"));
