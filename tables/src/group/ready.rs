//! The Ready loop: send messages, persist entries through the log writer (asynchronous
//! ready), apply what committed, compact the log.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use raft::eraftpb::{Entry, EntryType, Message};
use raft::{Ready, StateRole};

use super::{Event, RaftGroup, StateMachine};
use crate::error::{Error, Result};

/// A Ready whose entries and hard state are on their way to disk. Readies finish in
/// order: one with nothing to write still waits for the writes before it.
pub(super) struct InFlight {
    /// The Ready's number (raft-rs `on_persist_ready`).
    number: u64,
    /// Its last entry's index, or the durable index before it when it has none.
    last_index: u64,
    /// Messages raft may send only once the Ready is durable.
    messages: Vec<Message>,
    /// Whether it was handed to the log writer; one that was not (nothing to write)
    /// finishes with the submitted Ready before it, without a log-writer round.
    pub(super) submitted: bool,
}

impl<M: StateMachine> RaftGroup<M> {
    pub(super) fn on_ready(&mut self) -> Result<()> {
        loop {
            if self.installing.is_some() {
                // Nothing moves until the install job is done: its Ready (or the load
                // entry) is only half handled.
                break;
            }
            self.propose_own();
            self.reads.release(&mut self.raw_node, self.ticks);
            if !self.raw_node.has_ready() {
                break;
            }
            if self.raw_node.raft.raft_log.unstable_snapshot().is_some()
                && !self.in_flight.is_empty()
            {
                // Installing replaces the log: first let earlier log writes land, so none
                // of them is written after (and on top of) the snapshot.
                break;
            }
            let mut rd = self.raw_node.ready();
            self.send(rd.take_messages());
            let role_change = rd.ss().map(|ss| ss.leader_id);
            self.reads.answer(&mut rd);
            if !rd.snapshot().is_empty() {
                self.start_snapshot_install(rd)?;
            } else {
                self.apply(rd.take_committed_entries())?;
                self.persist(rd)?;
            }
            if let Some(leader) = role_change {
                self.on_leader_change(leader);
            }
        }
        self.publish_status();
        Ok(())
    }

    /// Hands a Ready's entries and hard state to the log writer (asynchronous ready).
    fn persist(&mut self, mut rd: Ready) -> Result<()> {
        let entries = rd.take_entries();
        let last = entries.last().map(|e| e.index);
        let mut write = self.raw_node.mut_store().stage(&entries, rd.hs())?;
        write.sync = rd.must_sync();
        let persisted_msgs = rd.take_persisted_messages();
        let number = rd.number();
        self.raw_node.advance_append_async(rd);
        let in_flight = InFlight {
            number,
            last_index: last.unwrap_or(self.durable_index),
            messages: persisted_msgs,
            submitted: !write.is_empty(),
        };
        if !in_flight.submitted {
            if self.in_flight.is_empty() {
                self.finish_persist(in_flight);
            } else {
                self.in_flight.push_back(in_flight);
            }
        } else {
            self.in_flight.push_back(in_flight);
            let tx = self.events_tx.clone();
            self.log_writer.submit(
                write,
                Box::new(move |result| {
                    let _ = tx.send(Event::Persisted { number, result });
                }),
            );
        }
        Ok(())
    }

    /// The log writer made Ready `number` durable: finish it, and the unsubmitted Readies
    /// queued right behind it.
    pub(super) fn on_persisted(&mut self, number: u64) -> Result<()> {
        let Some(done) = self.in_flight.pop_front() else {
            return Err(Error::corrupt(self.id, "a persist ack without a request"));
        };
        debug_assert!(done.submitted && done.number == number);
        self.finish_persist(done);
        while self.in_flight.front().is_some_and(|r| !r.submitted) {
            if let Some(next) = self.in_flight.pop_front() {
                self.finish_persist(next);
            }
        }
        Ok(())
    }

    fn finish_persist(&mut self, done: InFlight) {
        self.durable_index = self.durable_index.max(done.last_index);
        self.send(done.messages);
        self.raw_node.on_persist_ready(done.number);
    }

    /// Applies committed entries in order, pausing at a load marker (see `install`).
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if let Some(paused) = &mut self.paused {
            paused.entries.extend(entries);
            return Ok(());
        }
        if entries.is_empty() {
            return Ok(());
        }
        // The commit index first: whoever sees an entry applied must not see an older
        // commit index next to it.
        self.status
            .commit
            .store(self.raw_node.raft.raft_log.committed, Ordering::Relaxed);
        let mut last_applied = None;
        let mut entries = VecDeque::from(entries);
        while let Some(entry) = entries.pop_front() {
            let data: &[u8] = match entry.get_entry_type() {
                EntryType::EntryNormal => &entry.data,
                // Membership is static (set when the table is created); a conf change
                // entry only advances the applied index.
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => &[],
            };
            if let Some(plan) = self.machine.external_load(entry.index, data, true) {
                entries.push_front(entry);
                self.pause(entries, plan);
                break;
            }
            let output = self.machine.apply(entry.index, entry.term, data);
            self.finish_entry(&entry, output)?;
            last_applied = Some(entry.index);
        }
        if let Some(last) = last_applied {
            self.raw_node.advance_apply_to(last);
            self.maybe_compact(last)?;
        }
        if self.machine.take_repair_request() {
            self.request_repair();
        }
        Ok(())
    }

    /// Publishes an applied entry and answers whoever proposed it. A failed apply stops
    /// the group with that error; the entry is committed but not applied here, so its
    /// proposer learns that the outcome is unknown when the group fails everything.
    pub(super) fn finish_entry(&mut self, entry: &Entry, output: Result<M::Output>) -> Result<()> {
        let output = output?;
        // Publish before answering the proposer: whoever it tells about the write must
        // see it applied in Cluster/Status and in wait_applied.
        self.status.applied.store(entry.index, Ordering::Relaxed);
        self.applied_tx.send_replace(entry.index);
        self.proposals.applied(entry.index, &entry.context, output);
        Ok(())
    }

    /// A follower replica whose state fell behind its group's asks the leader for a
    /// raft snapshot (raft-rs sends one once the leader has applied this far).
    pub(super) fn request_repair(&mut self) {
        if self.raw_node.raft.state == StateRole::Leader || self.leader() == 0 {
            return;
        }
        match self.raw_node.request_snapshot() {
            Ok(()) => tracing::info!("asked the group's leader for a raft snapshot"),
            Err(e) => tracing::debug!("requesting a snapshot: {e}"),
        }
    }

    fn maybe_compact(&mut self, applied: u64) -> Result<()> {
        let store = self.raw_node.mut_store();
        store.trim_tail(applied.min(self.durable_index));
        let first = store.first_log_index();
        let retain = self.config.log_retention_entries;
        // Compact in steps of a tenth of the retention, not on every entry.
        let mut target = 0;
        if applied > first.saturating_add(retain).saturating_add(retain / 10) {
            target = applied - retain;
        }
        let retain_bytes = self.config.log_retention_bytes;
        let bytes = store.log_bytes();
        if bytes > retain_bytes.saturating_add(retain_bytes / 10) {
            let held = store.last_log_index().saturating_sub(first) + 1;
            let average = (bytes / held).max(1);
            target = target.max(applied.saturating_sub(retain_bytes / average));
        }
        if target >= first {
            store.compact(target)?;
            if self.raw_node.raft.state == StateRole::Leader
                && let Some(data) = self.machine.compacted(target)
            {
                self.own_proposals.push(data);
            }
        }
        Ok(())
    }

    /// Proposes the group's own entries, while it still leads. Nobody waits for them; one
    /// that is lost is followed by the next compaction's.
    fn propose_own(&mut self) {
        for data in std::mem::take(&mut self.own_proposals) {
            if self.raw_node.raft.state != StateRole::Leader {
                break;
            }
            if let Err(e) = self.raw_node.propose(Vec::new(), data) {
                tracing::debug!("proposing the group's own entry: {e}");
            }
        }
    }
}
