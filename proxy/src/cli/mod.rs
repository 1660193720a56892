//! Subcommands of the `aegis` binary: each one's arguments and entry point.

pub mod check;
pub mod import_nginx;
pub mod run;
pub mod status;
