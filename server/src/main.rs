//! The `flotilla` binary.

mod cli;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Arg, ArgAction, Command};
use flotilla_ops::Settings;
use flotilla_ops::settings::{CONFIG_ENV, KEYS, SWITCHES, check_environment, env_var};
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
        .subcommand(cli::backup::command())
        .subcommand(cli::restore::command())
}

fn node_command(name: &'static str, about: &'static str) -> Command {
    let mut cmd = Command::new(name).about(about).arg(
        Arg::new("config")
            .long("config")
            .env(CONFIG_ENV)
            .value_name("FILE")
            .help(
                "Config file (TOML, YAML or JSON); flags and FLOTILLA_* variables override it \
                 [default: config.{toml,yaml,json} in /etc/flotilla/, $HOME/.flotilla/ or .]",
            ),
    );
    for (key, help) in KEYS {
        let mut arg = Arg::new(*key)
            .long(*key)
            .env(env_var(key))
            .value_name("VALUE")
            .action(ArgAction::Set)
            .help(*help);
        if SWITCHES.contains(key) {
            // `--api.client-cert-auth` alone means true, as with Armada's flags.
            arg = arg
                .value_name("BOOL")
                .num_args(0..=1)
                .default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what is wrong (e.g. the flag and the file), not a backtrace.
            eprintln!("flotilla: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    let matches = cli().get_matches();
    let (role, args) = match matches.subcommand() {
        Some(("leader", args)) => (Role::Leader, args),
        Some(("follower", args)) => (Role::Follower, args),
        Some((client @ ("backup" | "restore"), args)) => return run_client(client, args),
        _ => anyhow::bail!("unknown subcommand"),
    };
    // A node refuses FLOTILLA_* variables it does not know (a typo would otherwise be
    // ignored); client subcommands read their own.
    check_environment(std::env::vars())?;
    let mut overrides = BTreeMap::new();
    for (key, _) in KEYS {
        if let Some(v) = args.get_one::<String>(key) {
            overrides.insert((*key).to_owned(), v.clone());
        }
    }
    let file = args
        .get_one::<String>("config")
        .map(PathBuf::from)
        .or_else(Settings::discover_file);
    let settings = Settings::load(file.as_deref(), &overrides).with_context(|| match &file {
        Some(f) => format!("loading settings (config file {})", f.display()),
        None => "loading settings".to_owned(),
    })?;
    flotilla_ops::telemetry::init_tracing(&settings.log_level, settings.dev_mode)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("api")
        .build()?;
    runtime.block_on(run(settings, role))
}

/// Runs a client subcommand on a small runtime of its own.
fn run_client(name: &str, args: &clap::ArgMatches) -> anyhow::Result<()> {
    // Client subcommands log warnings only (their progress is their own output).
    let _ = flotilla_ops::telemetry::init_tracing("warn", false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    runtime.block_on(async {
        match name {
            "backup" => cli::backup::run(args).await,
            _ => cli::restore::run(args).await,
        }
    })
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
    let api = match (&running.api_addr, &running.api_socket) {
        (Some(addr), _) => addr.to_string(),
        (None, Some(path)) => format!("unix://{}", path.display()),
        (None, None) => "?".to_owned(),
    };
    println!(
        "flotilla {name}: API (gRPC) on {api}, metrics on http://{}/metrics, data in {}{raft}{replication}",
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
