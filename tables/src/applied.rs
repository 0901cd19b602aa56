//! The applied state of a group: written in the same batch as the data it describes, so
//! after a crash the data and the point to replay from always agree.

use crate::error::{Error, Result};

/// How far a group's state machine has applied, and what replication bookkeeping it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// Raft index of the last applied entry.
    pub index: u64,
    /// Raft term of the last applied entry.
    pub term: u64,
    /// The last leader-cluster index applied (follower clusters); `None` until a command
    /// carrying one is applied. Commands at or below it are skipped (idempotent replay).
    pub leader_index: Option<u64>,
    /// MVCC GC horizon recorded by GC commands.
    pub gc_horizon: u64,
}

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8 + 1 + 8 + 8;

impl AppliedState {
    /// Fixed 34-byte encoding, versioned for future fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        out.push(u8::from(self.leader_index.is_some()));
        out.extend_from_slice(&self.leader_index.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.gc_horizon.to_be_bytes());
        out
    }

    /// Decodes what [`AppliedState::encode`] wrote for table (group) `table`.
    pub fn decode(table: u64, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != LEN || bytes[0] != VERSION {
            return Err(Error::corrupt(
                table,
                format!(
                    "applied state: {} bytes, version {:?}",
                    bytes.len(),
                    bytes.first()
                ),
            ));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Self {
            index: u64_at(1),
            term: u64_at(9),
            leader_index: (bytes[17] == 1).then(|| u64_at(18)),
            gc_horizon: u64_at(26),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_leader_index() {
        for li in [None, Some(0), Some(77)] {
            let s = AppliedState {
                index: 5,
                term: 2,
                leader_index: li,
                gc_horizon: 3,
            };
            assert_eq!(AppliedState::decode(1, &s.encode()).expect("decode"), s);
        }
        assert!(matches!(
            AppliedState::decode(4, &[9; 3]),
            Err(Error::Corrupt { table: 4, .. })
        ));
    }
}
