//! RaftGroup: the task that owns one group's `RawNode` and drives its Ready loop.
//!
//! Everything that changes a group goes through its mailbox; the task is the only owner
//! of the raft state, so there are no locks. Durability is delegated to the shared
//! [`LogWriter`] (asynchronous ready); committed entries are applied by the group's
//! [`StateMachine`] on this task.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, Ready, SnapshotStatus, StateRole};
use rocksdb::WriteBatch;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::import::{Fetch, LoadedSnapshot};
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
    /// Replaces the whole state with a raft snapshot received from the leader. The
    /// group's new raft state is in `raft_state`; it must become durable together with
    /// whatever lets a crash mid-install be finished (see [`crate::snapshot`]).
    fn install_snapshot(&mut self, snapshot: &Snapshot, raft_state: WriteBatch) -> Result<()>;
    /// If the entry `data` loads state from outside the log (see [`crate::import`]), the
    /// fetch to run first. The group stops applying until the fetch succeeds, then hands
    /// its result to [`StateMachine::apply_loaded`]; a failed fetch is asked for again.
    fn external_load(&self, _data: &[u8]) -> Option<Fetch> {
        None
    }
    /// An entry to propose once this replica, as the group's leader, has compacted its
    /// log through `index` (tables: the GC command follower clusters learn the horizon
    /// from, WIRE.md §5.8-5).
    fn compacted(&self, _index: u64) -> Option<Vec<u8>> {
        None
    }
    /// Applies the entry at `index` by swapping in what its fetch produced.
    fn apply_loaded(
        &mut self,
        index: u64,
        _term: u64,
        _loaded: LoadedSnapshot,
    ) -> Result<Self::Output> {
        Err(Error::Corrupt(format!(
            "entry {index} loads state this group cannot take"
        )))
    }
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
    /// Applied entries kept in the log before compaction removes older ones. A replica
    /// that falls further behind catches up by snapshot.
    pub log_retention_entries: u64,
    /// Approximate bytes of log kept, the other bound on retention (whichever is hit first).
    pub log_retention_bytes: u64,
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
            log_retention_bytes: 64 << 20,
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
    /// Raft snapshots this replica installed since it started.
    pub snapshots_installed: AtomicU64,
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
    /// The transport could not reach `peer`.
    Unreachable {
        peer: u64,
    },
    /// A snapshot stream to `peer` finished (`ok`) or failed.
    SnapshotSent {
        peer: u64,
        ok: bool,
    },
    /// Start an election now instead of after the election timeout.
    Campaign,
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

    /// Tells raft that messages to `peer` could not be delivered.
    pub fn report_unreachable(&self, peer: u64) -> Result<()> {
        self.send(Request::Unreachable { peer })
    }

    /// Starts an election at once: the node that created a table leads it right away
    /// instead of every replica waiting out an election timeout.
    pub fn campaign(&self) -> Result<()> {
        self.send(Request::Campaign)
    }

    /// Tells raft how sending a snapshot to `peer` ended.
    pub fn report_snapshot(&self, peer: u64, ok: bool) -> Result<()> {
        self.send(Request::SnapshotSent { peer, ok })
    }

    /// Resolves once the group task has exited (stopped, or failed).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// The applied index, watched.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// News from outside the mailbox (the log writer, load fetches), never refused for
/// backpressure.
enum Event {
    Persisted {
        number: u64,
        result: Result<()>,
    },
    /// A load fetch finished; `generation` tells a current fetch from a superseded one.
    Loaded {
        generation: u64,
        result: Result<LoadedSnapshot>,
    },
    /// Time to ask again for a load whose fetch failed.
    RetryLoad {
        generation: u64,
    },
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
        proposals: HashMap::new(),
        proposed_at: BTreeMap::new(),
        next_proposal: 0,
        own_proposals: Vec::new(),
        waiting: VecDeque::new(),
        reads: HashMap::new(),
        unissued_reads: VecDeque::new(),
        next_read: 0,
        ticks: 0,
        in_flight: VecDeque::new(),
        status,
        applied_tx,
        durable_index: 0,
        paused: None,
        load_generation: 0,
    };
    // No parent: a table's group is often spawned while the catalog applies its create.
    let span = tracing::info_span!(parent: None, "group", table = %name, id);
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

/// A value unique to this process, in every proposal's context: a restarted node must not
/// mistake an entry proposed by its previous incarnation (replayed from the log) for one
/// of its own current proposals.
static INCARNATION: LazyLock<u64> = LazyLock::new(|| {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
});

/// Who proposed an entry, carried in the entry's context. The replica that proposed it
/// (leader or not: followers forward proposals to the leader inside raft) answers its
/// caller when it applies the entry, with its own state machine's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProposalId {
    node: u64,
    incarnation: u64,
    seq: u64,
}

impl ProposalId {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    fn decode(ctx: &[u8]) -> Option<Self> {
        if ctx.len() != 24 {
            return None;
        }
        Some(Self {
            node: crate::keys::decode_u64(&ctx[..8])?,
            incarnation: crate::keys::decode_u64(&ctx[8..16])?,
            seq: crate::keys::decode_u64(&ctx[16..])?,
        })
    }
}

/// A linearizable read waiting for raft's read index.
struct PendingRead {
    reply: oneshot::Sender<Result<u64>>,
    /// Tick at which it was last handed to raft (`None`: not yet).
    issued_at: Option<u64>,
}

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
    /// Proposals made on this replica and not yet applied, by sequence number, with the
    /// leader they were forwarded to (0: proposed as leader).
    proposals: HashMap<u64, (u64, Reply<M::Output>)>,
    /// Index and term of proposals appended while this replica led, by index: if another
    /// entry is applied there, the proposal was overwritten and its caller is told so.
    proposed_at: BTreeMap<u64, (u64, u64)>,
    next_proposal: u64,
    /// Entries the group proposes for itself (a compaction's GC command). They wait for
    /// the next Ready loop: raft-rs forbids proposing while a Ready is being handled (the
    /// entry would land in the unstable log between `ready()` and its advance).
    own_proposals: Vec<Vec<u8>>,
    /// Proposals that arrived while no leader was known.
    waiting: VecDeque<Request<M::Output>>,
    /// Linearizable reads, by context id.
    reads: HashMap<u64, PendingRead>,
    /// Reads to hand to raft as soon as it can take them (in arrival order).
    unissued_reads: VecDeque<u64>,
    next_read: u64,
    /// Ticks since start; the clock for read retries.
    ticks: u64,
    /// Readies handed to the log writer: (number, last entry index, messages to send
    /// once durable).
    in_flight: VecDeque<(u64, u64, Vec<Message>)>,
    status: Arc<GroupStatus>,
    applied_tx: watch::Sender<u64>,
    /// Highest log index known durable.
    durable_index: u64,
    /// Committed entries held back while a load fetches (the first is the load's).
    paused: Option<VecDeque<Entry>>,
    /// Bumped whenever a load starts or is abandoned, so stale fetch results are dropped.
    load_generation: u64,
}

/// Wait before fetching again for a load whose fetch failed.
const LOAD_RETRY: Duration = Duration::from_secs(1);

/// Longest wait for raft to answer a ReadIndex.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(10);
/// Ticks before an unanswered read index is asked again: raft drops such requests
/// silently when leadership moves or a message is lost.
const READ_RETRY_TICKS: u64 = 10;
/// Ticks between sweeps that forget requests whose callers gave up.
const SWEEP_TICKS: u64 = 20;
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
                _ = ticker.tick() => self.on_tick(),
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
                Some(Event::Loaded { .. } | Event::RetryLoad { .. }) => {}
                None => break,
            }
        }
    }

    fn leader(&self) -> u64 {
        self.raw_node.raft.leader_id
    }

    fn on_tick(&mut self) {
        self.raw_node.tick();
        self.ticks += 1;
        if self.ticks.is_multiple_of(READ_RETRY_TICKS) {
            let now = self.ticks;
            for (ctx, read) in &mut self.reads {
                if read
                    .issued_at
                    .is_some_and(|at| now - at >= READ_RETRY_TICKS)
                {
                    read.issued_at = None;
                    self.unissued_reads.push_back(*ctx);
                }
            }
        }
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            self.proposals.retain(|_, (_, reply)| !reply.is_closed());
            self.reads.retain(|_, read| !read.reply.is_closed());
        }
    }

    fn on_request(&mut self, req: Request<M::Output>) {
        match req {
            Request::Step(msg) => self.step(*msg),
            Request::Unreachable { peer } => self.raw_node.report_unreachable(peer),
            Request::Campaign => {
                if self.leader() == 0
                    && let Err(e) = self.raw_node.campaign()
                {
                    tracing::debug!("campaign: {e}");
                }
            }
            Request::SnapshotSent { peer, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw_node.report_snapshot(peer, status);
            }
            Request::ReadIndex { reply } => {
                self.next_read += 1;
                let ctx = self.next_read;
                self.reads.insert(
                    ctx,
                    PendingRead {
                        reply,
                        issued_at: None,
                    },
                );
                self.unissued_reads.push_back(ctx);
                self.release_reads();
            }
            Request::Propose { .. } if self.leader() == 0 => {
                if self.waiting.len() >= MAX_WAITING {
                    reject(req, Error::Unavailable("no leader".into()));
                } else {
                    self.waiting.push_back(req);
                }
            }
            Request::Propose { data, reply } => self.propose(data, reply),
        }
    }

    fn step(&mut self, mut msg: Message) {
        self.repair_lost_log(&mut msg);
        let snapshot = (msg.get_msg_type() == MessageType::MsgSnapshot).then(|| {
            (
                msg.get_snapshot().get_metadata().index,
                msg.get_snapshot().data.clone(),
            )
        });
        if let Err(e) = self.raw_node.step(msg) {
            tracing::debug!("step: {e}");
        }
        if let Some((index, data)) = snapshot {
            let taken = self
                .raw_node
                .raft
                .raft_log
                .unstable_snapshot()
                .as_ref()
                .is_some_and(|s| s.get_metadata().index == index && s.data == data);
            if !taken {
                crate::snapshot::discard(&data);
            }
        }
    }

    /// Lets a replica that lost its log (restarted with a fresh data dir) rejoin. Raft
    /// assumes persisted state is never lost: the leader still believes the replica holds
    /// what it acknowledged, sends it heartbeats committing entries it no longer has (on
    /// which raft-rs panics) and ignores its rejections as stale. So a follower commits
    /// only entries it holds and answers such a heartbeat with a rejection naming its last
    /// index; a leader that hears a rejection hinting at less than the replica had
    /// acknowledged starts replicating to it afresh (from the log, or by snapshot).
    /// Lowering `matched` is conservative: it can only delay commits.
    fn repair_lost_log(&mut self, msg: &mut Message) {
        let raft = &mut self.raw_node.raft;
        match msg.get_msg_type() {
            MessageType::MsgHeartbeat if msg.commit > raft.raft_log.last_index() => {
                // The leader believes we hold entries we do not have; tell it, in the
                // form it acts on (a rejection hinting at our last index).
                let last = raft.raft_log.last_index();
                let mut reply = Message::default();
                reply.set_msg_type(MessageType::MsgAppendResponse);
                reply.to = msg.from;
                reply.from = self.config.node_id;
                reply.term = msg.term;
                reply.reject = true;
                reply.index = msg.commit;
                reply.reject_hint = last;
                msg.commit = last;
                self.transport.send(self.id, vec![reply]);
            }
            MessageType::MsgAppendResponse if msg.reject && raft.state == StateRole::Leader => {
                if let Some(pr) = raft.mut_prs().get_mut(msg.from)
                    && msg.reject_hint < pr.matched
                {
                    tracing::warn!(
                        peer = msg.from,
                        acknowledged = pr.matched,
                        holds = msg.reject_hint,
                        "a replica lost log entries it had acknowledged; replicating to it afresh"
                    );
                    pr.matched = msg.reject_hint;
                    pr.become_probe();
                }
            }
            _ => {}
        }
    }

    /// Proposes on this replica; raft forwards the entry to the leader if that is not us.
    fn propose(&mut self, data: Vec<u8>, reply: Reply<M::Output>) {
        self.metrics.proposals.inc();
        self.next_proposal += 1;
        let id = ProposalId {
            node: self.config.node_id,
            incarnation: *INCARNATION,
            seq: self.next_proposal,
        };
        let leading = self.raw_node.raft.state == StateRole::Leader;
        let last_before = self.raw_node.raft.raft_log.last_index();
        match self.raw_node.propose(id.encode(), data) {
            Ok(()) => {
                let index = self.raw_node.raft.raft_log.last_index();
                if leading && index > last_before {
                    self.proposed_at
                        .insert(index, (self.raw_node.raft.term, id.seq));
                }
                let via = if leading { 0 } else { self.leader() };
                self.proposals.insert(id.seq, (via, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::from(e)));
            }
        }
    }

    /// Hands waiting reads to raft once it can answer them: a follower needs to know
    /// the leader; a leader must have committed an entry in its term (raft-rs silently
    /// drops earlier ones).
    fn release_reads(&mut self) {
        let raft = &self.raw_node.raft;
        if self.unissued_reads.is_empty()
            || raft.leader_id == 0
            || (raft.state == StateRole::Leader && !raft.commit_to_current_term())
        {
            return;
        }
        while let Some(ctx) = self.unissued_reads.pop_front() {
            let Some(read) = self.reads.get_mut(&ctx) else {
                continue;
            };
            read.issued_at = Some(self.ticks);
            self.raw_node
                .read_index(read_context(self.config.node_id, ctx));
        }
    }

    fn on_event(&mut self, event: Event) -> Result<()> {
        let (number, result) = match event {
            Event::Persisted { number, result } => (number, result),
            Event::Loaded { generation, result } => return self.on_loaded(generation, result),
            Event::RetryLoad { generation } => {
                if generation == self.load_generation {
                    self.start_load();
                }
                return Ok(());
            }
        };
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
            self.propose_own();
            self.release_reads();
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
            self.transport.send(self.id, rd.take_messages());
            let role_change = rd.ss().map(|ss| ss.leader_id);
            self.answer_reads(&mut rd);
            if !rd.snapshot().is_empty() {
                self.install_snapshot(rd)?;
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

    fn answer_reads(&mut self, rd: &mut Ready) {
        for rs in rd.take_read_states() {
            let Some(ctx) = read_context_id(self.config.node_id, &rs.request_ctx) else {
                continue;
            };
            if let Some(read) = self.reads.remove(&ctx) {
                let _ = read.reply.send(Ok(rs.index));
            }
        }
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
        Ok(())
    }

    /// Installs the snapshot of a Ready (nothing else of this group is in flight): raft
    /// state, entries and hard state are written synchronously with the state machine's
    /// install, then raft learns it is persisted and applied.
    fn install_snapshot(&mut self, mut rd: Ready) -> Result<()> {
        let snapshot = rd.snapshot().clone();
        let index = snapshot.get_metadata().index;
        // Whatever a load was fetching is superseded: the snapshot covers every committed
        // entry (raft only takes snapshots beyond its commit index).
        if self.paused.take().is_some() {
            self.load_generation += 1;
        }
        tracing::info!(
            index,
            term = snapshot.get_metadata().term,
            "installing snapshot"
        );
        let mut batch = WriteBatch::default();
        let store = self.raw_node.mut_store();
        store.stage_snapshot(&mut batch, snapshot.get_metadata())?;
        let entries = rd.take_entries();
        let write = store.stage(&entries, rd.hs())?;
        write.add_to(store.engine(), &mut batch);
        self.machine.install_snapshot(&snapshot, batch)?;
        let persisted_msgs = rd.take_persisted_messages();
        let number = rd.number();
        self.raw_node.advance_append_async(rd);
        self.durable_index = self.raw_node.store().last_log_index();
        self.transport.send(self.id, persisted_msgs);
        self.raw_node.on_persist_ready(number);
        self.raw_node.advance_apply_to(index);
        self.status.applied.store(index, Ordering::Relaxed);
        self.status
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        self.applied_tx.send_replace(index);
        // Entries this replica proposed up to here were applied inside the snapshot; what
        // they returned is not known here.
        let covered: Vec<u64> = self.proposed_at.range(..=index).map(|(i, _)| *i).collect();
        for i in covered {
            if let Some((_, seq)) = self.proposed_at.remove(&i)
                && let Some((_, reply)) = self.proposals.remove(&seq)
            {
                let _ = reply.send(Err(Error::ProposalDropped));
            }
        }
        Ok(())
    }

    fn on_leader_change(&mut self, leader: u64) {
        // A proposal forwarded to a leader that is no longer leader may have been lost
        // with it (raft drops forwarded proposals silently) or may still commit: its
        // outcome is unknown, and saying so now beats letting the caller wait out its
        // deadline.
        let lost: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, (via, _))| *via != 0 && *via != leader)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in lost {
            if let Some((_, reply)) = self.proposals.remove(&seq) {
                let _ = reply.send(Err(Error::ProposalDropped));
            }
        }
        if leader != 0 {
            let waiting = std::mem::take(&mut self.waiting);
            for req in waiting {
                self.on_request(req);
            }
        }
        // A read raft was working on as leader is lost with the role; ask again.
        for (ctx, read) in &mut self.reads {
            if read.issued_at.take().is_some() {
                self.unissued_reads.push_back(*ctx);
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if let Some(held) = &mut self.paused {
            held.extend(entries);
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
            if let Some(fetch) = self.machine.external_load(data) {
                entries.push_front(entry);
                self.paused = Some(entries);
                self.spawn_fetch(fetch);
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
        Ok(())
    }

    /// Publishes an applied entry and answers whoever proposed it; a failed apply stops
    /// the group.
    fn finish_entry(&mut self, entry: &Entry, output: Result<M::Output>) -> Result<()> {
        let fatal = output.as_ref().err().map(|e| e.to_string());
        if fatal.is_none() {
            // Publish before answering the proposer: whoever it tells about the write
            // must see it applied in Cluster/Status and in wait_applied.
            self.status.applied.store(entry.index, Ordering::Relaxed);
            self.applied_tx.send_replace(entry.index);
        }
        let mine = ProposalId::decode(&entry.context)
            .filter(|id| id.node == self.config.node_id && id.incarnation == *INCARNATION);
        if let Some(id) = mine
            && let Some((_, reply)) = self.proposals.remove(&id.seq)
        {
            let _ = reply.send(output);
        }
        // Proposals this replica appended as leader at or before this index and not
        // answered above were overwritten by another leader's entries.
        while let Some(first) = self.proposed_at.first_entry() {
            if *first.key() > entry.index {
                break;
            }
            let (_, (_, seq)) = first.remove_entry();
            if mine.is_none_or(|id| id.seq != seq)
                && let Some((_, reply)) = self.proposals.remove(&seq)
            {
                let _ = reply.send(Err(Error::ProposalDropped));
            }
        }
        match fatal {
            Some(e) => Err(Error::Unavailable(format!("apply failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Fetches again for the load entry at the head of the paused entries.
    fn start_load(&mut self) {
        if let Some(fetch) = self
            .paused
            .as_ref()
            .and_then(|held| held.front())
            .and_then(|entry| self.machine.external_load(&entry.data))
        {
            self.spawn_fetch(fetch);
        }
    }

    /// Runs a load's fetch off the group task; its result comes back as an event.
    fn spawn_fetch(&mut self, fetch: Fetch) {
        self.load_generation += 1;
        let generation = self.load_generation;
        tracing::info!("applying paused: loading a snapshot from outside the log");
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let result = fetch.await;
            let _ = tx.send(Event::Loaded { generation, result });
        });
    }

    fn on_loaded(&mut self, generation: u64, result: Result<LoadedSnapshot>) -> Result<()> {
        if generation != self.load_generation || self.paused.is_none() {
            return Ok(()); // superseded (a raft snapshot replaced the state meanwhile)
        }
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!("snapshot load failed, retrying in {LOAD_RETRY:?}: {e}");
                let tx = self.events_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(LOAD_RETRY).await;
                    let _ = tx.send(Event::RetryLoad { generation });
                });
                return Ok(());
            }
        };
        let mut held = self.paused.take().unwrap_or_default();
        let Some(entry) = held.pop_front() else {
            return Ok(());
        };
        tracing::info!(
            index = entry.index,
            leader_index = loaded.leader_index,
            keys = loaded.keys,
            "snapshot loaded; applying resumes"
        );
        let output = self.machine.apply_loaded(entry.index, entry.term, loaded);
        self.finish_entry(&entry, output)?;
        self.raw_node.advance_apply_to(entry.index);
        self.apply(held.into())
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
        for (_, (_, reply)) in self.proposals.drain() {
            let _ = reply.send(Err(err()));
        }
        self.proposed_at.clear();
        for (_, read) in self.reads.drain() {
            let _ = read.reply.send(Err(err()));
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
        Request::Step(_)
        | Request::Unreachable { .. }
        | Request::SnapshotSent { .. }
        | Request::Campaign => {}
    }
}

/// A read's context as raft carries it: the leader keys pending reads by context, so
/// contexts from different nodes must never collide.
fn read_context(node: u64, id: u64) -> Vec<u8> {
    let mut ctx = node.to_be_bytes().to_vec();
    ctx.extend_from_slice(&id.to_be_bytes());
    ctx
}

/// The id of one of this node's reads from its context.
fn read_context_id(node: u64, ctx: &[u8]) -> Option<u64> {
    if ctx.len() != 16 || crate::keys::decode_u64(&ctx[..8])? != node {
        return None;
    }
    crate::keys::decode_u64(&ctx[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_ids_round_trip_and_reject_other_shapes() {
        let id = ProposalId {
            node: 3,
            incarnation: 0xdead_beef,
            seq: 42,
        };
        assert_eq!(ProposalId::decode(&id.encode()), Some(id));
        assert_eq!(ProposalId::decode(&[]), None);
        assert_eq!(ProposalId::decode(&[1; 23]), None);
    }

    #[test]
    fn read_contexts_are_per_node() {
        let ctx = read_context(2, 7);
        assert_eq!(read_context_id(2, &ctx), Some(7));
        assert_eq!(read_context_id(1, &ctx), None);
        assert_eq!(read_context_id(2, &ctx[..8]), None);
    }
}
