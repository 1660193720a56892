//! The sandbox runner, started by a real `aegis run` to judge a change,
//! holds no privilege while it replays: read from /proc while it is alive
//! (held at the replay stage by the runner's test hook), it runs as an
//! unprivileged user (when the proxy runs as root), with no capability in
//! any set, no_new_privs and a seccomp filter, and its environment holds
//! nothing of the proxy's (the admin token above all).

mod util;

use std::time::{Duration, Instant};

use util::Proxy;

const ROUTES: &str = util::HELLO_ROUTES;

const TOKEN: &str = "admin-token-that-must-not-leak-7f3a";

/// Pids of the `aegis-sandbox` processes whose parent is `parent`.
fn runners_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat
            .get(stat.find('(').unwrap_or(0) + 1..close)
            .unwrap_or("");
        let ppid: Option<u32> = stat
            .get(close + 2..)
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if comm.starts_with("aegis-sandbox") && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
}

#[test]
fn the_runner_replays_unprivileged_with_a_clean_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aegis.yaml"),
        "listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\naccess_log: \"off\"\nworkers: 0\n\
         gate: { debounce: 50ms }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("routes.yaml"), ROUTES).unwrap();
    let p = Proxy::try_spawn_in_env(
        dir,
        tempfile::tempdir().unwrap(),
        &[
            ("AEGIS_ADMIN_TOKEN", TOKEN.as_ref()),
            ("AEGIS_SANDBOX_TEST_HOLD_MS", "3000".as_ref()),
            ("SOME_PARENT_VARIABLE", "parent-value".as_ref()),
        ],
    )
    .unwrap();
    // A change for the gate to judge.
    p.write("routes.yaml", &ROUTES.replace("hello\\n", "hello again\\n"));

    // Wait for a runner held at the replay stage (after every drop).
    let start = Instant::now();
    let (pid, status) = loop {
        let found = runners_of(p.pid()).into_iter().find_map(|pid| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            // Before the drop the runner is still uid 0 / all caps: wait.
            (field(&st, "NoNewPrivs") == "1" && field(&st, "CapPrm") == "0000000000000000")
                .then_some((pid, st))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no unprivileged runner of pid {} seen",
            p.pid()
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let zero = "0000000000000000";
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(&status, set), zero, "{set}\n{status}");
    }
    assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
    assert_eq!(field(&status, "Seccomp"), "2", "{status}");
    // Root when its own status says so (no libc call needed).
    let me = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = field(&me, "Uid").starts_with("0\t");
    if root {
        assert_eq!(
            field(&status, "Uid"),
            "65534\t65534\t65534\t65534",
            "{status}"
        );
        assert_eq!(
            field(&status, "Gid"),
            "65534\t65534\t65534\t65534",
            "{status}"
        );
        assert_eq!(field(&status, "Groups"), "", "{status}");
        assert_eq!(field(&status, "CapBnd"), zero, "{status}");
    }

    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        !vars
            .iter()
            .any(|v| v.contains(TOKEN) || v.starts_with("SOME_PARENT")),
        "{vars:?}"
    );
    assert!(
        vars.iter()
            .all(|v| v.starts_with("AEGIS_SANDBOX_TEST_HOLD_MS=")
                || v.starts_with("RUST_BACKTRACE=")),
        "{vars:?}"
    );

    // And the change is still judged and promoted: the runner read its
    // 0600 snapshot before it gave up the right to.
    let start = Instant::now();
    loop {
        let got = util::raw(
            p.http,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        if got.contains("hello again") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the change was not promoted: {got}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
