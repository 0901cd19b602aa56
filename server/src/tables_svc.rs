//! `regatta.v1.Tables`: Create, Delete, List.

use flotilla_proto::regatta::v1::tables_server::Tables;
use flotilla_proto::regatta::v1::{
    CreateTableRequest, CreateTableResponse, DeleteTableRequest, DeleteTableResponse,
    ListTablesRequest, ListTablesResponse, TableInfo,
};
use tonic::{Request, Response, Status};

use crate::api::Api;
use crate::status::tables_status;

/// Longest table name accepted (names are keys in the catalog and metric labels).
pub const MAX_TABLE_NAME_BYTES: usize = 255;

/// The Tables service.
#[derive(Debug, Clone)]
pub struct TablesService {
    api: Api,
}

impl TablesService {
    /// A Tables service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name must be set"));
    }
    if name.len() > MAX_TABLE_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "name must be at most {MAX_TABLE_NAME_BYTES} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "name must not contain control characters",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Tables for TablesService {
    async fn create(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
        self.api
            .unary("Create", request, |req| async move {
                if self.api.follower.is_some() {
                    return Err(Status::unimplemented(
                        "method Create not implemented for follower",
                    ));
                }
                check_name(&req.name)?;
                let id = self
                    .api
                    .node
                    .create_table(&req.name)
                    .await
                    .map_err(tables_status)?;
                Ok(Response::new(CreateTableResponse { id: id.to_string() }))
            })
            .await
    }

    async fn delete(
        &self,
        request: Request<DeleteTableRequest>,
    ) -> Result<Response<DeleteTableResponse>, Status> {
        self.api
            .unary("Delete", request, |req| async move {
                if self.api.follower.is_some() {
                    return Err(Status::unimplemented(
                        "method Delete not implemented for follower",
                    ));
                }
                if req.name.is_empty() {
                    return Err(Status::invalid_argument("name must be set"));
                }
                self.api
                    .node
                    .delete_table(&req.name)
                    .await
                    .map_err(tables_status)?;
                Ok(Response::new(DeleteTableResponse {}))
            })
            .await
    }

    async fn list(
        &self,
        request: Request<ListTablesRequest>,
    ) -> Result<Response<ListTablesResponse>, Status> {
        self.api
            .unary("List", request, |_| async move {
                let tables = self
                    .api
                    .node
                    .tables()
                    .into_iter()
                    .map(|t| TableInfo {
                        name: t.name().to_owned(),
                        id: t.id().to_string(),
                        config: None,
                    })
                    .collect();
                Ok(Response::new(ListTablesResponse { tables }))
            })
            .await
    }
}
