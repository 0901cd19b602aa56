//! Loads a table on a running leader cluster for the snapshot-recovery measurement
//! (`flotilla-recovery-bench`; `scripts/bench-replication.sh` runs both).
//!
//! `flotilla-load-table --leader API [--table snap] [--bytes 1073741824]
//!  [--value-bytes 65536] [--writers 4]`
//!
//! Puts `--bytes / --value-bytes` keys (`snap/00000000`, ...) with incompressible values
//! from `--writers` concurrent writers, and prints the load rate and, on a line of its own
//! for scripts, `table bytes: N` (the table's key + value bytes).

use clap::Parser;
use flotilla_integration::bench::replication::connect;
use flotilla_integration::bench::snapshot;
use flotilla_integration::bench::store::create_table;

#[derive(Parser, Debug)]
#[command(about = "Load a table with incompressible values for a snapshot-recovery measurement")]
struct Args {
    /// The leader cluster's API (host:port).
    #[arg(long)]
    leader: String,
    /// The table loaded (created if missing).
    #[arg(long, default_value = "snap")]
    table: String,
    /// Value bytes to write in all (rounded up to whole values).
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Bytes of every value.
    #[arg(
        long,
        default_value_t = 64 << 10,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    value_bytes: usize,
    /// Concurrent writers, each with one put in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    writers: u64,
}

async fn run(args: Args) -> Result<(), String> {
    let leader = connect(&args.leader).await?;
    let table = args.table;
    create_table(leader.clone(), &table)
        .await
        .map_err(|e| format!("creating table {table} on the leader: {e}"))?;
    let value_bytes = args.value_bytes;
    let loaded = snapshot::load(&leader, &table, args.bytes, value_bytes, args.writers).await?;
    let secs = loaded.elapsed.as_secs_f64().max(1e-3);
    println!(
        "loaded {} keys x {value_bytes} B values into {table} with {} writers: {} key+value bytes in {secs:.1} s = {:.1} MB/s",
        loaded.keys,
        args.writers,
        loaded.bytes,
        loaded.bytes as f64 / secs / 1e6
    );
    println!("table bytes: {}", loaded.bytes);
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("flotilla-load-table: {e}");
        std::process::exit(1);
    }
}
