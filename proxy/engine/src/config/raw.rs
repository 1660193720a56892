//! The config files as written: serde structs with `deny_unknown_fields`
//! everywhere, so a typo is an error instead of a silently dropped rule.
//!
//! Nothing here is trusted. [`super::compile`] turns these into the compiled,
//! immutable config; only that can be served.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units::{Dur, Size};

/// One hot-content file. Every key is optional; files are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotFile {
    #[serde(default)]
    pub upstreams: Vec<Spanned<Upstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub tls: Vec<Spanned<TlsCert>>,
    #[serde(default)]
    pub rate_limits: Vec<Spanned<RateLimit>>,
    #[serde(default)]
    pub features: Vec<Spanned<Feature>>,
    #[serde(default)]
    pub scoring: Option<Spanned<Scoring>>,
    /// The client address behind trusted proxies (nginx's realip module).
    /// One per set.
    #[serde(default)]
    pub real_ip: Option<Spanned<RealIp>>,
    /// nginx `map` blocks: a value chosen per request (for `upstream:
    /// "$name"`).
    #[serde(default)]
    pub maps: Vec<Spanned<MapDef>>,
}

/// nginx `map $source $name { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapDef {
    pub name: String,
    /// The variable looked at: `$http_NAME`, `$request_method`, `$host`,
    /// `$uri`, `$args`, `$arg_NAME`, `$scheme`.
    pub source: String,
    /// Exact keys (compared case-insensitively, as nginx) and values.
    #[serde(default)]
    pub exact: BTreeMap<String, String>,
    /// Regexes tried in order after the exact keys (`(?i)` for nginx `~*`).
    #[serde(default)]
    pub regex: Vec<MapRegex>,
    /// Default "" as nginx.
    #[serde(default)]
    pub default: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRegex {
    pub regex: String,
    pub value: String,
}

/// nginx `set_real_ip_from` / `real_ip_header` / `real_ip_recursive`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealIp {
    /// Addresses or CIDRs of the proxies whose header is believed.
    pub from: Vec<String>,
    /// Default `X-Real-IP`, as nginx.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub recursive: bool,
}

/// One access rule: `{allow: CIDR}` or `{deny: CIDR}`; `all` for every
/// address.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessRule {
    Allow(String),
    Deny(String),
}

/// nginx `limit_except`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitExcept {
    /// The methods that pass under the route's own rules (GET brings HEAD).
    pub methods: Vec<String>,
    /// The rules for every other method (empty: the route's own).
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

/// nginx `proxy_redirect FROM TO`: a `Location` or `Refresh` from the
/// upstream that starts with `from` gets `to` in its place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationRewrite {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Spanned<Endpoint>>,
    #[serde(default)]
    pub balance: Balance,
    /// Default 5s (Envoy's default; nginx waits 60s, which hides dead hosts).
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Time to the response head. Default 60s, as nginx's proxy_read_timeout.
    #[serde(default)]
    pub response_timeout: Option<Dur>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub passive: Option<PassiveHealth>,
}

/// An endpoint: `"127.0.0.1:9001"` or `{ address: "...", weight: 3 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    /// Used only when every non-backup endpoint is down (nginx `backup`).
    #[serde(default)]
    pub backup: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone)]
pub struct Endpoint(pub EndpointSpec);

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { address, weight, backup }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                Ok(Endpoint(EndpointSpec {
                    address: v.to_string(),
                    weight: 1,
                    backup: false,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                EndpointSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(Endpoint)
            }
        }
        d.deserialize_any(V)
    }
}

/// How a pool picks an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    Random,
    /// Consistent hashing: `balance: { hash: client_ip }` or
    /// `balance: { hash: { header: x-user } }`.
    Hash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashKey {
    ClientIp,
    Header(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub rise: Option<u32>,
    #[serde(default)]
    pub fall: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    #[serde(default)]
    pub max_fails: Option<u32>,
    #[serde(default)]
    pub fail_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: Match,
    // -- exactly one action --
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub respond: Option<Respond>,
    /// Serve files from a directory (nginx `root`/`alias`, `index`,
    /// `try_files`).
    #[serde(rename = "static", default)]
    pub static_files: Option<Static>,
    /// nginx `expires`: `30d`, `1h30m`, `-1` (no-cache), `epoch`, `max`,
    /// `off`. On any route kind; only on nginx's `add_header` statuses.
    #[serde(default)]
    pub expires: Option<String>,
    // -- upstream options --
    /// Remove this prefix from the path sent upstream.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Put this in front of the (possibly stripped) path sent upstream.
    #[serde(default)]
    pub add_prefix: Option<String>,
    /// Replace the Host header sent upstream (default: the client's Host).
    #[serde(default)]
    pub host_rewrite: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderEdits,
    #[serde(default)]
    pub response_headers: HeaderEdits,
    /// Overrides the upstream's response timeout for this route.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Tries on another endpoint after a connect failure, idempotent methods only.
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub rate_limit: Option<Spanned<String>>,
    /// Overrides `limits.max_request_body` for this route (nginx
    /// `client_max_body_size` in a location).
    #[serde(default)]
    pub max_request_body: Option<Size>,
    /// Relay `Upgrade: websocket` to the upstream (nginx's
    /// `proxy_set_header Upgrade $http_upgrade` in a location). Default
    /// false: elsewhere the Upgrade header is removed and the request is
    /// served as plain HTTP. `Upgrade: h2c` is never relayed.
    #[serde(default)]
    pub websocket: bool,
    /// nginx `allow`/`deny`, in order: the first rule that matches the
    /// client decides; none matching allows. Denied: 403.
    #[serde(default)]
    pub access: Vec<AccessRule>,
    /// nginx `limit_except`.
    #[serde(default)]
    pub limit_except: Option<LimitExcept>,
    /// Upstream routes: nginx `proxy_redirect`, tried in order.
    #[serde(default)]
    pub location_rewrite: Vec<LocationRewrite>,
    /// nginx `error_page`: what answers in place of an error.
    #[serde(default)]
    pub error_pages: Vec<ErrorPage>,
    /// nginx `rewrite` in the route's location, in order.
    #[serde(default)]
    pub rewrites: Vec<Rewrite>,
    /// nginx `proxy_intercept_errors on`: `error_pages` also replace the
    /// upstream's own error answers (default: only Aegis's).
    #[serde(default)]
    pub intercept_errors: bool,
    /// nginx's named location (`location @app`): never matched by a
    /// client's request, reached only as another route's `try_files`
    /// fallback (`@name`). Takes no `match`.
    #[serde(default)]
    pub internal: bool,
}

/// nginx `rewrite REGEX REPLACEMENT [FLAG]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub regex: String,
    /// With `$1`..`$9` and `$scheme`, `$host`, `$request_uri`, `$uri`,
    /// `$args`, `$is_args`, `$remote_addr`; a final `?` drops the query
    /// string from a redirect.
    pub to: String,
    /// `last`, `break`, `redirect`, `permanent`; absent: go on, then search
    /// the routes again.
    #[serde(default)]
    pub flag: Option<String>,
}

/// nginx `error_page CODES [=[STATUS]] URI`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorPage {
    /// The statuses replaced (300-599).
    pub statuses: Vec<u16>,
    /// A path (served as a GET of it, through the routes) or an
    /// `http(s)://` URL (redirected to).
    pub uri: String,
    /// The status the client gets: absent keeps the error's (nginx
    /// `error_page 404 /x`), a code sets it (`=200`), `target` takes the
    /// page's own (`=`).
    #[serde(default)]
    pub status: Option<ErrorPageStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ErrorPageStatus {
    Code(u16),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// One host: exact (`api.example.com`) or wildcard (`*.example.com`).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Several hosts (nginx `server_name a b c`).
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// The local ports the route serves (nginx's `listen` of the route's
    /// `server`): a request is matched only against the routes of the port
    /// it arrived on and the routes that name no port. Each must be the
    /// port of a `listen` or `listen_tls` address. Empty: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Exact path (nginx `location = /x`).
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix (nginx `location /x`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// With `path_prefix`: when this is the longest matching prefix, regex
    /// routes are not tried (nginx `location ^~ /x`).
    #[serde(default)]
    pub stop_regex: bool,
    /// Path regex, tried in declaration order (nginx `location ~ re`;
    /// write `(?i)` for `~*`).
    #[serde(default)]
    pub path_regex: Option<Spanned<String>>,
    /// With `path_regex`: nginx's regex location nested in `location
    /// PREFIX`: tried only when that prefix route is the longest matching
    /// prefix, before the other regexes.
    #[serde(default)]
    pub inside_prefix: Option<String>,
    /// With `path_regex`: nested in `location ~ OUTER` (the other route's
    /// `path_regex` as written): tried only when that one has matched,
    /// before it answers.
    #[serde(default)]
    pub inside_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

impl Match {
    /// No condition at all (the default: every request).
    pub fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.hosts.is_empty()
            && self.ports.is_empty()
            && self.path.is_none()
            && self.path_prefix.is_none()
            && !self.stop_regex
            && self.path_regex.is_none()
            && self.inside_prefix.is_none()
            && self.inside_regex.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    /// Response edits only: `false` applies them only to the statuses
    /// nginx's `add_header` adds to (200, 201, 204, 206, 301, 302, 303,
    /// 304, 307, 308), as `add_header` without `always`. Absent: every
    /// status (what Aegis has always done).
    #[serde(default)]
    pub always: Option<bool>,
}

/// The `static` action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Static {
    /// nginx `root`: the file is `root` + the normalized request path.
    #[serde(default)]
    pub root: Option<String>,
    /// nginx `alias`: the file is `alias` + the path with the route's
    /// `path_prefix` removed.
    #[serde(default)]
    pub alias: Option<String>,
    /// nginx `index`; default `[index.html]`.
    #[serde(default)]
    pub index: Option<Vec<String>>,
    /// nginx `try_files`: the last entry is the fallback (`=404`,
    /// `@route`, or a URI).
    #[serde(default)]
    pub try_files: Vec<String>,
    #[serde(default)]
    pub symlinks: Symlinks,
    /// nginx `etag`: send an `ETag` (and answer `If-None-Match` with it).
    /// Default true; `Last-Modified` is sent either way.
    #[serde(default = "yes")]
    pub etag: bool,
}

fn yes() -> bool {
    true
}

/// Which symlinks a `static` route follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Symlinks {
    /// Only those whose target stays under the root.
    #[default]
    WithinRoot,
    /// Any (nginx's default, `disable_symlinks off`).
    Follow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// May use `$scheme`, `$host`, `$request_uri` (path and query) and `$uri` (path).
    pub location: String,
}

fn default_redirect_status() -> u16 {
    302
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "default_respond_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_respond_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    pub server_names: Vec<String>,
    /// PEM certificate chain, relative to the config directory.
    pub certificate: String,
    /// PEM private key, relative to the config directory.
    pub key: String,
    /// Served to clients whose SNI matches no certificate (when
    /// `tls_unknown_sni: default_certificate`).
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    /// Sustained rate per client IP.
    pub requests_per_second: f64,
    /// Requests allowed above the rate in a burst (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub weight: f64,
    pub when: Predicate,
}

/// What a feature looks at (exactly one subject) and how it compares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    // subjects
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub method: Vec<String>,
    #[serde(default)]
    pub client_ip: Vec<String>,
    // comparisons (header and query)
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoring {
    /// Requests scoring at or above this are answered 403. Absent: never block.
    #[serde(default)]
    pub block_at: Option<f64>,
    /// The request header that carries the score to the upstream.
    #[serde(default)]
    pub header: Option<String>,
}
