//! Live load for the process-level scenarios: client threads sending one
//! request per connection (`Connection: close`) back to back, counting what
//! came back, and small synchronous helpers for the admin API and worker
//! processes. One request per connection bounds "in flight on a killed
//! worker" to one request per client thread.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Proxy;

/// What the load saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// 200 answers.
    pub ok: u64,
    /// Complete answers with another status, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Connected, but no complete answer (reset, timeout).
    pub broken: u64,
    /// Nothing listening.
    pub refused: u64,
}

impl Counts {
    /// Answers that were not 200 (any status).
    pub fn not_ok(&self) -> u64 {
        self.statuses.values().sum()
    }
    pub fn total(&self) -> u64 {
        self.ok + self.not_ok() + self.broken + self.refused
    }
    /// Every request a client saw fail, whatever the way.
    pub fn failures(&self) -> u64 {
        self.not_ok() + self.broken + self.refused
    }
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut statuses = self.statuses.clone();
        for (s, n) in &earlier.statuses {
            if let Some(v) = statuses.get_mut(s) {
                *v = v.saturating_sub(*n);
            }
        }
        statuses.retain(|_, n| *n > 0);
        Counts {
            ok: self.ok.saturating_sub(earlier.ok),
            statuses,
            broken: self.broken.saturating_sub(earlier.broken),
            refused: self.refused.saturating_sub(earlier.refused),
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` threads sending `GET path` to `addr`.
    pub fn start(addr: SocketAddr, clients: usize, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, counts, path) = (stop.clone(), counts.clone(), path.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let got = status(addr, &path);
                        let mut c = counts.lock().unwrap();
                        match got {
                            Answer::Status(200) => c.ok += 1,
                            Answer::Status(s) => *c.statuses.entry(s).or_default() += 1,
                            Answer::Broken => c.broken += 1,
                            Answer::Refused => {
                                c.refused += 1;
                                drop(c);
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    /// `clients` threads, each on one keep-alive connection sending
    /// `GET path` back to back, reconnecting only when the proxy says
    /// `Connection: close` (or after a failure). A request sent on a
    /// connection the proxy then closed without answering is `broken`: what
    /// a drain that closes idle keep-alive connections does to clients.
    pub fn start_keepalive(addr: SocketAddr, clients: usize, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, counts, path) = (stop.clone(), counts.clone(), path.to_string());
                std::thread::spawn(move || {
                    let mut conn: Option<std::io::BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.take() {
                            Some(c) => c,
                            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                            {
                                Ok(s) => {
                                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                                    std::io::BufReader::new(s)
                                }
                                Err(_) => {
                                    counts.lock().unwrap().refused += 1;
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                            },
                        };
                        let (answer, keep) = keepalive_request(c, &path);
                        conn = keep;
                        let mut c = counts.lock().unwrap();
                        match answer {
                            Answer::Status(200) => c.ok += 1,
                            Answer::Status(s) => *c.statuses.entry(s).or_default() += 1,
                            Answer::Broken | Answer::Refused => c.broken += 1,
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    /// Waits until `n` more requests got a 200.
    pub fn wait_ok(&self, n: u64, limit: Duration) {
        let from = self.counts().ok;
        wait_until("load flowing", limit, || self.counts().ok >= from + n);
    }

    pub fn finish(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.counts.lock().unwrap().clone()
    }
}

enum Answer {
    Status(u16),
    Broken,
    Refused,
}

fn status(addr: SocketAddr, path: &str) -> Answer {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return Answer::Refused;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return Answer::Broken;
    }
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).is_err() {
        return Answer::Broken;
    }
    let text = String::from_utf8_lossy(&buf);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
    {
        Some(code) => Answer::Status(code),
        None => Answer::Broken,
    }
}

/// One request on a keep-alive connection; the connection back unless the
/// answer closes it (or there was none).
fn keepalive_request(
    mut c: std::io::BufReader<TcpStream>,
    path: &str,
) -> (Answer, Option<std::io::BufReader<TcpStream>>) {
    use std::io::BufRead;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    if c.get_mut().write_all(req.as_bytes()).is_err() {
        return (Answer::Broken, None);
    }
    let mut status = None;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut line = String::new();
        match c.read_line(&mut line) {
            Ok(0) | Err(_) => return (Answer::Broken, None),
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if status.is_none() {
            status = lower
                .strip_prefix("http/1.1 ")
                .and_then(|t| t.get(..3))
                .and_then(|t| t.parse::<u16>().ok());
        } else if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    if c.read_exact(&mut body).is_err() {
        return (Answer::Broken, None);
    }
    match status {
        Some(code) => (Answer::Status(code), (!close).then_some(c)),
        None => (Answer::Broken, None),
    }
}

/// One `GET path` on a fresh connection: true for a 200.
pub fn get_ok(addr: SocketAddr, path: &str) -> bool {
    matches!(status(addr, path), Answer::Status(200))
}

/// An admin API call; the JSON body (`null` when there is none).
pub fn admin(p: &Proxy, method: &str, path: &str) -> serde_json::Value {
    let body = super::raw(
        p.admin.unwrap(),
        format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(10),
    );
    serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("null"))
        .unwrap_or(serde_json::Value::Null)
}

/// `GET /admin/workers` rows.
pub fn workers(p: &Proxy) -> Vec<serde_json::Value> {
    admin(p, "GET", "/admin/workers")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The worker pids, by slot.
pub fn pids(p: &Proxy) -> Vec<u32> {
    workers(p)
        .iter()
        .filter_map(|w| w["pid"].as_u64().map(|x| x as u32))
        .collect()
}

/// The engine version the admin API reports as served.
pub fn served_version(p: &Proxy) -> String {
    admin(p, "GET", "/admin/config")["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends `sig` (`KILL`, `STOP`, ...) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Polls `f` every 20 ms; fails the test after `limit`. Returns the time taken.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Polls `f` every 20 ms for up to `limit`; whether it became true.
pub fn wait_until_ok(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Kills the worker of `slot` with SIGKILL and waits until its replacement
/// serves (healthy, another pid).
pub fn kill_worker(p: &Proxy, slot: usize) {
    let before = pids(p);
    let pid = before[slot];
    signal(pid, "KILL");
    wait_until("replacement serving", Duration::from_secs(10), || {
        let w = workers(p);
        w.len() == before.len()
            && w.iter().all(|w| w["healthy"] == true)
            && w[slot]["pid"].as_u64().is_some_and(|x| x as u32 != pid)
    });
}
