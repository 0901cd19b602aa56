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
    /// Table `id` named `name` now exists (its raft state is on disk).
    fn created(&self, id: u64, name: &str);
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
            Some(b) => AppliedState::decode(&b)?,
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

/// All tables in the catalog, as (name, id), sorted by name.
pub fn list(engine: &Engine) -> Result<Vec<(String, u64)>> {
    let prefix = keys::catalog_table_prefix();
    let mut iter = engine.iter(keys::CF_META, prefix.clone(), keys::prefix_end(&prefix));
    iter.seek(&prefix);
    let mut out = Vec::new();
    while iter.valid() {
        if let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let id = keys::decode_u64(v).ok_or_else(|| Error::Corrupt("catalog id".into()))?;
            out.push((name, id));
        }
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
    while iter.valid() {
        if let Some(id) = iter
            .key()
            .and_then(|k| keys::decode_u64(&k[prefix.len()..]))
        {
            out.push(id);
        }
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
        let mut changed: Option<(CatalogOutcome, String)> = None;
        let outcome = if data.is_empty() {
            CatalogOutcome::Invalid
        } else {
            match <CatalogCommand as prost::Message>::decode(data) {
                Err(e) => {
                    tracing::error!(index, "undecodable catalog command: {e}");
                    CatalogOutcome::Invalid
                }
                Ok(cmd) => {
                    let key = keys::catalog_table_key(cmd.name.as_bytes());
                    let existing = self
                        .engine
                        .get(keys::CF_META, &key)?
                        .and_then(|v| keys::decode_u64(&v));
                    match (cmd.op, existing) {
                        (CatalogCommand::CREATE, Some(_)) => CatalogOutcome::AlreadyExists,
                        (CatalogCommand::CREATE, None) => {
                            let id = index;
                            batch.put_cf(meta, &key, id.to_be_bytes());
                            raft_storage::bootstrap(&self.engine, &mut batch, id, &self.voters);
                            changed = Some((CatalogOutcome::Created(id), cmd.name.clone()));
                            CatalogOutcome::Created(id)
                        }
                        (CatalogCommand::DROP, Some(id)) => {
                            batch.delete_cf(meta, &key);
                            batch.put_cf(meta, keys::catalog_dropped_key(id), []);
                            changed = Some((CatalogOutcome::Dropped(id), cmd.name.clone()));
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
            Some((CatalogOutcome::Created(id), name)) => self.listener.created(id, &name),
            Some((CatalogOutcome::Dropped(id), name)) => self.listener.dropped(id, &name),
            _ => {}
        }
        Ok(outcome)
    }

    fn applied_index(&self) -> u64 {
        self.state.index
    }

    /// The catalog keeps its whole log (see `Node::open`), so a leader never needs to
    /// send it as a snapshot; receiving one means a peer is misconfigured.
    fn install_snapshot(
        &mut self,
        _snapshot: &raft::eraftpb::Snapshot,
        _raft_state: WriteBatch,
    ) -> Result<()> {
        Err(Error::Unavailable(
            "catalog snapshots are not supported; the catalog log is never compacted".into(),
        ))
    }
}
