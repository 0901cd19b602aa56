//! A seeded fault harness: a three-node leader cluster (a cuttable proxy on every
//! node-to-node link) and optionally a three-node follower cluster behind a cuttable
//! link, a register workload recording every call, and a [`schedule::Schedule`] of kill -9,
//! SIGSTOP and partition faults generated from one seed.
//!
//! [`run`] prints the seed and the schedule, applies the faults under the workload, lets
//! the cluster settle once they are healed, reads every register through every node,
//! and then checks:
//!
//! * the whole history is linearizable ([`crate::linearizability::Checker`], through
//!   [`history::check`]); on failure the report has the seed, the schedule and the
//!   minimal failing window;
//! * every replica of every table, in both clusters, has the same digest
//!   (`flotilla.v1.Inspect/Digest`: keys and SHA-256), every follower replica at the
//!   leader cluster's applied index, within a bound and without a manual Reset.
//!
//! The seed fixes the schedule and every client's choices; timing (and so the exact
//! history) still depends on the machine. See `docs/CHAOS.md`.

pub mod clients;
pub mod digest;
pub mod faults;
pub mod history;
pub mod register;
pub mod rng;
pub mod schedule;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterOptions};
use crate::eventually;
use crate::proxy::LinkProxy;
use clients::{Target, Workload, WorkloadOptions};
use faults::{Clusters, Follower, log};
use history::{Checked, History, Stats};
use register::{ReadMode, RegisterClient, channel};
use schedule::Schedule;

/// The seed when `CHAOS_SEED` is not set.
pub const DEFAULT_SEED: u64 = 1;
/// The schedule's length when `CHAOS_SECONDS` is not set.
pub const DEFAULT_SECONDS: u64 = 60;
/// Clusters start, elect and create tables within this.
const SETUP: Duration = Duration::from_secs(30);
/// After the last heal, every table has a leader all nodes agree on within this.
const SETTLE: Duration = Duration::from_secs(30);
/// The final read of every register through every node succeeds within this.
const FINAL_READS: Duration = Duration::from_secs(20);
/// Every replica of both clusters agrees within this once the workload stopped.
const CONVERGE: Duration = Duration::from_secs(60);
/// The leader node whose replication port the follower cluster pulls from.
const SOURCE: u64 = 1;
/// The client id of the final reads.
const FINAL_READER: u64 = 0;

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Seed of the schedule and of the clients' choices.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Also run a follower cluster (and its faults), and check its digests.
    pub follower: bool,
    /// Concurrent clients.
    pub clients: u64,
    /// Number of tables.
    pub tables: usize,
    /// Keys per table.
    pub keys: usize,
}

impl ChaosOptions {
    /// Seed from `CHAOS_SEED` (default [`DEFAULT_SEED`]), duration from `CHAOS_SECONDS`
    /// (default [`DEFAULT_SECONDS`]), with a follower cluster, 8 clients, 3 tables of 4
    /// keys each. Panics on an unparsable variable.
    pub fn from_env() -> Self {
        let var = |name: &str, default: u64| match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
            Err(_) => default,
        };
        Self {
            seed: var("CHAOS_SEED", DEFAULT_SEED),
            duration: Duration::from_secs(var("CHAOS_SECONDS", DEFAULT_SECONDS)),
            follower: true,
            clients: 8,
            tables: 3,
            keys: 4,
        }
    }

    fn table_names(&self) -> Vec<String> {
        (0..self.tables).map(|t| format!("chaos{t}")).collect()
    }

    /// The command that repeats this run.
    pub fn reproduce(&self) -> String {
        format!(
            "scripts/chaos.sh --seed {} --seconds {}",
            self.seed,
            self.duration.as_secs()
        )
    }
}

/// What a passing run checked.
#[derive(Debug)]
pub struct Summary {
    /// The schedule that ran.
    pub schedule: Schedule,
    /// What the clients did.
    pub stats: Stats,
    /// What the linearizability check covered.
    pub checked: Checked,
    /// One line per table about the agreeing digests.
    pub replicas: Vec<String>,
    /// How long the replicas took to agree after the check.
    pub converge_time: Duration,
    /// The whole run, from the first node's start.
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos run passed: seed {}, {} faults in {:.0} s, {:.1} s in all",
            self.schedule.seed,
            self.schedule.steps.len(),
            self.schedule.duration.as_secs_f64(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  history {}", self.checked)?;
        writeln!(f, "  clients: {}", self.stats)?;
        write!(
            f,
            "  every replica agreed {:.1} s after the check:",
            self.converge_time.as_secs_f64()
        )?;
        for line in &self.replicas {
            write!(f, "\n  digest {line}")?;
        }
        Ok(())
    }
}

/// Runs the harness (see the module docs) with data dirs under `root`. The error is the
/// whole failure report: what failed, the seed, the schedule and how to repeat it.
pub async fn run(options: &ChaosOptions, root: &Path) -> Result<Summary, String> {
    let began = Instant::now();
    let schedule = Schedule::generate(options.seed, options.duration, options.follower);
    assert!(
        schedule.is_minority_only(),
        "the generator broke its own rules:\n{schedule}"
    );
    println!("{schedule}\nreproduce with: {}", options.reproduce());
    let tables = options.table_names();
    let fail = |what: String, stats: &Stats| {
        format!(
            "chaos run FAILED (seed {}): {what}\nclients: {stats}\n{schedule}\nreproduce with: {}",
            options.seed,
            options.reproduce()
        )
    };

    let mut clusters = start(options, root, &tables).await;
    let mut targets: Vec<Target> = Cluster::ids()
        .map(|id| Target {
            name: format!("leader {id}"),
            channel: channel(clusters.leader.api_addr(id)),
            reads: true,
        })
        .collect();
    if let Some(f) = &clusters.follower {
        targets.extend(Cluster::ids().map(|id| Target {
            name: format!("follower {id}"),
            channel: channel(f.cluster.api_addr(id)),
            reads: false,
        }));
    }
    let history = Arc::new(History::new());
    let workload = Workload::start(
        &WorkloadOptions {
            seed: options.seed,
            clients: options.clients,
            tables: tables.clone(),
            keys: options.keys,
            read_mode: ReadMode::Linearizable,
        },
        targets.clone(),
        history.clone(),
    );
    clusters.run(&schedule, history.start()).await;

    // Settle: every table has a leader every node agrees on; then stop the clients.
    for table in &tables {
        let settled = eventually(SETTLE, async || {
            clusters.leader.leader_of(table).await.is_some()
        })
        .await;
        if !settled {
            return Err(fail(
                format!("{table} had no agreed leader {SETTLE:?} after the last heal"),
                &history.stats(),
            ));
        }
    }
    log(history.start(), "settled; stopping the clients");
    workload.stop().await;
    final_reads(&history, &targets, &tables, options.keys)
        .await
        .map_err(|e| fail(e, &history.stats()))?;
    let stats = history.stats();

    let operations = history.operations();
    log(
        history.start(),
        &format!("checking {} operations", operations.len()),
    );
    let checking = Instant::now();
    let checked = tokio::task::spawn_blocking(move || history::check(&operations))
        .await
        .expect("checker task")
        .map_err(|failure| {
            let took = checking.elapsed().as_secs_f64();
            fail(format!("{failure}\n(checked in {took:.1} s)"), &stats)
        })?;

    let converging = Instant::now();
    let replicas = digest::wait_agree(
        &clusters.leader,
        clusters.follower.as_ref().map(|f| &f.cluster),
        &tables,
        CONVERGE,
    )
    .await
    .map_err(|e| fail(e, &stats))?;
    let converge_time = converging.elapsed();

    if let Some(f) = clusters.follower {
        f.cluster.stop().await;
    }
    clusters.leader.stop().await;
    Ok(Summary {
        schedule,
        stats,
        checked,
        replicas,
        converge_time,
        elapsed: began.elapsed(),
    })
}

/// Starts the leader cluster with its tables and, if asked, the follower cluster, and
/// waits until each table has a leader in each.
async fn start(options: &ChaosOptions, root: &Path, tables: &[String]) -> Clusters {
    let leader = Cluster::start(
        &root.join("leader"),
        ClusterOptions {
            proxies: true,
            replication: options.follower,
            ..ClusterOptions::default()
        },
    )
    .await;
    for table in tables {
        leader.create_table(table, SETUP).await;
        leader.wait_leader(table, SETUP).await;
    }
    let follower = if options.follower {
        let link = LinkProxy::start(leader.replication_addr(SOURCE)).await;
        let cluster = Cluster::start(
            &root.join("follower"),
            ClusterOptions {
                role: "follower".into(),
                extra_args: vec![
                    "--replication.leader-address".into(),
                    format!("http://{}", link.addr()),
                    "--replication.reconcile-interval".into(),
                    "200ms".into(),
                ],
                ..ClusterOptions::default()
            },
        )
        .await;
        for table in tables {
            cluster.wait_leader(table, SETUP).await;
        }
        Some(Follower { cluster, link })
    } else {
        None
    };
    Clusters { leader, follower }
}

/// Reads every register through every node that takes reads, linearizably and recorded,
/// retrying each until it succeeds: these reads pin down what the writes of unknown
/// outcome did, and show that every node serves again.
async fn final_reads(
    history: &Arc<History>,
    targets: &[Target],
    tables: &[String],
    keys: usize,
) -> Result<(), String> {
    let mut reader = RegisterClient::new(FINAL_READER, history.clone(), ReadMode::Linearizable);
    for target in targets.iter().filter(|t| t.reads) {
        for table in tables {
            for k in 0..keys {
                let key = format!("k{k}");
                let read = eventually(FINAL_READS, async || {
                    reader
                        .read(target.channel.clone(), table, &key)
                        .await
                        .is_some()
                })
                .await;
                if !read {
                    return Err(format!(
                        "no linearizable read of {table}/{key} through {} succeeded within \
                         {FINAL_READS:?} after the cluster settled",
                        target.name
                    ));
                }
            }
        }
    }
    Ok(())
}
