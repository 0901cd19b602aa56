//! `flotilla restore`: a backup directory (ours or Armada's) back into a leader cluster
//! through Maintenance/Restore. Every file is checked against the manifest (size, md5,
//! sha256, every record, key count and crc64xor where recorded) *before* the first call,
//! so a damaged or incomplete backup changes nothing.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Arg, ArgMatches, Command};
use flotilla_proto::maintenance::v1::maintenance_client::MaintenanceClient;
use flotilla_proto::maintenance::v1::{RestoreInfo, RestoreMessage, restore_message};
use flotilla_proto::replication::v1::SnapshotChunk;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;

use super::backup::one_line;
use super::connect::{self, Authed};
use super::manifest::{self, Manifest, ManifestTable};
use super::progress::Progress;
use super::rate::RateLimit;

/// Bytes per Restore message (what `armada restore` sends).
const CHUNK_BYTES: usize = 2 << 20;

/// The `restore` subcommand.
pub fn command() -> Command {
    let cmd = Command::new("restore")
        .about("Restore tables from a backup directory (flotilla's or Armada's) into a leader cluster; replaces their contents")
        .arg(
            Arg::new("dir")
                .long("dir")
                .value_name("DIR")
                .required(true)
                .help("The backup directory (holding manifest.json)"),
        );
    super::transfer_args(connect::args(cmd), "restore")
}

/// Runs `flotilla restore`.
pub async fn run(matches: &ArgMatches) -> anyhow::Result<()> {
    let dir = PathBuf::from(
        matches
            .get_one::<String>("dir")
            .context("--dir is required")?,
    );
    let manifest = Manifest::read(&dir)?;
    let tables: Vec<ManifestTable> = match matches.get_many::<String>("tables") {
        Some(names) => names
            .map(|name| {
                manifest
                    .tables
                    .iter()
                    .find(|t| &t.name == name)
                    .cloned()
                    .with_context(|| format!("table {name} is not in this backup"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => manifest.tables.clone(),
    };
    let json = matches.get_flag("json");
    let progress = Progress::new(json);
    // Every file first: nothing is sent unless all of them are whole.
    let mut checked = Vec::new();
    for table in tables {
        let d = dir.clone();
        let t = table.clone();
        let path = tokio::task::spawn_blocking(move || manifest::verify(&d, &t)).await??;
        checked.push((table, path));
    }
    progress.say(&format!(
        "{} tables checked against {}; restoring",
        checked.len(),
        dir.join(manifest::MANIFEST).display()
    ));
    let channel = connect::channel(matches)?;
    let client = MaintenanceClient::new(channel);
    let limit = matches
        .get_one::<u64>("rate-limit")
        .map(|r| Arc::new(RateLimit::new(*r)));
    let parallel = usize::from(*matches.get_one::<u16>("parallel").unwrap_or(&1));
    let count = checked.len();
    futures::stream::iter(checked)
        .map(|(table, path)| {
            let (client, limit, progress) = (client.clone(), limit.clone(), progress.clone());
            async move { restore_table(client, &table, path, limit, &progress).await }
        })
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    progress.say(&format!("restore complete: {count} tables"));
    Ok(())
}

async fn restore_table(
    mut client: MaintenanceClient<Authed>,
    table: &ManifestTable,
    path: PathBuf,
    limit: Option<Arc<RateLimit>>,
    progress: &Progress,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(&path).map(|m| m.len()).ok();
    let bar = progress.table(&table.name, size);
    // The file is read (and zstd undone) on a blocking thread; chunks go out as read.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<(Vec<u8>, u64)>>(4);
    let compression = table.compression.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let result = read_chunks(&path, compression.as_deref(), &tx);
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let info = RestoreMessage {
        data: Some(restore_message::Data::Info(RestoreInfo {
            table: table.name.clone().into_bytes(),
        })),
    };
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel();
    let mut failed_tx = Some(failed_tx);
    let counter = bar.counter();
    let chunks = async_stream::stream! {
        yield info;
        while let Some(item) = rx.recv().await {
            match item {
                Ok((data, raw)) => {
                    if let Some(limit) = &limit {
                        limit.take(data.len() as u64).await;
                    }
                    counter.inc(raw);
                    yield RestoreMessage {
                        data: Some(restore_message::Data::Chunk(SnapshotChunk {
                            len: data.len() as u64,
                            data,
                            index: 0,
                        })),
                    };
                }
                Err(e) => {
                    if let Some(tx) = failed_tx.take() {
                        let _ = tx.send(e);
                    }
                    // Ends the call without half-closing cleanly: the server keeps
                    // the old data.
                    futures::future::pending::<()>().await;
                }
            }
        }
    };
    let call = client.restore(chunks);
    let result = tokio::select! {
        r = call => r.map(|_| ()).map_err(one_line),
        Ok(e) = &mut failed_rx => Err(anyhow::Error::new(e).context("reading the backup")),
    };
    reader.await.context("the file reader failed")?;
    result.with_context(|| format!("restoring {}", table.name))?;
    let line = format!(
        "{}: restored {} keys from {}",
        table.name,
        table
            .keys
            .map_or_else(|| "its".to_owned(), |k| k.to_string()),
        table.file_name
    );
    let record = serde_json::json!({
        "event": "table restored",
        "name": table.name,
        "file_name": table.file_name,
        "keys": table.keys,
        "size": size,
    });
    bar.finish(&line, record);
    Ok(())
}

/// Sends the backup bytes of `path` as chunks of at most [`CHUNK_BYTES`], each with the
/// number of file bytes it took.
fn read_chunks(
    path: &std::path::Path,
    compression: Option<&str>,
    tx: &mpsc::Sender<std::io::Result<(Vec<u8>, u64)>>,
) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let counted = CountingReader {
        inner: file,
        count: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let count = counted.count.clone();
    let mut reader: Box<dyn std::io::Read> = match compression {
        Some("zstd") => Box::new(zstd::Decoder::new(counted)?),
        _ => Box::new(counted),
    };
    let mut reported = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        while filled < buf.len() {
            let n = reader.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        let now = count.load(std::sync::atomic::Ordering::Relaxed);
        if tx.blocking_send(Ok((buf, now - reported))).is_err() {
            return Ok(()); // the call ended
        }
        reported = now;
    }
}

/// Counts the bytes read from a file (progress in file bytes, compressed or not).
struct CountingReader {
    inner: std::fs::File,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}
