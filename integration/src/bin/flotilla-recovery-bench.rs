//! Snapshot recovery of a brand-new follower: how long a follower process takes, from its
//! start, to catch up with a table the leader can only send as a snapshot (loaded with
//! `flotilla-load-table`; `scripts/bench-replication.sh` starts the processes).
//!
//! `flotilla-recovery-bench --leader-rest REST --follower-rest REST --follower-api API
//!  --started-unix-nanos T --table-bytes B [--table snap] [--timeout-secs 900]
//!  [--cpu-pids leader=PID,follower=PID]`
//!
//! Polls the follower, started at wall-clock time T, every 20 ms until its
//! `flotilla_replication_applied_leader_index{table}` reaches the leader's
//! `flotilla_raft_applied_index{table}`, printing when each step was first seen (metrics
//! up, table leased, snapshot downloaded, data readable, caught up), MB/s = B / time, the
//! follower's own snapshot metrics and the CPU used meanwhile.

use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;
use flotilla_integration::bench::recovery::{Follower, Steps};
use flotilla_integration::bench::replication::{scrape, table_metric};
use flotilla_integration::bench::report::{CpuSample, Pids};

#[derive(Parser, Debug)]
#[command(about = "Time a brand-new follower's recovery of a table from a leader snapshot")]
struct Args {
    /// The leader's /metrics address (host:port).
    #[arg(long)]
    leader_rest: String,
    /// The follower's /metrics address (host:port).
    #[arg(long)]
    follower_rest: String,
    /// The follower's API address (host:port).
    #[arg(long)]
    follower_api: String,
    /// Wall-clock time the follower process was started, in nanoseconds since the Unix
    /// epoch (`date +%s%N`).
    #[arg(long)]
    started_unix_nanos: u64,
    /// Key + value bytes of the table (`table bytes:` of `flotilla-load-table`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    table_bytes: u64,
    /// The recovering table.
    #[arg(long, default_value = "snap")]
    table: String,
    /// Give up when the follower has not caught up this long after its start.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Processes whose CPU to report, as name=pid,name=pid.
    #[arg(long, default_value = "")]
    cpu_pids: Pids,
}

async fn run(args: Args) -> Result<(), String> {
    let table = args.table;
    let leader_page = scrape(&args.leader_rest).await?;
    let leader_index = table_metric(&leader_page, "flotilla_raft_applied_index", &table).ok_or(
        format!("flotilla_raft_applied_index of {table} missing on the leader"),
    )?;
    let follower = Follower {
        rest: args.follower_rest,
        api: args.follower_api,
        table: table.clone(),
        started: UNIX_EPOCH + Duration::from_nanos(args.started_unix_nanos),
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut steps = Steps::default();
    let cpu_before = CpuSample::take(&args.cpu_pids);
    let outcome = follower.watch(leader_index, timeout, &mut steps).await;
    let cpu_after = CpuSample::take(&args.cpu_pids);
    println!("leader applied index of {table}: {leader_index}");
    println!("from follower process start:");
    for line in steps.lines() {
        println!("{line}");
    }
    let page = outcome?;
    let mbps = |d: Option<Duration>| {
        d.map_or(0.0, |d| {
            args.table_bytes as f64 / d.as_secs_f64().max(1e-3) / 1e6
        })
    };
    println!(
        "end to end: {:.1} MB/s to caught up, {:.1} MB/s to readable ({} table bytes)",
        mbps(steps.caught_up),
        mbps(steps.readable),
        args.table_bytes
    );
    let m = |name: &str| table_metric(&page, name, &table).unwrap_or(f64::NAN);
    println!(
        "follower metrics: snapshot_bytes_total {}, snapshot_bytes_per_second {:.0} ({:.1} MB/s), snapshot_recoveries_total {}",
        m("flotilla_replication_snapshot_bytes_total"),
        m("flotilla_replication_snapshot_bytes_per_second"),
        m("flotilla_replication_snapshot_bytes_per_second") / 1e6,
        m("flotilla_replication_snapshot_recoveries_total")
    );
    println!("{}", cpu_after.report_since(&cpu_before));
    let keys = follower.count_keys().await?;
    println!("follower serves {keys} keys of {table}");
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("flotilla-recovery-bench: {e}");
        std::process::exit(1);
    }
}
