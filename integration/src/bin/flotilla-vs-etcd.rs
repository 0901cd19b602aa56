//! Side-by-side load generator: the same workloads against a Flotilla cluster and an etcd
//! cluster, alternating rounds (Flotilla first in odd rounds, etcd first in even ones) so
//! both see the same machine, and the ratio Flotilla / etcd per workload.
//!
//! `flotilla-vs-etcd --flotilla 127.0.0.1:8443 --etcd 127.0.0.1:2379 [--rounds 3]
//!  [--seconds 10] [--clients 64] [--connections 8] [--workloads put,scan]`
//!
//! Connections are spread over the endpoints given for each system (connection `i` to
//! endpoint `i % n`); writes sent to a follower are forwarded by either system itself.
//! Run by `scripts/bench-vs-etcd.sh`, which also starts both clusters.

use std::time::Duration;

use clap::Parser;
use flotilla_integration::bench::load::{self, KeySpace, RoundResult, Workload};
use flotilla_integration::bench::store::{self, Store, System};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(about = "Drive Flotilla and etcd with the same load and print their ratio")]
struct Args {
    /// Flotilla API endpoints (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    flotilla: Vec<String>,
    /// etcd client endpoints (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// A label for the output (e.g. "3 nodes").
    #[arg(long, default_value = "")]
    label: String,
    /// Workloads to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,serializable-get,linearizable-get,scan"
    )]
    workloads: Vec<Workload>,
    /// Rounds per workload and system.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections per system, shared by the clients.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Distinct keys (all written before the first round).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_bytes: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// The Flotilla table used (created if missing).
    #[arg(long, default_value = "bench")]
    table: String,
}

async fn connect(endpoint: &str) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("{endpoint}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting to {endpoint}: {e}"))
}

async fn connections(args: &Args, system: System) -> Result<Vec<Store>, String> {
    let endpoints = match system {
        System::Flotilla => &args.flotilla,
        System::Etcd => &args.etcd,
    };
    let mut stores = Vec::new();
    for i in 0..args.connections.max(1) {
        let channel = connect(&endpoints[i % endpoints.len()]).await?;
        stores.push(Store::new(system, channel, &args.table));
    }
    Ok(stores)
}

fn line(system: System, r: &RoundResult) -> String {
    format!(
        "{} {:.0} ops/s p50 {:.2} ms p99 {:.2} ms",
        system.name(),
        r.ops_per_second(),
        r.quantile(0.50).as_secs_f64() * 1e3,
        r.quantile(0.99).as_secs_f64() * 1e3
    )
}

/// Means over the rounds of one workload, per system.
#[derive(Default)]
struct Summary {
    ratios: Vec<f64>,
    ops: [Vec<f64>; 2],
    p99_ms: [Vec<f64>; 2],
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

async fn run(args: Args) -> Result<(), String> {
    let space = KeySpace {
        keys: args.keys,
        key_bytes: args.key_bytes,
        value_bytes: args.value_bytes,
    };
    // A cluster just started may still be electing: retry until the table exists and
    // takes a write on every system, for at most a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let created = loop {
        let attempt = store::create_table(connect(&args.flotilla[0]).await?, &args.table).await;
        if attempt.is_ok() || tokio::time::Instant::now() > deadline {
            break attempt;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    created.map_err(|e| format!("creating table {}: {e}", args.table))?;
    let systems = [System::Flotilla, System::Etcd];
    let mut stores = Vec::new();
    for system in systems {
        let conns = connections(&args, system).await?;
        for store in &conns {
            let mut store = store.clone();
            loop {
                let put = store.put(space.key(0), b"ready".to_vec()).await;
                match put {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        return Err(format!("{} never took a write: {e}", system.name()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        load::preload(&conns, args.clients, space)
            .await
            .map_err(|e| format!("{} preload: {e}", system.name()))?;
        stores.push(conns);
    }
    println!(
        "# {}: clients {}, connections {}, keys {} x {} B, values {} B, {} s per round, {} rounds",
        args.label,
        args.clients,
        args.connections,
        args.keys,
        args.key_bytes,
        args.value_bytes,
        args.seconds,
        args.rounds
    );
    let duration = Duration::from_secs(args.seconds);
    let mut summaries = Vec::new();
    for &workload in &args.workloads {
        let name = format!("{workload:?}");
        let mut summary = Summary::default();
        for r in 0..args.rounds {
            let one = |s: usize| {
                let name = &name;
                let stores = &stores[s];
                async move {
                    load::round(stores, args.clients, workload, space, duration)
                        .await
                        .map_err(|e| format!("{name} on {}: {e}", systems[s].name()))
                }
            };
            let (ours, theirs) = if r % 2 == 0 {
                let ours = one(0).await?;
                (ours, one(1).await?)
            } else {
                let theirs = one(1).await?;
                (one(0).await?, theirs)
            };
            let ratio = ours.ops_per_second() / theirs.ops_per_second().max(1e-9);
            println!(
                "{name} round {}: {} | {} | ratio {ratio:.2}x",
                r + 1,
                line(System::Flotilla, &ours),
                line(System::Etcd, &theirs)
            );
            summary.ratios.push(ratio);
            for (i, res) in [&ours, &theirs].into_iter().enumerate() {
                summary.ops[i].push(res.ops_per_second());
                summary.p99_ms[i].push(res.quantile(0.99).as_secs_f64() * 1e3);
            }
        }
        summaries.push((name, summary));
    }
    println!();
    println!(
        "| {} workload | Flotilla ops/s | etcd ops/s | Flotilla / etcd | p99 Flotilla vs etcd |",
        args.label
    );
    println!("|---|---|---|---|---|");
    for (name, s) in summaries {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}x | {:.1} vs {:.1} ms |",
            mean(&s.ops[0]),
            mean(&s.ops[1]),
            mean(&s.ratios),
            mean(&s.p99_ms[0]),
            mean(&s.p99_ms[1])
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("flotilla-vs-etcd: {e}");
        std::process::exit(1);
    }
}
