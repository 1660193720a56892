//! The watcher with a relative `--config-dir` (the README's `configs`):
//! an edit in place is seen, and the gate's own reads of the directory do
//! not wake it again (they once made it re-judge a rejected candidate every
//! few hundred milliseconds, counting the rejection each time).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("null")).unwrap()
}

const GOOD: &str = "routes:\n  - name: hello\n    match: { path_prefix: / }\n    respond: { status: 200, body: \"hello\\n\" }\n";

#[test]
fn relative_config_dir_sees_edits_in_place_and_does_not_rejudge_itself() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("configs");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("aegis.yaml"),
        "listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\nworkers: 0\naccess_log: \"off\"\ngate: { debounce: 50ms }\n",
    )
    .unwrap();
    std::fs::write(conf.join("routes.yaml"), GOOD).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .current_dir(root.path())
        .args(["run", "--config-dir", "configs", "--state-dir", "state"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let proc = Running(child);
    let mut admin = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("aegis: listening admin ") {
            admin = Some(a.parse::<SocketAddr>().unwrap());
            break;
        }
    }
    let admin = admin.expect("aegis did not start");
    let v0 = admin_json(admin, "/admin/config")["version"].clone();

    // An invalid file, written in place (no rename: only the file's own
    // events say it changed).
    std::fs::write(conf.join("routes.yaml"), "routes: [").unwrap();
    let start = Instant::now();
    while admin_json(admin, "/admin/config")["rejections"]["invalid"] != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the in-place edit was not judged: {}",
            admin_json(admin, "/admin/config")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let config = admin_json(admin, "/admin/config");
    assert_eq!(config["rejections"]["invalid"], 1, "re-judged: {config}");
    assert_eq!(config["candidates"], 2, "startup + the edit: {config}");
    assert_eq!(config["version"], v0);

    // A fix, in place again, is promoted.
    std::fs::write(
        conf.join("routes.yaml"),
        GOOD.replace("hello\\n", "fixed\\n"),
    )
    .unwrap();
    let start = Instant::now();
    while admin_json(admin, "/admin/config")["version"] == v0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the fix was not promoted: {}",
            admin_json(admin, "/admin/config")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new version is a promotion, not a rollback.
    let config = admin_json(admin, "/admin/config");
    assert_eq!(config["rollbacks"], 0, "{config}");
    drop(proc);
}
