//! Shared harness of the nginx side-by-side suites (`nginx_parity`,
//! `nginx_real`): finding nginx, echo backends, child processes stopped on
//! drop, a raw HTTP/1 client (plain or TLS) and the normalisations both
//! suites apply before comparing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
pub const AEGIS: &str = env!("CARGO_BIN_EXE_aegis");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn find_nginx() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"])
        .map(|d| Path::new(d).join("nginx"))
        .find(|p| p.is_file())
}

/// A port nothing listens on, never the same twice in this process: a port
/// released by the probe below may be handed out again by the next call
/// before anyone binds it (the parity run once gave its aegis the same port
/// for http and admin, and that config failed to start).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------- backends

/// An echo backend: answers with its name in `x-backend` and echoes the
/// request (method, URI, body length, every header) in the body. A query
/// `status=N` picks the status, `sleep=MS` delays the answer. A WebSocket
/// upgrade (`Upgrade: websocket`) is accepted with a 101 that carries the
/// echo in `x-echo-*` headers; the upgraded connection is then closed.
pub async fn backend(name: &'static str, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| async move {
                let upgrade = req
                    .headers()
                    .get("upgrade")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                if upgrade {
                    let host = req
                        .headers()
                        .get("host")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let uri = req.uri().to_string();
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        // Closing the upgraded stream ends both proxies' tunnels.
                        drop(on.await);
                    });
                    let resp = Response::builder()
                        .status(101)
                        .header("upgrade", "websocket")
                        .header("connection", "upgrade")
                        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                        .header("x-backend", name)
                        .header("x-echo-uri", uri)
                        .header("x-echo-host", host)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    return Ok::<_, std::convert::Infallible>(resp);
                }
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let mut headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                headers.sort();
                let query = req.uri().query().unwrap_or("").to_string();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let body_len = body.map(|b| b.len()).unwrap_or(0);
                let mut status = 200u16;
                for kv in query.split('&') {
                    if let Some(v) = kv.strip_prefix("status=") {
                        status = v.parse().unwrap_or(200);
                    }
                    if let Some(v) = kv.strip_prefix("sleep=") {
                        let ms: u64 = v.parse().unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
                let mut text =
                    format!("backend={name}\nmethod={method}\nuri={uri}\nbody-length={body_len}\n");
                for (k, v) in headers {
                    text.push_str(&format!("h:{k}={v}\n"));
                }
                let resp = Response::builder()
                    .status(status)
                    .header("x-backend", name)
                    .header("content-type", "text/plain")
                    .header("x-powered-by", "parity-backend")
                    .header("x-internal", "secret")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

// ---------------------------------------------------------------- processes

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub what: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{}: had to be killed", self.what);
    }
}

pub fn wait_listening(port: u16, proc_: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc_.child.try_wait() {
            return Err(format!(
                "{} exited ({status}) before listening on {port}:\n{}",
                proc_.what,
                proc_.log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!(
        "{} not listening on {port} after 20s:\n{}",
        proc_.what,
        proc_.log_text()
    ))
}

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub host: String,
    pub path: String,
    pub body: usize,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn label(&self) -> String {
        let mut s = format!("{} {}{}", self.method, self.host, self.path);
        if self.body > 0 {
            s.push_str(&format!(" body={}", self.body));
        }
        for (k, v) in &self.headers {
            s.push_str(&format!(" {k}:{v}"));
        }
        s
    }
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, Default)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
    pub error: Option<String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A TLS client trusting only the suite's certificate.
pub fn client_tls(cert_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// One request on a fresh connection, `Connection: close`, read to the end.
pub fn send(port: u16, req: &Req, tls: Option<&std::sync::Arc<rustls::ClientConfig>>) -> Resp {
    let mut out = Resp::default();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(15)));
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from(req.host.clone()).unwrap();
            let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        req.method, req.path, req.host
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if req.body > 0 || req.method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            req.body
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend(std::iter::repeat_n(b'a', req.body));
    // The server may answer (413) and close before reading the whole body.
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                // A 101's connection stays open for the new protocol: its
                // head is the whole answer.
                if raw.starts_with(b"HTTP/1.1 101") && raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => {
                if raw.is_empty() {
                    out.error = Some(format!("read: {e}"));
                }
                break;
            }
        }
    }
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        out.error
            .get_or_insert_with(|| "no response head".to_string());
        return out;
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    out.status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            out.headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    let rest = &raw[end + 4..];
    out.body = if out
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else if let Some(n) = out
        .header("content-length")
        .and_then(|n| n.parse::<usize>().ok())
    {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    out
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[i + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

// ---------------------------------------------------------------- comparison

/// Statuses to which nginx's add_header (without `always`) applies.
pub const ADD_HEADER_STATUSES: &[u16] = &[200, 201, 204, 206, 301, 302, 303, 304, 307, 308];

/// Response headers never compared: connection management and framing,
/// and the proxy's own identity (difference "Date, Server, Via").
pub const IGNORED_RESPONSE: &[&str] = &[
    "date",
    "server",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "via",
    "retry-after",
];

/// Echoed request headers Aegis adds by default and nginx only when told
/// to (difference "X-Forwarded-*, Via and X-Aegis-Score"): ignored when
/// only Aegis sent one.
pub const AEGIS_DEFAULT_REQUEST: &[&str] = &[
    "h:x-aegis-score",
    "h:via",
    "h:x-forwarded-for",
    "h:x-forwarded-proto",
    "h:x-forwarded-host",
];

/// Merges slashes and resolves dot segments, as both proxies do before
/// matching.
pub fn normalize_path(p: &str) -> String {
    let (path, query) = match p.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (p, None),
    };
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if path.ends_with('/') && s.len() > 1 {
        s.push('/');
    }
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

pub fn has_extension(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    path.rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'))
}

pub fn echo_lines(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes `dir/nginx.conf`: one worker, logs, pid and temporary paths
/// private to `dir`, and `include site.conf` (which the caller writes);
/// `who` names the suite in the file's first line. Returns its path.
pub fn write_wrapper(dir: &Path, who: &str) -> PathBuf {
    let d = dir.display();
    let wrapper = format!(
        "# Private wrapper written by the {who}.\n\
         worker_processes 1;\n\
         error_log {d}/logs/error.log warn;\n\
         pid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include site.conf;\n\
         }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, wrapper).unwrap();
    path
}
