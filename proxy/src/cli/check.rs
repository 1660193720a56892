//! `aegis check`: the gate, offline. The static stage loads and validates the
//! config set; the gate adds the replay stage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aegis_engine::config::{self, ConfigSource, Limits};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The config directory.
    #[arg(long, default_value = "configs")]
    pub config_dir: PathBuf,
}

/// The outcome of a static check, ready to print.
pub enum CheckOutcome {
    Valid { summary: String },
    Invalid { errors: Vec<String> },
}

pub fn check_static(dir: &Path) -> CheckOutcome {
    let source = match ConfigSource::read_dir(dir, Limits::default().max_file_size.0) {
        Ok(s) => s,
        Err(e) => {
            return CheckOutcome::Invalid {
                errors: vec![e.to_string()],
            };
        }
    };
    let settings = match config::parse_settings(&source) {
        Ok(s) => s,
        Err(d) => {
            return CheckOutcome::Invalid {
                errors: d.iter().map(|d| d.to_string()).collect(),
            };
        }
    };
    match config::compile(&source, &settings.limits) {
        Ok(c) => CheckOutcome::Valid {
            summary: c.summary(),
        },
        Err(d) => CheckOutcome::Invalid {
            errors: d.iter().map(|d| d.to_string()).collect(),
        },
    }
}

pub fn main(args: CheckArgs) -> ExitCode {
    match check_static(&args.config_dir) {
        CheckOutcome::Valid { summary } => {
            println!("ok: {}: {summary}", args.config_dir.display());
            ExitCode::SUCCESS
        }
        CheckOutcome::Invalid { errors } => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "invalid: {}: {} error(s)",
                args.config_dir.display(),
                errors.len()
            );
            ExitCode::from(1)
        }
    }
}
