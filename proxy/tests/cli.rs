//! The command line explains itself: `aegis --version` names the build,
//! `aegis run --help` the signals, exit codes, state and admin API, and
//! `aegis status` reads a running proxy's admin API for a person.

mod util;

use std::process::{Command, Output};

use util::*;

const ROUTES: &str = "routes: [{ name: r, match: { path_prefix: / }, respond: { body: ok } }]\n";

/// `aegis ARGS`, without a token inherited from the environment.
fn aegis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(args)
        .env_remove("AEGIS_ADMIN_TOKEN")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let out = aegis(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    // aegis 0.1.0 (3f6e51d 2026-12-01)
    let inner = line
        .trim()
        .strip_prefix(&format!("aegis {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `aegis VERSION (COMMIT DATE)`: {line:?}"));
    let (commit, date) = inner.split_once(' ').unwrap();
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?} in {line:?}"
    );
    let b = date.as_bytes();
    assert!(
        b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && date.chars().filter(char::is_ascii_digit).count() == 8,
        "date {date:?} in {line:?}"
    );
    assert_eq!(stdout(&aegis(&["-V"])), line);
}

#[test]
fn run_help_explains_signals_exit_codes_state_and_admin() {
    let out = aegis(&["run", "--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    for needle in [
        "SIGHUP",
        "SIGTERM",
        "drain_timeout",
        "Exit codes:",
        "  3  the config directory was rejected by the gate at first start",
        "--state-dir",
        "./aegis-state",
        "sample.jsonl",
        "/admin/config",
        "/admin/verdicts",
        "/admin/workers",
        "POST /admin/confirm",
        "POST /admin/rollback",
        "POST /admin/rejudge",
    ] {
        assert!(help.contains(needle), "`{needle}` not in:\n{help}");
    }
    // The code in the help is the code `aegis run` exits with.
    assert_eq!(aegis_proxy::cli::run::EXIT_REJECTED, 3);
    // The short help stays short and points at the long one.
    let short = stdout(&aegis(&["run", "-h"]));
    assert!(!short.contains("SIGHUP"), "{short}");
    assert!(short.contains("--help"), "{short}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_active_version_and_the_verdicts() {
    let p = Proxy::start("", ROUTES);
    let admin = p.admin.unwrap().to_string();
    let config = admin_get(&p, "/admin/config").await.json();
    let active = config["active"]["id"].as_str().unwrap().to_string();
    let verdicts = admin_get(&p, "/admin/verdicts").await.json();
    let newest = verdicts[0]["id"].as_str().unwrap().to_string();

    let out = aegis(&["status", "--admin", &admin]);
    let text = stdout(&out);
    println!("{text}");
    assert!(out.status.success(), "{}{text}", stderr(&out));
    assert!(
        text.starts_with(&format!("active   {active} (engine ")),
        "{text}"
    );
    assert!(text.contains("\nrollout  steady"), "{text}");
    assert!(
        text.contains("\nworkers  none: one process serves"),
        "{text}"
    );
    assert!(text.contains("\nverdicts (newest first)\n"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("  ") && l.contains(&newest))
        .unwrap_or_else(|| panic!("no verdict line for {newest}:\n{text}"));
    assert!(line.contains(" accept: "), "{line}");

    // --json: the three documents in one object.
    let out = aegis(&["status", "--admin", &admin, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all["config"]["active"]["id"], active.as_str());
    assert_eq!(all["verdicts"][0]["id"], newest.as_str());
    assert!(all["workers"].is_null(), "{all}");

    // The config directory's aegis.yaml asks for any free port: the
    // address is unknowable from it, and status says what to do.
    let out = aegis(&["status", "--config-dir", p.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("port 0"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sends_the_token_aegis_requires() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "s3cret\n").unwrap();
    let token_path = token.path().to_str().unwrap();
    let p = Proxy::start(&format!("admin_token_file: \"{token_path}\"\n"), ROUTES);
    let admin = p.admin.unwrap().to_string();

    let out = aegis(&["status", "--admin", &admin]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&admin) && err.contains("401"), "{err}");

    let out = aegis(&["status", "--admin", &admin, "--token-file", token_path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("active   "), "{}", stdout(&out));

    // No flags: the admin address and the token file from aegis.yaml.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aegis.yaml"),
        format!("admin: \"{admin}\"\nadmin_token_file: \"{token_path}\"\n"),
    )
    .unwrap();
    let out = aegis(&["status", "--config-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("active   "), "{}", stdout(&out));
}

#[test]
fn status_against_a_closed_port_says_where_it_looked() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = aegis(&["status", "--admin", &addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.starts_with("aegis status: "), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(err.contains("is aegis running? (admin setting: "), "{err}");

    // Without --admin and without a config directory: the default address,
    // and the message says it is the default.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["status", "--config-dir"])
        .arg(dir.path())
        .env_remove("AEGIS_ADMIN_TOKEN")
        .output()
        .unwrap();
    if out.status.success() {
        // Something serves an aegis admin API on 127.0.0.1:9901 here.
        return;
    }
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:9901"), "{err}");
    if err.contains("cannot connect") {
        assert!(err.contains("from the default, no "), "{err}");
    }
}
