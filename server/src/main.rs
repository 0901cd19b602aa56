//! The `flotilla` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Arg, ArgAction, Command};
use flotilla_ops::Settings;
use flotilla_ops::settings::{KEYS, env_var};

fn cli() -> Command {
    let mut leader = Command::new("leader")
        .about("Run a node of the leader cluster (accepts writes)")
        .arg(
            Arg::new("config")
                .long("config")
                .env("FLOTILLA_CONFIG")
                .value_name("FILE")
                .help(
                    "Config file (TOML, YAML or JSON); flags and FLOTILLA_* variables override it",
                ),
        );
    for (key, help) in KEYS {
        leader = leader.arg(
            Arg::new(*key)
                .long(*key)
                .env(env_var(key))
                .value_name("VALUE")
                .action(ArgAction::Set)
                .help(*help),
        );
    }
    Command::new("flotilla")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Flotilla: a replicated key-value store, wire-compatible with Armada KV")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(leader)
}

fn main() -> anyhow::Result<()> {
    let matches = cli().get_matches();
    let Some(("leader", args)) = matches.subcommand() else {
        anyhow::bail!("unknown subcommand");
    };
    let mut overrides = BTreeMap::new();
    for (key, _) in KEYS {
        if let Some(v) = args.get_one::<String>(key) {
            overrides.insert((*key).to_owned(), v.clone());
        }
    }
    let file = args.get_one::<String>("config").map(PathBuf::from);
    let settings = Settings::load(file.as_deref(), &overrides).context("loading settings")?;
    flotilla_ops::telemetry::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("api")
        .build()?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let running = flotilla_server::start(settings).await?;
    let raft = running
        .raft_addr
        .map(|a| format!(", raft on {a}"))
        .unwrap_or_default();
    println!(
        "flotilla leader: API (gRPC) on {}, metrics on http://{}/metrics, data in {}{raft}",
        running.api_addr,
        running.rest_addr,
        data_dir.display()
    );
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = running.stopped() => tracing::error!("a server stopped unexpectedly"),
    }
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("no SIGTERM handler: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
