//! The compiled config: immutable, validated, ready to serve. Only
//! [`crate::config::compile`] makes one, so holding a `CompiledConfig` is
//! proof that the set passed validation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use crate::access::{RealIp, RouteAccess};
use crate::config::raw::{Balance, HashKey};
use crate::features::FeatureSet;
use crate::route_table::RouteTable;

/// Index of a route in [`CompiledConfig::routes`].
pub type RouteId = usize;
/// Index of an upstream in [`CompiledConfig::upstreams`].
pub type UpstreamId = usize;

/// A validated config set.
#[derive(Debug)]
pub struct CompiledConfig {
    /// Content hash of the set (12 hex digits: the start of `sha256`).
    pub version: String,
    /// The whole SHA-256 of the set, hex (`aegis_config_info{sha256}`).
    pub sha256: String,
    pub routes: Vec<CompiledRoute>,
    pub table: RouteTable,
    pub upstreams: Vec<UpstreamPool>,
    pub upstream_index: HashMap<String, UpstreamId>,
    pub certificates: Vec<Certificate>,
    pub rate_limits: Vec<RateLimitSpec>,
    pub features: FeatureSet,
    pub scoring: Scoring,
    /// The hot files the set was built from, in order.
    pub files: Vec<String>,
    /// The ports of the settings' listeners, by scheme.
    pub listen_ports: ListenPorts,
    /// `real_ip`: the client address behind trusted proxies.
    pub real_ip: Option<RealIp>,
    /// Some route has `error_pages` (the pipeline keeps a request's head
    /// for them only then).
    pub has_error_pages: bool,
    /// `maps`, in dependency order.
    pub maps: Vec<crate::map::CompiledMap>,
}

/// The local ports Aegis listens on (`listen`, `listen_tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenPorts {
    pub plain: Vec<u16>,
    pub tls: Vec<u16>,
}

impl CompiledConfig {
    /// The port to match a request on: the one it arrived on, or, when that
    /// is unknown (0: a sample recorded before ports were, a redirect the
    /// replay follows), the first listener of its scheme, as a client
    /// following `https://host/` reaches the TLS listener.
    pub fn match_port(&self, port: u16, scheme: &str) -> u16 {
        if port != 0 {
            return port;
        }
        let ports = if scheme.eq_ignore_ascii_case("https") {
            &self.listen_ports.tls
        } else {
            &self.listen_ports.plain
        };
        ports.first().copied().unwrap_or(0)
    }
}

impl CompiledConfig {
    /// The client address of a request from `peer`: `peer` itself, or the
    /// address a trusted proxy put in the `real_ip` header.
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        match &self.real_ip {
            Some(r) => r.client(peer, headers),
            None => peer,
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamPool> {
        self.upstream_index
            .get(name)
            .and_then(|i| self.upstreams.get(*i))
    }

    /// A one-line summary: version and counts.
    pub fn summary(&self) -> String {
        let endpoints: usize = self.upstreams.iter().map(|u| u.endpoints.len()).sum();
        format!(
            "version {}: {} routes, {} upstreams ({} endpoints), {} features, {} certificates, {} rate limits, {} files",
            self.version,
            self.routes.len(),
            self.upstreams.len(),
            endpoints,
            self.features.len(),
            self.certificates.len(),
            self.rate_limits.len(),
            self.files.len()
        )
    }
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    /// Where the route was defined (`routes.yaml:12:5`), for logs.
    pub origin: String,
    pub methods: Option<Vec<http::Method>>,
    pub headers: Vec<HeaderCondition>,
    /// `match.ports`: the local ports the route serves (empty: every port).
    /// The route table keeps a table per port; this is for examples and
    /// reports.
    pub ports: Vec<u16>,
    pub action: RouteAction,
    pub request_edits: HeaderEditList,
    pub response_edits: HeaderEditList,
    /// nginx `expires`: set on the [`add_header_status`] statuses.
    pub expires: Option<Expires>,
    pub rate_limit: Option<usize>,
    pub max_request_body: Option<u64>,
    /// `websocket: true`: a client's `Upgrade: websocket` is relayed to the
    /// upstream. Off by default (nginx relays an upgrade only where the
    /// config sets the Upgrade headers); `Upgrade: h2c` is never relayed.
    pub websocket: bool,
    /// `access` and `limit_except`: who may use the route (else 403).
    pub access: RouteAccess,
    /// nginx `error_page`, in order (the first naming a status wins).
    pub error_pages: Vec<ErrorPageSpec>,
    /// nginx `proxy_intercept_errors on`.
    pub intercept_errors: bool,
    /// nginx `rewrite`, in order.
    pub rewrites: Vec<crate::rewrite::RewriteRule>,
    /// Requests that this route matches, one per host it serves (none for a
    /// pure regex route). The gate replays them when the recorded sample is
    /// thin, so a route nobody visited lately is still exercised.
    pub examples: Vec<ExampleRequest>,
}

/// A request head made up to hit one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleRequest {
    pub method: http::Method,
    /// The local port to send it on, for a route that names ports.
    pub port: Option<u16>,
    pub host: Option<String>,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub enum HeaderCondition {
    Equals(HeaderName, String),
    Present(HeaderName),
    Absent(HeaderName),
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(ForwardAction),
    Redirect {
        status: StatusCode,
        location: LocationTemplate,
    },
    Respond {
        status: StatusCode,
        body: Arc<str>,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Files from a directory, answered by the data plane.
    Static(StaticAction),
}

/// One `error_page`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPageSpec {
    pub statuses: Vec<StatusCode>,
    pub target: ErrorTarget,
    pub answer: ErrorAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorTarget {
    /// Served as a GET (HEAD stays HEAD) of this path-and-query, through
    /// the routes of the request's host and port.
    Uri(String),
    /// Answered with a redirect to this URL (302 unless the status says).
    Redirect(HeaderValue),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAnswer {
    /// The error's own status (nginx's default).
    Original,
    /// The page's status (nginx `=`).
    Target,
    /// This status (nginx `=CODE`).
    Code(StatusCode),
}

impl CompiledRoute {
    /// The error page for an answer of `status`, if one is set.
    pub fn error_page(&self, status: StatusCode) -> Option<&ErrorPageSpec> {
        self.error_pages
            .iter()
            .find(|e| e.statuses.contains(&status))
    }
}

/// A `static` route: where its files are and how a path maps to one.
#[derive(Debug)]
pub struct StaticAction {
    /// The canonical directory (checked to exist at compile time).
    pub root: std::path::PathBuf,
    /// `alias`: this prefix (the route's `path_prefix`) is removed from the
    /// path before it is joined to `root`; `None` for `root`.
    pub alias_prefix: Option<String>,
    pub index: Vec<String>,
    /// `try_files` entries before the fallback (`$uri` still in them).
    pub try_files: Vec<String>,
    /// The last `try_files` entry; `None` without `try_files`.
    pub fallback: Option<StaticFallback>,
    /// `symlinks: follow`; otherwise a file whose canonical path leaves
    /// `root` is not served.
    pub follow_symlinks: bool,
    /// nginx `etag on` (the default): files carry an `ETag`.
    pub etag: bool,
    /// `$1`..`$9` in `alias` or `try_files` on a `path_regex` route: the
    /// route's regex, run again on the path to fill them in.
    pub captures: Option<regex::Regex>,
    /// `alias /dir/$1/$2`: the part after the literal directory (`root`
    /// is that directory), filled in per request; the file is `root` +
    /// this, with the usual segment checks.
    pub alias_captures: Option<String>,
}

impl StaticAction {
    /// `text` with `$1`..`$9` replaced by the captures of the route's
    /// regex on `path` (an absent group, or no regex: empty).
    pub fn fill_captures(&self, text: &str, path: &str) -> String {
        let caps = self.captures.as_ref().and_then(|re| re.captures(path));
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let digit = chars.peek().and_then(|d| d.to_digit(10)).filter(|d| *d > 0);
            match (c, digit) {
                ('$', Some(n)) => {
                    chars.next();
                    if let Some(m) = caps.as_ref().and_then(|c| c.get(n as usize)) {
                        out.push_str(m.as_str());
                    }
                }
                _ => out.push(c),
            }
        }
        out
    }
}

/// Whether `text` uses a regex capture (`$1`..`$9`).
pub fn has_captures(text: &str) -> bool {
    text.as_bytes()
        .windows(2)
        .any(|w| w.first() == Some(&b'$') && w.get(1).is_some_and(|d| (b'1'..=b'9').contains(d)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticFallback {
    /// `=404`: answer this status.
    Status(StatusCode),
    /// `@name`: hand the request to that route.
    Route(RouteId),
    /// A URI served from the same root.
    Uri(String),
}

/// nginx `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    /// `Expires: now + secs`; `Cache-Control: max-age=secs`, or `no-cache`
    /// when negative.
    Seconds(i64),
    /// `epoch`: `Expires: Thu, 01 Jan 1970 00:00:01 GMT`, `no-cache`.
    Epoch,
    /// `max`: `Expires: Thu, 31 Dec 2037 23:55:55 GMT`, ten years' max-age.
    Max,
}

/// The statuses nginx's `add_header` (without `always`) and `expires` act
/// on.
pub fn add_header_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

#[derive(Debug)]
pub struct ForwardAction {
    /// The upstream; with `upstream_map`, the first one the map can name
    /// (what reports show; each request gets the map's choice).
    pub upstream: UpstreamId,
    /// `upstream: "$name"`: the map whose value names the upstream per
    /// request (nginx `proxy_pass $name`).
    pub upstream_map: Option<crate::map::MapId>,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub host_rewrite: Option<HeaderValue>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    /// nginx `proxy_redirect`: (from, to) prefixes of `Location`/`Refresh`.
    pub location_rewrite: Vec<(String, String)>,
}

/// `$scheme://$host$request_uri`-style redirect targets and header values,
/// split at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationTemplate(pub Vec<LocationPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationPart {
    Literal(String),
    Scheme,
    Host,
    RequestUri,
    Uri,
    /// The query string, without `?` (nginx `$args`).
    Args,
    /// `?` when there is a query string, else nothing (nginx `$is_args`).
    IsArgs,
    /// The client's address (nginx `$remote_addr`).
    RemoteAddr,
    /// nginx `$request_id`: 32 hex digits, one per request (header values
    /// only: a redirect target must be the same on every replay).
    RequestId,
    /// nginx `$request_method`.
    Method,
    /// nginx `$http_NAME`: the first value of a request header ("" when
    /// absent).
    Header(HeaderName),
    /// nginx `$arg_NAME`: a query parameter ("" when absent).
    Arg(String),
    /// A map's value (nginx `map`), chosen per request.
    Map(crate::map::MapId),
}

#[derive(Debug, Default)]
pub struct HeaderEditList {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    /// Values with variables (`X-Real-IP: $remote_addr`, `$name` of a
    /// map), rendered per request by [`HeaderEditList::render`] from the
    /// request's [`HeaderVars`] (response values too: nginx's `add_header`
    /// sees the request's variables).
    pub set_vars: Vec<(HeaderName, LocationTemplate)>,
    pub add_vars: Vec<(HeaderName, LocationTemplate)>,
    /// Some value uses `$request_id` (itself or through a map): the data
    /// plane makes one only then.
    pub uses_request_id: bool,
    /// `always: false`: response edits apply only on [`add_header_status`]
    /// statuses. Default true (every status).
    pub only_add_header_statuses: bool,
}

/// A header value rendered for one request: name, value, and whether it is
/// appended (`add`) rather than set.
pub type RenderedHeader = (HeaderName, HeaderValue, bool);

/// What template variables are made of: the request as `decide` sees it.
#[derive(Debug, Clone, Copy)]
pub struct HeaderVars<'a> {
    pub method: &'a http::Method,
    pub scheme: &'a str,
    /// The normalized host (no port).
    pub host: &'a str,
    /// The normalized path (`$uri`).
    pub path: &'a str,
    /// The path as sent (`$request_uri` is this and the query).
    pub request_path: &'a str,
    pub query: Option<&'a str>,
    /// The client's request headers (`$http_NAME`, and what maps read).
    pub headers: &'a http::HeaderMap,
    pub client_ip: std::net::IpAddr,
    /// `$request_id` ([`request_id`]; empty where there is none).
    pub request_id: &'a str,
    /// The config's maps ([`CompiledConfig::maps`]), for `$name` of a map.
    pub maps: &'a [crate::map::CompiledMap],
}

/// A fresh `$request_id`: 128 bits as 32 hex digits, as nginx's. From the
/// standard library's randomly keyed SipHash over a process-wide counter
/// and the time: unique and unguessable enough to correlate logs, not a
/// secret.
pub fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let keys = std::collections::hash_map::RandomState::new();
    let mut out = String::with_capacity(32);
    for salt in [0u8, 1] {
        let mut h = keys.build_hasher();
        h.write_u64(n);
        h.write_u128(t);
        h.write_u8(salt);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl HeaderEditList {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.set_vars.is_empty()
            && self.add_vars.is_empty()
    }

    /// Some value has variables (rendered per request).
    pub fn has_vars(&self) -> bool {
        !self.set_vars.is_empty() || !self.add_vars.is_empty()
    }

    /// Applies response edits to a response of `status`, honouring
    /// `always: false`: the static edits, then `rendered` (what
    /// [`Self::render`] made of the values with variables for the request;
    /// empty when there are none).
    pub fn apply_response(
        &self,
        status: StatusCode,
        headers: &mut http::HeaderMap,
        rendered: &[RenderedHeader],
    ) {
        if !self.only_add_header_statuses || add_header_status(status) {
            self.apply(headers);
            apply_rendered(headers, rendered);
        }
    }

    /// Applies the static edits: remove, then set (replacing), then add
    /// (appending).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Renders the values with variables for one request (set ones, then
    /// added ones). A rendered value that is not a valid header value is
    /// skipped. An empty one is not sent, as nginx's: an empty `set` removes
    /// the header (kept as an empty set, which [`apply_rendered`] treats so),
    /// an empty `add` adds nothing. Allocates nothing when there are none.
    pub fn render(&self, vars: &HeaderVars<'_>) -> Vec<RenderedHeader> {
        let mut out = Vec::new();
        if !self.has_vars() {
            return out;
        }
        out.reserve(self.set_vars.len().saturating_add(self.add_vars.len()));
        let mut text = String::new();
        for (list, append) in [(&self.set_vars, false), (&self.add_vars, true)] {
            for (name, t) in list {
                text.clear();
                t.render_into(vars, &mut text);
                if text.is_empty() {
                    if !append {
                        out.push((name.clone(), HeaderValue::from_static(""), false));
                    }
                    continue;
                }
                if let Ok(value) = HeaderValue::from_str(&text) {
                    out.push((name.clone(), value, append));
                }
            }
        }
        out
    }

    /// Applies every edit of a request, rendering variables from `vars`.
    pub fn apply_request(&self, headers: &mut http::HeaderMap, vars: &HeaderVars<'_>) {
        self.apply(headers);
        apply_rendered(headers, &self.render(vars));
    }
}

/// Sets or appends values [`HeaderEditList::render`] made (an empty set
/// removes the header).
pub fn apply_rendered(headers: &mut http::HeaderMap, rendered: &[RenderedHeader]) {
    for (name, value, append) in rendered {
        if !*append && value.is_empty() {
            headers.remove(name);
        } else if *append {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
}

impl LocationPart {
    /// The part an nginx variable name (without `$`) stands for; maps are
    /// looked up by the caller.
    pub fn of_variable(name: &str) -> Option<Self> {
        Some(match name {
            "scheme" => Self::Scheme,
            "host" => Self::Host,
            "request_uri" => Self::RequestUri,
            "uri" | "document_uri" => Self::Uri,
            "args" | "query_string" => Self::Args,
            "is_args" => Self::IsArgs,
            "remote_addr" => Self::RemoteAddr,
            "request_id" => Self::RequestId,
            "request_method" => Self::Method,
            _ => {
                if let Some(h) = name.strip_prefix("http_") {
                    Self::Header(HeaderName::from_bytes(h.replace('_', "-").as_bytes()).ok()?)
                } else if let Some(a) = name.strip_prefix("arg_") {
                    if a.is_empty() {
                        return None;
                    }
                    Self::Arg(a.to_string())
                } else {
                    return None;
                }
            }
        })
    }

    /// The variables [`Self::of_variable`] knows, for error messages.
    pub const VARIABLES: &'static str = "$scheme, $host, $request_uri, $uri, $args, $is_args, $remote_addr, $request_id, $request_method, $http_NAME, $arg_NAME";
}

impl LocationTemplate {
    /// Renders the template for one request.
    pub fn render(&self, v: &HeaderVars<'_>) -> String {
        let mut out = String::new();
        self.render_into(v, &mut out);
        out
    }

    /// Renders the template for one request onto `out`.
    pub fn render_into(&self, v: &HeaderVars<'_>, out: &mut String) {
        for part in &self.0 {
            part.render_into(v, out);
        }
    }

    /// Some part is `$request_id`, itself or through a map.
    pub fn uses_request_id(&self, maps: &[crate::map::CompiledMap]) -> bool {
        self.0.iter().any(|p| match p {
            LocationPart::RequestId => true,
            LocationPart::Map(id) => crate::map::uses_request_id(maps, *id),
            _ => false,
        })
    }
}

impl LocationPart {
    /// Renders one part for one request onto `out`.
    pub fn render_into(&self, v: &HeaderVars<'_>, out: &mut String) {
        match self {
            LocationPart::Literal(s) => out.push_str(s),
            LocationPart::Scheme => out.push_str(v.scheme),
            LocationPart::Host => out.push_str(v.host),
            LocationPart::Uri => out.push_str(v.path),
            LocationPart::RequestUri => {
                out.push_str(v.request_path);
                if let Some(q) = v.query {
                    out.push('?');
                    out.push_str(q);
                }
            }
            LocationPart::Args => out.push_str(v.query.unwrap_or("")),
            LocationPart::IsArgs => {
                if v.query.is_some() {
                    out.push('?');
                }
            }
            LocationPart::RemoteAddr => {
                use std::fmt::Write;
                let _ = write!(out, "{}", v.client_ip);
            }
            LocationPart::RequestId => out.push_str(v.request_id),
            LocationPart::Method => out.push_str(v.method.as_str()),
            LocationPart::Header(h) => out.push_str(crate::map::header_value(v.headers, h)),
            LocationPart::Arg(name) => out.push_str(crate::map::arg_value(v.query, name)),
            LocationPart::Map(id) => crate::map::eval_into(*id, v, out),
        }
    }
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: Arc<str>,
    pub endpoints: Vec<EndpointSpec>,
    pub balance: Balance,
    pub hash_header: Option<HeaderName>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub health_check: Option<HealthCheckSpec>,
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl UpstreamPool {
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.balance {
            Balance::Hash(k) => Some(k),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// `host:port` as written.
    pub address: String,
    pub weight: u32,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// A certificate and its key, parsed and checked against its names.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub server_names: Vec<String>,
    pub key: Arc<rustls::sign::CertifiedKey>,
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSpec {
    pub name: String,
    pub requests_per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    pub block_at: Option<f64>,
    pub header: HeaderName,
}

impl Default for Scoring {
    fn default() -> Self {
        Self {
            block_at: None,
            header: HeaderName::from_static("x-aegis-score"),
        }
    }
}
