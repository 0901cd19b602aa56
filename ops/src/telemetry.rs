//! Logging and the metrics registry.

use prometheus::Registry;
use tracing_subscriber::EnvFilter;

/// A `--log-level` that is not a level or filter.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting log-level: {0}")]
pub struct LogLevelError(String);

/// Installs the global tracing subscriber on stderr, filtered by `RUST_LOG` if set, else
/// by `level` (`--log-level`): human-readable lines with `dev_mode`, JSON lines (one
/// object per event, for log shippers) otherwise. Later calls do nothing.
pub fn init_tracing(level: &str, dev_mode: bool) -> Result<(), LogLevelError> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => {
            EnvFilter::try_new(level).map_err(|e| LogLevelError(format!("{level:?}: {e}")))?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if dev_mode {
        builder.try_init()
    } else {
        builder.json().try_init()
    };
    Ok(())
}

/// The registry for one process. Metrics are defined next to the code they measure and
/// registered here; `/metrics` and `Metrics/GetMetrics` render it.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = registry.register(Box::new(pc)) {
            tracing::warn!("process metrics unavailable: {e}");
        }
    }
    registry
}

/// Renders `registry` in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!("encoding metrics: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}
