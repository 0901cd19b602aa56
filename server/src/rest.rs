//! The admin HTTP endpoints: `/metrics` (Prometheus text) and `/healthz` (liveness).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::api::Api;
use crate::metrics_svc::render;

/// The REST router.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .with_state(api)
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || render(&api)).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
