//! `regatta.v1.Cluster`: MemberList and Status.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use flotilla_proto::regatta::v1::cluster_server::Cluster;
use flotilla_proto::regatta::v1::{
    Member, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse, TableStatus,
};
use prost_types::{Struct, Value, value::Kind};
use tonic::{Request, Response, Status};

use crate::api::Api;

/// The Cluster service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    api: Api,
}

impl ClusterService {
    /// A Cluster service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

/// Settings whose values are secrets, masked as Armada does.
const MASKED: &[&str] = &["tables.token", "maintenance.token"];

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.api
            .unary("MemberList", request, |_| async move {
                let s = &self.api.settings;
                let members = s.members().map_err(|e| Status::internal(e.to_string()))?;
                let me = self.api.node.node_id();
                let members = members
                    .into_iter()
                    .map(|(id, raft_addr)| Member {
                        id: id.to_string(),
                        name: if id == me && !s.memberlist.node_name.is_empty() {
                            s.memberlist.node_name.clone()
                        } else {
                            raft_addr.clone()
                        },
                        peer_ur_ls: vec![raft_addr],
                        // Peers announce theirs on their raft streams.
                        client_ur_ls: if id == me {
                            vec![s.api.advertise_address.clone()]
                        } else {
                            self.api
                                .peers
                                .get(&id)
                                .map(|a| vec![a.value().clone()])
                                .unwrap_or_default()
                        },
                    })
                    .collect();
                Ok(Response::new(MemberListResponse {
                    cluster: s.memberlist.cluster_name.clone(),
                    members,
                }))
            })
            .await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.api
            .unary("Status", request, |req| async move {
                let mut tables = HashMap::new();
                let mut errors = Vec::new();
                for t in self.api.node.tables() {
                    let s = t.status();
                    let leader = s.leader.load(Relaxed);
                    let applied = s.applied.load(Relaxed);
                    // Both are published by the group task without a common lock; an
                    // applied entry is committed, so never report less.
                    let commit = s.commit.load(Relaxed).max(applied);
                    if leader == 0 {
                        errors.push(format!("{}: no leader", t.name()));
                    }
                    tables.insert(
                        t.name().to_owned(),
                        TableStatus {
                            leader: leader.to_string(),
                            raft_index: commit,
                            raft_term: s.term.load(Relaxed),
                            raft_applied_index: applied,
                        },
                    );
                }
                if let Some(follower) = &self.api.follower {
                    errors.extend(follower.errors());
                }
                let config = req.config.then(|| Struct {
                    fields: self
                        .api
                        .settings
                        .flatten()
                        .into_iter()
                        .map(|(k, v)| {
                            let v = if MASKED.contains(&k.as_str()) {
                                "**********".to_owned()
                            } else {
                                v
                            };
                            (
                                k,
                                Value {
                                    kind: Some(Kind::StringValue(v)),
                                },
                            )
                        })
                        .collect(),
                });
                Ok(Response::new(StatusResponse {
                    id: self.api.node.node_id().to_string(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    info: String::new(),
                    tables,
                    config,
                    errors,
                }))
            })
            .await
    }
}
