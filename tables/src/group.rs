//! RaftGroup: the task that owns one group's `RawNode` and drives its Ready loop.
//!
//! Everything that changes a group goes through its mailbox; the task is the only owner
//! of the raft state, so there are no locks. Durability is delegated to the shared
//! [`LogWriter`] (asynchronous ready); committed entries are applied by the group's
//! [`StateMachine`] on this task.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::log_writer::LogWriter;
use crate::metrics::GroupMetrics;
use crate::raft_storage::RaftStorage;
use crate::transport::Transport;

/// Applies committed entries of one group.
pub trait StateMachine: Send + 'static {
    /// What a proposer gets back once its entry is applied.
    type Output: Send + 'static;
    /// Applies the committed entry at `index`. An error means the state machine cannot go
    /// on (storage failure): the group stops.
    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Result<Self::Output>;
    /// Index of the last applied entry (where replay starts after a restart).
    fn applied_index(&self) -> u64;
}

/// Timing and retention of a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// This node's raft id.
    pub node_id: u64,
    /// Length of one raft tick (Armada's "rtt").
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries kept in the log before compaction removes older ones.
    pub log_retention_entries: u64,
    /// Requests queued for a group before callers get `Unavailable`.
    pub mailbox_capacity: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            tick: Duration::from_millis(50),
            election_ticks: 20,
            heartbeat_ticks: 1,
            log_retention_entries: 10_000,
            mailbox_capacity: 4096,
        }
    }
}

/// The latest raft status of a group as this node sees it; read without asking the task.
#[derive(Debug, Default)]
pub struct GroupStatus {
    /// Current term.
    pub term: AtomicU64,
    /// Raft id of the leader (0 = unknown).
    pub leader: AtomicU64,
    /// Commit index.
    pub commit: AtomicU64,
    /// Applied index.
    pub applied: AtomicU64,
    /// First index still in the log.
    pub first_index: AtomicU64,
    /// Last index in the log.
    pub last_index: AtomicU64,
}

enum Request<O> {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<O>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64>>,
    },
    Step(Box<Message>),
}

/// Handle to a running group; cheap to clone.
pub struct GroupHandle<O> {
    id: u64,
    tx: mpsc::Sender<Request<O>>,
    status: Arc<GroupStatus>,
    applied: watch::Receiver<u64>,
    stopped: CancellationToken,
}

impl<O> Clone for GroupHandle<O> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            tx: self.tx.clone(),
            status: self.status.clone(),
            applied: self.applied.clone(),
            stopped: self.stopped.clone(),
        }
    }
}

impl<O> std::fmt::Debug for GroupHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle").field("id", &self.id).finish()
    }
}

impl<O: Send + 'static> GroupHandle<O> {
    /// The group id (table id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Raft status as last published by the group task.
    pub fn status(&self) -> &GroupStatus {
        &self.status
    }

    fn send(&self, req: Request<O>) -> Result<()> {
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Unavailable("busy".into()),
            mpsc::error::TrySendError::Closed(_) => Error::Unavailable("shard closed".into()),
        })
    }

    /// Proposes `data` and waits until it is durable on a quorum and applied here.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Propose { data, reply })?;
        rx.await
            .map_err(|_| Error::Unavailable("shard closed".into()))?
    }

    /// Linearizable read barrier: returns once this replica has applied everything
    /// committed before the call (raft ReadIndex).
    pub async fn read_barrier(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::ReadIndex { reply })?;
        // Raft may drop a ReadIndex (e.g. leadership moves while it is in flight) without
        // an answer; never wait for it forever.
        let index = tokio::time::timeout(READ_INDEX_TIMEOUT, rx)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Unavailable("shard closed".into()))??;
        self.wait_applied(index).await
    }

    /// Waits until this replica has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|a| *a >= index)
            .await
            .map_err(|_| Error::Unavailable("shard closed".into()))?;
        Ok(())
    }

    /// Feeds a raft message from a peer into the group.
    pub fn step(&self, msg: Message) -> Result<()> {
        self.send(Request::Step(Box::new(msg)))
    }

    /// Resolves once the group task has exited (stopped, or failed).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }
}

/// News from outside the mailbox (the log writer), never refused for backpressure.
enum Event {
    Persisted { number: u64, result: Result<()> },
}

/// Everything needed to start a group task.
pub struct GroupParts<M> {
    /// Group id (table id).
    pub id: u64,
    /// Label for logs and metrics (the table name).
    pub name: String,
    /// Timing and retention.
    pub config: GroupConfig,
    /// The group's raft storage, loaded.
    pub storage: RaftStorage,
    /// The state machine, loaded at its applied index.
    pub machine: M,
    /// The node's log writer.
    pub log_writer: LogWriter,
    /// Where messages to peers go.
    pub transport: Arc<dyn Transport>,
    /// Per-table raft metrics.
    pub metrics: GroupMetrics,
    /// Stops the task.
    pub cancel: CancellationToken,
}

/// Starts the group task on `runtime` and returns its handle.
pub fn spawn<M: StateMachine>(
    parts: GroupParts<M>,
    runtime: &tokio::runtime::Handle,
) -> Result<GroupHandle<M::Output>> {
    let GroupParts {
        id,
        name,
        config,
        storage,
        machine,
        log_writer,
        transport,
        metrics,
        cancel,
    } = parts;
    let applied = machine.applied_index();
    let mut storage = storage;
    storage.ensure_committed(applied);
    let raft_config = raft::Config {
        id: config.node_id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate()?;
    let single_voter = {
        let cs = raft::Storage::initial_state(&storage)?.conf_state;
        cs.voters == [config.node_id]
    };
    let mut raw_node = RawNode::new(&raft_config, storage, &crate::raft_log::logger(id))?;
    if single_voter {
        // Nobody else can win: skip the election timeout so a fresh node or table takes
        // writes at once.
        raw_node.campaign()?;
    }
    let (tx, mailbox) = mpsc::channel(config.mailbox_capacity);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (applied_tx, applied_rx) = watch::channel(applied);
    let status = Arc::new(GroupStatus::default());
    status.applied.store(applied, Ordering::Relaxed);
    let stopped = CancellationToken::new();
    let handle = GroupHandle {
        id,
        tx,
        status: status.clone(),
        applied: applied_rx,
        stopped: stopped.clone(),
    };
    let group = RaftGroup {
        id,
        config,
        raw_node,
        machine,
        mailbox,
        events,
        events_tx,
        log_writer,
        transport,
        metrics,
        proposals: BTreeMap::new(),
        waiting: VecDeque::new(),
        reads: HashMap::new(),
        reads_before_commit: VecDeque::new(),
        next_read: 0,
        in_flight: VecDeque::new(),
        status,
        applied_tx,
        durable_index: 0,
    };
    let span = tracing::info_span!("group", table = %name, id);
    runtime.spawn(
        async move {
            group.run(cancel).await;
            stopped.cancel();
        }
        .instrument(span),
    );
    Ok(handle)
}

type Reply<O> = oneshot::Sender<Result<O>>;

struct RaftGroup<M: StateMachine> {
    id: u64,
    config: GroupConfig,
    raw_node: RawNode<RaftStorage>,
    machine: M,
    mailbox: mpsc::Receiver<Request<M::Output>>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    log_writer: LogWriter,
    transport: Arc<dyn Transport>,
    metrics: GroupMetrics,
    /// Proposals in the log, by index, with the term they were proposed in.
    proposals: BTreeMap<u64, (u64, Reply<M::Output>)>,
    /// Requests that arrived while no leader was known.
    waiting: VecDeque<Request<M::Output>>,
    /// ReadIndex requests handed to raft, by context id.
    reads: HashMap<u64, oneshot::Sender<Result<u64>>>,
    /// ReadIndex requests held until this leader has committed an entry in its term:
    /// raft-rs silently drops earlier ones.
    reads_before_commit: VecDeque<oneshot::Sender<Result<u64>>>,
    next_read: u64,
    /// Readies handed to the log writer: (number, last entry index, messages to send
    /// once durable).
    in_flight: VecDeque<(u64, u64, Vec<Message>)>,
    status: Arc<GroupStatus>,
    applied_tx: watch::Sender<u64>,
    /// Highest log index known durable.
    durable_index: u64,
}

/// Longest wait for raft to answer a ReadIndex.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests taken from the mailbox before handling a Ready: bounds latency while
/// still batching proposals into one log write.
const MAX_REQUESTS_PER_READY: usize = 1024;
/// Requests held while no leader is known, before callers get `Unavailable`.
const MAX_WAITING: usize = 4096;

impl<M: StateMachine> RaftGroup<M> {
    async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.durable_index = self.raw_node.store().last_log_index();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(event) = self.events.recv() => {
                    if let Err(e) = self.on_event(event) {
                        tracing::error!("group stopped: {e}");
                        break;
                    }
                }
                req = self.mailbox.recv() => {
                    let Some(req) = req else { break };
                    self.on_request(req);
                    for _ in 0..MAX_REQUESTS_PER_READY {
                        match self.mailbox.try_recv() {
                            Ok(req) => self.on_request(req),
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.raw_node.tick();
                }
            }
            if let Err(e) = self.on_ready() {
                tracing::error!("group stopped: {e}");
                break;
            }
        }
        self.fail_all(|| Error::ShuttingDown);
        // Let the log writer finish what it has for us before the task (and with it the
        // storage) goes away, so a dropped table's ranges are not written after erasure.
        while !self.in_flight.is_empty() {
            match self.events.recv().await {
                Some(Event::Persisted { .. }) => {
                    self.in_flight.pop_front();
                }
                None => break,
            }
        }
    }

    fn leader(&self) -> u64 {
        self.raw_node.raft.leader_id
    }

    fn on_request(&mut self, req: Request<M::Output>) {
        match req {
            Request::Step(msg) => {
                if let Err(e) = self.raw_node.step(*msg) {
                    tracing::debug!("step: {e}");
                }
            }
            Request::Propose { .. } | Request::ReadIndex { .. } if self.leader() == 0 => {
                if self.waiting.len() >= MAX_WAITING {
                    reject(req, Error::Unavailable("no leader".into()));
                } else {
                    self.waiting.push_back(req);
                }
            }
            Request::Propose { .. } | Request::ReadIndex { .. }
                if self.leader() != self.config.node_id =>
            {
                // Forwarding to the leader node arrives with the node-to-node transport.
                reject(req, Error::Unavailable("not leader".into()));
            }
            Request::Propose { data, reply } => {
                self.metrics.proposals.inc();
                match self.raw_node.propose(Vec::new(), data) {
                    Ok(()) => {
                        let index = self.raw_node.raft.raft_log.last_index();
                        let term = self.raw_node.raft.term;
                        self.proposals.insert(index, (term, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::from(e)));
                    }
                }
            }
            Request::ReadIndex { reply } => {
                self.reads_before_commit.push_back(reply);
                self.release_reads();
            }
        }
    }

    /// Hands held ReadIndex requests to raft once it can answer them.
    fn release_reads(&mut self) {
        let raft = &self.raw_node.raft;
        if self.reads_before_commit.is_empty()
            || raft.state != StateRole::Leader
            || !raft.commit_to_current_term()
        {
            return;
        }
        while let Some(reply) = self.reads_before_commit.pop_front() {
            self.next_read += 1;
            self.reads.insert(self.next_read, reply);
            self.raw_node
                .read_index(self.next_read.to_be_bytes().to_vec());
        }
    }

    fn on_event(&mut self, event: Event) -> Result<()> {
        let Event::Persisted { number, result } = event;
        result?;
        let Some((n, last, msgs)) = self.in_flight.pop_front() else {
            return Err(Error::Corrupt("persist ack without request".into()));
        };
        debug_assert_eq!(n, number);
        self.durable_index = self.durable_index.max(last);
        self.transport.send(self.id, msgs);
        self.raw_node.on_persist_ready(number);
        Ok(())
    }

    fn on_ready(&mut self) -> Result<()> {
        loop {
            self.release_reads();
            if !self.raw_node.has_ready() {
                break;
            }
            let mut rd = self.raw_node.ready();
            self.transport.send(self.id, rd.take_messages());
            if !rd.snapshot().is_empty() {
                return Err(Error::Unavailable(
                    "raft snapshot install is not supported yet".into(),
                ));
            }
            let role_change = rd.ss().map(|ss| (ss.leader_id, ss.raft_state));
            for rs in rd.take_read_states() {
                let id = keys_u64(&rs.request_ctx);
                if let Some(reply) = self.reads.remove(&id) {
                    let _ = reply.send(Ok(rs.index));
                }
            }
            self.apply(rd.take_committed_entries())?;
            let entries = rd.take_entries();
            let last = entries.last().map(|e| e.index);
            let mut write = self.raw_node.mut_store().stage(&entries, rd.hs())?;
            write.sync = rd.must_sync();
            let persisted_msgs = rd.take_persisted_messages();
            let number = rd.number();
            self.raw_node.advance_append_async(rd);
            if write.is_empty() && self.in_flight.is_empty() {
                self.transport.send(self.id, persisted_msgs);
                self.raw_node.on_persist_ready(number);
            } else {
                let durable = last.unwrap_or(self.durable_index);
                self.in_flight.push_back((number, durable, persisted_msgs));
                let tx = self.events_tx.clone();
                self.log_writer.submit(
                    write,
                    Box::new(move |result| {
                        let _ = tx.send(Event::Persisted { number, result });
                    }),
                );
            }
            if let Some((leader, role)) = role_change {
                self.on_role_change(leader, role);
            }
        }
        self.publish_status();
        Ok(())
    }

    fn on_role_change(&mut self, leader: u64, role: StateRole) {
        if role != StateRole::Leader {
            // Our in-log proposals may still commit under the new leader, but we can no
            // longer tell the proposer when: their outcome is unknown to us.
            for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
                let _ = reply.send(Err(Error::ProposalDropped));
            }
            let held = std::mem::take(&mut self.reads_before_commit);
            for reply in self.reads.drain().map(|(_, r)| r).chain(held) {
                let _ = reply.send(Err(Error::Unavailable("leadership changed".into())));
            }
        }
        if leader != 0 {
            let waiting = std::mem::take(&mut self.waiting);
            for req in waiting {
                self.on_request(req);
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        for entry in entries {
            let data: &[u8] = match entry.get_entry_type() {
                EntryType::EntryNormal => &entry.data,
                // Membership is static (set when the table is created); a conf change
                // entry only advances the applied index.
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => &[],
            };
            let output = self.machine.apply(entry.index, entry.term, data);
            let fatal = output.as_ref().err().map(|e| e.to_string());
            if fatal.is_none() {
                // Publish before answering the proposer: whoever it tells about the write
                // must see it applied in Cluster/Status and in wait_applied.
                self.status.applied.store(entry.index, Ordering::Relaxed);
                self.applied_tx.send_replace(entry.index);
            }
            let mut output = Some(output);
            while let Some(first) = self.proposals.first_entry() {
                if *first.key() > entry.index {
                    break;
                }
                let (index, (term, reply)) = first.remove_entry();
                let result = if index == entry.index && term == entry.term {
                    output.take().unwrap_or(Err(Error::ProposalDropped))
                } else {
                    Err(Error::ProposalDropped)
                };
                let _ = reply.send(result);
            }
            if let Some(e) = fatal {
                return Err(Error::Unavailable(format!("apply failed: {e}")));
            }
        }
        self.raw_node.advance_apply_to(last);
        self.maybe_compact(last)
    }

    fn maybe_compact(&mut self, applied: u64) -> Result<()> {
        let store = self.raw_node.mut_store();
        store.trim_tail(applied.min(self.durable_index));
        let retain = self.config.log_retention_entries;
        let first = store.first_log_index();
        // Compact in steps of a tenth of the retention, not on every entry.
        if applied > first + retain + retain / 10 {
            store.compact(applied - retain)?;
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw_node.raft;
        let s = &self.status;
        s.term.store(raft.term, Ordering::Relaxed);
        s.leader.store(raft.leader_id, Ordering::Relaxed);
        s.commit.store(raft.raft_log.committed, Ordering::Relaxed);
        s.applied.store(raft.raft_log.applied, Ordering::Relaxed);
        s.first_index
            .store(self.raw_node.store().first_log_index(), Ordering::Relaxed);
        s.last_index
            .store(self.raw_node.store().last_log_index(), Ordering::Relaxed);
        self.metrics.publish(s);
    }

    fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(err()));
        }
        let held = std::mem::take(&mut self.reads_before_commit);
        for reply in self.reads.drain().map(|(_, r)| r).chain(held) {
            let _ = reply.send(Err(err()));
        }
        for req in std::mem::take(&mut self.waiting) {
            reject(req, err());
        }
        self.mailbox.close();
        while let Ok(req) = self.mailbox.try_recv() {
            reject(req, err());
        }
    }
}

fn reject<O>(req: Request<O>, err: Error) {
    match req {
        Request::Propose { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        Request::ReadIndex { reply } => {
            let _ = reply.send(Err(err));
        }
        Request::Step(_) => {}
    }
}

fn keys_u64(ctx: &[u8]) -> u64 {
    crate::keys::decode_u64(ctx).unwrap_or(0)
}
