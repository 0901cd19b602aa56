//! Configurations rebuilt when their files change on disk, so certificates rotate
//! without a restart. A file that fails to load is logged and the previous
//! configuration stays in use; connections already open are never touched (each keeps
//! the configuration it was accepted or dialled with).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::TlsError;

/// How often watched files are compared with what was loaded.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

type Build<T> = dyn Fn() -> Result<T, TlsError> + Send + Sync;

/// The current configuration built from some files, replaced when they change.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
    files: Vec<PathBuf>,
    build: Box<Build<T>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish()
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the first configuration (an error here refuses start-up).
    pub(crate) fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let first = build()?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
            files,
            build: Box::new(build),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Polls the files every `interval` until `stop`, rebuilding on any change.
    pub fn watch(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        let this = self.clone();
        let span = tracing::info_span!("tls_reload", files = ?self.files);
        tokio::spawn(
            async move {
                let mut seen = this.contents().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    let now = this.contents().await;
                    if now == seen {
                        continue;
                    }
                    // Remember what was seen even when it fails to load, so one bad file
                    // is reported once, not every interval.
                    seen = now;
                    // Building reads the files again: off the reactor.
                    let built = {
                        let this = this.clone();
                        tokio::task::spawn_blocking(move || (this.build)()).await
                    };
                    match built {
                        Err(e) => tracing::warn!("reloading certificate files failed: {e}"),
                        Ok(Ok(next)) => {
                            *this.current.write() = Arc::new(next);
                            tracing::info!("certificate files changed: new connections use them");
                        }
                        Ok(Err(e)) => tracing::warn!(
                            "certificate files changed but cannot be used ({e}); \
                             keeping the previous certificate"
                        ),
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Every file's bytes (`None` where unreadable: a rotation may be half-written).
    async fn contents(&self) -> Vec<Option<Vec<u8>>> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || files.iter().map(|f| std::fs::read(f).ok()).collect())
            .await
            .unwrap_or_default()
    }
}
