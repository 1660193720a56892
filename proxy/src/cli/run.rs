//! `aegis run`: serve a config directory.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The config directory (watched).
    #[arg(long, default_value = "configs")]
    pub config_dir: PathBuf,
}

pub fn main(_args: RunArgs) -> ExitCode {
    eprintln!("aegis run: the data plane is not built yet");
    ExitCode::from(1)
}
