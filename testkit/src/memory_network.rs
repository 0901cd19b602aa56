//! An in-process network for tests: several nodes in one process exchange raft messages
//! and snapshots through it, with filters that cut links, drop messages at random and
//! delay them (which also reorders them). Deterministic enough for tests: the random
//! choices come from a seeded generator.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{Message, MessageType};

use flotilla_tables::Router;
use flotilla_tables::transport::{Outbox, Transport};

/// The shared network; create one per test and a [`MemoryNetwork::transport`] per node.
pub struct MemoryNetwork {
    routers: RwLock<HashMap<u64, Router>>,
    filter: Mutex<Filter>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

struct Filter {
    /// Directed links (from, to) that deliver nothing.
    cut: HashSet<(u64, u64)>,
    /// Directed links (group, from, to) that deliver nothing of that one group.
    cut_groups: HashSet<(u64, u64, u64)>,
    drop_percent: u64,
    max_delay: Duration,
    /// xorshift state.
    rng: u64,
}

impl Filter {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// What the filters decided for one message.
enum Fate {
    Drop,
    Deliver(Duration),
}

impl MemoryNetwork {
    /// A network with no filters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            routers: RwLock::new(HashMap::new()),
            filter: Mutex::new(Filter {
                cut: HashSet::new(),
                cut_groups: HashSet::new(),
                drop_percent: 0,
                max_delay: Duration::ZERO,
                rng: 0x9e37_79b9_7f4a_7c15,
            }),
        })
    }

    /// The transport of node `node_id`; give it to that node's `Node::open`.
    pub fn transport(self: &Arc<Self>, node_id: u64) -> Arc<dyn Transport> {
        Arc::new(MemoryTransport {
            net: self.clone(),
            from: node_id,
        })
    }

    /// Forgets node `node_id` (it stopped); messages to it are dropped until it reattaches.
    pub fn detach(&self, node_id: u64) {
        self.routers.write().remove(&node_id);
        self.links_changed();
    }

    /// What the real transport does when a peer's connection opens or ends: every node
    /// wakes its hibernating groups.
    fn links_changed(&self) {
        let routers: Vec<Router> = self.routers.read().values().cloned().collect();
        for router in routers {
            router.wake_all();
        }
    }

    /// Cuts the link between `a` and `b`, both directions.
    pub fn cut(&self, a: u64, b: u64) {
        let mut f = self.filter.lock();
        f.cut.insert((a, b));
        f.cut.insert((b, a));
        drop(f);
        self.links_changed();
    }

    /// Cuts the link between `a` and `b` for group `group_id` only, both directions: the
    /// nodes keep talking about every other group.
    pub fn cut_group(&self, group_id: u64, a: u64, b: u64) {
        let mut f = self.filter.lock();
        f.cut_groups.insert((group_id, a, b));
        f.cut_groups.insert((group_id, b, a));
        drop(f);
        self.links_changed();
    }

    /// Cuts `node` off from every node in `others`.
    pub fn isolate(&self, node: u64, others: &[u64]) {
        for &o in others {
            self.cut(node, o);
        }
    }

    /// Restores every link and removes drop and delay filters.
    pub fn heal(&self) {
        let mut f = self.filter.lock();
        f.cut.clear();
        f.cut_groups.clear();
        f.drop_percent = 0;
        f.max_delay = Duration::ZERO;
        drop(f);
        self.links_changed();
    }

    /// Drops this share (0-100) of messages at random.
    pub fn set_drop_percent(&self, percent: u64) {
        self.filter.lock().drop_percent = percent.min(100);
    }

    /// Delays each message by a random time up to `max`, so messages overtake each other.
    pub fn set_max_delay(&self, max: Duration) {
        self.filter.lock().max_delay = max;
    }

    fn fate(&self, group_id: u64, from: u64, to: u64) -> Fate {
        let mut f = self.filter.lock();
        if f.cut.contains(&(from, to)) || f.cut_groups.contains(&(group_id, from, to)) {
            return Fate::Drop;
        }
        if f.drop_percent > 0 && f.next() % 100 < f.drop_percent {
            return Fate::Drop;
        }
        let max = f.max_delay.as_micros() as u64;
        if max == 0 {
            return Fate::Deliver(Duration::ZERO);
        }
        Fate::Deliver(Duration::from_micros(f.next() % (max + 1)))
    }

    fn router(&self, node_id: u64) -> Option<Router> {
        self.routers.read().get(&node_id).cloned()
    }

    fn route(self: &Arc<Self>, from: u64, group_id: u64, msg: Message) {
        let to = msg.to;
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let delay = match self.fate(group_id, from, to) {
            Fate::Drop => {
                if is_snapshot && let Some(src) = self.router(from) {
                    src.report_snapshot(group_id, to, false);
                }
                return;
            }
            Fate::Deliver(delay) => delay,
        };
        if is_snapshot {
            let net = self.clone();
            std::thread::spawn(move || net.transfer_snapshot(from, group_id, msg));
            return;
        }
        let Some(dst) = self.router(to) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !delay.is_zero() => {
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = dst.step(group_id, msg);
                });
            }
            _ => {
                let _ = dst.step(group_id, msg);
            }
        }
    }

    /// Streams a snapshot from `from` to the message's destination, chunk by chunk,
    /// through a bounded channel as the gRPC transport does.
    fn transfer_snapshot(&self, from: u64, group_id: u64, msg: Message) {
        let to = msg.to;
        let (Some(src), Some(dst)) = (self.router(from), self.router(to)) else {
            if let Some(src) = self.router(from) {
                src.report_snapshot(group_id, to, false);
            }
            return;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let reader = {
            let src = src.clone();
            std::thread::spawn(move || {
                let sent = src.read_snapshot(group_id, &msg, |chunk| tx.send(Ok(chunk)).is_ok());
                if let Err(e) = sent {
                    let _ = tx.send(Err(e));
                }
            })
        };
        let received = dst.receive_snapshot(rx, |_| true);
        let _ = reader.join();
        if let Err(e) = &received {
            tracing::debug!(group_id, from, to, "snapshot transfer failed: {e}");
        }
        src.report_snapshot(group_id, to, received.is_ok());
    }
}

struct MemoryTransport {
    net: Arc<MemoryNetwork>,
    from: u64,
}

impl Transport for MemoryTransport {
    fn attach(&self, router: Router) {
        self.net.routers.write().insert(self.from, router);
        self.net.links_changed();
    }
}

impl Outbox for MemoryTransport {
    fn send(&self, group_id: u64, msgs: Vec<Message>) {
        for msg in msgs {
            self.net.route(self.from, group_id, msg);
        }
    }
}
