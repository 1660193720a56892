//! `aegis import-nginx`: convert an nginx configuration into an Aegis config
//! set. The work is in the `aegis-import-nginx` crate; this module parses the
//! arguments, prints the findings and chooses the exit code:
//!
//! - 0: written, nothing that changes behaviour was dropped (or
//!   `--allow-partial` was given);
//! - 1: something that changes behaviour was dropped (nothing is written
//!   unless `--allow-partial`), or the generated set did not load;
//! - 2: the nginx configuration could not be read or the output written.

use std::path::PathBuf;
use std::process::ExitCode;

use aegis_import_nginx::{Impact, ImportError};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The nginx.conf to read (includes are followed relative to its directory).
    pub nginx_conf: PathBuf,
    /// Where to write the Aegis config set (created; must hold no config files).
    #[arg(long)]
    pub out: PathBuf,
    /// Write the set even when directives that change behaviour were dropped.
    #[arg(long)]
    pub allow_partial: bool,
    /// The admin listener of the generated aegis.yaml.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// Print only dropped directives, not the ones carried with a difference
    /// or ignored.
    #[arg(long)]
    pub quiet: bool,
}

pub fn main(args: ImportArgs) -> ExitCode {
    let conv = match aegis_import_nginx::import(&args.nginx_conf, &args.admin) {
        Ok(c) => c,
        Err(e) => {
            crate::say!("aegis import-nginx: {e}");
            return ExitCode::from(2);
        }
    };
    let count = |i: Impact| conv.findings.iter().filter(|f| f.impact == i).count();
    for f in &conv.findings {
        if !args.quiet || f.impact == Impact::Dropped {
            crate::say!("{f}");
        }
    }
    let dropped = count(Impact::Dropped);
    let carried = conv
        .report
        .iter()
        .filter(|f| f.impact == Impact::Carried)
        .count();
    crate::say!(
        "{} dropped, {} carried with a difference, {} ignored, {carried} carried exactly \
         (each directive once in IMPORT-REPORT.txt)",
        dropped,
        count(Impact::Differs),
        count(Impact::Ignored)
    );
    let left_out = conv.left_out();
    if !left_out.is_empty() {
        crate::say!(
            "features Aegis leaves out that this config uses (docs/nginx-migration.md): {}",
            left_out.join("; ")
        );
    }
    if dropped > 0 && !args.allow_partial {
        let others = conv.blocking().count();
        crate::say!(
            "aegis import-nginx: not written: {dropped} directive(s) that change behaviour could \
             not be carried over (listed above; {} of them belong to the left-out features); \
             fix them or pass --allow-partial",
            dropped.saturating_sub(others)
        );
        return ExitCode::from(1);
    }
    match aegis_import_nginx::write_set(&conv, &args.nginx_conf, &args.out) {
        Ok(summary) => {
            println!("wrote {}: {summary}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e @ ImportError::Invalid(_)) => {
            crate::say!("aegis import-nginx: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            crate::say!("aegis import-nginx: {e}");
            ExitCode::from(2)
        }
    }
}
