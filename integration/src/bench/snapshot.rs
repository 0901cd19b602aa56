//! The table a snapshot-recovery measurement transfers, for `flotilla-load-table` and
//! `flotilla-recovery-bench`: its keys (`snap/00000000`, ...) and loading it on the leader
//! with values Snappy cannot shrink, so the snapshot's size on the wire is the data's.

use std::time::{Duration, Instant};

use flotilla_proto::regatta::v1::PutRequest;
use flotilla_proto::regatta::v1::kv_client::KvClient;
use tonic::transport::Channel;

/// What every key starts with; also the start of a range covering all of them.
pub const PREFIX: &str = "snap/";
/// The end of the `snap/` prefix ('/' + 1 = '0'), a range end covering every key.
pub const PREFIX_END: &[u8] = b"snap0";

/// The `i`-th key: `snap/00000123`.
pub fn key(i: u64) -> Vec<u8> {
    format!("{PREFIX}{i:08}").into_bytes()
}

/// `len` bytes that Snappy cannot shrink (xorshift64 seeded by `seed`).
pub fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What [`load`] wrote.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    pub keys: u64,
    /// Key + value bytes of every key.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Puts `total_bytes / value_bytes` (rounded up) keys with incompressible values into
/// `table` on the leader, from `writers` concurrent writers; the table must exist.
pub async fn load(
    leader: &Channel,
    table: &str,
    total_bytes: u64,
    value_bytes: usize,
    writers: u64,
) -> Result<Loaded, String> {
    let writers = writers.max(1);
    let keys = total_bytes.div_ceil(value_bytes.max(1) as u64);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let kv = KvClient::new(leader.clone());
            let writer = Writer {
                table: table.as_bytes().to_vec(),
                first: w,
                step: writers,
                keys,
                value_bytes,
            };
            tokio::spawn(writer.run(kv))
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.map_err(|e| format!("load task: {e}"))??;
    }
    Ok(Loaded {
        keys,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// One of [`load`]'s writers: puts keys `first`, `first + step`, ... below `keys`.
struct Writer {
    table: Vec<u8>,
    first: u64,
    step: u64,
    keys: u64,
    value_bytes: usize,
}

impl Writer {
    /// Writes its keys one at a time; returns their key + value bytes.
    async fn run(self, mut kv: KvClient<Channel>) -> Result<u64, String> {
        let mut bytes = 0;
        for i in (self.first..self.keys).step_by(self.step as usize) {
            let key = key(i);
            bytes += (key.len() + self.value_bytes) as u64;
            kv.put(PutRequest {
                table: self.table.clone(),
                key,
                value: incompressible(i, self.value_bytes),
                prev_kv: false,
            })
            .await
            .map_err(|e| format!("put {i} on the leader: {e}"))?;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fall_inside_the_prefix_range() {
        assert_eq!(key(7), b"snap/00000007");
        assert!(PREFIX.as_bytes() < key(0).as_slice());
        assert!(key(99_999_999).as_slice() < PREFIX_END);
    }

    #[test]
    fn incompressible_values_have_the_asked_length_and_differ_by_seed() {
        assert_eq!(incompressible(1, 65_536).len(), 65_536);
        assert_eq!(incompressible(1, 3).len(), 3);
        assert_ne!(incompressible(1, 64), incompressible(2, 64));
        assert_eq!(incompressible(5, 64), incompressible(5, 64));
    }
}
