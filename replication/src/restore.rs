//! Maintenance/Restore on a leader cluster (WIRE.md §5.9): a table's backup (the
//! snapshot byte format, WIRE.md §5.8-7) is received into a durable *upload*, every record
//! checked before anything changes; the restore marker the server then proposes (see
//! `flotilla_tables::import`) has the receiving node build the table from its upload,
//! every key at the marker's raft index. [`Uploads`] is the leader node's
//! [`SnapshotSource`] for that.
//!
//! An upload is `<table id>-<number>.upload` in the staging directory, written as
//! `.partial` and renamed once whole and synced, so a marker naming it finds it even
//! after a restart. It is removed once its restore is installed, or when the restore
//! was certainly not proposed.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_proto::mvcc::v1::{Command, KeyValue};
use flotilla_tables::import::{Fetch, LoadMarker, LoadedSnapshot, SnapshotSource, Wanted};
use flotilla_tables::replace::TableSstWriter;
use flotilla_tables::values::StoredValue;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::format::{ChannelReader, RecordReader, SinkFailed};

/// Chunks queued between the network and the checking thread.
const CHUNK_QUEUE: usize = 8;

/// The staged uploads of one leader node.
#[derive(Clone)]
pub struct Uploads {
    inner: Arc<Inner>,
}

struct Inner {
    staging: PathBuf,
    /// The last upload number handed out (numbers never repeat, across restarts too:
    /// they start from the clock).
    last: AtomicU64,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("staging", &self.inner.staging)
            .finish()
    }
}

/// A backup received whole and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    /// Its number, for the restore marker.
    pub number: u64,
    /// Keys it holds.
    pub keys: u64,
    /// Bytes received (compressed, as sent).
    pub bytes: u64,
}

impl Uploads {
    /// Uploads staged in `staging`; partial ones (and SSTs half built from one) a previous
    /// run left are removed, whole ones stay for the restore markers that may name them.
    pub fn new(staging: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&staging).map_err(Error::io("creating", &staging))?;
        let entries = std::fs::read_dir(&staging).map_err(Error::io("listing", &staging))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // A partial upload is nothing; an SST is rebuilt from its upload.
            if path
                .extension()
                .is_some_and(|e| e == "partial" || e == "sst")
            {
                std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            } else if path.extension().is_some_and(|e| e == "upload") {
                // A restore marker committed before the restart may still name it.
                tracing::warn!(
                    upload = %path.display(),
                    "kept a restore upload from a previous run: a pending restore may \
                     name it (it goes once that applies); if none does, remove it by hand"
                );
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Ok(Self {
            inner: Arc::new(Inner {
                staging,
                last: AtomicU64::new(now),
            }),
        })
    }

    fn path(&self, table_id: u64, number: u64, extension: &str) -> PathBuf {
        self.inner
            .staging
            .join(format!("{table_id}-{number}.{extension}"))
    }

    /// Receives table `table_id`'s backup from `chunks` into a new upload, checking
    /// every record as it arrives (see [`check_backup`]). On any error, the stream's or
    /// the data's, nothing is kept.
    pub async fn receive<S>(&self, table_id: u64, mut chunks: S) -> Result<Upload>
    where
        S: Stream<Item = Result<Vec<u8>>> + Unpin,
    {
        let number = self.inner.last.fetch_add(1, Ordering::Relaxed) + 1;
        let partial = RemoveOnDrop(self.path(table_id, number, "partial"));
        let whole = self.path(table_id, number, "upload");
        let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNK_QUEUE);
        let from = partial.0.clone();
        let checker = tokio::task::spawn_blocking(move || receive_blocking(rx, &from));
        let mut bytes = 0u64;
        let streamed: Result<()> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                bytes += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    break; // the checker failed; its error says why
                }
            }
            Ok(())
        }
        .await;
        // A failed stream closes the channel early: the checker must not take what it
        // got for a whole backup, so it is told by the result, not the channel.
        drop(tx);
        let checked = checker
            .await
            .map_err(|e| Error::TaskFailed(e.to_string()))?;
        let keys = match (streamed, checked) {
            (Ok(()), Ok(keys)) => keys,
            // The partial file goes with `partial`.
            (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
        };
        let from = partial.0.clone();
        tokio::task::spawn_blocking(move || keep(&from, &whole))
            .await
            .map_err(|e| Error::TaskFailed(e.to_string()))??;
        partial.disarm();
        Ok(Upload {
            number,
            keys,
            bytes,
        })
    }

    /// Removes upload `number` of `table_id` (restored, or its restore failed).
    pub fn discard(&self, table_id: u64, number: u64) {
        let path = self.path(table_id, number, "upload");
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
}

/// Removes a file when dropped: a receive that fails or is abandoned (its future
/// dropped when the client goes away) leaves no partial upload behind.
struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    /// The file is kept after all.
    fn disarm(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Checks the stream on `rx` while writing it to `partial`, synced. Returns the number
/// of keys.
fn receive_blocking(rx: mpsc::Receiver<Vec<u8>>, partial: &Path) -> Result<u64> {
    let file = File::create(partial).map_err(Error::io("creating", partial))?;
    let reader = ChannelReader::teeing(rx, Box::new(BufWriter::new(file)));
    let mut records = RecordReader::new(reader);
    let keys = check_backup(&mut records).map_err(|e| match e {
        Error::SnapshotBytes(io) if SinkFailed::is(&io) => Error::Io {
            what: "writing",
            path: partial.to_owned(),
            source: io,
        },
        other => other,
    })?;
    let sink = records
        .into_inner()
        .into_sink()
        .map_err(Error::io("writing", partial))?;
    drop(sink);
    let file = File::open(partial).map_err(Error::io("opening", partial))?;
    file.sync_all().map_err(Error::io("syncing", partial))?;
    Ok(keys)
}

/// Makes a checked upload whole: renamed to its final name, durably.
fn keep(partial: &Path, whole: &Path) -> Result<()> {
    std::fs::rename(partial, whole).map_err(Error::io("renaming", partial))?;
    if let Some(dir) = whole.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("syncing", dir))?;
    }
    Ok(())
}

/// Reads a whole backup from `records` and returns how many keys it holds. A backup is
/// PUT records with a key, in strictly ascending key order (Armada's backups and our
/// snapshots are), optionally followed by one DUMMY (a snapshot object's trailer, so a
/// snapshot can be restored too); anything else is refused, naming the record.
pub fn check_backup<R: std::io::Read>(records: &mut RecordReader<R>) -> Result<u64> {
    let mut last_key: Option<Vec<u8>> = None;
    let mut keys = 0u64;
    let mut trailer = false;
    let mut n = 0u64;
    while let Some(cmd) = records.next_command()? {
        n += 1;
        if trailer {
            return Err(Error::Format(format!(
                "record {n} follows the trailing DUMMY"
            )));
        }
        match record_kind(&cmd, n)? {
            CommandType::Put => {
                let key = put_pair(cmd.kv, n)?.key;
                if last_key.as_ref().is_some_and(|last| *last >= key) {
                    return Err(Error::Format(format!(
                        "record {n}: keys are not in ascending order"
                    )));
                }
                last_key = Some(key);
                keys += 1;
            }
            CommandType::Dummy => trailer = true,
            other => {
                return Err(Error::Format(format!(
                    "record {n} is a {other:?}; a backup holds PUTs only"
                )));
            }
        }
    }
    Ok(keys)
}

fn record_kind(cmd: &Command, n: u64) -> Result<CommandType> {
    // `r#type()` would read an unknown type as PUT (the default).
    CommandType::try_from(cmd.r#type)
        .map_err(|_| Error::Format(format!("record {n} has unknown type {}", cmd.r#type)))
}

/// The pair of PUT record `n`, which must have a key.
fn put_pair(kv: Option<KeyValue>, n: u64) -> Result<KeyValue> {
    kv.filter(|kv| !kv.key.is_empty())
        .ok_or_else(|| Error::Format(format!("record {n} is a PUT without a key")))
}

/// Builds table `table_id`'s SST from a checked upload, every key at `revision`.
fn build_restore(
    upload: &Path,
    sst: PathBuf,
    table_id: u64,
    revision: u64,
) -> Result<LoadedSnapshot> {
    let file = File::open(upload).map_err(Error::io("opening", upload))?;
    let mut records = RecordReader::new(std::io::BufReader::new(file));
    let mut writer = TableSstWriter::create(&sst, table_id)?;
    let mut n = 0u64;
    while let Some(cmd) = records.next_command()? {
        n += 1;
        if record_kind(&cmd, n)? != CommandType::Put {
            continue; // the trailer (the upload was checked whole)
        }
        let kv = put_pair(cmd.kv, n)?;
        let value = StoredValue {
            create_revision: revision,
            mod_revision: revision,
            value: kv.value,
        };
        writer.put(&kv.key, &value)?;
    }
    Ok(LoadedSnapshot {
        staged: writer.finish()?,
        leader_index: revision,
    })
}

impl SnapshotSource for Uploads {
    fn installed(&self, table_id: u64, marker: &LoadMarker) {
        if let Some(upload) = marker.upload {
            self.discard(table_id, upload);
        }
    }

    fn fetch(&self, _name: &str, table_id: u64, wanted: Wanted) -> Fetch {
        let this = self.clone();
        Box::pin(async move {
            // A leader cluster loads nothing but its own uploads.
            let Wanted::Upload { upload, revision } = wanted else {
                return Err(flotilla_tables::Error::LoadUnavailable { leader_index: 0 });
            };
            let path = this.path(table_id, upload, "upload");
            if !path.exists() {
                tracing::error!(
                    upload = %path.display(),
                    "a restore names an upload this node does not have"
                );
                return Err(flotilla_tables::Error::LoadUnavailable { leader_index: 0 });
            }
            let sst = this.path(table_id, upload, "sst");
            let built =
                tokio::task::spawn_blocking(move || build_restore(&path, sst, table_id, revision))
                    .await
                    .map_err(|e| Error::TaskFailed(e.to_string()))?;
            Ok(built?)
        })
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::mvcc::v1::KeyValue;

    use super::*;
    use crate::format::RecordWriter;

    fn record(kind: CommandType, key: &[u8]) -> Command {
        Command {
            r#type: kind as i32,
            kv: (kind == CommandType::Put).then(|| KeyValue {
                key: key.to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn encode(records: &[Command]) -> Vec<u8> {
        let mut w = RecordWriter::default();
        let mut out = Vec::new();
        for r in records {
            if let Some(chunk) = w.push(r).expect("push") {
                out.extend(chunk);
            }
        }
        for chunk in w.finish().expect("finish") {
            out.extend(chunk);
        }
        out
    }

    fn check(bytes: &[u8]) -> Result<u64> {
        check_backup(&mut RecordReader::new(bytes))
    }

    #[test]
    fn a_backup_is_ascending_puts_with_an_optional_trailer() {
        use CommandType::{Delete, Dummy, Put};
        assert_eq!(check(&[]).expect("empty"), 0);
        let good = [record(Put, b"a"), record(Put, b"b")];
        assert_eq!(check(&encode(&good)).expect("good"), 2);
        let trailed = [record(Put, b"a"), record(Dummy, b"")];
        assert_eq!(check(&encode(&trailed)).expect("trailer"), 1);
        for (bad, why) in [
            (vec![record(Put, b"b"), record(Put, b"a")], "ascending"),
            (vec![record(Put, b"a"), record(Put, b"a")], "ascending"),
            (vec![record(Put, b"")], "without a key"),
            (vec![record(Delete, b"a")], "PUTs only"),
            (vec![record(Dummy, b""), record(Put, b"a")], "follows"),
        ] {
            let err = check(&encode(&bad)).expect_err(why).to_string();
            assert!(err.contains(why), "{err}");
        }
        let cut = encode(&good);
        assert!(check(&cut[..cut.len() - 3]).is_err(), "a cut stream");
    }

    #[tokio::test]
    async fn an_upload_is_kept_only_when_whole_and_builds_the_table_at_one_revision() {
        let dir = tempfile::tempdir().expect("dir");
        let uploads = Uploads::new(dir.path().to_path_buf()).expect("uploads");
        let bytes = encode(&[
            record(CommandType::Put, b"a"),
            record(CommandType::Put, b"b"),
        ]);
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        let chunks = futures::stream::iter(vec![Ok(head.to_vec()), Ok(tail.to_vec())]);
        let upload = uploads.receive(5, chunks).await.expect("receive");
        assert_eq!((upload.keys, upload.bytes), (2, bytes.len() as u64));

        // A stream that fails midway, or data that is bad, leaves nothing behind.
        let failing = futures::stream::iter(vec![
            Ok(head.to_vec()),
            Err(Error::Format("client went away".into())),
        ]);
        assert!(uploads.receive(5, failing).await.is_err());
        let bad = encode(&[
            record(CommandType::Put, b"b"),
            record(CommandType::Put, b"a"),
        ]);
        assert!(
            uploads
                .receive(5, futures::stream::iter(vec![Ok(bad)]))
                .await
                .is_err()
        );
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, vec![format!("5-{}.upload", upload.number)]);

        let loaded = uploads
            .fetch(
                "t",
                5,
                Wanted::Upload {
                    upload: upload.number,
                    revision: 42,
                },
            )
            .await
            .expect("fetch");
        assert_eq!((loaded.leader_index, loaded.staged.keys), (42, 2));
        let missing = uploads
            .fetch(
                "t",
                5,
                Wanted::Upload {
                    upload: upload.number + 100,
                    revision: 42,
                },
            )
            .await;
        assert!(matches!(
            missing,
            Err(flotilla_tables::Error::LoadUnavailable { .. })
        ));
        uploads.discard(5, upload.number);
        assert!(
            !dir.path()
                .join(format!("5-{}.upload", upload.number))
                .exists()
        );
    }
}
