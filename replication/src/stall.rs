//! Handing chunks from a blocking export thread (a RocksDB snapshot walk) to the async
//! stream a client reads, giving up when the client stops reading: a reader that keeps
//! its connection open but takes nothing would otherwise pin the RocksDB snapshot and a
//! blocking thread forever.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// How long an export waits for its reader to take a chunk before it is cancelled.
pub const READER_STALL: Duration = Duration::from_secs(30);

/// The sending half of an export's queue, bounded in how long it waits.
#[derive(Debug)]
pub(crate) struct StallingSender<T> {
    tx: mpsc::Sender<T>,
    stall: Duration,
    /// The runtime the reader lives on (the blocking thread waits on it with a timer).
    runtime: Handle,
}

impl<T> StallingSender<T> {
    /// Wraps `tx`; must be created inside the runtime.
    pub(crate) fn new(tx: mpsc::Sender<T>, stall: Duration) -> Self {
        Self {
            tx,
            stall,
            runtime: Handle::current(),
        }
    }

    /// Queues `item`, blocking at most the stall bound; false when the reader is gone or
    /// stopped taking (the export must end and release what it holds).
    pub(crate) fn send(&self, item: T) -> bool {
        let item = match self.tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.stall, self.tx.send(item)));
        match sent {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(
                    stall = ?self.stall,
                    "a snapshot reader took nothing for too long: export cancelled"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_that_stops_taking_cancels_the_export() {
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let sender = StallingSender::new(tx, Duration::from_millis(200));
        let exported = tokio::task::spawn_blocking(move || {
            let mut sent = 0;
            while sender.send(sent) {
                sent += 1;
            }
            sent
        });
        // Take two, then stop reading without closing.
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.recv().await, Some(1));
        let sent = tokio::time::timeout(Duration::from_secs(10), exported)
            .await
            .expect("the export ends on its own")
            .expect("task");
        assert!(sent <= 4, "stopped soon after the reader did: {sent}");
        drop(rx);
    }
}
