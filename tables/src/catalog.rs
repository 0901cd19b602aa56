//! The table catalog: its own raft group (id [`CATALOG_ID`]) whose state machine maps
//! table names to ids. A table's id is the catalog log index that created it, so ids are
//! unique, never reused, and the same on every replica.
//!
//! Creating a table writes the catalog entry and the new group's initial raft state in
//! one batch; dropping one writes a "dropped" marker in the same batch as the catalog
//! change, and the table's ranges are erased once its group has stopped (or at the next
//! start, if the node dies first).

use std::sync::Arc;

use rocksdb::WriteBatch;

use crate::applied::AppliedState;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::group::StateMachine;
use crate::keys::{self, CATALOG_ID};
use crate::raft_storage;

/// A change to the catalog, as replicated in the catalog's raft log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CatalogCommand {
    /// [`CatalogCommand::CREATE`] or [`CatalogCommand::DROP`].
    #[prost(uint32, tag = "1")]
    pub op: u32,
    /// The table's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// On a follower cluster: the id of the leader cluster's table this one replicates
    /// (0: none). A leader table dropped and created again under the same name has a new
    /// id, which is how a follower tells the new table from the old one.
    #[prost(uint64, tag = "3")]
    pub source_id: u64,
}

impl CatalogCommand {
    /// Create a table.
    pub const CREATE: u32 = 1;
    /// Drop a table.
    pub const DROP: u32 = 2;
}

/// What applying a catalog command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogOutcome {
    /// The table was created with this id.
    Created(u64),
    /// The table with this id was dropped.
    Dropped(u64),
    /// Create of a name that exists.
    AlreadyExists,
    /// Drop of a name that does not exist.
    NotFound,
    /// The command did not decode (applied as a no-op on every replica).
    Invalid,
}

/// Told about catalog changes as they are applied, to start and stop table groups.
pub trait CatalogListener: Send + Sync + 'static {
    /// Table `id` named `name` (replicating leader table `source_id`, if any) now
    /// exists (its raft state is on disk); `index` is the catalog entry that created it.
    fn created(&self, index: u64, id: u64, name: &str, source_id: Option<u64>);
    /// Table `id` was dropped; its data must be erased once its group stopped.
    fn dropped(&self, id: u64, name: &str);
}

/// The catalog's state machine.
pub struct CatalogMachine {
    engine: Engine,
    state: AppliedState,
    voters: Vec<u64>,
    listener: Arc<dyn CatalogListener>,
}

impl std::fmt::Debug for CatalogMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogMachine")
            .field("state", &self.state)
            .finish()
    }
}

impl CatalogMachine {
    /// Loads the catalog's applied state. New tables get `voters` as their members.
    pub fn load(
        engine: Engine,
        voters: Vec<u64>,
        listener: Arc<dyn CatalogListener>,
    ) -> Result<Self> {
        let state = match engine.get(keys::CF_META, &keys::applied_key(CATALOG_ID))? {
            Some(b) => AppliedState::decode(CATALOG_ID, &b)?,
            None => AppliedState::default(),
        };
        Ok(Self {
            engine,
            state,
            voters,
            listener,
        })
    }
}

/// One table of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The table's name.
    pub name: String,
    /// Its id (also its raft group id).
    pub id: u64,
    /// The leader cluster's id of the table it replicates (follower clusters).
    pub source_id: Option<u64>,
}

/// A catalog entry's value: the id, then the source id if there is one.
fn encode_entry(id: u64, source_id: u64) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    if source_id != 0 {
        v.extend_from_slice(&source_id.to_be_bytes());
    }
    v
}

fn decode_entry(name: &[u8], v: &[u8]) -> Result<(u64, Option<u64>)> {
    let bad = || {
        Error::corrupt(
            CATALOG_ID,
            format!(
                "the catalog entry of {:?} is {} bytes",
                String::from_utf8_lossy(name),
                v.len()
            ),
        )
    };
    match v.len() {
        8 => Ok((keys::decode_u64(v).ok_or_else(bad)?, None)),
        16 => Ok((
            keys::decode_u64(&v[..8]).ok_or_else(bad)?,
            Some(keys::decode_u64(&v[8..]).ok_or_else(bad)?),
        )),
        _ => Err(bad()),
    }
}

/// All tables in the catalog, sorted by name.
pub fn list(engine: &Engine) -> Result<Vec<CatalogEntry>> {
    let prefix = keys::catalog_table_prefix();
    let mut iter = engine.iter(keys::CF_META, prefix.clone(), keys::prefix_end(&prefix));
    iter.seek(&prefix);
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        let raw_name = &k[prefix.len()..];
        let name = String::from_utf8(raw_name.to_vec())
            .map_err(|_| Error::corrupt(CATALOG_ID, "a table name that is not UTF-8"))?;
        let (id, source_id) = decode_entry(raw_name, v)?;
        out.push(CatalogEntry {
            name,
            id,
            source_id,
        });
        iter.next();
    }
    crate::engine::iter_status(&iter)?;
    Ok(out)
}

/// Ids of dropped tables whose data has not been erased yet.
pub fn dropped(engine: &Engine) -> Result<Vec<u64>> {
    let prefix = keys::catalog_dropped_prefix();
    let mut iter = engine.iter(keys::CF_META, prefix.clone(), keys::prefix_end(&prefix));
    iter.seek(&prefix);
    let mut out = Vec::new();
    while let Some(k) = iter.key() {
        let id = keys::decode_u64(&k[prefix.len()..])
            .ok_or_else(|| Error::corrupt(CATALOG_ID, "a dropped-table marker"))?;
        out.push(id);
        iter.next();
    }
    crate::engine::iter_status(&iter)?;
    Ok(out)
}

/// Erases a dropped table's data and its marker.
pub fn erase_dropped(engine: &Engine, id: u64) -> Result<()> {
    engine.erase_table(id)?;
    let mut batch = WriteBatch::default();
    batch.delete_cf(engine.cf(keys::CF_META), keys::catalog_dropped_key(id));
    engine.write(batch, false)
}

impl StateMachine for CatalogMachine {
    type Output = CatalogOutcome;

    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Result<CatalogOutcome> {
        let meta = self.engine.cf(keys::CF_META);
        let mut batch = WriteBatch::default();
        // Told to the listener once the batch is written.
        let mut changed: Option<(CatalogOutcome, String, Option<u64>)> = None;
        let outcome = if data.is_empty() {
            CatalogOutcome::Invalid
        } else {
            match <CatalogCommand as prost::Message>::decode(data) {
                Err(e) => {
                    return Err(Error::corrupt(
                        CATALOG_ID,
                        format!("catalog command at {index}: {e}"),
                    ));
                }
                Ok(cmd) => {
                    let key = keys::catalog_table_key(cmd.name.as_bytes());
                    let existing = match self.engine.get(keys::CF_META, &key)? {
                        Some(v) => Some(decode_entry(cmd.name.as_bytes(), &v)?.0),
                        None => None,
                    };
                    match (cmd.op, existing) {
                        (CatalogCommand::CREATE, Some(_)) => CatalogOutcome::AlreadyExists,
                        (CatalogCommand::CREATE, None) => {
                            let id = index;
                            batch.put_cf(meta, &key, encode_entry(id, cmd.source_id));
                            raft_storage::bootstrap(&self.engine, &mut batch, id, &self.voters);
                            let source = (cmd.source_id != 0).then_some(cmd.source_id);
                            changed = Some((CatalogOutcome::Created(id), cmd.name.clone(), source));
                            CatalogOutcome::Created(id)
                        }
                        (CatalogCommand::DROP, Some(id)) => {
                            batch.delete_cf(meta, &key);
                            batch.put_cf(meta, keys::catalog_dropped_key(id), []);
                            changed = Some((CatalogOutcome::Dropped(id), cmd.name.clone(), None));
                            CatalogOutcome::Dropped(id)
                        }
                        (CatalogCommand::DROP, None) => CatalogOutcome::NotFound,
                        _ => CatalogOutcome::Invalid,
                    }
                }
            }
        };
        let next = AppliedState {
            index,
            term,
            ..self.state
        };
        batch.put_cf(meta, keys::applied_key(CATALOG_ID), next.encode());
        self.engine.write(batch, false)?;
        self.state = next;
        match changed {
            Some((CatalogOutcome::Created(id), name, source)) => {
                self.listener.created(index, id, &name, source);
            }
            Some((CatalogOutcome::Dropped(id), name, _)) => self.listener.dropped(id, &name),
            _ => {}
        }
        Ok(outcome)
    }

    fn applied_index(&self) -> u64 {
        self.state.index
    }

    /// The catalog keeps its whole log (see `Node::open`), so a leader never needs to
    /// send it as a snapshot; receiving one means a peer is misconfigured.
    fn snapshot_installer(
        &self,
        _snapshot: &raft::eraftpb::Snapshot,
        _raft_state: WriteBatch,
    ) -> Result<crate::snapshot::InstallJob> {
        Err(Error::corrupt(
            CATALOG_ID,
            "a raft snapshot of the catalog, whose log is never compacted",
        ))
    }

    fn reload(&mut self) -> Result<()> {
        Ok(())
    }
}
