//! `flotilla backup`: every table (or `--tables`) of a leader cluster through
//! Maintenance/Backup into `<table>.bak` files in Armada's byte format, then the manifest
//! (see [`super::manifest`]), written last so a half-written backup is never taken for a
//! whole one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Arg, ArgMatches, Command};
use flotilla_proto::maintenance::v1::BackupRequest;
use flotilla_proto::maintenance::v1::maintenance_client::MaintenanceClient;
use flotilla_proto::regatta::v1::StatusRequest;
use flotilla_proto::regatta::v1::cluster_client::ClusterClient;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;

use super::connect::{self, Authed};
use super::manifest::{self, FileSums, MANIFEST, Manifest, ManifestTable};
use super::progress::{Progress, TableProgress};
use super::rate::RateLimit;

/// Largest message accepted from the node (chunks are at most 1 MiB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The `backup` subcommand.
pub fn command() -> Command {
    let cmd = Command::new("backup")
        .about("Back up a leader cluster's tables into a directory (Armada's .bak files and manifest.json)")
        .arg(
            Arg::new("dir")
                .long("dir")
                .value_name("DIR")
                .required(true)
                .help("Directory to write into (created if missing)"),
        )
        .arg(
            Arg::new("compression")
                .long("compression")
                .value_parser(["none", "zstd"])
                .default_value("none")
                .help("zstd over the backup bytes (smaller; Armada's restore cannot read it)"),
        );
    super::transfer_args(connect::args(cmd), "back up")
}

/// Shared by the tables of one run.
struct Run {
    client: MaintenanceClient<Authed>,
    dir: PathBuf,
    compression: Option<&'static str>,
    limit: Option<RateLimit>,
    progress: Progress,
}

/// Runs `flotilla backup`.
pub async fn run(matches: &ArgMatches) -> anyhow::Result<()> {
    let channel = connect::channel(matches)?;
    let dir = PathBuf::from(
        matches
            .get_one::<String>("dir")
            .context("--dir is required")?,
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // An older backup here stops being one before any of its files is overwritten.
    match std::fs::remove_file(dir.join(MANIFEST)) {
        Ok(()) => manifest::sync_dir(&dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {MANIFEST}")),
    }
    let started = manifest::now();
    let tables: Vec<String> = match matches.get_many::<String>("tables") {
        Some(names) => names.cloned().collect(),
        None => {
            let status = ClusterClient::new(channel.clone())
                .status(StatusRequest::default())
                .await
                .map_err(one_line)
                .context("listing tables (Cluster/Status)")?
                .into_inner();
            let mut names: Vec<String> = status.tables.into_keys().collect();
            names.sort();
            names
        }
    };
    let json = matches.get_flag("json");
    let run = Arc::new(Run {
        client: MaintenanceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        dir: dir.clone(),
        compression: match matches.get_one::<String>("compression").map(String::as_str) {
            Some("zstd") => Some("zstd"),
            _ => None,
        },
        limit: matches
            .get_one::<u64>("rate-limit")
            .map(|r| RateLimit::new(*r)),
        progress: Progress::new(json),
    });
    let parallel = usize::from(*matches.get_one::<u16>("parallel").unwrap_or(&1));
    run.progress.say(&format!(
        "backing up {} tables into {}",
        tables.len(),
        dir.display()
    ));
    let mut done: Vec<ManifestTable> = futures::stream::iter(tables)
        .map(|name| {
            let run = run.clone();
            async move { backup_table(&run, name).await }
        })
        .buffer_unordered(parallel)
        .try_collect()
        .await?;
    done.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest = Manifest {
        started,
        finished: manifest::now(),
        tables: done,
        format: None,
        flotilla_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    };
    manifest.write(&dir)?;
    run.progress.say(&format!(
        "backup complete: {} tables in {}",
        manifest.tables.len(),
        dir.display()
    ));
    Ok(())
}

/// One line for a gRPC error: its code and message.
pub fn one_line(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Backs up one table into its file; returns its manifest entry.
async fn backup_table(run: &Run, name: String) -> anyhow::Result<ManifestTable> {
    let started = manifest::now();
    let file_name = match run.compression {
        Some(c) => format!("{name}.bak.{}", if c == "zstd" { "zst" } else { c }),
        None => format!("{name}.bak"),
    };
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        anyhow::bail!("table {name:?}: not a name that can be a file name");
    }
    let path = run.dir.join(&file_name);
    let mut stream = run
        .client
        .clone()
        .backup(BackupRequest {
            table: name.clone().into_bytes(),
        })
        .await
        .map_err(one_line)
        .with_context(|| format!("backing up {name}"))?
        .into_inner();
    let bar = run.progress.table(&name, None);
    // Each chunk goes to the file writer (checksums) and to a decoder (counts and
    // crc64xor; the backup decodes) side by side.
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let (decode_tx, decode_rx) = mpsc::channel::<Bytes>(4);
    let writer = {
        let (path, compression) = (path.clone(), run.compression);
        tokio::task::spawn_blocking(move || write_file(rx, &path, compression))
    };
    let decoder = tokio::task::spawn_blocking(move || {
        manifest::contents_of(ChunkReader {
            rx: decode_rx,
            chunk: Bytes::new(),
        })
    });
    let mut leader_index = None;
    let streamed: anyhow::Result<()> = async {
        while let Some(chunk) = stream.message().await.map_err(one_line)? {
            leader_index.get_or_insert(chunk.index);
            let n = chunk.data.len() as u64;
            if let Some(limit) = &run.limit {
                limit.take(n).await;
            }
            let data = Bytes::from(chunk.data);
            if tx.send(data.clone()).await.is_err() || decode_tx.send(data).await.is_err() {
                break; // the writer or the decoder failed; its error says why
            }
            bar.inc(n);
        }
        Ok(())
    }
    .await;
    drop((tx, decode_tx));
    let written = writer.await.context("the file writer failed")?;
    let decoded = decoder.await.context("the decoder failed")?;
    let ((md5, sha256, size), contents) = match (streamed, written, decoded) {
        (Ok(()), Ok(sums), Ok(contents)) => (sums, contents),
        (Err(e), _, _) | (Ok(()), Err(e), _) | (Ok(()), Ok(_), Err(e)) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.context(format!("backing up {name}")));
        }
    };
    let entry = ManifestTable {
        name: name.clone(),
        file_name,
        md5,
        sha256: Some(sha256),
        size: Some(size),
        crc64xor: Some(contents.crc64xor),
        keys: Some(contents.keys),
        bytes: Some(contents.bytes),
        leader_index,
        started: Some(started),
        finished: Some(manifest::now()),
        compression: run.compression.map(str::to_owned),
    };
    finish(bar, &entry);
    Ok(entry)
}

fn finish(bar: TableProgress, entry: &ManifestTable) {
    let line = format!(
        "{}: {} keys, {} bytes -> {}",
        entry.name,
        entry.keys.unwrap_or(0),
        entry.size.unwrap_or(0),
        entry.file_name
    );
    let mut record = serde_json::to_value(entry).unwrap_or_default();
    if let Some(obj) = record.as_object_mut() {
        obj.insert("event".into(), "table backed up".into());
    }
    bar.finish(&line, record);
}

/// `Read` over the chunks arriving on a channel (for a blocking thread).
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Writes the chunks from `rx` to `path` (through zstd if asked), synced; returns the
/// file's md5, sha256 and size.
fn write_file(
    mut rx: mpsc::Receiver<Bytes>,
    path: &Path,
    compression: Option<&str>,
) -> anyhow::Result<(String, String, u64)> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = Summing {
        file,
        sums: FileSums::default(),
    };
    match compression {
        Some("zstd") => {
            let mut encoder = zstd::Encoder::new(&mut out, 3)?;
            while let Some(chunk) = rx.blocking_recv() {
                encoder.write_all(&chunk)?;
            }
            encoder.finish()?;
        }
        _ => {
            while let Some(chunk) = rx.blocking_recv() {
                out.write_all(&chunk)?;
            }
        }
    }
    out.file
        .sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(out.sums.finish())
}

/// A file that sums what is written to it.
struct Summing {
    file: std::fs::File,
    sums: FileSums,
}

impl std::io::Write for Summing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sums.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
