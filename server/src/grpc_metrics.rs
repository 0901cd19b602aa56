//! Per-method gRPC call counts and latencies.

use std::future::Future;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::Status;

/// Counters and latency histograms of every gRPC method this server handles.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    handled: IntCounterVec,
    latency: HistogramVec,
}

impl GrpcMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            handled: IntCounterVec::new(
                Opts::new(
                    "grpc_server_handled_total",
                    "gRPC calls completed, by method and status code",
                ),
                &["grpc_method", "grpc_code"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "gRPC call latency by method",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18)?),
                &["grpc_method"],
            )?,
        };
        registry.register(Box::new(m.handled.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        Ok(m)
    }

    /// Runs `call` and records its outcome under `method`.
    pub async fn observe<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.handled.with_label_values(&[method, &code]).inc();
        self.latency
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
