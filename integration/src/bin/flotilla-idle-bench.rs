//! What idle tables cost: starts a three-node cluster of the `flotilla` binary
//! (`FLOTILLA_BIN`, or the one beside this program), creates `--tables` tables, lets
//! them settle, then measures each node's CPU (share of one core) and RSS over
//! `--seconds` while nothing is written.
//!
//! `flotilla-idle-bench --tables 1000 [--seconds 30] [--hibernate-rtt 40]`
//!
//! `--hibernate-rtt 0` keeps every group ticking (the cost before hibernation), so one
//! run can measure both side by side.

use std::time::{Duration, Instant};

use clap::Parser;
use flotilla_integration::cluster::{Cluster, ClusterOptions};
use flotilla_proto::regatta::v1::{CreateTableRequest, tables_client::TablesClient};
use flotilla_testkit::process;
use futures::StreamExt as _;

#[derive(Parser, Debug)]
struct Args {
    /// Tables to create.
    #[arg(long, default_value_t = 1000)]
    tables: usize,
    /// Length of the measurement.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// `--raft.hibernate-rtt` of every node (0 = groups never hibernate).
    #[arg(long, default_value_t = 40)]
    hibernate_rtt: u64,
    /// Table creations in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

const HIBERNATING: &str = "flotilla_raft_hibernating_groups";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let root = tempfile_dir();
    let opts = ClusterOptions {
        extra_args: vec![
            "--raft.hibernate-rtt".into(),
            args.hibernate_rtt.to_string(),
        ],
        start_timeout: Duration::from_secs(60),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(&root, opts).await;

    let started = Instant::now();
    let tables = TablesClient::new(cluster.channel(1));
    let created = futures::stream::iter(0..args.tables)
        .map(|i| {
            let mut tables = tables.clone();
            async move {
                let name = format!("idle{i:05}");
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let req = CreateTableRequest {
                        name: name.clone(),
                        config: None,
                    };
                    match tables.create(req).await {
                        Ok(_) => return true,
                        Err(s) if s.message().contains("already exists") => return true,
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            eprintln!("create {name}: {e}");
                            return false;
                        }
                    }
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    println!(
        "created {created} of {} tables in {:.1} s",
        args.tables,
        started.elapsed().as_secs_f64()
    );

    // Settle: every group of every node asleep (with hibernation), or a fixed quiet
    // period (without).
    let groups = (args.tables + 1) as f64;
    if args.hibernate_rtt > 0 {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut asleep = Vec::new();
            for id in Cluster::ids() {
                asleep.push(cluster.node(id).metric(HIBERNATING).await.unwrap_or(0.0));
            }
            if asleep.iter().all(|&a| a >= groups) {
                break;
            }
            if Instant::now() > deadline {
                println!("not every group hibernated within 300 s: {asleep:?} of {groups}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pids: Vec<(u64, u32)> = Cluster::ids()
        .filter_map(|id| Some((id, cluster.node(id).pid()?)))
        .collect();
    let before: Vec<Option<u64>> = pids.iter().map(|(_, p)| process::cpu_ticks(*p)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    println!(
        "{} tables, hibernate-rtt {}, {} s idle:",
        args.tables, args.hibernate_rtt, args.seconds
    );
    for ((id, pid), before) in pids.iter().zip(before) {
        let cpu = match (before, process::cpu_ticks(*pid)) {
            (Some(b), Some(a)) => {
                format!(
                    "{:.1}%",
                    100.0 * (a - b) as f64 / process::TICKS_PER_SECOND / elapsed
                )
            }
            _ => "?".into(),
        };
        let rss = process::rss_bytes(*pid).map_or("?".into(), |b| format!("{} MiB", b >> 20));
        let asleep = cluster.node(*id).metric(HIBERNATING).await.unwrap_or(0.0);
        println!("  node {id}: cpu {cpu} of one core, rss {rss}, hibernating groups {asleep}");
    }
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// A fresh directory for the nodes' data.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-idle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}
