//! The encoding of a stored user value: the MVCC revisions clients see, then the bytes.

/// A live user key's value as stored in the `data` family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// Revision of the write that created the key (kept across later overwrites).
    pub create_revision: u64,
    /// Revision of the key's latest write.
    pub mod_revision: u64,
    /// The user's value, arbitrary bytes (unlike Armada, a lone 0x00 is not a tombstone).
    pub value: Vec<u8>,
}

const HEADER: usize = 16;

impl StoredValue {
    /// Encodes as `create(be u64) ++ mod(be u64) ++ value`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.value.len());
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes what [`StoredValue::encode`] wrote; `None` if the bytes are too short.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER {
            return None;
        }
        let create_revision = u64::from_be_bytes(bytes[0..8].try_into().ok()?);
        let mod_revision = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
        Some(Self {
            create_revision,
            mod_revision,
            value: bytes[HEADER..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_input() {
        let v = StoredValue {
            create_revision: 3,
            mod_revision: 9,
            value: vec![0],
        };
        assert_eq!(StoredValue::decode(&v.encode()), Some(v));
        assert_eq!(StoredValue::decode(&[1, 2, 3]), None);
    }
}
