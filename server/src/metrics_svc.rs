//! `regatta.v1.Metrics/GetMetrics`: the same text as the REST `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_proto::regatta::v1::metrics_server::Metrics;
use flotilla_proto::regatta::v1::{MetricsRequest, MetricsResponse};
use tonic::{Request, Response, Status};

use crate::api::Api;

/// The Metrics service.
#[derive(Debug, Clone)]
pub struct MetricsService {
    api: Api,
}

impl MetricsService {
    /// A Metrics service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

/// The registry rendered as Prometheus text, with sampled gauges refreshed first.
pub fn render(api: &Api) -> String {
    api.node.refresh_metrics();
    flotilla_ops::telemetry::render(&api.registry)
}

#[tonic::async_trait]
impl Metrics for MetricsService {
    async fn get_metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        self.api
            .unary("GetMetrics", request, |req| async move {
                if !req.format.is_empty() {
                    return Err(Status::unimplemented("format is not yet supported"));
                }
                let api = self.api.clone();
                let metrics_data = tokio::task::spawn_blocking(move || render(&api))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                let timestamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                Ok(Response::new(MetricsResponse {
                    metrics_data,
                    timestamp,
                }))
            })
            .await
    }
}
