//! Side-by-side load generator: the same workloads against a Flotilla cluster and an etcd
//! cluster, alternating rounds (Flotilla first in odd rounds, etcd first in even ones) so
//! both see the same machine, and the ratio Flotilla / etcd per workload.
//!
//! `flotilla-vs-etcd --flotilla 127.0.0.1:8443 --etcd 127.0.0.1:2379 [--rounds 3]
//!  [--seconds 10] [--clients 64] [--connections 8] [--workloads put,scan]`
//!
//! Connections are spread over the endpoints given for each system (connection `i` to
//! endpoint `i % n`); writes sent to a follower are forwarded by either system itself.
//! Without `--etcd` only Flotilla runs (for profiling). Given the nodes' PIDs
//! (`--flotilla-pids`, `--etcd-pids`) each round also prints the CPU time the nodes spent
//! per request, in total and per node (from `/proc`).
//! Run by `scripts/bench-vs-etcd.sh`, which also starts both clusters.

use std::time::Duration;

use clap::Parser;
use flotilla_integration::bench::load::{self, KeySpace, RoundResult, Workload};
use flotilla_integration::bench::replication::connect;
use flotilla_integration::bench::store::{self, Store, System};
use flotilla_testkit::process;

#[derive(Parser, Debug)]
#[command(about = "Drive Flotilla and etcd with the same load and print their ratio")]
struct Args {
    /// Flotilla API endpoints (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    flotilla: Vec<String>,
    /// etcd client endpoints (host:port), comma-separated; none runs Flotilla alone.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// PIDs of the Flotilla nodes, for CPU per request.
    #[arg(long, value_delimiter = ',')]
    flotilla_pids: Vec<u32>,
    /// PIDs of the etcd nodes, for CPU per request.
    #[arg(long, value_delimiter = ',')]
    etcd_pids: Vec<u32>,
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
    /// The Flotilla table used (created if missing); with `--tables N` above 1, tables
    /// TABLE0..TABLE{N-1}, each key always in the same one.
    #[arg(long, default_value = "bench")]
    table: String,
    /// How many Flotilla tables the keys are spread over (each its own raft group).
    #[arg(long, default_value_t = 1)]
    tables: usize,
}

impl Args {
    fn table_names(&self) -> Vec<String> {
        match self.tables {
            0 | 1 => vec![self.table.clone()],
            n => (0..n).map(|i| format!("{}{i}", self.table)).collect(),
        }
    }
}

/// One system under test: its connections and its nodes' processes.
struct Side {
    system: System,
    stores: Vec<Store>,
    pids: Vec<u32>,
}

impl Side {
    async fn open(
        args: &Args,
        system: System,
        deadline: tokio::time::Instant,
    ) -> Result<Self, String> {
        let (endpoints, pids) = match system {
            System::Flotilla => (&args.flotilla, &args.flotilla_pids),
            System::Etcd => (&args.etcd, &args.etcd_pids),
        };
        let mut stores = Vec::new();
        for i in 0..args.connections.max(1) {
            let channel = connect(&endpoints[i % endpoints.len()]).await?;
            stores.push(Store::new(system, channel, &args.table_names()));
        }
        // A cluster just started may still be electing: every connection must take a
        // write before the clock starts.
        let ready = KeySpace {
            keys: 1,
            key_bytes: args.key_bytes,
            value_bytes: 1,
        };
        for store in &stores {
            let mut store = store.clone();
            while let Err(e) = store.put(ready.key(0), b"ready".to_vec()).await {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("{} never took a write: {e}", system.name()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(Side {
            system,
            stores,
            pids: pids.clone(),
        })
    }

    fn cpu_ticks(&self) -> Vec<u64> {
        self.pids
            .iter()
            .map(|pid| process::cpu_ticks(*pid).unwrap_or(0))
            .collect()
    }

    /// One round, with the CPU its nodes spent meanwhile.
    async fn round(
        &self,
        args: &Args,
        workload: Workload,
        space: KeySpace,
    ) -> Result<Measured, String> {
        let before = self.cpu_ticks();
        let result = load::round(
            &self.stores,
            args.clients,
            workload,
            space,
            Duration::from_secs(args.seconds),
        )
        .await
        .map_err(|e| format!("{workload:?} on {}: {e}", self.system.name()))?;
        let after = self.cpu_ticks();
        let ops = result.ops.max(1) as f64;
        let cpu_us_per_op = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.saturating_sub(*b) as f64 / process::TICKS_PER_SECOND * 1e6 / ops)
            .collect();
        Ok(Measured {
            result,
            cpu_us_per_op,
        })
    }
}

struct Measured {
    result: RoundResult,
    /// Per node: CPU microseconds spent per request answered.
    cpu_us_per_op: Vec<f64>,
}

impl Measured {
    fn line(&self, system: System) -> String {
        let r = &self.result;
        let mut line = format!(
            "{} {:.0} ops/s p50 {:.2} ms p99 {:.2} ms",
            system.name(),
            r.ops_per_second(),
            r.quantile(0.50).as_secs_f64() * 1e3,
            r.quantile(0.99).as_secs_f64() * 1e3
        );
        if !self.cpu_us_per_op.is_empty() {
            let nodes: Vec<String> = self
                .cpu_us_per_op
                .iter()
                .map(|c| format!("{c:.0}"))
                .collect();
            line += &format!(
                " cpu {:.0} us/op (nodes {})",
                self.cpu_us_per_op.iter().sum::<f64>(),
                nodes.join(" ")
            );
        }
        line
    }
}

/// Means over the rounds of one workload, per side.
#[derive(Default)]
struct Summary {
    ratios: Vec<f64>,
    ops: Vec<Vec<f64>>,
    p99_ms: Vec<Vec<f64>>,
    cpu_us: Vec<Vec<f64>>,
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let channel = connect(&args.flotilla[0]).await?;
    for table in args.table_names() {
        let created = loop {
            let attempt = store::create_table(channel.clone(), &table).await;
            if attempt.is_ok() || tokio::time::Instant::now() > deadline {
                break attempt;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        created.map_err(|e| format!("creating table {table}: {e}"))?;
    }
    let mut sides = vec![Side::open(&args, System::Flotilla, deadline).await?];
    if !args.etcd.is_empty() {
        sides.push(Side::open(&args, System::Etcd, deadline).await?);
    }
    for side in &sides {
        load::preload(&side.stores, args.clients, space)
            .await
            .map_err(|e| format!("{} preload: {e}", side.system.name()))?;
    }
    println!(
        "# {}: clients {}, connections {}, Flotilla tables {}, keys {} x {} B, values {} B, {} s per round, {} rounds",
        args.label,
        args.clients,
        args.connections,
        args.table_names().len(),
        args.keys,
        args.key_bytes,
        args.value_bytes,
        args.seconds,
        args.rounds
    );
    let mut summaries = Vec::new();
    for &workload in &args.workloads {
        let mut summary = Summary {
            ops: vec![Vec::new(); sides.len()],
            p99_ms: vec![Vec::new(); sides.len()],
            cpu_us: vec![Vec::new(); sides.len()],
            ..Summary::default()
        };
        for r in 0..args.rounds {
            // Alternate who goes first, so neither always runs on a warmer machine.
            let mut order: Vec<usize> = (0..sides.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            let mut measured: Vec<Option<Measured>> = sides.iter().map(|_| None).collect();
            for s in order {
                measured[s] = Some(sides[s].round(&args, workload, space).await?);
            }
            let measured: Vec<Measured> = measured.into_iter().flatten().collect();
            let lines: Vec<String> = measured
                .iter()
                .zip(&sides)
                .map(|(m, side)| m.line(side.system))
                .collect();
            let mut line = format!("{workload:?} round {}: {}", r + 1, lines.join(" | "));
            if let [ours, theirs] = measured.as_slice() {
                let ratio = ours.result.ops_per_second() / theirs.result.ops_per_second().max(1e-9);
                line += &format!(" | ratio {ratio:.2}x");
                summary.ratios.push(ratio);
            }
            println!("{line}");
            for (i, m) in measured.iter().enumerate() {
                summary.ops[i].push(m.result.ops_per_second());
                summary.p99_ms[i].push(m.result.quantile(0.99).as_secs_f64() * 1e3);
                summary.cpu_us[i].push(m.cpu_us_per_op.iter().sum());
            }
        }
        summaries.push((workload, summary));
    }
    println!();
    if sides.len() == 2 {
        println!(
            "| {} workload | Flotilla ops/s | etcd ops/s | Flotilla / etcd | p99 Flotilla vs etcd | CPU/op Flotilla vs etcd (all nodes) |",
            args.label
        );
        println!("|---|---|---|---|---|---|");
        for (workload, s) in summaries {
            println!(
                "| {workload:?} | {:.0} | {:.0} | {:.2}x | {:.1} vs {:.1} ms | {:.0} vs {:.0} us |",
                mean(&s.ops[0]),
                mean(&s.ops[1]),
                mean(&s.ratios),
                mean(&s.p99_ms[0]),
                mean(&s.p99_ms[1]),
                mean(&s.cpu_us[0]),
                mean(&s.cpu_us[1])
            );
        }
    } else {
        println!(
            "| {} workload | Flotilla ops/s | p99 | CPU/op (all nodes) |",
            args.label
        );
        println!("|---|---|---|---|");
        for (workload, s) in summaries {
            println!(
                "| {workload:?} | {:.0} | {:.1} ms | {:.0} us |",
                mean(&s.ops[0]),
                mean(&s.p99_ms[0]),
                mean(&s.cpu_us[0])
            );
        }
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
