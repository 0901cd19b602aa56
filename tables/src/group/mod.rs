//! RaftGroup: the task that owns one group's `RawNode` and drives its Ready loop.
//!
//! Everything that changes a group goes through its mailbox; the task is the only owner
//! of the raft state, so there are no locks. Durability is delegated to the shared
//! [`LogWriter`] (asynchronous ready); committed entries are applied by the group's
//! [`StateMachine`] on this task. Work that may take long (installing a snapshot, loading
//! one from outside the log) runs on blocking threads while the task keeps ticking and
//! stepping messages, so one big install never stalls the heartbeats of the groups that
//! share its raft thread.
//!
//! The parts: [`handle`] (the mailbox and what the task publishes), [`proposals`] (who
//! waits for what), [`reads`] (ReadIndex), [`ready`] (the Ready loop: persist, apply,
//! compact), [`install`] (raft snapshot installs and loads from outside the log),
//! [`hibernate`] (idle groups stop ticking), [`step`] (peers' messages in).

mod fence;
mod handle;
mod hibernate;
mod install;
mod proposals;
mod reads;
mod ready;
mod step;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::eraftpb::{Message, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use rocksdb::WriteBatch;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::group_status::GroupStatus;
pub use handle::GroupHandle;

use crate::error::{Error, NotProposed, Result};
use crate::import::{LoadMarker, LoadPlan, LoadedSnapshot};
use crate::log_writer::LogWriter;
use crate::metrics::GroupMetrics;
use crate::outbox::Outbox;
use crate::raft_storage::RaftStorage;
use crate::snapshot::InstallJob;
use handle::Request;
use hibernate::Hibernation;
use install::{Installing, Paused};
use proposals::{Proposals, Reply};
use reads::Reads;

/// Applies committed entries of one group.
pub trait StateMachine: Send + 'static {
    /// What a proposer gets back once its entry is applied.
    type Output: Send + 'static;
    /// Applies the committed entry at `index`. An error means the state machine cannot go
    /// on (storage failure, corrupt data): the group stops.
    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Result<Self::Output>;
    /// Index of the last applied entry (where replay starts after a restart).
    fn applied_index(&self) -> u64;
    /// The blocking job that replaces the whole state with a raft snapshot received from
    /// the leader. The group's new raft state is in `raft_state`; it must become durable
    /// together with whatever lets a crash mid-install be finished (see
    /// [`crate::replace`]). The group runs the job off its task, then calls
    /// [`StateMachine::reload`].
    fn snapshot_installer(&self, snapshot: &Snapshot, raft_state: WriteBatch)
    -> Result<InstallJob>;
    /// Reads the state back from storage after an install job replaced it.
    fn reload(&mut self) -> Result<()>;
    /// If the entry `data` at `index` loads state from outside the log (see
    /// [`crate::import`]), how this replica goes about it; `exact` false asks for the last
    /// resort (any snapshot at least as new). The group stops applying until the state
    /// is there.
    fn external_load(&self, _index: u64, _data: &[u8], _exact: bool) -> Option<LoadPlan> {
        None
    }
    /// The blocking job that swaps in what a load fetched for `marker`, recording the
    /// entry at `index` as applied, and what its proposer is told.
    fn load_installer(
        &self,
        index: u64,
        _term: u64,
        _marker: &LoadMarker,
        _loaded: LoadedSnapshot,
    ) -> Result<(InstallJob, Self::Output)> {
        Err(Error::corrupt(
            0,
            format!("entry {index} loads state this group cannot take"),
        ))
    }
    /// The state `marker` asked for is installed (durably): what was kept for it can go.
    fn load_installed(&self, _marker: &LoadMarker) {}
    /// An entry to propose once this replica, as the group's leader, has compacted its
    /// log through `index` (tables: the GC command follower clusters learn the horizon
    /// from, WIRE.md §5.8-5).
    fn compacted(&self, _index: u64) -> Option<Vec<u8>> {
        None
    }
    /// Whether an entry just applied found this replica's state behind its group's (a
    /// replicated batch refused as a gap): it then asks the leader for a raft snapshot.
    fn take_repair_request(&mut self) -> bool {
        false
    }
}

/// Timing, retention and limits of a group.
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
    /// Requests queued for a group before callers get `Busy`.
    pub mailbox_capacity: usize,
    /// Bytes of proposed entries a leader holds uncommitted before it refuses new
    /// proposals (`Overloaded`): a slow disk makes writers wait, never the node OOM.
    pub max_uncommitted_bytes: u64,
    /// Idle ticks after which a leader puts its group to sleep (see `hibernate.rs`);
    /// 0 keeps every group ticking.
    pub hibernate_after_ticks: u64,
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
            max_uncommitted_bytes: 64 << 20,
            // Two election timeouts: a group that just elected or wrote stays awake.
            hibernate_after_ticks: 40,
        }
    }
}

/// Largest raft message of entries (and so the largest append batch to a follower).
const MAX_MSG_BYTES: u64 = 1 << 20;
/// Appends in flight to one follower: with [`MAX_MSG_BYTES`] this bounds what a follower
/// can be made to queue for its disk per group.
const MAX_INFLIGHT_MSGS: usize = 64;

/// News from outside the mailbox (the log writer, install jobs, load fetches), never
/// refused for backpressure.
enum Event {
    Persisted {
        number: u64,
        result: Result<()>,
    },
    /// An install job finished.
    Installed {
        result: Result<()>,
    },
    /// A load fetch finished; `generation` tells a current fetch from a superseded one.
    Loaded {
        generation: u64,
        result: Result<LoadedSnapshot>,
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
    pub transport: Arc<dyn Outbox>,
    /// Per-table raft metrics.
    pub metrics: GroupMetrics,
    /// Stops the task.
    pub cancel: CancellationToken,
    /// The replica lost its raft state (its node's data was wiped, or this is a new
    /// cluster): it votes only once it may (see `fence.rs`). `Some(cell)` also records
    /// in `cell` the leader's commit index of the first append (the catalog's).
    pub vote_fence: Option<Option<Arc<std::sync::atomic::AtomicU64>>>,
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
        vote_fence,
    } = parts;
    let applied = machine.applied_index();
    let mut storage = storage;
    storage.ensure_committed(applied);
    let raft_config = raft::Config {
        id: config.node_id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: MAX_MSG_BYTES,
        max_inflight_msgs: MAX_INFLIGHT_MSGS,
        max_uncommitted_size: config.max_uncommitted_bytes.max(MAX_MSG_BYTES),
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate()?;
    let voters = raft::Storage::initial_state(&storage)?.conf_state.voters;
    let single_voter = voters == [config.node_id];
    let fence = vote_fence.map(|cell| fence::VoteFence::new(&voters, config.node_id, cell));
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
        proposals: Proposals::new(config.node_id),
        reads: Reads::new(config.node_id),
        config,
        raw_node,
        machine,
        mailbox,
        events,
        events_tx,
        log_writer,
        transport,
        metrics,
        own_proposals: Vec::new(),
        waiting: std::collections::VecDeque::new(),
        ticks: 0,
        in_flight: std::collections::VecDeque::new(),
        status,
        applied_tx,
        durable_index: 0,
        installing: None,
        paused: None,
        load_generation: 0,
        fence,
        hibernation: Hibernation::default(),
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

struct RaftGroup<M: StateMachine> {
    id: u64,
    config: GroupConfig,
    raw_node: RawNode<RaftStorage>,
    machine: M,
    mailbox: mpsc::Receiver<Request<M::Output>>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    log_writer: LogWriter,
    transport: Arc<dyn Outbox>,
    metrics: GroupMetrics,
    proposals: Proposals<M::Output>,
    reads: Reads,
    /// Entries the group proposes for itself (a compaction's GC command). They wait for
    /// the next Ready loop: raft-rs forbids proposing while a Ready is being handled (the
    /// entry would land in the unstable log between `ready()` and its advance).
    own_proposals: Vec<Vec<u8>>,
    /// Proposals that arrived while no leader was known.
    waiting: std::collections::VecDeque<Request<M::Output>>,
    /// Ticks since start; the clock for retries.
    ticks: u64,
    /// Readies waiting to be durable, in order (see [`ready::InFlight`]).
    in_flight: std::collections::VecDeque<ready::InFlight>,
    status: Arc<GroupStatus>,
    applied_tx: watch::Sender<u64>,
    /// Highest log index known durable.
    durable_index: u64,
    /// An install job in flight: no Ready is taken until it finishes.
    installing: Option<Installing<M::Output>>,
    /// Committed entries held back while a load marker waits for its state.
    paused: Option<Paused>,
    /// Bumped whenever a load starts or is abandoned, so stale fetch results are dropped.
    load_generation: u64,
    /// While this replica may not vote in every term (it lost its raft state).
    fence: Option<fence::VoteFence>,
    /// Whether the group sleeps (stops ticking) for lack of work.
    hibernation: Hibernation,
}

/// Ticks between sweeps that forget requests whose callers gave up.
const SWEEP_TICKS: u64 = 20;
/// Most requests taken from the mailbox before handling a Ready: bounds latency while
/// still batching proposals into one log write.
const MAX_REQUESTS_PER_READY: usize = 1024;
/// Requests held while no leader is known, before callers get `NoLeader`.
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
                // Ticks first: a busy mailbox must never starve heartbeats and elections.
                _ = ticker.tick(), if !self.hibernation.is_asleep() => self.on_tick(),
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
            }
            if let Err(e) = self.on_ready() {
                tracing::error!("group stopped: {e}");
                break;
            }
            self.maybe_follow_to_sleep();
            if self.hibernation.is_asleep() && !self.is_quiet() {
                // Whatever a sleeping group was handed left it work: tick until done.
                self.wake();
            }
            if self.hibernation.take_woke() {
                // The first tick comes a full period after waking, as after a real one.
                ticker.reset();
            }
        }
        if self.hibernation.is_asleep() {
            self.metrics.hibernating.dec();
        }
        self.fail_all();
        // Let the log writer and any install job finish what they have for us before the
        // task (and with it the storage) goes away, so a dropped table's ranges are not
        // written after erasure.
        while !self.in_flight.is_empty() || self.installing.is_some() {
            match self.events.recv().await {
                Some(Event::Persisted { .. }) => {
                    self.in_flight.pop_front();
                    while self.in_flight.front().is_some_and(|r| !r.submitted) {
                        self.in_flight.pop_front();
                    }
                }
                Some(Event::Installed { .. }) => self.installing = None,
                Some(Event::Loaded { .. }) => {}
                None => break,
            }
        }
    }

    fn leader(&self) -> u64 {
        self.raw_node.raft.leader_id
    }

    /// Sends `msgs` to peers; a fenced replica's own vote requests stay home.
    fn send(&self, mut msgs: Vec<Message>) {
        if let Some(fence) = &self.fence {
            msgs.retain(|m| !fence.blocks(m));
        }
        if !msgs.is_empty() {
            self.transport.send(self.id, msgs);
        }
    }

    fn on_tick(&mut self) {
        if self
            .fence
            .as_ref()
            .is_some_and(|f| f.is_lifted(self.raw_node.raft.term))
        {
            tracing::info!(term = self.raw_node.raft.term, "vote fence lifted");
            self.fence = None;
        }
        // Judged before the tick, which makes heartbeats: the last Ready is handled.
        let idle = self.raw_node.raft.state == StateRole::Leader && self.is_quiet();
        if self
            .hibernation
            .leader_tick(idle, self.config.hibernate_after_ticks)
        {
            // The notices are the last heartbeats: no tick after them.
            self.send(hibernate::notices(&self.raw_node));
            if self.hibernation.sleep() {
                self.metrics.hibernating.inc();
            }
            tracing::debug!(term = self.raw_node.raft.term, "idle: hibernating");
            return;
        }
        self.raw_node.tick();
        self.ticks += 1;
        self.reads.retry_stale(self.ticks);
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            self.proposals.sweep();
            self.reads.sweep();
        }
        self.on_paused_tick();
    }

    fn on_request(&mut self, req: Request<M::Output>) {
        match &req {
            // A leader's notice does not wake a follower (it may put it to sleep).
            Request::Step(msg) if hibernate::is_notice(msg) => self.hibernation.observe(msg),
            // Nor does a heartbeat's answer wake the leader: it answers a notice, or a
            // heartbeat sent before the leader went to sleep.
            Request::Step(msg) if hibernate::is_heartbeat_answer(msg) => {}
            // A heartbeat wakes a sleeping follower (its leader is awake) but is no
            // work: an idle leader sends them until it goes to sleep.
            Request::Step(msg) if hibernate::is_heartbeat(msg) => self.wake(),
            _ => {
                self.wake();
                self.hibernation.busy();
            }
        }
        match req {
            Request::Wake => {}
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
            // Handed to raft by the Ready loop after the mailbox is drained, together
            // with every other read that arrived meanwhile (one read index for all).
            Request::ReadIndex { reply } => self.reads.add(reply),
            Request::Propose { .. } if self.leader() == 0 => {
                if self.waiting.len() >= MAX_WAITING {
                    reject(req, Error::NotProposed(NotProposed::NoLeader));
                } else {
                    self.waiting.push_back(req);
                }
            }
            Request::Propose { data, reply } => self.propose(data, reply),
        }
    }

    /// Proposes on this replica; raft forwards the entry to the leader if that is not us.
    fn propose(&mut self, data: Vec<u8>, reply: Reply<M::Output>) {
        if self.log_writer.is_overloaded() {
            let _ = reply.send(Err(Error::NotProposed(NotProposed::Overloaded)));
            return;
        }
        self.metrics.proposals.inc();
        let id = self.proposals.next_id();
        let leading = self.raw_node.raft.state == StateRole::Leader;
        let last_before = self.raw_node.raft.raft_log.last_index();
        match self.raw_node.propose(id.encode(), data) {
            Ok(()) => {
                let index = self.raw_node.raft.raft_log.last_index();
                let appended =
                    (leading && index > last_before).then_some((index, self.raw_node.raft.term));
                let via = if leading { 0 } else { self.leader() };
                self.proposals.add(id, via, appended, reply);
            }
            Err(raft::Error::ProposalDropped) => {
                // A leader handing over leadership takes no proposals; otherwise raft's
                // uncommitted bytes are over the limit: the disk is behind.
                let why = if self.raw_node.raft.lead_transferee.is_some() || !leading {
                    NotProposed::Busy
                } else {
                    NotProposed::Overloaded
                };
                let _ = reply.send(Err(Error::NotProposed(why)));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::from(e)));
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<()> {
        self.wake();
        self.hibernation.busy();
        match event {
            Event::Persisted { number, result } => {
                result?;
                self.on_persisted(number)
            }
            Event::Installed { result } => self.on_installed(result),
            Event::Loaded { generation, result } => self.on_loaded(generation, result),
        }
    }

    fn on_leader_change(&mut self, leader: u64) {
        let held = self.paused.iter().flat_map(|p| p.entries.iter());
        self.proposals
            .leader_changed(leader, held.map(|e| e.get_context()));
        if leader != 0 {
            let waiting = std::mem::take(&mut self.waiting);
            for req in waiting {
                self.on_request(req);
            }
        }
        self.reads.leader_changed();
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

    fn fail_all(&mut self) {
        self.proposals.stopped();
        self.reads.stopped();
        for req in std::mem::take(&mut self.waiting) {
            reject(req, Error::NotProposed(NotProposed::Closed));
        }
        self.mailbox.close();
        while let Ok(req) = self.mailbox.try_recv() {
            reject(req, Error::NotProposed(NotProposed::Closed));
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
        | Request::Campaign
        | Request::Wake => {}
    }
}
