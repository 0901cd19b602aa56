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

#[cfg(test)]
mod tests {
    use super::*;
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
