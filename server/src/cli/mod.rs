//! Client subcommands of the `flotilla` binary: `backup` and `restore` (issue 13), over
//! the connection flags in [`connect`].

pub mod backup;
pub mod connect;
pub mod manifest;
pub mod progress;
pub mod rate;
pub mod restore;

use clap::{Arg, ArgAction, Command, value_parser};

/// The flags `backup` and `restore` share: which tables, how fast, how many at once,
/// and JSON output.
fn transfer_args(cmd: Command, verb: &'static str) -> Command {
    cmd.arg(
        Arg::new("tables")
            .long("tables")
            .value_name("A,B")
            .value_delimiter(',')
            .help(format!("Tables to {verb} [default: all]")),
    )
    .arg(
        Arg::new("json")
            .long("json")
            .action(ArgAction::SetTrue)
            .help("One JSON object per table on stdout, for scripts"),
    )
    .arg(
        Arg::new("rate-limit")
            .long("rate-limit")
            .value_name("BYTES/s")
            .value_parser(rate::parse_rate)
            .help("Most bytes per second over all tables, e.g. 50MB"),
    )
    .arg(
        Arg::new("parallel")
            .long("parallel")
            .value_name("N")
            .value_parser(value_parser!(u16).range(1..=64))
            .default_value("1")
            .help(format!("Tables to {verb} at once")),
    )
}
