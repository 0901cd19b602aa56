//! `flotilla.v1.Inspect`: digests of this node's replicas, so operators and tests can
//! check that replicas and clusters hold the same data.

use flotilla_proto::flotilla::v1::inspect_server::Inspect;
use flotilla_proto::flotilla::v1::{DigestRequest, DigestResponse};
use tonic::{Request, Response, Status};

use crate::api::{Api, table_name};
use crate::status::kv_status;

/// The Inspect service.
#[derive(Debug, Clone)]
pub struct InspectService {
    api: Api,
}

impl InspectService {
    /// The service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

#[tonic::async_trait]
impl Inspect for InspectService {
    async fn digest(
        &self,
        request: Request<DigestRequest>,
    ) -> Result<Response<DigestResponse>, Status> {
        let name = table_name(&request.get_ref().table)?;
        let table = self.api.node.table(name).map_err(kv_status)?;
        let digest = table.digest().await.map_err(kv_status)?;
        Ok(Response::new(DigestResponse {
            keys: digest.keys,
            sha256: digest.sha256.to_vec(),
            applied_index: digest.applied.index,
            leader_index: digest.applied.leader_index.unwrap_or(digest.applied.index),
        }))
    }
}
