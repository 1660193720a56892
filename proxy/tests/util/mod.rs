//! Shared harness of the data-plane integration tests: origin servers
//! started by the test (hyper, on 127.0.0.1:0), the `aegis` binary run as a
//! child process over a temporary config directory, and small clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub mod load;
pub mod nginx;
pub mod origin;
pub mod strict;

/// A config set of one route answering `hello` locally, for tests about the
/// process rather than the routing.
pub const HELLO_ROUTES: &str = r#"
routes:
  - name: hello
    match: { path_prefix: / }
    respond: { status: 200, body: "hello\n" }
"#;

/// One upstream `a` at `backend` and one catch-all route `r` to it, with
/// `extra` appended to the route (indented by the caller, e.g.
/// `"    websocket: true"`).
pub fn one_route(backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{backend}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
{extra}"#
    )
}

/// The status code of a raw HTTP/1 answer (0 when there is none).
pub fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

/// A body of `n` bytes in 64 KiB chunks, made as it is read.
pub struct Zeros {
    left: u64,
}

impl Zeros {
    pub fn new(n: u64) -> Self {
        Self { left: n }
    }
}

static CHUNK: [u8; 65536] = [b'x'; 65536];

impl Body for Zeros {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// "part one", a pause of `pause`, then "part two".
pub struct Stalling {
    step: u8,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Stalling {
    pub fn new(pause: Duration) -> Self {
        Self {
            step: 0,
            sleep: Box::pin(tokio::time::sleep(pause)),
        }
    }
}

impl Body for Stalling {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.step {
            0 => {
                self.step = 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part one ")))))
            }
            1 => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.step = 2;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part two")))))
                }
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Ready(None),
        }
    }
}

/// An origin server. Paths:
/// - `/slow/{ms}`: answers after `ms` milliseconds;
/// - `/bytes/{n}`: `n` bytes, streamed;
/// - `/stall/{ms}`: a chunked body that pauses `ms` between two parts;
/// - `/upload`: reads the body, answers its length;
/// - `/health`: 200, or 503 while [`Backend::set_down`];
/// - while [`Backend::set_failing`], anything but `/health`: 500;
/// - `/ws` with `Upgrade`: 101, then echoes bytes;
/// - anything else: a JSON echo of the request (`name`, `method`, `path`,
///   `query`, `headers`), with `x-backend: NAME`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
    pub failing: Arc<AtomicBool>,
    pub paths: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            name: name.to_string(),
            addr,
            hits: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            failing: Arc::new(AtomicBool::new(false)),
            paths: Arc::new(Mutex::new(Vec::new())),
            stop: CancellationToken::new(),
        };
        let (name, hits, down, paths, stop) = (
            b.name.clone(),
            b.hits.clone(),
            b.down.clone(),
            b.paths.clone(),
            b.stop.clone(),
        );
        let failing = b.failing.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (name, hits, down, paths, stop) = (
                    name.clone(),
                    hits.clone(),
                    down.clone(),
                    paths.clone(),
                    stop.clone(),
                );
                let failing = failing.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (name, hits, down, paths) =
                            (name.clone(), hits.clone(), down.clone(), paths.clone());
                        let failing = failing.load(Ordering::SeqCst);
                        async move {
                            if failing && req.uri().path() != "/health" {
                                hits.fetch_add(1, Ordering::SeqCst);
                                let mut r = Response::new(full("failing"));
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                return Ok::<_, Infallible>(r);
                            }
                            Ok::<_, Infallible>(origin(req, &name, &hits, &down, &paths).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        b
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Answers 500 to everything but `/health` (an upstream broken in a way
    /// a TCP probe or health check does not see).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn origin(
    mut req: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    down: &AtomicBool,
    paths: &Mutex<Vec<String>>,
) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let status = if down.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(full("health"));
        *r.status_mut() = status;
        return r;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    paths.lock().unwrap().push(path.clone());
    let mut resp = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full("slow"))
    } else if let Some(ms) = path.strip_prefix("/stall/") {
        let pause = Duration::from_millis(ms.parse().unwrap_or(0));
        Response::new(Stalling::new(pause).boxed_unsync())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Response::new(Zeros::new(n.parse().unwrap_or(0)).boxed_unsync())
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        total += d.len() as u64;
                    }
                }
                Err(_) => break,
            }
        }
        Response::new(full(total.to_string()))
    } else if path == "/ws" && req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return r;
    } else {
        let headers: BTreeMap<String, Vec<String>> = req
            .headers()
            .keys()
            .map(|k| {
                (
                    k.to_string(),
                    req.headers()
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect(),
                )
            })
            .collect();
        let echo = serde_json::json!({
            "name": name,
            "method": req.method().as_str(),
            "path": path,
            "query": req.uri().query(),
            "headers": headers,
        });
        let mut r = Response::new(full(echo.to_string()));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r.headers_mut()
            .insert("connection", "x-hop".parse().unwrap());
        r.headers_mut().insert("x-hop", "1".parse().unwrap());
        r
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp
}

/// The `aegis` binary serving a temporary config directory.
pub struct Proxy {
    pub child: Child,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub state: tempfile::TempDir,
    lines: Mutex<mpsc::Receiver<String>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Writes `aegis.yaml` and `routes.yaml` and starts the proxy. `aegis_yaml`
    /// gets `listen`/`admin` on port 0 unless it sets them.
    pub fn start(aegis_yaml: &str, routes_yaml: &str) -> Proxy {
        Self::start_with(aegis_yaml, &[("routes.yaml", routes_yaml)])
    }

    pub fn start_with(aegis_yaml: &str, files: &[(&str, &str)]) -> Proxy {
        Self::start_in(tempfile::tempdir().unwrap(), aegis_yaml, files)
    }

    /// As [`Proxy::start_with`], in a directory the test prepared (certificates).
    pub fn start_in(dir: tempfile::TempDir, aegis_yaml: &str, files: &[(&str, &str)]) -> Proxy {
        let mut settings = String::new();
        if !aegis_yaml.contains("listen:") {
            settings.push_str("listen: [\"127.0.0.1:0\"]\n");
        }
        if !aegis_yaml.contains("admin:") {
            settings.push_str("admin: \"127.0.0.1:0\"\n");
        }
        if !aegis_yaml.contains("access_log:") {
            settings.push_str("access_log: \"off\"\n");
        }
        // Single-process mode unless the test asks for workers: the data
        // plane tests measure and signal the serving process itself.
        if !aegis_yaml.contains("workers:") {
            settings.push_str("workers: 0\n");
        }
        settings.push_str(aegis_yaml);
        std::fs::write(dir.path().join("aegis.yaml"), settings).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Self::spawn(dir)
    }

    fn spawn(dir: tempfile::TempDir) -> Proxy {
        Self::spawn_in(dir, tempfile::tempdir().unwrap())
    }

    /// Starts `aegis run` on a config directory and a state directory the
    /// test prepared (or kept from an earlier run: [`Proxy::into_dirs`]).
    pub fn spawn_in(dir: tempfile::TempDir, state: tempfile::TempDir) -> Proxy {
        match Self::try_spawn_in(dir, state) {
            Ok(p) => p,
            Err(why) => panic!("{why}"),
        }
    }

    /// As [`Proxy::spawn_in`]; `Err` with the exit status and stderr when
    /// the process ends before it listens.
    pub fn try_spawn_in(dir: tempfile::TempDir, state: tempfile::TempDir) -> Result<Proxy, String> {
        Self::try_spawn_in_env(dir, state, &[])
    }

    /// As [`Proxy::try_spawn_in`], with more environment variables for the
    /// process (a test runner in `AEGIS_SANDBOX`, a node name).
    pub fn try_spawn_in_env(
        dir: tempfile::TempDir,
        state: tempfile::TempDir,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Proxy, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .arg("run")
            .arg("--config-dir")
            .arg(dir.path())
            .arg("--state-dir")
            .arg(state.path())
            .arg("--threads")
            .arg("2")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var("AEGIS_TEST_VERBOSE").is_ok() {
                    eprintln!("[aegis] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut http, mut https, mut admin) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while admin.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(format!(
                        "aegis did not start ({status:?}); stderr:\n{}",
                        seen.join("\n")
                    ));
                }
            };
            let addr = |l: &str| l.rsplit(' ').next().unwrap().parse::<SocketAddr>().unwrap();
            if line.starts_with("aegis: listening http ") {
                http = Some(addr(&line));
            } else if line.starts_with("aegis: listening https ") {
                https = Some(addr(&line));
            } else if line.starts_with("aegis: listening admin ") {
                admin = Some(addr(&line));
            }
            seen.push(line);
        }
        Ok(Proxy {
            child,
            http: http.unwrap(),
            https,
            admin,
            dir,
            state,
            lines: Mutex::new(rx),
        })
    }

    /// Stops the process (SIGKILL) and hands back its directories, to start
    /// again on the same state.
    pub fn into_dirs(mut self) -> (tempfile::TempDir, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        (dir, state)
    }

    /// Waits for a stderr line containing `needle`; the line, or `None`
    /// after `limit`. Lines before it are consumed.
    pub fn wait_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let rx = self.lines.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    /// SIGHUP, then waits for the `aegis: config VERSION` line.
    pub fn reload(&self) -> String {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .lock()
                .unwrap()
                .recv_timeout(left)
                .expect("no reload line");
            if let Some(v) = line.strip_prefix("aegis: config ") {
                return v.to_string();
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn backend(&self) -> Option<String> {
        self.header("x-backend")
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    TestBody,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(32)
        .build_http()
}

pub async fn send(client: &Client, req: Request<TestBody>) -> Got {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// `METHOD path` to the proxy with a Host and extra headers, no body.
pub fn request(
    p: &Proxy,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<TestBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(p.url(path))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full("")).unwrap()
}

/// `aegis check --config-dir DIR`: whether it accepted, and its output.
pub fn aegis_check(dir: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["check", "--config-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// `GET url` with an optional Host header.
pub async fn get(client: &Client, url: &str, host: Option<&str>) -> Got {
    let mut b = Request::get(url);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    send(client, b.body(full("")).unwrap()).await
}

/// Writes raw bytes, reads until the peer closes or `wait` passes quietly.
pub fn raw(addr: SocketAddr, data: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(data).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Admin API GET: (status, body).
/// `GET <path>` on the admin listener with a raw socket, with the token
/// when given: the status and the body.
pub fn admin_status(p: &Proxy, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n");
    let raw = raw(p.admin.unwrap(), req.as_bytes(), Duration::from_secs(10));
    let (head, body) = raw.split_once("\r\n\r\n").expect("no HTTP answer");
    (status_of(head), body.to_string())
}

pub async fn admin_get(proxy: &Proxy, path: &str) -> Got {
    get(
        &client(),
        &format!("http://{}{}", proxy.admin.unwrap(), path),
        None,
    )
    .await
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A self-signed certificate for `names`, written as `stem.pem`/`stem.key`
/// into `dir`; returns the certificate DER.
pub fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> Vec<u8> {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    ck.cert.der().to_vec()
}

pub fn tmp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(name)
}
