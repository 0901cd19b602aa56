//! The snapshot byte format (WIRE.md §5.8-7): a Snappy framing-format stream whose
//! decompressed bytes are records of `u64 little-endian length` + a serialized
//! `mvcc.v1.Command`. The same bytes are Snapshot/Stream chunks concatenated, the HTTP
//! snapshot object and a `.bak` backup file.

use std::io::{Read, Write};

use flotilla_proto::mvcc::v1::Command;
use prost::Message as _;
use snap::read::FrameDecoder;
use snap::write::FrameEncoder;

use crate::error::{Error, Result};

/// Most bytes in one Snapshot/Stream chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest record a reader accepts (a 2 MiB value plus its key and framing, with room).
const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Encodes commands into the framed byte stream, handing out compressed pieces of at
/// most [`CHUNK_BYTES`] as they fill.
pub struct RecordWriter {
    encoder: FrameEncoder<Vec<u8>>,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordWriter")
    }
}

impl Default for RecordWriter {
    fn default() -> Self {
        Self {
            encoder: FrameEncoder::new(Vec::with_capacity(CHUNK_BYTES + (128 << 10))),
        }
    }
}

impl RecordWriter {
    /// Appends one record; returns a full chunk when one is ready.
    pub fn push(&mut self, cmd: &Command) -> Result<Option<Vec<u8>>> {
        let bytes = cmd.encode_to_vec();
        self.encoder
            .write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.encoder.write_all(&bytes)?;
        if self.encoder.get_ref().len() >= CHUNK_BYTES {
            return Ok(Some(self.take(CHUNK_BYTES)));
        }
        Ok(None)
    }

    /// Flushes everything; returns the remaining bytes as chunks of at most
    /// [`CHUNK_BYTES`].
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        self.encoder.flush()?;
        let mut out = Vec::new();
        while !self.encoder.get_ref().is_empty() {
            out.push(self.take(CHUNK_BYTES));
        }
        Ok(out)
    }

    fn take(&mut self, max: usize) -> Vec<u8> {
        let buf = self.encoder.get_mut();
        if buf.len() <= max {
            return std::mem::take(buf);
        }
        let rest = buf.split_off(max);
        std::mem::replace(buf, rest)
    }
}

/// Decodes records from the framed byte stream in `source`.
pub struct RecordReader<R: Read> {
    decoder: FrameDecoder<R>,
}

impl<R: Read> std::fmt::Debug for RecordReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordReader")
    }
}

impl<R: Read> RecordReader<R> {
    /// A reader over the compressed bytes of `source`.
    pub fn new(source: R) -> Self {
        Self {
            decoder: FrameDecoder::new(source),
        }
    }

    /// The source, once reading is done.
    pub(crate) fn into_inner(self) -> R {
        self.decoder.into_inner()
    }

    /// The next command, or `None` at a clean end of the stream.
    pub fn next_command(&mut self) -> Result<Option<Command>> {
        let mut len = [0u8; 8];
        let mut got = 0;
        while got < len.len() {
            let n = self.decoder.read(&mut len[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(Error::Format("stream ends inside a record length".into()));
            }
            got += n;
        }
        let len = u64::from_le_bytes(len);
        if len > MAX_RECORD_BYTES {
            return Err(Error::Format(format!("record of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.decoder.read_exact(&mut buf)?;
        Ok(Some(Command::decode(&buf[..])?))
    }
}

/// Writing to a [`ChannelReader`]'s sink failed: the reader's error is this one, so the
/// sink's failure (say, a full disk) is not taken for bad stream bytes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SinkFailed(pub(crate) std::io::Error);

impl SinkFailed {
    /// Whether `e` is a sink's failure.
    pub(crate) fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<SinkFailed>())
    }
}

/// `Read` over chunks arriving on a channel, for a blocking thread decoding a stream as
/// it arrives; with a sink, every chunk is also written there as it is taken.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    sink: Option<Box<dyn Write + Send>>,
}

impl ChannelReader {
    /// Reads what arrives on `rx` until it closes.
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            buf: Vec::new(),
            pos: 0,
            sink: None,
        }
    }

    /// Also writes every chunk to `sink` (a copy of the stream as received).
    pub(crate) fn teeing(
        rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
        sink: Box<dyn Write + Send>,
    ) -> Self {
        Self {
            sink: Some(sink),
            ..Self::new(rx)
        }
    }

    /// The sink, flushed (for its owner to make durable).
    pub(crate) fn into_sink(mut self) -> std::io::Result<Option<Box<dyn Write + Send>>> {
        if let Some(sink) = &mut self.sink {
            sink.flush()?;
        }
        Ok(self.sink)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    if let Some(sink) = &mut self.sink {
                        sink.write_all(&chunk)
                            .map_err(|e| std::io::Error::new(e.kind(), SinkFailed(e)))?;
                    }
                    self.buf = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FullDisk;

    impl Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_is_told_apart_from_bad_bytes() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(vec![1, 2, 3]).expect("send");
        drop(tx);
        let mut reader = ChannelReader::teeing(rx, Box::new(FullDisk));
        let e = reader.read(&mut [0u8; 8]).expect_err("the sink fails");
        assert!(SinkFailed::is(&e), "{e}");
        assert!(!SinkFailed::is(&std::io::Error::other("bad bytes")));
    }
    use flotilla_proto::mvcc::v1::{KeyValue, command::CommandType};

    fn put(i: usize) -> Command {
        Command {
            table: b"t".to_vec(),
            r#type: CommandType::Put as i32,
            kv: Some(KeyValue {
                key: format!("key{i:06}").into_bytes(),
                // incompressible values (xorshift), so chunks fill
                value: {
                    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    (0..200)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_in_bounded_chunks_with_the_snappy_stream_header() {
        let mut w = RecordWriter::default();
        let mut chunks = Vec::new();
        for i in 0..20_000 {
            chunks.extend(w.push(&put(i)).expect("push"));
        }
        chunks.extend(w.finish().expect("finish"));
        assert!(chunks.len() > 2, "several chunks");
        assert!(
            chunks
                .iter()
                .all(|c| c.len() <= CHUNK_BYTES && !c.is_empty())
        );
        let all: Vec<u8> = chunks.concat();
        assert_eq!(&all[..10], b"\xff\x06\x00\x00sNaPpY");
        let mut r = RecordReader::new(&all[..]);
        for i in 0..20_000 {
            assert_eq!(r.next_command().expect("read"), Some(put(i)));
        }
        assert_eq!(r.next_command().expect("end"), None);
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_an_end() {
        let mut w = RecordWriter::default();
        w.push(&put(1)).expect("push");
        let all: Vec<u8> = w.finish().expect("finish").concat();
        let cut = &all[..all.len() - 3];
        let mut r = RecordReader::new(cut);
        assert!(r.next_command().is_err());
    }
}

/// Property tests of [`RecordReader`] over arbitrary bytes, over valid Snappy streams
/// of corrupted or truncated records, and over valid streams cut anywhere: it returns
/// commands or an error, never panics, and never trusts a declared length past its cap.
/// See docs/FUZZING.md.
#[cfg(test)]
pub(crate) mod fuzz {
    use super::*;
    use flotilla_proto::mvcc::v1::KeyValue;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// `cases`, unless `PROPTEST_CASES` asks for another number.
    pub(crate) fn config(cases: u32) -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = cases;
        }
        config
    }

    pub(crate) fn key_value() -> impl Strategy<Value = KeyValue> {
        (
            vec(any::<u8>(), 0..6),
            prop_oneof![Just(0i64), 1i64..100, any::<i64>()],
            prop_oneof![Just(0i64), 1i64..100, any::<i64>()],
            vec(any::<u8>(), 0..8),
        )
            .prop_map(|(key, create_revision, mod_revision, value)| KeyValue {
                key,
                create_revision,
                mod_revision,
                value,
            })
    }

    /// Any command: every known type and unknown ones, any fields set or not.
    pub(crate) fn command() -> impl Strategy<Value = Command> {
        (
            (vec(any::<u8>(), 0..3), prop_oneof![0i32..8, any::<i32>()]),
            proptest::option::of(key_value()),
            proptest::option::of(any::<u64>()),
            vec(key_value(), 0..3),
            proptest::option::of(vec(any::<u8>(), 0..3)),
            (any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |((table, r#type), kv, leader_index, batch, range_end, (prev_kvs, count))| {
                    Command {
                        table,
                        r#type,
                        kv,
                        leader_index,
                        batch,
                        range_end,
                        prev_kvs,
                        count,
                        ..Default::default()
                    }
                },
            )
    }

    /// Reads to the end; the commands, then the error if it ended in one. Each command
    /// takes at least its 8-byte length, so more reads than that would be a loop.
    fn read_all(compressed: &[u8], raw_len: usize) -> (Vec<Command>, Option<Error>) {
        let mut reader = RecordReader::new(compressed);
        let mut out = Vec::new();
        loop {
            assert!(
                out.len() <= raw_len / 8,
                "more commands than the bytes hold"
            );
            match reader.next_command() {
                Ok(Some(cmd)) => out.push(cmd),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn compress(raw: &[u8]) -> Vec<u8> {
        let mut encoder = FrameEncoder::new(Vec::new());
        encoder.write_all(raw).expect("write");
        encoder.into_inner().expect("flush")
    }

    fn record(cmd: &Command) -> Vec<u8> {
        let bytes = cmd.encode_to_vec();
        let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
        out.extend(bytes);
        out
    }

    /// What follows the valid records of a raw stream.
    #[derive(Debug, Clone)]
    enum Tail {
        /// Nothing: a clean end.
        Clean,
        /// Some bytes (not all) of one more encoded record.
        Truncated(Vec<u8>, Index),
        /// A length over the cap, and a few bytes.
        Huge(u64, Vec<u8>),
        /// A length and fewer bytes than it says.
        Short(u64, Vec<u8>),
        /// A length and that many arbitrary bytes.
        Garbage(Vec<u8>),
    }

    fn tail() -> impl Strategy<Value = Tail> {
        prop_oneof![
            Just(Tail::Clean),
            (command(), any::<Index>()).prop_map(|(c, i)| Tail::Truncated(record(&c), i)),
            (
                prop_oneof![
                    Just(MAX_RECORD_BYTES + 1),
                    Just(u64::MAX),
                    MAX_RECORD_BYTES + 1..
                ],
                vec(any::<u8>(), 0..16)
            )
                .prop_map(|(n, b)| Tail::Huge(n, b)),
            (vec(any::<u8>(), 0..16), 1..MAX_RECORD_BYTES)
                .prop_map(|(b, extra)| Tail::Short(b.len() as u64 + extra, b)),
            vec(any::<u8>(), 0..32).prop_map(Tail::Garbage),
        ]
    }

    proptest! {
        #![proptest_config(config(3000))]

        #[test]
        fn fuzz_arbitrary_bytes(
            bytes in vec(any::<u8>(), 0..256),
            framed in any::<bool>(),
        ) {
            // With the stream identifier, the bytes reach the chunk decoding.
            let mut input = if framed { b"\xff\x06\x00\x00sNaPpY".to_vec() } else { Vec::new() };
            input.extend(bytes);
            // At most 64 KiB decompressed per chunk (of at least 4 bytes).
            read_all(&input, input.len() * 65536);
        }
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn fuzz_corrupt_records_in_a_valid_stream(
            cmds in vec(command(), 0..6),
            tail in tail(),
        ) {
            let mut raw: Vec<u8> = cmds.iter().flat_map(record).collect();
            match &tail {
                Tail::Clean => {}
                Tail::Truncated(r, cut) => {
                    raw.extend(&r[..1 + cut.index(r.len() - 1)]);
                }
                Tail::Huge(len, bytes) | Tail::Short(len, bytes) => {
                    raw.extend(len.to_le_bytes());
                    raw.extend(bytes);
                }
                Tail::Garbage(bytes) => {
                    raw.extend((bytes.len() as u64).to_le_bytes());
                    raw.extend(bytes);
                }
            }
            let (got, err) = read_all(&compress(&raw), raw.len());
            prop_assert!(got.len() >= cmds.len());
            prop_assert_eq!(&got[..cmds.len()], &cmds[..]);
            match tail {
                Tail::Clean => prop_assert!(got.len() == cmds.len() && err.is_none()),
                Tail::Truncated(..) | Tail::Short(..) => {
                    prop_assert!(got.len() == cmds.len() && err.is_some(), "{err:?}");
                }
                Tail::Huge(len, _) => {
                    prop_assert_eq!(got.len(), cmds.len());
                    let huge = matches!(&err, Some(Error::Format(m)) if *m == format!("record of {len} bytes"));
                    prop_assert!(huge, "{err:?}");
                }
                // Arbitrary bytes may be a command; if not, an error.
                Tail::Garbage(_) => prop_assert!(got.len() + usize::from(err.is_some()) == cmds.len() + 1),
            }
        }

    }

    proptest! {
        #![proptest_config(config(500))]

        #[test]
        fn fuzz_a_valid_stream_cut_or_damaged(
            cmds in vec(command(), 1..40),
            cut in any::<Index>(),
            flips in vec((any::<Index>(), 1..=255u8), 0..3),
        ) {
            let raw: Vec<u8> = cmds.iter().flat_map(record).collect();
            let mut compressed = compress(&raw);
            if flips.is_empty() {
                // Cut anywhere: a prefix of the commands, then an end or an error.
                compressed.truncate(cut.index(compressed.len()));
                let (got, _) = read_all(&compressed, raw.len());
                prop_assert!(got.len() < cmds.len());
                prop_assert_eq!(&got[..], &cmds[..got.len()]);
            } else {
                // A damaged chunk header can turn data into a skippable chunk: only
                // require an answer (checksums catch damaged data).
                let len = compressed.len();
                for (at, x) in flips {
                    compressed[at.index(len)] ^= x;
                }
                read_all(&compressed, raw.len() + len * 65536);
            }
        }
    }
}
