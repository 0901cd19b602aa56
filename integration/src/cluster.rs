//! Three `flotilla leader` (or `follower`) processes forming one raft cluster on loopback.
//!
//! Every node gets fixed ports (picked free at start) for its raft listener and its gRPC
//! API, so a node restarted on the same data dir comes back at the same addresses and
//! clients (lazy channels) keep working across restarts. With
//! [`ClusterOptions::proxies`], every directed link `i -> j` goes through its own
//! [`LinkProxy`]: node `i` is told that `j` lives at the proxy, which forwards to `j`'s
//! real raft address, so tests can cut and heal links one direction at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_proto::regatta::v1::{
    CreateTableRequest, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse,
    cluster_client::ClusterClient, tables_client::TablesClient,
};
use futures::future::join_all;
use tonic::transport::Channel;

use crate::proxy::LinkProxy;
use crate::workload::{REQUEST_TIMEOUT, lazy_channel};
use crate::{Process, eventually};

/// Number of nodes; their raft ids are `1..=NODES`.
pub const NODES: u64 = 3;

/// How a [`Cluster`] is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Put a cuttable [`LinkProxy`] on every directed node-to-node link.
    pub proxies: bool,
    /// `--raft.rtt` (one raft tick); with the default 20-tick election timeout, 50 ms
    /// gives elections of about a second.
    pub rtt: String,
    /// Further flags for every node, e.g. `["--raft.log-retention-entries", "100"]`.
    pub extra_args: Vec<String>,
    /// How long a process may take to report its listening addresses.
    pub start_timeout: Duration,
    /// `flotilla <role>`: `leader` (the default) or `follower`. A follower cluster also
    /// needs `--replication.leader-address` in [`Self::extra_args`].
    pub role: String,
    /// Give every leader node a fixed replication port (see [`Cluster::replication_addr`]),
    /// so followers can be pointed at it across restarts.
    pub replication: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            proxies: false,
            rtt: "50ms".into(),
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(30),
            role: "leader".into(),
            replication: false,
        }
    }
}

/// One member: its fixed identity and addresses, and its process while it runs.
#[derive(Debug)]
struct Member {
    id: u64,
    data_dir: PathBuf,
    api_address: String,
    raft_address: SocketAddr,
    /// Where a leader node serves replication, when the cluster was started with
    /// [`ClusterOptions::replication`].
    replication_address: Option<SocketAddr>,
    /// The `--raft.*` and extra flags, identical on every restart.
    args: Vec<String>,
    /// A lazy channel to `api_address`; reconnects after restarts.
    channel: Channel,
    process: Option<Process>,
}

/// A three-node cluster; every process is killed when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    members: Vec<Member>,
    /// `(from, to)` -> the proxy node `from` dials to reach `to`.
    proxies: BTreeMap<(u64, u64), LinkProxy>,
    start_timeout: Duration,
    /// `leader` or `follower`.
    role: String,
}

pub use flotilla_testkit::ports::{port, reserve as reserve_ports};

impl Cluster {
    /// Starts all three nodes concurrently, with data dirs `root/node{id}`, and returns once
    /// each reports that it listens (leaders are elected after that: see
    /// [`Self::wait_leader`]).
    pub async fn start(root: &Path, opts: ClusterOptions) -> Self {
        let count = usize::try_from(NODES).expect("node count");
        let reserved = reserve_ports(3 * count);
        let (raft_ports, rest) = reserved.split_at(count);
        let (api_ports, replication_ports) = rest.split_at(count);
        let raft: BTreeMap<u64, SocketAddr> = Self::ids()
            .zip(raft_ports)
            .map(|(id, l)| (id, SocketAddr::from(([127, 0, 0, 1], port(l)))))
            .collect();

        let mut proxies = BTreeMap::new();
        if opts.proxies {
            for from in Self::ids() {
                for (&to, &addr) in raft.iter().filter(|(to, _)| **to != from) {
                    proxies.insert((from, to), LinkProxy::start(addr).await);
                }
            }
        }

        let mut members = Vec::new();
        for ((id, api_port), replication_port) in Self::ids().zip(api_ports).zip(replication_ports)
        {
            // The addresses this node dials: its peers' proxies, or their raft listeners.
            let initial_members = raft
                .iter()
                .map(|(&peer, &addr)| {
                    let dial = proxies.get(&(id, peer)).map_or(addr, LinkProxy::addr);
                    format!("{peer}={dial}")
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut args = vec![
                "--raft.node-id".to_owned(),
                id.to_string(),
                "--raft.address".to_owned(),
                raft[&id].to_string(),
                "--raft.initial-members".to_owned(),
                initial_members,
                "--raft.rtt".to_owned(),
                opts.rtt.clone(),
            ];
            let api_address = format!("127.0.0.1:{}", port(api_port));
            // What peers and MemberList report as this node's API (the default is 8443).
            args.extend([
                "--api.advertise-address".to_owned(),
                format!("http://{api_address}"),
            ]);
            let replication_address = opts
                .replication
                .then(|| SocketAddr::from(([127, 0, 0, 1], port(replication_port))));
            if let Some(addr) = replication_address {
                args.extend(["--replication.address".to_owned(), addr.to_string()]);
            }
            args.extend(opts.extra_args.iter().cloned());
            members.push(Member {
                id,
                data_dir: root.join(format!("node{id}")),
                channel: lazy_channel(&api_address),
                api_address,
                raft_address: raft[&id],
                replication_address,
                args,
                process: None,
            });
        }
        drop(reserved);
        let mut cluster = Self {
            members,
            proxies,
            start_timeout: opts.start_timeout,
            role: opts.role,
        };
        cluster.restart_all().await;
        cluster
    }

    /// The raft ids of the nodes.
    pub fn ids() -> impl Iterator<Item = u64> + Clone {
        1..=NODES
    }

    fn member(&self, id: u64) -> &Member {
        self.members
            .iter()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The running process of node `id`; panics if it is down.
    pub fn node(&self, id: u64) -> &Process {
        self.member(id)
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Whether node `id`'s process is running (started and not killed by the harness).
    pub fn is_running(&self, id: u64) -> bool {
        self.member(id).process.is_some()
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        Self::ids().filter(|&id| self.is_running(id)).collect()
    }

    /// Node `id`'s gRPC API address (`127.0.0.1:PORT`), the same across restarts.
    pub fn api_addr(&self, id: u64) -> &str {
        &self.member(id).api_address
    }

    /// Node `id`'s raft listen address (what its peers' proxies forward to).
    pub fn raft_addr(&self, id: u64) -> SocketAddr {
        self.member(id).raft_address
    }

    /// Node `id`'s fixed replication address; panics unless the cluster was started with
    /// [`ClusterOptions::replication`].
    pub fn replication_addr(&self, id: u64) -> SocketAddr {
        self.member(id)
            .replication_address
            .unwrap_or_else(|| panic!("node {id} has no fixed replication address"))
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.member(id).data_dir
    }

    /// A lazy channel to node `id`'s API with connect and request timeouts; it fails fast
    /// while the node is down and reconnects once it is back.
    pub fn channel(&self, id: u64) -> Channel {
        self.member(id).channel.clone()
    }

    /// Channels to the given nodes, in order.
    pub fn channels(&self, ids: &[u64]) -> Vec<Channel> {
        ids.iter().map(|&id| self.channel(id)).collect()
    }

    /// SIGKILL node `id` and reap it; a no-op if it is down.
    pub async fn kill9(&mut self, id: u64) {
        if let Some(p) = self.member_mut(id).process.take() {
            p.kill9().await;
        }
    }

    /// SIGKILL every running node at once, then reap them.
    pub async fn kill9_all(&mut self) {
        let procs: Vec<Process> = self
            .members
            .iter_mut()
            .filter_map(|m| m.process.take())
            .collect();
        join_all(procs.into_iter().map(Process::kill9)).await;
    }

    /// Freezes node `id` with SIGSTOP (its sockets stay open, nothing answers) until
    /// [`Self::resume`]; panics if it is down.
    pub async fn pause(&self, id: u64) {
        self.node(id).signal("STOP").await;
    }

    /// Lets node `id` run again after [`Self::pause`] (SIGCONT).
    pub async fn resume(&self, id: u64) {
        self.node(id).signal("CONT").await;
    }

    /// Starts node `id` again with the same flags, ports and data dir (killing it with
    /// SIGKILL first if it still runs).
    pub async fn restart(&mut self, id: u64) {
        self.kill9(id).await;
        let (timeout, role) = (self.start_timeout, self.role.clone());
        let m = self.member_mut(id);
        m.process =
            Some(Process::start_role(&role, &m.data_dir, &m.api_address, &m.args, timeout).await);
    }

    /// Starts every node that is down, concurrently.
    pub async fn restart_all(&mut self) {
        let (timeout, role) = (self.start_timeout, &self.role);
        let started = join_all(self.members.iter().filter(|m| m.process.is_none()).map(
            |m| async move {
                let p = Process::start_role(role, &m.data_dir, &m.api_address, &m.args, timeout);
                (m.id, p.await)
            },
        ))
        .await;
        for (id, p) in started {
            self.member_mut(id).process = Some(p);
        }
    }

    /// SIGKILL node `id`, delete its data dir, and start it fresh: it must rejoin and catch
    /// up from its peers (by snapshot when their logs no longer reach back far enough).
    pub async fn wipe_and_restart(&mut self, id: u64) {
        self.kill9(id).await;
        let dir = self.data_dir(id).to_path_buf();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        }
        self.restart(id).await;
    }

    /// Kills every node and reaps it, so nothing writes to the data dirs afterwards.
    pub async fn stop(mut self) {
        self.kill9_all().await;
    }

    fn proxy(&self, from: u64, to: u64) -> &LinkProxy {
        self.proxies
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no proxy {from}->{to}: start with proxies: true"))
    }

    /// Cuts both directions between nodes `i` and `j`.
    pub fn cut(&self, i: u64, j: u64) {
        self.proxy(i, j).cut();
        self.proxy(j, i).cut();
    }

    /// Heals both directions between nodes `i` and `j`.
    pub fn heal(&self, i: u64, j: u64) {
        self.proxy(i, j).heal();
        self.proxy(j, i).heal();
    }

    /// Silently drops everything between nodes `i` and `j`, both directions, keeping the
    /// connections open (a partition that only timeouts reveal).
    pub fn blackhole(&self, i: u64, j: u64) {
        self.proxy(i, j).blackhole();
        self.proxy(j, i).blackhole();
    }

    /// Cuts node `id` off from every other node.
    pub fn isolate(&self, id: u64) {
        for other in Self::ids().filter(|&o| o != id) {
            self.cut(id, other);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for p in self.proxies.values() {
            p.heal();
        }
    }

    /// Node `id`'s `Cluster/Status`, or `None` if it is down or does not answer in time.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let mut req = tonic::Request::new(StatusRequest { config: false });
        req.set_timeout(REQUEST_TIMEOUT);
        ClusterClient::new(self.channel(id))
            .status(req)
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// Node `id`'s `Cluster/MemberList`, or `None` if it is down or does not answer in time.
    pub async fn member_list(&self, id: u64) -> Option<MemberListResponse> {
        let mut req = tonic::Request::new(MemberListRequest {});
        req.set_timeout(REQUEST_TIMEOUT);
        ClusterClient::new(self.channel(id))
            .member_list(req)
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// The leader of `table` as node `id` sees it: `Some(0)` if it knows of none, `None` if
    /// it does not answer or does not have the table (or reports no number).
    pub async fn leader_seen_by(&self, id: u64, table: &str) -> Option<u64> {
        let status = self.status(id).await?;
        status.tables.get(table)?.leader.parse::<u64>().ok()
    }

    /// The leader of `table` if the running nodes among `ids` agree on it: each answers
    /// Status and names the same leader, and that leader is one of them (so it names
    /// itself). Followers may still name a leader that died or was cut off; requiring the
    /// leader's own word rules that out.
    pub async fn leader_among(&self, table: &str, ids: &[u64]) -> Option<u64> {
        let mut agreed = None;
        let mut asked = Vec::new();
        for &id in ids.iter().filter(|&&id| self.is_running(id)) {
            let leader = self.leader_seen_by(id, table).await.filter(|&l| l != 0)?;
            if agreed.is_some_and(|a| a != leader) {
                return None;
            }
            agreed = Some(leader);
            asked.push(id);
        }
        agreed.filter(|l| asked.contains(l))
    }

    /// The leader of `table` all running nodes agree on (see [`Self::leader_among`]).
    pub async fn leader_of(&self, table: &str) -> Option<u64> {
        self.leader_among(table, &self.running()).await
    }

    /// Waits until the running nodes among `ids` agree on a leader of `table` that is one of
    /// them; panics after `timeout`.
    pub async fn wait_leader_among(&self, table: &str, ids: &[u64], timeout: Duration) -> u64 {
        let mut leader = None;
        let found = eventually(timeout, async || {
            leader = self.leader_among(table, ids).await;
            leader.is_some()
        })
        .await;
        if !found {
            // What each node believes, for whoever has to find out why.
            for &id in ids {
                let view = match self.status(id).await {
                    Some(s) => format!("{:?}", s.tables.get(table)),
                    None => "no answer".to_owned(),
                };
                eprintln!("DIAG node {id} sees {table:?}: {view}");
            }
        }
        assert!(
            found,
            "nodes {ids:?} agreed on no leader of {table:?} within {timeout:?}"
        );
        leader.expect("leader found")
    }

    /// Waits until all running nodes agree on a leader of `table`; panics after `timeout`.
    pub async fn wait_leader(&self, table: &str, timeout: Duration) -> u64 {
        self.wait_leader_among(table, &self.running(), timeout)
            .await
    }

    /// Creates `table` through whichever running node accepts it, retrying while the
    /// cluster has no leader; panics after `timeout`. "Already exists" counts as success:
    /// it means an earlier attempt whose answer was lost went through.
    pub async fn create_table(&self, table: &str, timeout: Duration) {
        let mut last_error = String::new();
        let created = eventually(timeout, async || {
            for id in self.running() {
                let mut req = tonic::Request::new(CreateTableRequest {
                    name: table.to_owned(),
                    config: None,
                });
                req.set_timeout(REQUEST_TIMEOUT);
                match TablesClient::new(self.channel(id)).create(req).await {
                    Ok(_) => return true,
                    Err(e) if e.message().contains("already exists") => return true,
                    Err(e) => last_error = format!("node {id}: {e}"),
                }
            }
            false
        })
        .await;
        assert!(
            created,
            "creating {table:?} failed for {timeout:?}: {last_error}"
        );
    }
}
