//! Stamps `aegis --version` with the commit and the build date:
//! `AEGIS_VERSION_LONG` = `0.1.0 (3f6e51d 2026-12-01)`.
//!
//! The commit is `git rev-parse --short HEAD`, `-dirty` when tracked files
//! differ from it; `unknown` when git or the repository is missing (a
//! tarball or a Docker context without `.git` must still build), unless
//! `AEGIS_BUILD_COMMIT` names it. The date is UTC, from `SOURCE_DATE_EPOCH`
//! when set (reproducible builds), else now.
//!
//! This script reruns only when HEAD moves (`.git/HEAD`, the ref it points
//! to, `packed-refs`) or those variables change, never on the source tree:
//! a script that reran on every edit would relink the proxy for nothing
//! and a second `cargo test` would compile again. The price: `-dirty` and
//! the date are as of the last time HEAD moved (or a clean build), not of
//! every edit after it.

#[path = "engine/src/civil.rs"]
mod civil;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AEGIS_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var("AEGIS_BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit(&manifest).unwrap_or_else(|| "unknown".to_string()),
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!(
        "cargo:rustc-env=AEGIS_VERSION_LONG={version} ({commit} {})",
        build_date()
    );
}

/// `git <args>` in `dir`: its trimmed stdout, `None` on any failure.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        // Never take the index lock nor refresh the index: a build must not
        // write into .git (nor race an engineer's git command).
        .arg("--no-optional-locks")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The short commit of HEAD (`-dirty` with changes to tracked files), and
/// the rerun triggers for it.
fn git_commit(dir: &Path) -> Option<String> {
    let short = git(dir, &["rev-parse", "--short", "HEAD"]).filter(|s| !s.is_empty())?;
    // `--git-path` resolves worktrees and `$GIT_DIR`; paths are relative to
    // `dir`. Only existing files are watched: cargo treats a missing one
    // as changed on every build.
    let watch = |name: &str| {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", name]) {
            let p = dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
                return true;
            }
        }
        false
    };
    watch("HEAD");
    // Detached HEAD holds the commit itself; else it names a branch ref.
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        // A branch only in packed-refs gets its loose file on the next
        // commit: watch the directory it will appear in.
        if !watch(&r)
            && let Some(parent) = Path::new(&r).parent().and_then(|p| p.to_str())
        {
            watch(parent);
        }
    }
    watch("packed-refs");
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{short}-dirty")
    } else {
        short
    })
}

/// Today (UTC) as YYYY-MM-DD.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    let (y, m, d) = civil::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}
