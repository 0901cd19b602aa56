//! The `flotilla` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Arg, ArgAction, Command};
use flotilla_ops::Settings;
use flotilla_ops::settings::{KEYS, env_var};
use flotilla_server::Role;

fn cli() -> Command {
    Command::new("flotilla")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Flotilla: a replicated key-value store, wire-compatible with Armada KV")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(node_command(
            "leader",
            "Run a node of the leader cluster (accepts writes, serves replication)",
        ))
        .subcommand(node_command(
            "follower",
            "Run a node of a follower cluster (replicates the leader cluster at --replication.leader-address, forwards writes to it)",
        ))
}

fn node_command(name: &'static str, about: &'static str) -> Command {
    let mut cmd = Command::new(name).about(about).arg(
        Arg::new("config")
            .long("config")
            .env("FLOTILLA_CONFIG")
            .value_name("FILE")
            .help("Config file (TOML, YAML or JSON); flags and FLOTILLA_* variables override it"),
    );
    for (key, help) in KEYS {
        cmd = cmd.arg(
            Arg::new(*key)
                .long(*key)
                .env(env_var(key))
                .value_name("VALUE")
                .action(ArgAction::Set)
                .help(*help),
        );
    }
    cmd
}

fn main() -> anyhow::Result<()> {
    let matches = cli().get_matches();
    let (role, args) = match matches.subcommand() {
        Some(("leader", args)) => (Role::Leader, args),
        Some(("follower", args)) => (Role::Follower, args),
        _ => anyhow::bail!("unknown subcommand"),
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
    runtime.block_on(run(settings, role))
}

async fn run(settings: Settings, role: Role) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let running = flotilla_server::start(settings, role).await?;
    let raft = running
        .raft_addr
        .map(|a| format!(", raft on {a}"))
        .unwrap_or_default();
    let replication = running
        .replication_addr
        .map(|a| format!(", replication on {a}"))
        .unwrap_or_default();
    let name = match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
    };
    println!(
        "flotilla {name}: API (gRPC) on {}, metrics on http://{}/metrics, data in {}{raft}{replication}",
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
