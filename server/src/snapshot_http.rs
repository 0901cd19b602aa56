//! `GET /snapshots-live/<table>` on the replication port: a table's full snapshot as one
//! HTTP object (WIRE.md §5.8-6). Armada followers fetch it when Snapshot/Query answers
//! FAILED_PRECONDITION, which this leader does (it has no shared snapshot store). The body
//! is the Snapshot/Stream byte format, produced as it is sent; a failure mid-way aborts the
//! body, so the reader sees a truncated object (it also lacks the trailing DUMMY).

use axum::body::Body;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use flotilla_replication::leader::LeaderService;
use futures::StreamExt as _;

/// The route, to merge into the replication port's router.
pub fn router(service: LeaderService) -> axum::Router {
    axum::Router::new().route(
        "/snapshots-live/{table}",
        get(move |Path(table): Path<String>| live(service.clone(), table)),
    )
}

async fn live(service: LeaderService, table: String) -> Response {
    let Some(stream) = service.live_snapshot(table.as_bytes()).await else {
        return (StatusCode::NOT_FOUND, format!("table '{table}' not found")).into_response();
    };
    let body = stream.map(|chunk| {
        chunk
            .map(|c| Bytes::from(c.data))
            .map_err(std::io::Error::other)
    });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response()
}
