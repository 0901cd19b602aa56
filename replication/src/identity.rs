//! Table identity across clusters: a leader cluster's table id travels next to its name
//! (flotilla.v1 `TableIds`, WIRE.md delta), so a follower never takes a re-created
//! table for the one it replicates. Carried in request and response metadata, which
//! Armada peers ignore.

use std::collections::HashMap;

use flotilla_proto::flotilla::v1::{TableId, TableIds};
use prost::Message as _;
use tonic::metadata::{BinaryMetadataValue, MetadataMap, MetadataValue};

use crate::error::{Error, Result};

/// Response header of Metadata/Get: the encoded [`TableIds`] of the listed tables.
pub const TABLE_IDS_HEADER: &str = "flotilla-table-ids-bin";

/// Request header of Log/Replicate and Snapshot/Stream: the leader table id the follower
/// replicates. A leader whose table of that name has another id answers as if the table
/// did not exist.
pub const TABLE_ID_HEADER: &str = "flotilla-table-id";

/// Puts `tables` (name, id) into `metadata` as [`TABLE_IDS_HEADER`].
pub fn write_table_ids<'a>(
    metadata: &mut MetadataMap,
    tables: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let ids = TableIds {
        tables: tables
            .into_iter()
            .map(|(name, id)| TableId {
                name: name.to_owned(),
                id,
            })
            .collect(),
    };
    metadata.insert_bin(
        TABLE_IDS_HEADER,
        BinaryMetadataValue::from_bytes(&ids.encode_to_vec()),
    );
}

/// The table ids in `metadata` (empty from a leader that sends none, e.g. Armada's).
/// A header that is there but does not decode is an error, not an empty map.
pub fn read_table_ids(metadata: &MetadataMap) -> Result<HashMap<String, u64>> {
    let Some(value) = metadata.get_bin(TABLE_IDS_HEADER) else {
        return Ok(HashMap::new());
    };
    let bytes = value
        .to_bytes()
        .map_err(|e| Error::Format(format!("{TABLE_IDS_HEADER}: {e}")))?;
    let ids = TableIds::decode(bytes)?;
    Ok(ids.tables.into_iter().map(|t| (t.name, t.id)).collect())
}

/// Names the leader table `id` in a request's `metadata`.
pub fn write_table_id(metadata: &mut MetadataMap, id: u64) {
    metadata.insert(TABLE_ID_HEADER, MetadataValue::from(id));
}

/// The leader table id a request names, if it names one. A malformed value is an error.
pub fn read_table_id(metadata: &MetadataMap) -> Result<Option<u64>> {
    let Some(value) = metadata.get(TABLE_ID_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| Error::Format(format!("{TABLE_ID_HEADER} is not a table id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_metadata() {
        let mut m = MetadataMap::new();
        assert!(read_table_ids(&m).expect("none").is_empty());
        write_table_ids(&mut m, [("a", 3), ("b,c", 9)]);
        let ids = read_table_ids(&m).expect("ids");
        assert_eq!(ids.get("a"), Some(&3));
        assert_eq!(ids.get("b,c"), Some(&9));
        assert_eq!(read_table_id(&m).expect("none"), None);
        write_table_id(&mut m, 17);
        assert_eq!(read_table_id(&m).expect("id"), Some(17));
        m.insert(TABLE_ID_HEADER, MetadataValue::from_static("x"));
        assert!(read_table_id(&m).is_err());
    }
}
