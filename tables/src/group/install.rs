//! Replacing a group's state off its task: raft snapshots received from the leader, and
//! load markers (see [`crate::import`]) whose state comes from outside the log. Either
//! runs as a blocking job while the task keeps ticking and stepping messages; no Ready is
//! taken until the job is done.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::eraftpb::{Entry, Message};
use raft::{Ready, StateRole};
use rocksdb::WriteBatch;

use super::{Event, RaftGroup, StateMachine};
use crate::error::{Error, Result};
use crate::import::{Fetch, LoadMarker, LoadPlan, LoadedSnapshot};
use crate::snapshot::InstallJob;

/// Between attempts to get a paused load's state (a fetch, a snapshot request).
const LOAD_RETRY: Duration = Duration::from_secs(1);
/// After this long without the state a load marker names, a group leader loads a newer
/// snapshot instead (see [`crate::import`]).
const LOAD_LAST_RESORT: Duration = Duration::from_secs(60);

/// An install job in flight.
pub(super) enum Installing<O> {
    /// A raft snapshot at `index` (`term`); its Ready waits for the job.
    Snapshot {
        number: u64,
        index: u64,
        term: u64,
        messages: Vec<Message>,
    },
    /// The state of the load marker at the head of the paused entries; its proposer is
    /// told `output`.
    Load { output: O },
}

/// Committed entries held back while a load marker waits for its state.
pub(super) struct Paused {
    /// The held entries, the marker first.
    pub(super) entries: VecDeque<Entry>,
    marker: LoadMarker,
    /// Tick at which applying paused, and of the last attempt.
    since: u64,
    last_try: u64,
    /// A fetch is running.
    fetching: bool,
}

impl<M: StateMachine> RaftGroup<M> {
    fn ticks_for(&self, d: Duration) -> u64 {
        (d.as_millis() / self.config.tick.as_millis().max(1)).max(1) as u64
    }

    fn spawn_install(&self, job: InstallJob) {
        let tx = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = job();
            let _ = tx.send(Event::Installed { result });
        });
    }

    /// Starts installing the snapshot of a Ready (nothing else of this group is in
    /// flight): its raft state, entries and hard state go into the install job's first,
    /// synced batch; raft learns the snapshot is persisted and applied when it is done.
    pub(super) fn start_snapshot_install(&mut self, mut rd: Ready) -> Result<()> {
        let snapshot = rd.snapshot().clone();
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        // Whatever a load was waiting for is superseded: the snapshot covers every
        // committed entry (raft only takes snapshots beyond its commit index).
        if self.paused.take().is_some() {
            self.load_generation += 1;
        }
        tracing::info!(index, term, "installing snapshot");
        let mut batch = WriteBatch::default();
        let store = self.raw_node.mut_store();
        store.stage_snapshot(&mut batch, snapshot.get_metadata())?;
        let entries = rd.take_entries();
        let write = store.stage(&entries, rd.hs())?;
        write.add_to(store.engine(), &mut batch);
        let job = self.machine.snapshot_installer(&snapshot, batch)?;
        let messages = rd.take_persisted_messages();
        let number = rd.number();
        self.raw_node.advance_append_async(rd);
        self.installing = Some(Installing::Snapshot {
            number,
            index,
            term,
            messages,
        });
        self.spawn_install(job);
        Ok(())
    }

    /// An install job finished: the state is replaced; raft and waiters learn it. A
    /// failed job is a storage failure and stops the group.
    pub(super) fn on_installed(&mut self, result: Result<()>) -> Result<()> {
        result?;
        self.machine.reload()?;
        match self.installing.take() {
            Some(Installing::Snapshot {
                number,
                index,
                term,
                messages,
            }) => {
                self.durable_index = self.raw_node.store().last_log_index();
                self.send(messages);
                self.raw_node.on_persist_ready(number);
                self.raw_node.advance_apply_to(index);
                self.status.applied.store(index, Ordering::Relaxed);
                self.status
                    .snapshots_installed
                    .fetch_add(1, Ordering::Relaxed);
                self.applied_tx.send_replace(index);
                self.proposals.snapshot_installed(index, term);
                Ok(())
            }
            Some(Installing::Load { output }) => {
                let Some(paused) = self.paused.take() else {
                    return Err(Error::corrupt(self.id, "a load finished without its entry"));
                };
                self.machine.load_installed(&paused.marker);
                let mut held = paused.entries;
                let Some(entry) = held.pop_front() else {
                    return Err(Error::corrupt(self.id, "a load finished without its entry"));
                };
                tracing::info!(index = entry.index, "snapshot loaded; applying resumes");
                self.finish_entry(&entry, Ok(output))?;
                self.raw_node.advance_apply_to(entry.index);
                self.apply(held.into())
            }
            None => Err(Error::corrupt(
                self.id,
                "an install finished that never started",
            )),
        }
    }

    /// Stops applying at the load marker heading `entries` and starts getting its state.
    pub(super) fn pause(&mut self, entries: VecDeque<Entry>, plan: LoadPlan) {
        tracing::info!(
            leader_index = plan.marker.leader_index,
            holder = plan.marker.holder,
            "applying paused: loading a snapshot from outside the log"
        );
        self.paused = Some(Paused {
            entries,
            marker: plan.marker,
            since: self.ticks,
            last_try: self.ticks,
            fetching: false,
        });
        self.load_generation += 1;
        match plan.fetch {
            Some(fetch) => self.spawn_fetch(fetch),
            None => self.seek_from_group(),
        }
    }

    /// Runs a load's fetch off the group task; its result comes back as an event.
    fn spawn_fetch(&mut self, fetch: Fetch) {
        let Some(paused) = &mut self.paused else {
            return;
        };
        paused.fetching = true;
        let generation = self.load_generation;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let result = fetch.await;
            let _ = tx.send(Event::Loaded { generation, result });
        });
    }

    /// The state a replica cannot load itself comes from its group: a follower asks the
    /// leader for a raft snapshot (sent once the leader has applied the marker); a leader
    /// hands leadership to the node holding the download.
    fn seek_from_group(&mut self) {
        let Some(paused) = &self.paused else {
            return;
        };
        let holder = paused.marker.holder;
        let me = self.config.node_id;
        if self.raw_node.raft.state == StateRole::Leader {
            if holder != me && self.raw_node.raft.prs().get(holder).is_some() {
                tracing::info!(
                    to = holder,
                    "handing leadership to the node holding the load"
                );
                self.raw_node.transfer_leader(holder);
            }
        } else {
            self.request_repair();
        }
    }

    pub(super) fn on_loaded(
        &mut self,
        generation: u64,
        result: Result<LoadedSnapshot>,
    ) -> Result<()> {
        if generation != self.load_generation {
            return Ok(()); // superseded (a raft snapshot replaced the state meanwhile)
        }
        let Some(paused) = &mut self.paused else {
            return Ok(());
        };
        paused.fetching = false;
        match result {
            Ok(loaded) => {
                let Some(entry) = paused.entries.front() else {
                    return Ok(());
                };
                tracing::info!(
                    leader_index = loaded.leader_index,
                    keys = loaded.staged.keys,
                    "snapshot fetched; swapping it in"
                );
                let (job, output) =
                    self.machine
                        .load_installer(entry.index, entry.term, &paused.marker, loaded)?;
                self.installing = Some(Installing::Load { output });
                self.spawn_install(job);
            }
            Err(Error::LoadUnavailable { .. }) => self.seek_from_group(),
            Err(e) => tracing::warn!("loading a snapshot failed, retrying: {e}"),
        }
        Ok(())
    }

    /// While paused: try again now and then; after a long stall, a leader takes the last
    /// resort.
    pub(super) fn on_paused_tick(&mut self) {
        let retry = self.ticks_for(LOAD_RETRY);
        let last_resort = self.ticks_for(LOAD_LAST_RESORT);
        let leading = self.raw_node.raft.state == StateRole::Leader;
        let Some(paused) = &mut self.paused else {
            return;
        };
        if paused.fetching || self.installing.is_some() || self.ticks - paused.last_try < retry {
            return;
        }
        paused.last_try = self.ticks;
        let exact = !(leading && self.ticks - paused.since >= last_resort);
        let plan = paused
            .entries
            .front()
            .and_then(|entry| self.machine.external_load(entry.index, &entry.data, exact));
        match plan.and_then(|p| p.fetch) {
            Some(fetch) => {
                if !exact {
                    tracing::warn!(
                        "the snapshot a load marker names is nowhere to be had; loading a newer one"
                    );
                }
                self.spawn_fetch(fetch);
            }
            None => self.seek_from_group(),
        }
    }
}
