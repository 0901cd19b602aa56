//! Configurations rebuilt when their files change on disk, so certificates rotate
//! without a restart. A file that fails to load is logged and the previous
//! configuration stays in use; connections already open are never touched (each keeps
//! the configuration it was accepted or dialled with).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::TlsError;

/// How often watched files are compared with what was loaded.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

type Build<T> = dyn Fn() -> Result<T, TlsError> + Send + Sync;

/// Every watched file's bytes (`None` where unreadable: a rotation may be half-written).
type Contents = Vec<Option<Vec<u8>>>;

fn read_all(files: &[PathBuf]) -> Contents {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// The current configuration built from some files, replaced when they change.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
    files: Vec<PathBuf>,
    build: Box<Build<T>>,
    /// Changes of the files that could not be used (the previous configuration stayed).
    rejected: AtomicU64,
    /// The files as they were when the first configuration was built: the watcher's
    /// starting point, so a change made before it first looks is still a change.
    loaded: Contents,
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
        // Read before building: a file changed in between is seen as changed and rebuilt.
        let loaded = read_all(&files);
        let first = build()?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
            files,
            build: Box::new(build),
            rejected: AtomicU64::new(0),
            loaded,
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// How many changes of the files were refused (unusable files; the previous
    /// configuration stayed in use).
    pub fn rejected_reloads(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Polls the files every `interval` until `stop`, rebuilding on any change.
    pub fn watch(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        let this = self.clone();
        let span = tracing::info_span!("tls_reload", files = ?self.files);
        tokio::spawn(
            async move {
                let mut seen = this.loaded.clone();
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
                        Ok(Err(e)) => {
                            this.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                "certificate files changed but cannot be used ({e}); \
                                 keeping the previous certificate"
                            );
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Every file's bytes now, read off the reactor.
    async fn contents(&self) -> Contents {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || read_all(&files))
            .await
            .unwrap_or_default()
    }
}
