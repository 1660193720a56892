//! `aegis import-nginx`: convert an nginx configuration.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The nginx.conf to read.
    pub nginx_conf: PathBuf,
    /// Where to write the Aegis config set.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn main(_args: ImportArgs) -> ExitCode {
    eprintln!("aegis import-nginx: not built yet");
    ExitCode::from(1)
}
