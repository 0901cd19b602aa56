//! Client subcommands of the `flotilla` binary: `backup` and `restore` (issue 13), over
//! the connection flags in [`connect`].

pub mod backup;
pub mod connect;
pub mod manifest;
pub mod progress;
pub mod rate;
pub mod restore;
