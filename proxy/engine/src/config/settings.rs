//! `aegis.yaml`: process settings, read once at start. Every field has a
//! default (stated on the field), so a config directory without the file
//! works.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{Dur, Size};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Plain HTTP listeners (HTTP/1.1, and h2c with prior knowledge).
    /// Default `["127.0.0.1:8080"]`.
    pub listen: Vec<String>,
    /// TLS listeners (ALPN h2 and http/1.1), certificates from `tls` in the
    /// config set. Default none.
    pub listen_tls: Vec<String>,
    /// What a TLS client whose SNI matches no certificate gets. Default `reject`.
    pub tls_unknown_sni: UnknownSni,
    /// Directories outside the config directory that `tls` entries may name
    /// certificate and key files in, by absolute path (a Kubernetes Secret
    /// volume, `/etc/letsencrypt/live`). Everything else a config set names
    /// must resolve inside the config directory: without this list a config
    /// file could point the proxy at any file it can read. Absolute paths
    /// only (the gate judges a copy of the set kept elsewhere, so a relative
    /// entry would mean another place there). Default none.
    #[serde(deserialize_with = "absolute_dirs")]
    pub tls_dirs: Vec<PathBuf>,
    /// The admin listener (`/healthz`, `/metrics`, `/admin/*`); `off` disables
    /// it. Default `127.0.0.1:9901`. Off loopback it requires a token.
    pub admin: String,
    /// Environment variable holding the admin bearer token. Default `AEGIS_ADMIN_TOKEN`.
    pub admin_token_env: String,
    /// File holding the admin bearer token (takes precedence over the variable).
    pub admin_token_file: Option<PathBuf>,
    /// Worker processes: a number, or `auto` for one per core. Default `auto`.
    pub workers: Workers,
    /// Where versions, verdicts and the traffic sample are kept.
    /// Default `./aegis-state` (relative to the working directory).
    pub state_dir: Option<PathBuf>,
    /// `stdout`, `off`, or a file path. Default `stdout`.
    pub access_log: String,
    pub limits: Limits,
    pub features_module: FeaturesModule,
    pub health: Health,
    pub gate: Gate,
    pub sample: SampleSettings,
    /// Response compression (nginx `gzip`). Default off. Live.
    pub compression: Compression,
    /// How long SIGTERM waits for requests in flight. Default 10s.
    pub drain_timeout: Dur,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".to_string()],
            listen_tls: Vec::new(),
            tls_unknown_sni: UnknownSni::Reject,
            tls_dirs: Vec::new(),
            admin: "127.0.0.1:9901".to_string(),
            admin_token_env: "AEGIS_ADMIN_TOKEN".to_string(),
            admin_token_file: None,
            workers: Workers::Auto,
            state_dir: None,
            access_log: "stdout".to_string(),
            limits: Limits::default(),
            features_module: FeaturesModule::default(),
            health: Health::default(),
            gate: Gate::default(),
            sample: SampleSettings::default(),
            compression: Compression::default(),
            drain_timeout: Dur::secs(10),
        }
    }
}

/// `tls_dirs`: a list of absolute paths; a relative one is an error where it
/// is written rather than a directory that silently means something else in
/// the gate's copy of the set.
fn absolute_dirs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    let dirs = Vec::<PathBuf>::deserialize(d)?;
    if let Some(p) = dirs.iter().find(|p| !p.is_absolute()) {
        return Err(serde::de::Error::custom(format!(
            "tls_dirs: `{}` is not an absolute path",
            p.display()
        )));
    }
    Ok(dirs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    /// Fail the handshake.
    Reject,
    /// Serve the certificate marked `default: true` (or the first one).
    DefaultCertificate,
}

/// `workers: 2` or `workers: auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Count(u32),
    Auto,
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Count(n) => s.serialize_u32(*n),
            Workers::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of workers or `auto`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Workers, E> {
                u32::try_from(v)
                    .map(Workers::Count)
                    .map_err(|_| E::custom("too many workers"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Workers, E> {
                u32::try_from(v)
                    .map(Workers::Count)
                    .map_err(|_| E::custom("workers must be 0 or more"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::custom("expected a number of workers or `auto`"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Workers {
    /// The number of worker processes to run on a machine with `cores` cores.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            Workers::Count(n) => usize::try_from(n).unwrap_or(1),
            Workers::Auto => cores.max(1),
        }
    }
}

/// Hard limits of the engine and the data plane. A config over a limit is a
/// config error, never a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Features the scoring module holds. Default 200 (the number the
    /// Cloudflare bot module had room for on 18 Nov 2025).
    pub max_features: usize,
    /// Routes in one config set. Default 100 000.
    pub max_routes: usize,
    /// Upstream endpoints across all pools. Default 10 000.
    pub max_endpoints: usize,
    /// Compiled size of one regex. Default 1 MiB.
    pub max_regex_size: Size,
    /// Bytes of one config file. Default 16 MiB.
    pub max_file_size: Size,
    /// Request body size; larger gets 413. Default 1 MiB, as nginx's
    /// client_max_body_size.
    pub max_request_body: Size,
    /// Total request header bytes; larger gets 431. Default 64 KiB. On
    /// HTTP/1 it also bounds the number of header fields: one field counts
    /// at least 32 bytes (2 048 fields by default, never fewer than 100).
    pub max_header_bytes: Size,
    /// Time to read a request head (nginx `client_header_timeout`); a head
    /// still incomplete then gets 408 and the connection closes. An idle
    /// keep-alive connection is closed after it without an answer. Default
    /// 30s. Takes effect on restart.
    pub client_header_timeout: Dur,
    /// Longest wait for the next bytes of a request body (nginx
    /// `client_body_timeout`); then 408 and the connection closes (the
    /// upstream request is abandoned). Default 60s. Live.
    pub client_body_timeout: Dur,
    /// Longest a write to the client may stay blocked (nginx
    /// `send_timeout`): a client that stops reading is disconnected.
    /// Default 60s. Takes effect on restart.
    pub send_timeout: Dur,
    /// Client connections one worker serves at once; at the limit it stops
    /// accepting until one closes (the kernel queues the others, and other
    /// workers sharing the socket take them). 0, the default, is automatic:
    /// half the descriptors `RLIMIT_NOFILE` allows, less 64, so each client
    /// connection has room for its upstream one. Takes effect on restart.
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_features: 200,
            max_routes: 100_000,
            max_endpoints: 10_000,
            max_regex_size: Size(1 << 20),
            max_file_size: Size(16 << 20),
            max_request_body: Size(1 << 20),
            max_header_bytes: Size(64 << 10),
            client_header_timeout: Dur::secs(30),
            client_body_timeout: Dur::secs(60),
            send_timeout: Dur::secs(60),
            max_connections: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesModule {
    /// The kill switch's initial position. Default on.
    pub enabled: bool,
    /// What a request gets when scoring fails at run time: `open` (served
    /// unscored, the default) or `closed` (403).
    pub on_error: FailMode,
}

impl Default for FeaturesModule {
    fn default() -> Self {
        Self {
            enabled: true,
            on_error: FailMode::Open,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    Open,
    Closed,
}

/// How the supervisor watches its workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// Probe interval. Default 1s.
    pub interval: Dur,
    /// Probe timeout. Default 1s.
    pub timeout: Dur,
    /// Failed probes in a row before a worker is replaced. Default 3.
    pub fall: u32,
    /// A worker over this RSS is replaced. Default 1 GiB.
    pub max_rss: Size,
    /// Time between SIGTERM and SIGKILL for a worker being replaced. Default 5s.
    pub grace: Dur,
    /// Deaths within `crash_window` that make a crash loop. Default 5.
    pub crash_loop_deaths: u32,
    /// Default 60s.
    pub crash_window: Dur,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            interval: Dur::secs(1),
            timeout: Dur::secs(1),
            fall: 3,
            max_rss: Size(1 << 30),
            grace: Dur::secs(5),
            crash_loop_deaths: 5,
            crash_window: Dur::secs(60),
        }
    }
}

/// The config gate: what a candidate must survive to be promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gate {
    /// Quiet time after the last change before a candidate is taken. Default 300ms.
    pub debounce: Dur,
    pub policy: GatePolicy,
    pub sandbox: SandboxLimits,
    /// Time a promoted version runs on one canary worker first. Default 10s.
    pub canary_seconds: u64,
    /// Time after full promotion during which a regression rolls back. Default 30s.
    pub bake_seconds: u64,
    /// What counts as a regression on the canary and in the bake window.
    pub regression: Regression,
    /// Alternations between accepted and rejected candidates within
    /// `flap_window` that freeze promotion until a person confirms
    /// (`POST /admin/confirm`). 0 never freezes. Default 4.
    pub freeze_after_flips: u32,
    /// Default 10m.
    pub flap_window: Dur,
    /// Probe (TCP connect) the candidate's new upstream endpoints before the
    /// replay, so a pool that does not answer replays as 502. Default on; off
    /// only where a connection would disturb the upstream (scripted test
    /// servers).
    pub probe_endpoints: bool,
    /// `GET /ready` answers 503 while the config directory holds content
    /// the gate rejected (or rolled back), as `?require=accepted` does: a
    /// rolling update stalls on that node. Default off (a node serving its
    /// stable version after a rejection is ready).
    pub require_accepted: bool,
    /// Local-gate fleets: a per-node delay before an accepted candidate is
    /// promoted, so nodes fed by one ConfigMap do not promote together.
    pub holdoff: Holdoff,
}

/// `gate.holdoff`: an accepted candidate waits `hash(node) mod window`
/// before it is promoted (docs/FLEET.md, "Local-gate mode").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Holdoff {
    /// The window the per-node delays are spread over. Default 0: off.
    pub window: Dur,
    /// The node's name. Default: `$AEGIS_NODE_NAME` (the downward API's
    /// `spec.nodeName`), else the host name.
    pub node: Option<String>,
}

impl Default for Holdoff {
    fn default() -> Self {
        Self {
            window: Dur::ms(0),
            node: None,
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            debounce: Dur::ms(300),
            policy: GatePolicy::default(),
            sandbox: SandboxLimits::default(),
            canary_seconds: 10,
            bake_seconds: 30,
            regression: Regression::default(),
            freeze_after_flips: 4,
            flap_window: Dur::secs(600),
            probe_endpoints: true,
            require_accepted: false,
            holdoff: Holdoff::default(),
        }
    }
}

/// When live traffic says a promoted version is worse than what it replaced:
/// on the canary against the control workers, in the bake window against
/// the window before the promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Regression {
    /// The 5xx share may exceed the comparison's by this much (0.05: five
    /// percentage points). Default 0.05.
    pub max_5xx_increase: f64,
    /// The same for the 4xx share (an upstream that answers 404 for a
    /// rewritten Host or path has no 5xx at all). Default 0.05.
    pub max_4xx_increase: f64,
    /// The same for the 3xx share (a redirect loop, a new redirect).
    /// Default 0.05.
    pub max_3xx_increase: f64,
    /// Requests a window needs before its 5xx share or p99 is judged.
    /// Default 20.
    pub min_requests: u64,
    /// The p99 time to response head may be this multiple of the
    /// comparison's... Default 3.0.
    pub max_p99_ratio: f64,
    /// ...and must also exceed it by this much to count. Default 50ms.
    pub p99_slack: Dur,
    /// Worker deaths in the bake window beyond the window before that count
    /// as a regression (one death is tolerated: an operator's kill, an OOM
    /// elsewhere). Default 2.
    pub max_worker_deaths: u64,
}

impl Default for Regression {
    fn default() -> Self {
        Self {
            max_5xx_increase: 0.05,
            max_4xx_increase: 0.05,
            max_3xx_increase: 0.05,
            min_requests: 20,
            max_p99_ratio: 3.0,
            p99_slack: Dur::ms(50),
            max_worker_deaths: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatePolicy {
    /// Share of sampled requests whose status class gets worse. Default 0.01.
    pub max_status_worsened: f64,
    /// Share newly blocked by features. Default 0.01.
    pub max_newly_blocked: f64,
    /// Share whose route changes above which the candidate is rejected
    /// (`regression:route_changed`); between `max_rerouted` and this it is
    /// held. `null` turns the rejection off. Default 0.25: a change that
    /// moves a quarter of the traffic to other routes is not an edit.
    pub max_route_changed: Option<f64>,
    /// Per route (the baseline's route of each replayed request): a route
    /// with at least `min_route_requests` replayed or synthesized requests
    /// whose success share (below 400, not blocked, no broken redirect, not
    /// a local answer where the baseline forwarded) falls by more than this
    /// is a regression (`regression:route`), however small its share of
    /// the sample. Default 0.1 (ten points).
    pub max_route_success_drop: f64,
    /// Requests a route needs in the replay to be judged on its own.
    /// Default 5.
    pub min_route_requests: u64,
    /// Share of replayed requests the baseline forwarded upstream and the
    /// candidate answers itself (`respond`): `regression:now_local`.
    /// Default 0.01.
    pub max_now_local: f64,
    /// Share of replayed requests whose redirect, followed inside the
    /// config, newly ends in a loop, at itself or at a host the config no
    /// longer serves (`regression:redirect_loop` / `redirect_self` /
    /// `redirect_unserved`). Default 0: any such request.
    pub max_redirect_broken: f64,
    /// A candidate certificate that expires within this window is a
    /// regression (`regression:tls_expiring`). Default 168h (7 days).
    pub tls_expiry_window: Dur,
    /// A PEM file of trust roots (relative to the config directory, or
    /// absolute) the candidate's chains must verify to, besides the
    /// system's. Unset: a chain must lead to a certificate of its own file
    /// or of the system store (catches a missing intermediate, accepts a
    /// self-signed certificate). Default unset.
    pub tls_trust_store: Option<String>,
    /// p99 of the per-request pipeline time in the sandbox. Default 50ms.
    pub max_p99: Dur,
    /// Peak RSS of the sandbox runner. Default 256 MiB.
    pub max_peak_rss: Size,
    /// Blast radius: a valid candidate that replays clean but changes much
    /// more of the active config than an edit usually does is held (reason
    /// `held:blast_radius`) until `POST /admin/confirm`, not rejected: a
    /// truncated or deleted file compiles fine and the sample may not visit
    /// what it drops. These apply only with an active version to compare.
    /// Share of the active routes (by name) the candidate no longer has.
    /// Default 0.2.
    pub max_routes_removed: f64,
    /// Share of the active upstream pools (by name) gone. Default 0.2.
    pub max_upstreams_removed: f64,
    /// Share of the active `tls` entries (by server names) gone. Default 0.2.
    pub max_tls_removed: f64,
    /// Share of the active config files (`*.yaml`, aegis.yaml included, by
    /// file name) gone from the directory. Default 0.2.
    pub max_files_removed: f64,
    /// Share of replayed requests whose route changes above which the
    /// candidate is held. `max_route_changed`, when set, rejects instead and
    /// is checked first: set it above this one to hold a middle band and
    /// reject the rest. Default 0.1.
    pub max_rerouted: f64,
    /// A config file (bytes, by name), the whole set (bytes) or a list
    /// (routes, upstreams, tls entries, features, rate limits, files) that
    /// reaches this multiple of its active size is held: 2.0 holds a file
    /// that doubled. Default 2.0.
    pub max_growth: f64,
    /// Growth by at most this many bytes is never held (a small file may
    /// double with one route). Default 4KiB.
    pub growth_floor_bytes: Size,
    /// Growth by at most this many entries is never held (two routes may
    /// become four). Default 10.
    pub growth_floor_entries: u64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            max_status_worsened: 0.01,
            max_newly_blocked: 0.01,
            max_route_changed: Some(0.25),
            max_route_success_drop: 0.1,
            min_route_requests: 5,
            max_now_local: 0.01,
            max_redirect_broken: 0.0,
            tls_expiry_window: Dur::secs(7 * 24 * 3600),
            tls_trust_store: None,
            max_p99: Dur::ms(50),
            max_peak_rss: Size(256 << 20),
            max_routes_removed: 0.2,
            max_upstreams_removed: 0.2,
            max_tls_removed: 0.2,
            max_files_removed: 0.2,
            max_rerouted: 0.1,
            max_growth: 2.0,
            growth_floor_bytes: Size(4 << 10),
            growth_floor_entries: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Memory limit of the runner (cgroup memory.max, else RLIMIT_AS).
    /// Default 512 MiB.
    pub memory: Size,
    /// CPU seconds. Default 30.
    pub cpu_seconds: u64,
    /// Wall-clock deadline enforced by the parent. Default 30s.
    pub deadline: Dur,
    /// User id the runner switches to when started as root (it reads its
    /// snapshot first, see docs/GATE.md). Default 65534 (`nobody`).
    pub uid: u32,
    /// Group id the runner switches to when started as root. Default 65534
    /// (`nogroup`).
    pub gid: u32,
    /// The check against the real upstreams after the replay (docs/GATE.md,
    /// "Upstream check").
    pub upstream_check: UpstreamCheckSettings,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory: Size(512 << 20),
            cpu_seconds: 30,
            deadline: Dur::secs(30),
            uid: 65534,
            gid: 65534,
            upstream_check: UpstreamCheckSettings::default(),
        }
    }
}

/// `gate.sandbox.upstream_check`: the gate sends a few of the sample's safe
/// requests to the real upstreams as the candidate and as the active config
/// would send them, and compares the answers. Off with `enabled: false`, and
/// whenever `gate.probe_endpoints` is off (the gate then touches no
/// upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamCheckSettings {
    /// Default true.
    pub enabled: bool,
    /// Upstream requests per candidate, both sides together, each distinct
    /// request once. Default 50.
    pub max_requests: u64,
    /// Requests per second to one endpoint (paced, not bursted). Default 50.
    pub max_rate: f64,
    /// Wall time of the whole check; what is not answered by then is not
    /// checked. Default 2s.
    pub time_budget: Dur,
    /// Share of the checked pairs (overall, or of one route with at least
    /// two worse) whose candidate answer may be worse. Default 0.05.
    pub max_worse: f64,
}

impl Default for UpstreamCheckSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_requests: 50,
            max_rate: 50.0,
            time_budget: Dur::secs(2),
            max_worse: 0.05,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleSettings {
    /// Request heads kept in the reservoir. Default 10 000.
    pub capacity: usize,
    /// How often the reservoir is written to the state dir. Default 10s.
    pub flush_interval: Dur,
    /// Header values masked besides the built-in ones (Authorization,
    /// Proxy-Authorization, Cookie, Set-Cookie, X-Amz-Security-Token and
    /// every name containing token, secret, passw, api-key, session,
    /// signature, credential or auth). Default none.
    pub secret_headers: Vec<String>,
    /// Query parameters whose values are masked besides the built-in ones
    /// (see docs/GATE.md: token, access_token, code, key, sig, password,
    /// X-Amz-Signature, …). Default none.
    pub secret_query_params: Vec<String>,
    /// Mask path segments that look like secrets (24+ base64url or hex
    /// characters mixing letters and digits, or a segment after
    /// `reset-password`, `token`, `invite`, …). Default true.
    pub redact_path_secrets: bool,
    /// Most bytes of one recorded head (path, query, host and header
    /// lines); header lines past it are counted, not stored. Default 16KiB.
    pub max_head_bytes: Size,
    /// Most memory the reservoir holds, bytes (heads past it are dropped and
    /// counted); also the largest sample file written. Default 32MiB.
    pub max_bytes: Size,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            flush_interval: Dur::secs(10),
            secret_headers: Vec::new(),
            secret_query_params: Vec::new(),
            redact_path_secrets: true,
            max_head_bytes: Size(16 << 10),
            max_bytes: Size(32 << 20),
        }
    }
}

/// `compression`: responses compressed on the way to the client, as nginx's
/// `gzip` module does (docs/CONFIG.md, "compression"). Only 200, 403 and 404
/// answers to GET and POST-like requests are compressed (nginx's rule), never
/// a HEAD, a body that already has a `Content-Encoding`, a
/// `Cache-Control: no-transform` one or one of an unlisted type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compression {
    /// Compress with gzip for clients that accept it. Default false, as
    /// nginx's `gzip`.
    pub gzip: bool,
    /// Compress with brotli for clients that accept it (preferred over gzip
    /// when both are). Default false (nginx has no brotli without a module).
    pub brotli: bool,
    /// gzip level 1 (fastest) to 9 (smallest); brotli uses quality
    /// `level - 1` (at least 1), which costs about what gzip's `level` does
    /// and compresses better. Default 1, nginx's `gzip_comp_level`: a config
    /// imported without that directive costs what nginx did, and at an edge
    /// the CPU per request matters more than the last 10% of bytes.
    #[serde(deserialize_with = "compression_level")]
    pub level: u32,
    /// Responses whose `Content-Length` is below this are sent as they are
    /// (a response of unknown length is compressed). Default 20, nginx's
    /// `gzip_min_length`.
    pub min_length: Size,
    /// Media types compressed (`text/html`, `application/*`, or `*` for any;
    /// parameters such as `charset` are ignored when matching). Default
    /// `[text/html]`, nginx's `gzip_types` (which always includes it).
    #[serde(deserialize_with = "media_types")]
    pub types: Vec<String>,
    /// Requests that came through another proxy (they carry `Via`): `off`
    /// sends them uncompressed, `any` compresses them too (nginx
    /// `gzip_proxied`, where the request's `Via` is what makes a request
    /// "proxied"). Default `off`, nginx's default.
    pub proxied: Proxied,
    /// Add `Vary: Accept-Encoding` to every response that could have been
    /// compressed (compressed or not), so a cache in front never serves a
    /// gzip body to a client that did not ask for one. Default true (nginx's
    /// `gzip_vary` defaults to off, which is how caches come to serve gzip
    /// to clients that cannot read it; the importer writes nginx's value).
    pub vary: bool,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            gzip: false,
            brotli: false,
            level: 1,
            min_length: Size(20),
            types: vec!["text/html".to_string()],
            proxied: Proxied::Off,
            vary: true,
        }
    }
}

impl Compression {
    /// True when some encoding is on.
    pub fn enabled(&self) -> bool {
        self.gzip || self.brotli
    }
}

/// `compression.proxied` (nginx `gzip_proxied`, its `off` and `any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proxied {
    /// A request carrying `Via` gets an uncompressed response.
    Off,
    /// Requests with `Via` are compressed like any other.
    Any,
}

/// `compression.level`: 1 to 9.
fn compression_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    match u32::try_from(n) {
        Ok(n @ 1..=9) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "level: {n} is not a compression level (1 to 9)"
        ))),
    }
}

/// `compression.types`: `type/subtype`, `type/*` or `*`, kept lowercase.
fn media_types<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let types = Vec::<String>::deserialize(d)?;
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let lower = t.trim().to_ascii_lowercase();
        if !valid_media_type(&lower) {
            return Err(serde::de::Error::custom(format!(
                "types: `{t}` is not a media type (`text/html`, `application/*` or `*`; no parameters)"
            )));
        }
        out.push(lower);
    }
    Ok(out)
}

fn valid_media_type(t: &str) -> bool {
    // RFC 9110 token characters.
    fn token(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }
    if t == "*" {
        return true;
    }
    match t.split_once('/') {
        Some((ty, sub)) => {
            token(ty) && ty != "*" && (sub == "*" || (token(sub) && !sub.contains('*')))
        }
        None => false,
    }
}

#[cfg(test)]
mod compression_tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Settings, String> {
        serde_saphyr::from_str::<Settings>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_nginx_s_except_vary() {
        let c = Settings::default().compression;
        assert!(!c.enabled());
        assert_eq!(c.level, 1);
        assert_eq!(c.min_length, Size(20));
        assert_eq!(c.types, vec!["text/html".to_string()]);
        assert_eq!(c.proxied, Proxied::Off);
        assert!(c.vary);
    }

    #[test]
    fn a_full_block_parses() {
        let s = parse(
            "compression:\n  gzip: true\n  brotli: true\n  level: 5\n  min_length: 1KiB\n  types: [Text/HTML, application/json, 'image/*']\n  proxied: any\n  vary: false\n",
        )
        .unwrap();
        let c = s.compression;
        assert!(c.gzip && c.brotli && !c.vary);
        assert_eq!(c.level, 5);
        assert_eq!(c.min_length, Size(1024));
        assert_eq!(c.types, vec!["text/html", "application/json", "image/*"]);
        assert_eq!(c.proxied, Proxied::Any);
    }

    #[test]
    fn bad_levels_and_types_are_errors() {
        for level in ["0", "10", "-1"] {
            let e = parse(&format!("compression:\n  level: {level}\n")).unwrap_err();
            assert!(e.contains("is not a compression level"), "{e}");
        }
        for t in [
            "text",
            "text/html; charset=utf-8",
            "*/html",
            "te xt/html",
            "text/ht*",
        ] {
            let e = parse(&format!("compression:\n  types: ['{t}']\n")).unwrap_err();
            assert!(e.contains("is not a media type"), "{t}: {e}");
        }
        assert!(parse("compression:\n  types: ['*']\n").is_ok());
        let e = parse("compression:\n  proxied: expired\n").unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = parse("compression:\n  gzip_level: 1\n").unwrap_err();
        assert!(e.contains("gzip_level"), "{e}");
    }
}
