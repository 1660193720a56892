//! `aegis status`: what a running aegis serves and why, for a person.
//!
//! It reads the admin API (`GET /admin/config`, `/admin/verdicts` and, with
//! workers, `/admin/workers`) and prints one line per fact: the active
//! version, the stable chain, the rollout, a held or unjudgeable candidate,
//! settings waiting for a restart, the workers, the last verdicts. `--json`
//! prints the three documents as one object, for scripts.
//!
//! The admin listener and its token come from the same settings `aegis run`
//! reads (`admin`, `admin_token_file`, `admin_token_env` in the config
//! directory's aegis.yaml), so on the host that runs aegis `aegis status`
//! needs no arguments.
//!
//! Exit codes: 0 the status was read, 1 it could not be (nothing listening,
//! a wrong token, not an aegis admin listener), 2 usage error.
//!
//! The client is a plain blocking HTTP/1.1 exchange on a `TcpStream`: one
//! request per connection, bounded in time and size, no runtime to start
//! for three GETs on loopback.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_engine::config::{self, ConfigSource, Settings, SourceFile};
use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole exchange: a peer trickling bytes must not hold the command.
const DEADLINE: Duration = Duration::from_secs(10);
/// Far above the largest answer (50 verdicts): a bound, not a budget.
const MAX_RESPONSE: usize = 16 << 20;
/// Verdicts printed (the API keeps 50; `--json` has them all).
const SHOWN_VERDICTS: usize = 10;
/// Stable versions printed in the chain.
const SHOWN_CHAIN: usize = 5;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The config directory whose aegis.yaml names the admin listener
    /// (`admin`) and its token (`admin_token_file`, `admin_token_env`).
    /// Default: configs (defaults apply when it does not exist).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// The admin listener, HOST:PORT (default: `admin` in aegis.yaml, else
    /// 127.0.0.1:9901).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// File holding the admin bearer token (default: `admin_token_file` in
    /// aegis.yaml, else the variable `admin_token_env` names,
    /// $AEGIS_ADMIN_TOKEN unless set).
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// Print `/admin/config`, `/admin/verdicts` and `/admin/workers` as one
    /// JSON object: `config`, `verdicts`, `workers` (null without workers).
    #[arg(long)]
    pub json: bool,
    /// Wait (up to SECONDS, default 60) until the gate has settled on what
    /// the config directory holds now: its content is serving on every worker
    /// (past the canary), or it was refused, held or rolled back and the
    /// version before keeps serving. Then print the status. Exit 1 if it has
    /// not settled in time. Reads the directory (`--config-dir`) to know its
    /// content, so run it where aegis runs.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60")]
    pub wait: Option<u64>,
}

pub fn main(args: StatusArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("aegis status: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let target = Target::resolve(args)?;
    let settled = match args.wait {
        Some(secs) => Some(wait_settled(&target, args, Duration::from_secs(secs))?),
        None => None,
    };
    let config = target.get_json("/admin/config")?;
    let verdicts = target.get_json("/admin/verdicts")?;
    // Single-process mode has no workers: an empty list, or 404 from an
    // aegis that does not register the endpoint at all.
    let workers = target
        .get_json_optional("/admin/workers")?
        .filter(|w| w.as_array().is_some_and(|a| !a.is_empty()));
    if args.json {
        let all = serde_json::json!({
            "config": config,
            "verdicts": verdicts,
            "workers": workers,
        });
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        let now_ms = now_ms();
        print!("{}", render(&config, &verdicts, workers.as_ref(), now_ms));
    }
    match settled {
        Some(Settled::No { id, secs }) => bail!(
            "the content of the config directory ({id}) is not settled after {secs} s (judging, on the canary, or could not be judged: see above)"
        ),
        _ => Ok(()),
    }
}

/// Where `--wait` ended.
enum Settled {
    Yes,
    No { id: String, secs: u64 },
}

/// Polls the admin API until the directory's content (its snapshot id, as
/// the gate computes it) is either the active version with no canary
/// running, or has a newest verdict that is not an acceptance (refused,
/// held, rolled back) while another version serves.
fn wait_settled(target: &Target, args: &StatusArgs, within: Duration) -> anyhow::Result<Settled> {
    let dir = args
        .config_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("configs"));
    let max_file = admin_settings(Some(&dir))?.settings.limits.max_file_size.0;
    let until = std::time::Instant::now() + within;
    loop {
        // Re-read each round: the directory may still be changing.
        let id = crate::gate::store::Snapshot::read(&dir, max_file)
            .map(|s| s.id)
            .with_context(|| format!("reading {}", dir.display()))?;
        // Not answering yet is waited for too: `aegis run … &` then
        // `aegis status --wait` is the walkthrough's first step.
        let answers = target
            .get_json("/admin/config")
            .and_then(|c| Ok((c, target.get_json("/admin/verdicts")?)));
        let late = std::time::Instant::now() >= until;
        match answers {
            Ok((config, verdicts)) if is_settled(&id, &config, &verdicts) => {
                return Ok(Settled::Yes);
            }
            Err(e) if late => return Err(e),
            _ => {}
        }
        if late {
            return Ok(Settled::No {
                id,
                secs: within.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_settled(id: &str, config: &Value, verdicts: &Value) -> bool {
    let active = config
        .get("active")
        .and_then(|a| a.get("id"))
        .and_then(Value::as_str);
    // "loading": promoted, the workers not serving it yet.
    let canary = matches!(
        config
            .get("rollout")
            .and_then(|r| r.get("phase"))
            .and_then(Value::as_str),
        Some("canary" | "loading")
    );
    let newest = verdicts.as_array().and_then(|v| {
        v.iter()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
    });
    let accepted = newest
        .and_then(|r| r.get("verdict"))
        .and_then(|v| v.get("accepted"))
        .and_then(Value::as_bool);
    match accepted {
        Some(true) => active == Some(id) && !canary,
        Some(false) => active != Some(id),
        // Not judged yet; or the version it started on (judged before the
        // verdicts kept here).
        None => active == Some(id) && !canary,
    }
}

/// Where to ask, and with which token.
struct Target {
    /// The address as given (the setting, or `--admin`).
    shown: String,
    /// Where it came from, for "is aegis running?" messages.
    from: String,
    /// The `Host` header.
    host: String,
    addrs: Vec<SocketAddr>,
    token: Option<String>,
    /// Where the token came from (or that none was sent).
    token_from: String,
}

/// The admin settings of the config directory, and which file said so.
struct AdminSettings {
    settings: Settings,
    /// `DIR/aegis.yaml` when read from there.
    file: Option<PathBuf>,
    /// Why the defaults apply, when they do (`no configs/aegis.yaml`).
    why_default: String,
}

impl Target {
    fn resolve(args: &StatusArgs) -> anyhow::Result<Self> {
        let s = admin_settings(args.config_dir.as_deref())?;
        let file_shown = s.file.as_ref().map(|f| f.display().to_string());
        let (shown, from) = match &args.admin {
            Some(a) => (a.clone(), "--admin".to_string()),
            None => match &file_shown {
                Some(f) => (s.settings.admin.clone(), format!("`admin` in {f}")),
                None => (
                    s.settings.admin.clone(),
                    format!("the default, {}", s.why_default),
                ),
            },
        };
        if shown.trim() == "off" {
            bail!("the admin API is off ({from}: `admin: off`): nothing to ask; pass --admin ADDR");
        }
        // `http://host:port/` is what people paste from curl lines.
        let hostport = shown
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let addrs = resolve_addrs(&hostport).with_context(|| {
            format!("the admin address {shown} ({from}) is not HOST:PORT or does not resolve")
        })?;
        if addrs.iter().all(|a| a.port() == 0) {
            bail!(
                "the admin address {shown} ({from}) has port 0, chosen when aegis starts: pass --admin with the address of the `aegis: listening admin` line"
            );
        }
        let (token, token_from) = match (&args.token_file, &s.settings.admin_token_file) {
            (Some(f), _) => (
                Some(read_token(f)?),
                format!("from --token-file {}", f.display()),
            ),
            (None, Some(f)) => (
                Some(read_token(f)?),
                format!(
                    "from `admin_token_file` {} in {}",
                    f.display(),
                    file_shown.as_deref().unwrap_or("aegis.yaml")
                ),
            ),
            (None, None) => {
                let env = &s.settings.admin_token_env;
                match std::env::var(env).map(|t| t.trim().to_string()) {
                    Ok(t) if !t.is_empty() => (Some(t), format!("from ${env}")),
                    _ => (
                        None,
                        format!(
                            "none sent: ${env} is empty, no --token-file, no `admin_token_file`"
                        ),
                    ),
                }
            }
        };
        if token
            .as_deref()
            .is_some_and(|t| t.bytes().any(|b| b.is_ascii_control()))
        {
            bail!("the admin token ({token_from}) contains control characters");
        }
        Ok(Self {
            shown,
            from,
            host: hostport,
            addrs,
            token,
            token_from,
        })
    }

    /// "is aegis running? (admin setting …)", the hint every failure to
    /// reach it ends with.
    fn hint(&self) -> String {
        format!(
            "is aegis running? (admin setting: {}, from {})",
            self.shown, self.from
        )
    }

    /// `GET path`, a 200 with a JSON body.
    fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        self.get_json_optional(path)?.ok_or_else(|| {
            anyhow!(
                "the admin API at {} answered 404 Not Found to GET {path}: is it an aegis admin listener? {}",
                self.shown,
                self.hint()
            )
        })
    }

    /// As [`Target::get_json`]; `None` on 404.
    fn get_json_optional(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self.get(path)?;
        match status {
            200 => serde_json::from_slice(&body).map(Some).with_context(|| {
                format!(
                    "the admin API at {} did not answer JSON to GET {path}: is it an aegis admin listener?",
                    self.shown
                )
            }),
            404 => Ok(None),
            401 | 403 => bail!(
                "the admin API at {} answered {status} to GET {path}: the bearer token is missing or wrong (token {}); aegis takes it from `admin_token_file`, else ${{admin_token_env}} (default $AEGIS_ADMIN_TOKEN)",
                self.shown,
                self.token_from
            ),
            _ => bail!(
                "the admin API at {} answered {status} to GET {path}: {}",
                self.shown,
                first_line(&body)
            ),
        }
    }

    /// One `GET path` on a fresh connection: (status, body).
    fn get(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let started = Instant::now();
        let mut stream = self.connect()?;
        let io = |e: std::io::Error| {
            anyhow!(
                "GET {path} from the admin API at {}: {e}; {}",
                self.shown,
                self.hint()
            )
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: aegis-status/{}\r\nConnection: close\r\n",
            self.host,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).map_err(io)?;
        // `Connection: close`: the answer ends where the stream does (or
        // at its Content-Length / last chunk, whichever the parser sees).
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if started.elapsed() > DEADLINE {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no complete answer within {} s", DEADLINE.as_secs()),
                )));
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(buf.get(..n).unwrap_or_default());
                    if raw.len() > MAX_RESPONSE {
                        bail!(
                            "the admin API at {} answered GET {path} with more than {} MiB",
                            self.shown,
                            MAX_RESPONSE >> 20
                        );
                    }
                    if let Ok(Some(done)) = parse_response(&raw) {
                        return Ok(done);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        match parse_response(&raw) {
            Ok(Some(done)) => Ok(done),
            Ok(None) if raw.is_empty() => bail!(
                "the admin API at {} closed the connection without answering GET {path}; {}",
                self.shown,
                self.hint()
            ),
            Ok(None) => bail!(
                "the admin API at {} sent a truncated answer to GET {path}",
                self.shown
            ),
            Err(why) => bail!(
                "the admin API at {} did not answer HTTP to GET {path} ({why}): is it an aegis admin listener?",
                self.shown
            ),
        }
    }

    fn connect(&self) -> anyhow::Result<TcpStream> {
        let mut last = None;
        for a in &self.addrs {
            match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some((a, e)),
            }
        }
        match last {
            Some((a, e)) => bail!(
                "cannot connect to the admin API at {a}: {e}; {}",
                self.hint()
            ),
            None => bail!("{} resolves to no address; {}", self.shown, self.hint()),
        }
    }
}

/// The config directory's admin settings: `dir`, else ./configs. A missing
/// directory that was not named means defaults; one that was named is an
/// error. An aegis.yaml that does not parse still leaves aegis serving its
/// last good version, so it is a warning and the defaults apply.
fn admin_settings(dir: Option<&Path>) -> anyhow::Result<AdminSettings> {
    let named = dir.is_some();
    let dir = dir.unwrap_or_else(|| Path::new("configs"));
    let defaults = |why: String| AdminSettings {
        settings: Settings::default(),
        file: None,
        why_default: why,
    };
    if !dir.is_dir() {
        if named {
            bail!("--config-dir {}: not a directory", dir.display());
        }
        return Ok(defaults(format!("no directory {}", dir.display())));
    }
    let file = dir.join(config::source::SETTINGS_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(defaults(format!("no {}", file.display())));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let source = ConfigSource::from_files(
        dir,
        vec![SourceFile {
            name: config::source::SETTINGS_FILE.to_string(),
            text,
        }],
    );
    match config::parse_settings(&source) {
        Ok(settings) => Ok(AdminSettings {
            settings,
            file: Some(file),
            why_default: String::new(),
        }),
        Err(d) => {
            let first = d.iter().next().map(|d| d.to_string()).unwrap_or_default();
            crate::say!(
                "aegis status: warning: {} does not parse ({first}); using the default admin settings",
                file.display()
            );
            Ok(defaults(format!("{} does not parse", file.display())))
        }
    }
}

/// `host:port` to addresses; an unspecified IP (a listener on 0.0.0.0 or
/// [::]) is asked on loopback, where it listens too.
fn resolve_addrs(hostport: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()?
        .map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(match a {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            a
        })
        .collect();
    Ok(addrs)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    Ok(t.trim().to_string())
}

fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(empty body)".to_string()
    } else {
        line.chars().take(200).collect()
    }
}

/// Parses a whole HTTP/1.x response: `Ok(None)` while incomplete.
fn parse_response(raw: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        if raw.len() > 64 * 1024 {
            return Err("no end of the response head".to_string());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(raw.get(..head_end).unwrap_or_default())
        .map_err(|_| "a response head that is not text".to_string())?;
    let body = raw.get(head_end.saturating_add(4)..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        return Err(format!(
            "status line `{}`",
            first_line(status_line.as_bytes())
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line `{}`", first_line(status_line.as_bytes())))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("Content-Length `{value}`"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    if chunked {
        return Ok(dechunk(body)?.map(|b| (status, b)));
    }
    match length {
        Some(n) if body.len() >= n => {
            Ok(Some((status, body.get(..n).unwrap_or_default().to_vec())))
        }
        Some(_) => Ok(None),
        // Neither: the body runs to the end of the stream, which only the
        // caller sees.
        None => Ok(None),
    }
}

/// A chunked body, `Ok(None)` until its last chunk arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(rest.get(..eol).unwrap_or_default())
            .map_err(|_| "a chunk size that is not text".to_string())?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| format!("chunk size `{size_hex}`"))?;
        let data_start = eol.saturating_add(2);
        if size == 0 {
            return Ok(Some(out));
        }
        let data_end = data_start
            .checked_add(size)
            .ok_or_else(|| "chunk size overflows".to_string())?;
        let Some(data) = rest.get(data_start..data_end) else {
            return Ok(None);
        };
        out.extend_from_slice(data);
        let Some(next) = rest.get(data_end.saturating_add(2)..) else {
            return Ok(None);
        };
        rest = next;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The lines a person reads.
fn render(config: &Value, verdicts: &Value, workers: Option<&Value>, now_ms: u64) -> String {
    let mut out = Lines::default();
    match config.get("active").filter(|a| !a.is_null()) {
        Some(a) => {
            let mut line = str_of(a, "id").to_string();
            if let Some(e) = a.get("engine_version").and_then(Value::as_str) {
                line.push_str(&format!(" (engine {e})"));
            }
            if let Some(ms) = a.get("since_ms").and_then(Value::as_u64) {
                line.push_str(&format!(" since {}", datetime(ms)));
            }
            match a.get("stable").and_then(Value::as_bool) {
                Some(true) => line.push_str(", stable"),
                Some(false) => line.push_str(", not yet stable"),
                None => {}
            }
            out.push("active", line);
        }
        // An aegis whose gate is not registered (or an older one): its
        // built-in `/admin/config` names the version only.
        None => out.push(
            "active",
            match config.get("version").and_then(Value::as_str) {
                Some(v) => format!("engine {v} (no gate state)"),
                None => "none".to_string(),
            },
        ),
    }
    let chain: Vec<&str> = config
        .get("stable_chain")
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match config.get("stable").and_then(Value::as_str) {
        Some(s) => {
            let mut shown = chain
                .iter()
                .take(SHOWN_CHAIN)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if chain.len() > SHOWN_CHAIN {
                shown.push_str(&format!(
                    ", … {} older",
                    chain.len().saturating_sub(SHOWN_CHAIN)
                ));
            }
            out.push("stable", format!("{s}  (chain: {shown})"));
        }
        None if config.get("stable_chain").is_some() => out.push(
            "stable",
            "none yet: no version has finished its bake".to_string(),
        ),
        None => {}
    }
    if let Some(r) = config.get("rollout").filter(|r| r.is_object()) {
        out.push("rollout", rollout_line(r, now_ms));
    }
    let rollout_version = config
        .get("rollout")
        .and_then(|r| r.get("version"))
        .and_then(Value::as_str);
    if let Some(c) = config.get("candidate").and_then(Value::as_str)
        && Some(c) != rollout_version
    {
        out.push("candidate", c.to_string());
    }
    if let Some(h) = config.get("held").filter(|h| !h.is_null()) {
        // The sentence starts with `held:` and usually says how to confirm;
        // the reason code is in the verdict line.
        let sentence = str_of(h, "sentence");
        let confirm = h
            .get("confirm")
            .and_then(Value::as_str)
            .unwrap_or("POST /admin/confirm");
        let mut line = format!("{}: {sentence}", str_of(h, "id"));
        if !sentence.contains(confirm) {
            line.push_str(&format!("; confirm with {confirm}"));
        }
        out.push("held", line);
    }
    if let Some(f) = config.get("frozen").filter(|f| !f.is_null()) {
        let mut line = String::from("promotion frozen");
        if let Some(ms) = f.get("since_ms").and_then(Value::as_u64) {
            line.push_str(&format!(" since {}", datetime(ms)));
        }
        if let Some(w) = f.get("why").and_then(Value::as_str) {
            line.push_str(&format!(": {w}"));
        }
        line.push_str("; confirm with POST /admin/confirm");
        out.push("frozen", line);
    }
    if let Some(c) = config.get("could_not_judge").filter(|c| !c.is_null()) {
        let mut line = str_of(c, "reason").to_string();
        if let Some(d) = c.get("detail").and_then(Value::as_str) {
            line.push_str(&format!(": {d}"));
        }
        let mut extra = Vec::new();
        if let Some(cand) = c.get("candidate").and_then(Value::as_str) {
            extra.push(format!("candidate {cand}"));
        }
        if let Some(n) = c.get("attempts").and_then(Value::as_u64) {
            extra.push(format!("{n} attempt{}", if n == 1 { "" } else { "s" }));
        }
        if let Some(ms) = c.get("since_ms").and_then(Value::as_u64) {
            extra.push(format!("since {}", datetime(ms)));
        }
        extra.push("retrying".to_string());
        line.push_str(&format!(" ({})", extra.join(", ")));
        out.push("could not judge", line);
    }
    if let Some(p) = config.get("pending_restart").and_then(Value::as_array)
        && !p.is_empty()
    {
        let items: Vec<&str> = p.iter().filter_map(Value::as_str).collect();
        out.push("pending restart", items.join(", "));
    }
    match workers.and_then(Value::as_array) {
        Some(rows) => {
            for (i, w) in rows.iter().enumerate() {
                out.push(if i == 0 { "workers" } else { "" }, worker_line(w));
            }
        }
        None => out.push(
            "workers",
            "none: one process serves (single-process mode)".to_string(),
        ),
    }
    let list = verdicts.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        out.push("verdicts", "none yet".to_string());
    } else {
        out.raw(if list.len() > SHOWN_VERDICTS {
            format!(
                "verdicts (newest first, {SHOWN_VERDICTS} of {}; all with --json)",
                list.len()
            )
        } else {
            "verdicts (newest first)".to_string()
        });
        let shown = list.get(..SHOWN_VERDICTS).unwrap_or(list);
        // Times only when every verdict shown is from today (UTC): the
        // date on each line otherwise.
        let today = now_ms / 86_400_000;
        let all_today = shown.iter().all(|v| {
            v.get("at_ms")
                .and_then(Value::as_u64)
                .is_some_and(|ms| ms / 86_400_000 == today)
        });
        for v in shown {
            out.raw(format!("  {}", verdict_line(v, all_today)));
        }
    }
    out.0
}

fn rollout_line(r: &Value, now_ms: u64) -> String {
    let phase = r.get("phase").and_then(Value::as_str).unwrap_or("unknown");
    let version = r.get("version").and_then(Value::as_str);
    let left = r
        .get("ends_in_ms")
        .and_then(Value::as_u64)
        .map(|ms| format!(", {} left", duration(ms)));
    match (phase, version) {
        ("canary", Some(v)) => {
            let on = r
                .get("canary_slot")
                .and_then(Value::as_u64)
                .map(|s| format!(" on worker {s}"))
                .unwrap_or_default();
            format!("canary: {v}{on}{}", left.unwrap_or_default())
        }
        ("baking", Some(v)) => format!("baking: {v}{}", left.unwrap_or_default()),
        ("loading", Some(v)) => format!("loading: {v} (the workers are taking it up)"),
        _ => {
            // Steady: say what happened last, the question a person has.
            let last = r
                .get("events")
                .and_then(Value::as_array)
                .and_then(|e| e.first());
            match last {
                Some(e) => {
                    let at = e
                        .get("at_ms")
                        .and_then(Value::as_u64)
                        .map(|ms| format!(" {} ago", duration(now_ms.saturating_sub(ms))))
                        .unwrap_or_default();
                    format!(
                        "{phase} (last: {} {}{at}: {})",
                        str_of(e, "event"),
                        str_of(e, "version"),
                        str_of(e, "detail")
                    )
                }
                None => phase.to_string(),
            }
        }
    }
}

fn worker_line(w: &Value) -> String {
    let mut parts = vec![
        w.get("slot")
            .and_then(Value::as_u64)
            .map_or_else(|| "?".to_string(), |s| s.to_string()),
    ];
    parts.push(match w.get("pid").and_then(Value::as_u64) {
        Some(p) => format!("pid {p}"),
        None => "not running".to_string(),
    });
    parts.push(
        if w.get("healthy").and_then(Value::as_bool).unwrap_or(false) {
            "healthy"
        } else {
            "unhealthy"
        }
        .to_string(),
    );
    if let Some(v) = w.get("version").and_then(Value::as_str) {
        parts.push(v.to_string());
    }
    if w.get("canary").and_then(Value::as_bool).unwrap_or(false) {
        parts.push("canary".to_string());
    }
    if let Some(b) = w.get("rss_bytes").and_then(Value::as_u64) {
        parts.push(mib(b));
    }
    if let Some(n) = w.get("requests").and_then(Value::as_u64) {
        parts.push(format!("{n} req"));
    }
    if let Some(n) = w
        .get("errors_5xx")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        parts.push(format!("{n} 5xx"));
    }
    if let Some(n) = w.get("restarts").and_then(Value::as_u64).filter(|n| *n > 0) {
        let why = w
            .get("last_restart_reason")
            .and_then(Value::as_str)
            .map(|r| format!(" (last: {r})"))
            .unwrap_or_default();
        parts.push(format!("{n} restart{}{why}", if n == 1 { "" } else { "s" }));
    }
    if let Some(t) = w.get("paused_until_unix").and_then(Value::as_u64) {
        parts.push(format!(
            "respawn paused until {}",
            datetime(t.saturating_mul(1000))
        ));
    }
    parts.join(" ")
}

fn verdict_line(v: &Value, time_only: bool) -> String {
    let at = match v.get("at_ms").and_then(Value::as_u64) {
        Some(ms) if time_only => time_of_day(ms),
        Some(ms) => datetime(ms),
        None => "?".to_string(),
    };
    let verdict = v.get("verdict").unwrap_or(&Value::Null);
    let code = if verdict.get("accepted").and_then(Value::as_bool) == Some(true) {
        "accept"
    } else {
        verdict
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("reject")
    };
    format!(
        "{at} {} {code}: {}",
        str_of(v, "id"),
        str_of(verdict, "sentence")
    )
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// A label column: short labels padded to one width, long ones followed by
/// two spaces (`could not judge  …`), continuation lines blank.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn push(&mut self, label: &str, value: String) {
        let line = if label.len() >= 8 {
            format!("{label}  {value}\n")
        } else {
            format!("{label:<8} {value}\n")
        };
        self.0.push_str(&line);
    }

    fn raw(&mut self, line: String) {
        self.0.push_str(&line);
        self.0.push('\n');
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `6 s`, `3 min 20 s`, `2 h 5 min`.
fn duration(ms: u64) -> String {
    let s = ms.saturating_add(500) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// `2026-12-01 10:57:01Z`.
fn datetime(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = aegis_engine::civil::civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02} {}Z", time_of_day(ms))
}

/// `10:57:01` (UTC).
fn time_of_day(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00Z");
        // 2026-12-01 10:57:01 UTC.
        assert_eq!(datetime(1_796_122_621_000), "2026-12-01 10:57:01Z");
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(duration(6_000), "6 s");
        assert_eq!(duration(200_000), "3 min 20 s");
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r), Ok(Some((200, b"{}".to_vec()))));
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}";
        assert_eq!(parse_response(r), Ok(None));
        let r =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n1\r\n \r\n0\r\n\r\n";
        assert_eq!(parse_response(r), Ok(Some((200, b"{} ".to_vec()))));
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n";
        assert_eq!(parse_response(r), Ok(None));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn a_version_its_workers_are_still_loading_is_not_settled() {
        let verdicts = serde_json::json!([
            {"id": "v1", "verdict": {"accepted": true, "sentence": "replayed 10"}},
        ]);
        let config =
            |phase: &str| serde_json::json!({"active": {"id": "v1"}, "rollout": {"phase": phase}});
        assert!(!is_settled("v1", &config("loading"), &verdicts));
        assert!(!is_settled("v1", &config("canary"), &verdicts));
        assert!(is_settled("v1", &config("baking"), &verdicts));
        assert!(is_settled("v1", &config("steady"), &verdicts));
    }

    #[test]
    fn renders_every_section() {
        let config = serde_json::json!({
            "active": {"id": "ff4d9f88b54c", "engine_version": "829721ec939b",
                       "since_ms": 1_796_122_621_000u64, "stable": true},
            "stable": "ff4d9f88b54c",
            "stable_chain": ["ff4d9f88b54c", "89a0f7216143"],
            "candidate": "214fb4e985b6",
            "held": {"id": "214fb4e985b6", "reason": "held:blast_radius",
                     "sentence": "held: 12 of 30 routes removed", "confirm": "POST /admin/confirm"},
            "could_not_judge": {"reason": "could_not_judge:state_dir", "detail": "disk full",
                                "attempts": 3, "since_ms": 1_796_122_621_000u64},
            "pending_restart": ["workers 2 → 3"],
            "rollout": {"phase": "canary", "version": "214fb4e985b6", "ends_in_ms": 6000,
                        "canary_slot": 0, "events": []},
            "frozen": null,
        });
        let verdicts = serde_json::json!([
            {"id": "214fb4e985b6", "verdict": {"accepted": true, "sentence": "replayed 10"},
             "at_ms": 1_796_122_621_000u64},
            {"id": "1a2b3c4d5e6f", "verdict": {"accepted": false, "reason": "regression:status",
             "sentence": "932 of 1002"}, "at_ms": 1_796_122_600_000u64},
        ]);
        let workers = serde_json::json!([
            {"slot": 0, "pid": 1234, "healthy": true, "version": "829721ec939b",
             "rss_bytes": 12_897_484u64, "requests": 1520, "canary": true, "restarts": 0},
            {"slot": 1, "pid": null, "healthy": false, "restarts": 2,
             "last_restart_reason": "crash"},
        ]);
        let out = render(&config, &verdicts, Some(&workers), 1_796_122_700_000);
        let want = "\
active   ff4d9f88b54c (engine 829721ec939b) since 2026-12-01 10:57:01Z, stable
stable   ff4d9f88b54c  (chain: ff4d9f88b54c, 89a0f7216143)
rollout  canary: 214fb4e985b6 on worker 0, 6 s left
held     214fb4e985b6: held: 12 of 30 routes removed; confirm with POST /admin/confirm
could not judge  could_not_judge:state_dir: disk full (3 attempts, since 2026-12-01 10:57:01Z, retrying)
pending restart  workers 2 → 3
workers  0 pid 1234 healthy 829721ec939b canary 12.3 MiB 1520 req
         1 not running unhealthy 2 restarts (last: crash)
verdicts (newest first)
  10:57:01 214fb4e985b6 accept: replayed 10
  10:56:40 1a2b3c4d5e6f regression:status: 932 of 1002
";
        assert_eq!(out, want);
        let single = render(&config, &serde_json::json!([]), None, 0);
        assert!(single.contains("workers  none: one process serves"));
        assert!(single.contains("verdicts  none yet"));
    }
}
