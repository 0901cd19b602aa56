//! A backup directory's `manifest.json`: Armada's fields (`started`, `finished`, and per
//! table `name`, `file_name`, `md5`), so `armada restore` accepts what `flotilla backup`
//! writes and `flotilla restore` reads what `armada backup` wrote, plus ours, each
//! optional when read: per-table sha256, crc64xor of the key-value pairs (TiKV BR's
//! check), key and byte counts, file size, the leader index, times, and compression.
//!
//! A manifest is written last and atomically: a directory without one is no backup.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use flotilla_proto::mvcc::v1::command::CommandType;
use flotilla_replication::format::RecordReader;
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest's file name (Armada's).
pub const MANIFEST: &str = "manifest.json";

/// A backup's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// When the backup started (RFC 3339).
    pub started: String,
    /// When the last table was written (RFC 3339).
    pub finished: String,
    /// One entry per table, by name.
    pub tables: Vec<ManifestTable>,
    /// Armada's backup format name, if the writer set one (Armada HEAD does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The Flotilla version that wrote it (absent in Armada's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flotilla_version: Option<String>,
}

/// One table of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ManifestTable {
    /// The table's name.
    pub name: String,
    /// Its file, relative to the manifest.
    pub file_name: String,
    /// MD5 of the file (hex), as Armada checks it.
    pub md5: String,
    /// SHA-256 of the file (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The file's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// XOR over the pairs of CRC-64/XZ(key ‖ value), as TiKV BR's `crc64xor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64xor: Option<u64>,
    /// Keys in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// Bytes of keys and values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The leader's applied index the data reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_index: Option<u64>,
    /// When this table's backup started and finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// See `started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// `zstd` when the file is zstd over Armada's bytes (Armada cannot read it); absent
    /// for Armada's format as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// Now, as RFC 3339 (what Go's `time.Time` encodes to JSON and parses back).
pub fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

impl Manifest {
    /// Reads `dir`'s manifest, naming what is wrong.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: no backup here (the manifest is written last)",
                path.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a backup manifest", path.display()))?;
        if let Some(format) = manifest.format.as_deref()
            && !format.is_empty()
            && format != "armada-command-v1"
        {
            anyhow::bail!("{}: unsupported backup format {format:?}", path.display());
        }
        Ok(manifest)
    }

    /// Writes the manifest into `dir` atomically and durably (a temporary file, synced,
    /// renamed over, the directory synced).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        sync_dir(dir)
    }
}

/// Syncs a directory, so renames and new files in it survive a crash.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Checksums of a file's bytes, computed as they are written or read.
#[derive(Default)]
pub struct FileSums {
    md5: Md5,
    sha256: Sha256,
    size: u64,
}

impl FileSums {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// (md5, sha256) in hex, and the size.
    pub fn finish(self) -> (String, String, u64) {
        (
            hex(&self.md5.finalize()),
            hex(&self.sha256.finalize()),
            self.size,
        )
    }
}

/// The hex digest of what `file` holds from where it stands (SHA-256 if `sha256`, else
/// MD5), and its size.
fn file_digest(file: &mut std::fs::File, sha256: bool) -> std::io::Result<(String, u64)> {
    fn run<D: sha2::Digest>(file: &mut std::fs::File) -> std::io::Result<(String, u64)> {
        let mut digest = D::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok((hex(&digest.finalize()), size));
            }
            digest.update(&buf[..n]);
            size += n as u64;
        }
    }
    if sha256 {
        run::<Sha256>(file)
    } else {
        run::<Md5>(file)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the records of a backup file hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Contents {
    /// Keys (PUT records).
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// XOR over the pairs of CRC-64/XZ(key ‖ value).
    pub crc64xor: u64,
}

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Decodes every record of a backup (Armada's bytes, `zstd` over them if `compression`
/// says so) and sums what it holds; an error names the record that does not decode.
pub fn contents(file: &Path, compression: Option<&str>) -> anyhow::Result<Contents> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let reader: Box<dyn Read> = match compression {
        None | Some("none") => Box::new(std::io::BufReader::new(f)),
        Some("zstd") => Box::new(zstd::Decoder::new(f)?),
        Some(other) => anyhow::bail!("unknown compression {other:?}"),
    };
    contents_of(reader)
}

/// Decodes every record of Armada's backup bytes read from `reader` and sums what they
/// hold (see [`contents`]).
pub fn contents_of(reader: impl Read) -> anyhow::Result<Contents> {
    let mut records = RecordReader::new(reader);
    let mut out = Contents::default();
    let mut n = 0u64;
    while let Some(cmd) = records
        .next_command()
        .with_context(|| format!("record {} does not decode", n + 1))?
    {
        n += 1;
        match CommandType::try_from(cmd.r#type) {
            Ok(CommandType::Put) => {
                let kv = cmd
                    .kv
                    .with_context(|| format!("record {n} is a PUT without a key-value"))?;
                let mut digest = CRC64.digest();
                digest.update(&kv.key);
                digest.update(&kv.value);
                out.crc64xor ^= digest.finalize();
                out.keys += 1;
                out.bytes += (kv.key.len() + kv.value.len()) as u64;
            }
            // A snapshot object's trailer.
            Ok(CommandType::Dummy) => {}
            _ => anyhow::bail!("record {n} is of type {}, not a PUT", cmd.r#type),
        }
    }
    Ok(out)
}

/// Checks one table's file against its manifest entry: size, sha256 (md5 without one), then every
/// record (keys, byte count, crc64xor) where the manifest has them. The error says which
/// file and what is wrong.
pub fn verify(dir: &Path, table: &ManifestTable) -> anyhow::Result<PathBuf> {
    let path = dir.join(&table.file_name);
    let name = &table.file_name;
    if table.file_name.contains('/') || table.file_name.contains("..") {
        anyhow::bail!("{name}: a file name outside the backup directory");
    }
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("{name}: missing from the backup"))?;
    // The checksums and the record walk read the file side by side, on two threads.
    let (sums, got) = std::thread::scope(|scope| {
        let walk = scope.spawn(|| contents(&path, table.compression.as_deref()));
        let sums = file_digest(&mut file, table.sha256.is_some());
        let got = walk
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the record walk panicked")));
        (sums, got)
    });
    let (digest, size) = sums.with_context(|| format!("{name}: reading"))?;
    if let Some(want) = table.size
        && want != size
    {
        anyhow::bail!("{name}: {size} bytes, the manifest says {want} (truncated or replaced)");
    }
    // SHA-256 where the manifest has it (ours), else Armada's MD5: one hash, not both.
    let (what, want) = match &table.sha256 {
        Some(sha256) => ("sha256", sha256),
        None => ("md5", &table.md5),
    };
    if !digest.eq_ignore_ascii_case(want) {
        anyhow::bail!("{name}: {what} {digest} does not match the manifest's {want}");
    }
    let got = got.with_context(|| name.clone())?;
    for (what, want, have) in [
        ("keys", table.keys, got.keys),
        ("bytes", table.bytes, got.bytes),
        ("crc64xor", table.crc64xor, got.crc64xor),
    ] {
        if let Some(want) = want
            && want != have
        {
            anyhow::bail!("{name}: {what} {have} does not match the manifest's {want}");
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armadas_manifest_reads_and_ours_round_trips() {
        let dir = tempfile::tempdir().expect("dir");
        let armada = r#"{"started":"2024-01-02T03:04:05.123456789Z","finished":"2024-01-02T03:04:06Z","tables":[{"name":"t","file_name":"t.bak","md5":"abc"}]}"#;
        std::fs::write(dir.path().join(MANIFEST), armada).expect("write");
        let m = Manifest::read(dir.path()).expect("read");
        assert_eq!(m.tables[0].file_name, "t.bak");
        assert_eq!(m.tables[0].sha256, None);
        let ours = Manifest {
            flotilla_version: Some("0.1.0".into()),
            tables: vec![ManifestTable {
                sha256: Some("00".into()),
                keys: Some(3),
                ..m.tables[0].clone()
            }],
            ..m
        };
        ours.write(dir.path()).expect("write");
        assert_eq!(Manifest::read(dir.path()).expect("read back"), ours);
        std::fs::write(dir.path().join(MANIFEST), b"{").expect("write");
        assert!(Manifest::read(dir.path()).is_err());
    }

    #[test]
    fn crc64xor_is_order_free_and_sees_every_byte() {
        let crc = |k: &[u8], v: &[u8]| {
            let mut d = CRC64.digest();
            d.update(k);
            d.update(v);
            d.finalize()
        };
        assert_eq!(CRC64.checksum(b"123456789"), 0x995d_c9bb_df19_39fa);
        assert_ne!(crc(b"a", b"b"), crc(b"a", b"c"));
        assert_eq!(
            crc(b"a", b"b") ^ crc(b"c", b"d"),
            crc(b"c", b"d") ^ crc(b"a", b"b")
        );
    }
}
