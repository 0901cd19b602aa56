//! Load generator for a running Flotilla node.
//!
//! `flotilla-bench --api 127.0.0.1:8443 --rest 127.0.0.1:8079 [--clients 64] [--seconds 10]
//!  [--tables 1] [--key-bytes 16] [--value-bytes 256]`
//!
//! Runs a put phase, then a point-get phase over the written keys, each for `--seconds`
//! with `--clients` concurrent clients spread over `--tables` tables, and prints
//! throughput, p50/p99 latency, and fsync rounds per 1,000 writes (from `/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::regatta::v1::kv_client::KvClient;
use flotilla_proto::regatta::v1::tables_client::TablesClient;
use flotilla_proto::regatta::v1::{CreateTableRequest, PutRequest, RangeRequest};
use tonic::transport::Channel;

struct Args {
    api: String,
    rest: String,
    clients: usize,
    seconds: u64,
    tables: usize,
    key_bytes: usize,
    value_bytes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        api: "127.0.0.1:8443".into(),
        rest: "127.0.0.1:8079".into(),
        clients: 64,
        seconds: 10,
        tables: 1,
        key_bytes: 16,
        value_bytes: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--api" => a.api = v.clone(),
            "--rest" => a.rest = v.clone(),
            "--clients" => a.clients = num()?,
            "--seconds" => a.seconds = num()? as u64,
            "--tables" => a.tables = num()?.max(1),
            "--key-bytes" => a.key_bytes = num()?.max(8),
            "--value-bytes" => a.value_bytes = num()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn key(client: usize, i: u64, len: usize) -> Vec<u8> {
    let mut k = format!("{client:04}{i:012}").into_bytes();
    k.resize(len, b'k');
    k
}

async fn fsync_counters(rest: &str) -> Result<(f64, f64), String> {
    let body = flotilla_testkit::metrics::scrape(rest)
        .await
        .ok_or(format!("reading /metrics on {rest}"))?;
    let get = |name: &str| {
        flotilla_testkit::metrics::value(&body, name).ok_or(format!("{name} missing from /metrics"))
    };
    Ok((
        get("flotilla_log_writer_fsync_rounds_total")?,
        get("flotilla_log_writer_writes_total")?,
    ))
}

struct Phase {
    ops: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

fn report(name: &str, p: &mut Phase) {
    p.latencies.sort();
    let pct = |q: f64| {
        p.latencies
            .get(((p.latencies.len() as f64 * q) as usize).min(p.latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{name}: {} ops in {:.1}s = {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
        p.ops,
        p.elapsed.as_secs_f64(),
        p.ops as f64 / p.elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
}

async fn run_phase(
    args: &Args,
    channel: &Channel,
    writes: bool,
    written: &[u64],
) -> Result<(Phase, Vec<u64>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut kv = KvClient::new(channel.clone());
        let stop = stop.clone();
        let tables = args.tables;
        // Request j of client c goes to table (c + j) % tables, so every table is written.
        let table_of = move |j: u64| format!("bench{}", (c + j as usize) % tables).into_bytes();
        let (kb, vb) = (args.key_bytes, args.value_bytes);
        let limit = written.get(c).copied().unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = if writes {
                    kv.put(PutRequest {
                        table: table_of(i),
                        key: key(c, i, kb),
                        value: vec![b'v'; vb],
                        prev_kv: false,
                    })
                    .await
                    .map(|_| ())
                } else {
                    let j = if limit == 0 { 0 } else { i % limit };
                    kv.range(RangeRequest {
                        table: table_of(j),
                        key: key(c, j, kb),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                };
                if let Err(e) = r {
                    return Err(format!("request failed: {e}"));
                }
                lat.push(started.elapsed());
                i += 1;
            }
            Ok((lat, i))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut phase = Phase {
        ops: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut counts = Vec::new();
    for t in tasks {
        let (lat, n) = t.await.map_err(|e| e.to_string())??;
        phase.ops += lat.len();
        phase.latencies.extend(lat);
        counts.push(n);
    }
    phase.elapsed = started.elapsed();
    Ok((phase, counts))
}

async fn bench(args: Args) -> Result<(), String> {
    let channel = Channel::from_shared(format!("http://{}", args.api))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut tables = TablesClient::new(channel.clone());
    for t in 0..args.tables {
        let r = tables
            .create(CreateTableRequest {
                name: format!("bench{t}"),
                config: None,
            })
            .await;
        if let Err(e) = r
            && e.message() != "table already exists"
        {
            return Err(format!("create table: {e}"));
        }
    }
    println!(
        "clients {}, tables {}, key {} B, value {} B, {} s per phase",
        args.clients, args.tables, args.key_bytes, args.value_bytes, args.seconds
    );
    let (rounds0, writes0) = fsync_counters(&args.rest).await?;
    let (mut puts, written) = run_phase(&args, &channel, true, &[]).await?;
    let (rounds1, _) = fsync_counters(&args.rest).await?;
    report("put", &mut puts);
    println!(
        "fsync rounds per 1000 writes: {:.1} ({} rounds, {} log-writer requests)",
        (rounds1 - rounds0) * 1000.0 / puts.ops as f64,
        rounds1 - rounds0,
        fsync_counters(&args.rest).await?.1 - writes0
    );
    let (mut gets, _) = run_phase(&args, &channel, false, &written).await?;
    report("get", &mut gets);
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flotilla-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(args).await {
        eprintln!("flotilla-bench: {e}");
        std::process::exit(1);
    }
}
