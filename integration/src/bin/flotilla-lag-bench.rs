//! Visibility lag of cross-cluster replication (write acknowledged on the leader cluster
//! -> readable on the follower cluster), run against a leader and a follower that are
//! already running (`scripts/bench-replication.sh` starts them).
//!
//! `flotilla-lag-bench --leader API --follower API [--rate 1000] [--seconds 30]
//!  [--value-bytes 256] [--table lag] [--poll-micros 0] [--cpu-pids leader=PID,follower=PID]
//!  [--leader-rest REST] [--follower-rest REST]`
//!
//! One paced, open-loop writer puts unique sequential keys (`lag/000000123`) to the leader
//! at `--rate` per second, each put in its own task so a slow put does not hold back the
//! next, and records when each is acknowledged. One observer loops on the follower with a
//! serializable keys-only Range from the first key it has not seen to the end of the
//! prefix (sleeping `--poll-micros` between calls) and records when each key first shows
//! up (when the Range answer arrives). Lag = visible - ack, clamped at 0 when the key
//! showed up before the ack reached the writer (the count of such keys is printed). It
//! also prints put latency, put sent -> visible, the observer's polling period, and the
//! CPU used by each process in `--cpu-pids`, this one and the whole machine (from `/proc`),
//! the bursts of slow keys, and (given their `/metrics` addresses) each side's fsyncs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use flotilla_integration::bench::lag;
use flotilla_integration::bench::replication::{connect, wait_until_replicating};
use flotilla_integration::bench::report::{CpuSample, Fsyncs, Pids};
use flotilla_integration::bench::store::create_table;

#[derive(Parser, Debug)]
#[command(
    about = "Measure how long a write acknowledged by the leader cluster takes to be \
                   readable on the follower cluster"
)]
struct Args {
    /// The leader cluster's API (host:port); the writer puts there.
    #[arg(long)]
    leader: String,
    /// The follower cluster's API (host:port); the observer reads there.
    #[arg(long)]
    follower: String,
    /// Puts per second (paced, open loop).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Length of the write phase; `--rate` x `--seconds` keys are written.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Bytes of every value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// The table written (created on the leader if missing).
    #[arg(long, default_value = "lag")]
    table: String,
    /// Pause of the observer between Ranges, in microseconds (0 = back to back).
    #[arg(long, default_value_t = 0)]
    poll_micros: u64,
    /// Processes whose CPU to report, as name=pid,name=pid.
    #[arg(long, default_value = "")]
    cpu_pids: Pids,
    /// The leader's /metrics address (host:port), to report its fsyncs.
    #[arg(long)]
    leader_rest: Option<String>,
    /// The follower's /metrics address (host:port), to report its fsyncs.
    #[arg(long)]
    follower_rest: Option<String>,
}

/// How long the last keys may take to show up on the follower after the writer is done.
const GRACE: Duration = Duration::from_secs(10);

async fn run(args: Args) -> Result<(), String> {
    let leader = connect(&args.leader).await?;
    let follower = connect(&args.follower).await?;
    let table = args.table;
    create_table(leader.clone(), &table)
        .await
        .map_err(|e| format!("creating table {table} on the leader: {e}"))?;
    wait_until_replicating(&leader, &follower, &table).await?;
    let n = args.rate * args.seconds;
    let poll = Duration::from_micros(args.poll_micros);
    println!(
        "rate {}/s for {} s ({n} keys), value {} B, table {table}, observer pause {} us",
        args.rate,
        args.seconds,
        args.value_bytes,
        poll.as_micros()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut observer = tokio::spawn(lag::observe(follower, table.clone(), n, poll, stop.clone()));
    let rests: Vec<(&str, String)> = [
        ("leader", args.leader_rest),
        ("follower", args.follower_rest),
    ]
    .into_iter()
    .filter_map(|(name, rest)| Some((name, rest?)))
    .collect();
    let mut fsyncs_before = Vec::new();
    for (_, rest) in &rests {
        fsyncs_before.push(Fsyncs::read(rest).await?);
    }
    let cpu_before = CpuSample::take(&args.cpu_pids);
    let writes = lag::write_paced(&leader, &table, n, args.rate, args.value_bytes).await?;
    let cpu_after = CpuSample::take(&args.cpu_pids);
    let mut fsync_lines = Vec::new();
    for ((name, rest), before) in rests.iter().zip(&fsyncs_before) {
        let after = Fsyncs::read(rest).await?;
        fsync_lines.push(after.report_since(before, name, writes.len()));
    }
    // The observer ends by itself once it has seen every key; after GRACE it is told to.
    let observed = match tokio::time::timeout(GRACE, &mut observer).await {
        Ok(finished) => finished,
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            observer.await
        }
    };
    let observed = observed.map_err(|e| format!("observer task: {e}"))??;
    for line in lag::report(&writes, &observed) {
        println!("{line}");
    }
    println!("{}", cpu_after.report_since(&cpu_before));
    for line in fsync_lines {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("flotilla-lag-bench: {e}");
        std::process::exit(1);
    }
}
