//! The Aegis config set the importer builds, and its YAML text.
//!
//! Plain data mirroring the engine's raw schema (`aegis_engine::config::raw`
//! and `settings`), written out by hand: the YAML is meant to be read and
//! edited by the person migrating, so every route carries a comment naming
//! the nginx `file:line` it came from, and strings are always quoted so no
//! value is ever re-typed by the YAML reader (`on`, `1e3`, `*.example.com`).

use std::fmt::Write as _;
use std::path::PathBuf;

/// Everything written to the output directory.
#[derive(Debug, Default, Clone)]
pub struct ConfigSet {
    pub settings: SettingsOut,
    pub upstreams: Vec<UpstreamOut>,
    pub routes: Vec<RouteOut>,
    pub tls: Vec<TlsOut>,
    pub rate_limits: Vec<RateLimitOut>,
    /// Certificate and key files to copy: (source, name in the output dir).
    pub copies: Vec<(PathBuf, String)>,
    /// nginx's realip directives, as the hot `real_ip` key.
    pub real_ip: Option<RealIpOut>,
    /// nginx `map`s that choose upstreams, in definition order.
    pub maps: Vec<MapOut>,
}

/// One `maps` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOut {
    pub name: String,
    pub source: String,
    pub exact: Vec<(String, String)>,
    pub regex: Vec<(String, String)>,
    pub default: String,
}

/// The `real_ip` key (nginx `set_real_ip_from`, `real_ip_header`,
/// `real_ip_recursive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealIpOut {
    pub from: Vec<String>,
    pub header: String,
    pub recursive: bool,
}

#[derive(Debug, Clone)]
pub struct SettingsOut {
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
    pub tls_default_certificate: bool,
    pub admin: String,
    /// `None`: `auto`.
    pub workers: Option<u32>,
    pub compression: CompressionOut,
}

/// aegis.yaml `compression`, from nginx's `gzip*`/`brotli*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompressionOut {
    pub gzip: bool,
    pub brotli: bool,
    pub level: Option<u32>,
    pub min_length: Option<u64>,
    /// `gzip_types` (nginx always adds text/html).
    pub types: Vec<String>,
    pub vary: Option<bool>,
    /// `gzip_proxied any` (Some(true)) or `off` (Some(false)).
    pub proxied_any: Option<bool>,
}

impl Default for SettingsOut {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            listen_tls: Vec::new(),
            tls_default_certificate: false,
            admin: "127.0.0.1:9901".to_string(),
            workers: None,
            compression: CompressionOut::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamOut {
    pub name: String,
    pub comment: String,
    pub endpoints: Vec<EndpointOut>,
    pub balance: BalanceOut,
    pub connect_timeout_ms: Option<u64>,
    pub max_fails: Option<u32>,
    pub fail_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointOut {
    pub address: String,
    pub weight: u32,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceOut {
    RoundRobin,
    LeastConn,
    Random,
    HashClientIp,
    HashHeader(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOut {
    Exact(String),
    Prefix {
        prefix: String,
        stop_regex: bool,
    },
    Regex(String),
    /// No match: reached only as a `try_files` fallback (`@name`), nginx's
    /// named location (`internal: true`).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOut {
    Upstream {
        name: String,
        strip_prefix: Option<String>,
        add_prefix: Option<String>,
        host_rewrite: Option<String>,
        timeout_ms: Option<u64>,
        /// nginx `proxy_redirect` (and its implicit default): (from, to).
        location_rewrite: Vec<(String, String)>,
    },
    Redirect {
        status: u16,
        location: String,
    },
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// The engine's `static` action (nginx `root`/`alias`, `index`,
    /// `try_files`).
    Static {
        root: Option<String>,
        alias: Option<String>,
        index: Vec<String>,
        try_files: Vec<String>,
        /// nginx `etag off`: false.
        etag: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOut {
    pub name: String,
    pub comment: String,
    /// Empty: the routes of no host (nginx's default server).
    pub hosts: Vec<String>,
    /// Empty: every listener. Otherwise the local ports whose nginx
    /// socket chose this route's server (`match.ports`).
    pub ports: Vec<u16>,
    pub path: PathOut,
    pub action: ActionOut,
    pub request_set: Vec<(String, String)>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<(String, String)>,
    /// `response_headers.always`: `Some(false)` for nginx's `add_header`
    /// rule (2xx/3xx only); `None` writes nothing (every status).
    pub response_always: Option<bool>,
    /// nginx `expires`, as written (`30d`, `max`, `epoch`, `off`, `-1`).
    pub expires: Option<String>,
    pub response_remove: Vec<String>,
    pub rate_limit: Option<String>,
    pub max_request_body: Option<u64>,
    /// nginx sets `Upgrade $http_upgrade` here: the route upgrades
    /// (WebSocket). Written only when the engine knows the key.
    pub websocket: bool,
    /// nginx `allow`/`deny`: (allow, address/CIDR/`all`), in order.
    pub access: Vec<AccessOut>,
    /// nginx `limit_except`: the methods, and the rules for the others.
    pub limit_except: Option<(Vec<String>, Vec<AccessOut>)>,
    /// nginx `error_page` with a path or URL target.
    pub error_pages: Vec<ErrorPageOut>,
    /// nginx `proxy_intercept_errors on`.
    pub intercept_errors: bool,
    /// The location's nginx `rewrite`s, in order.
    pub rewrites: Vec<RewriteOut>,
    /// A regex location nested in another: `match.inside_prefix` or
    /// `match.inside_regex`.
    pub inside: Option<InsideOut>,
}

/// The location a nested regex location is inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsideOut {
    Prefix(String),
    Regex(String),
}

/// One `rewrites` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteOut {
    pub regex: String,
    pub to: String,
    pub flag: Option<String>,
}

/// One `allow` (true) or `deny` (false) rule and its address, CIDR or
/// `all`.
pub type AccessOut = (bool, String);

/// One `error_pages` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPageOut {
    pub statuses: Vec<u16>,
    pub uri: String,
    /// A code, `target` (nginx `=`), or none (the error's own).
    pub status: Option<String>,
}

/// Whether the engine this importer is built with accepts a route's
/// `websocket` key (it is being added alongside this importer; until then
/// the key is written as a comment so the set still loads).
pub fn engine_has_websocket() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        use aegis_engine::config::{ConfigSource, SourceFile, compile, parse_settings};
        let files = vec![
            SourceFile {
                name: "aegis.yaml".into(),
                text: "listen: [\"127.0.0.1:1\"]\n".into(),
            },
            SourceFile {
                name: "routes.yaml".into(),
                text: "upstreams:\n  - name: u\n    endpoints: [\"127.0.0.1:9\"]\n\
                       routes:\n  - name: r\n    upstream: u\n    websocket: true\n"
                    .into(),
            },
        ];
        let src = ConfigSource::from_files(std::path::Path::new("."), files);
        parse_settings(&src)
            .ok()
            .is_some_and(|s| compile(&src, &s.limits).is_ok())
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOut {
    pub server_names: Vec<String>,
    pub certificate: String,
    pub key: String,
    pub default: bool,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitOut {
    pub name: String,
    pub requests_per_second: f64,
    pub burst: u32,
    pub comment: String,
}

/// A YAML double-quoted scalar.
pub fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn comment(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "{indent}# {line}");
    }
}

fn ms(v: u64) -> String {
    if v.is_multiple_of(1000) {
        format!("{}s", v / 1000)
    } else {
        format!("{v}ms")
    }
}

impl ConfigSet {
    /// The files of the set: (file name, text).
    pub fn files(&self, header: &str) -> Vec<(String, String)> {
        let mut files = vec![("aegis.yaml".to_string(), self.settings_yaml(header))];
        if !self.upstreams.is_empty() {
            files.push(("upstreams.yaml".to_string(), self.upstreams_yaml(header)));
        }
        if !self.rate_limits.is_empty() {
            files.push((
                "rate_limits.yaml".to_string(),
                self.rate_limits_yaml(header),
            ));
        }
        files.push(("routes.yaml".to_string(), self.routes_yaml(header)));
        if !self.tls.is_empty() {
            files.push(("tls.yaml".to_string(), self.tls_yaml(header)));
        }
        files
    }

    fn settings_yaml(&self, header: &str) -> String {
        let mut out = String::new();
        comment(&mut out, "", header);
        let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "listen: [{}]", list(&self.settings.listen));
        if !self.settings.listen_tls.is_empty() {
            let _ = writeln!(out, "listen_tls: [{}]", list(&self.settings.listen_tls));
        }
        if self.settings.tls_default_certificate {
            out.push_str("# nginx serves the default server's certificate to an unknown SNI.\n");
            out.push_str("tls_unknown_sni: default_certificate\n");
        }
        let _ = writeln!(out, "admin: {}", q(&self.settings.admin));
        match self.settings.workers {
            Some(n) => {
                let _ = writeln!(out, "workers: {n}");
            }
            None => out.push_str("workers: auto\n"),
        }
        let c = &self.settings.compression;
        if c.gzip || c.brotli {
            out.push_str("# nginx gzip/brotli: compressed on the fly, per process.\n");
            out.push_str("compression:\n");
            let _ = writeln!(out, "  gzip: {}", c.gzip);
            let _ = writeln!(out, "  brotli: {}", c.brotli);
            // nginx's defaults where the config is silent: level 1, 20 bytes,
            // text/html only, no Vary, not for requests with `Via`.
            let _ = writeln!(out, "  level: {}", c.level.unwrap_or(1).clamp(1, 9));
            let _ = writeln!(out, "  min_length: {}", c.min_length.unwrap_or(20));
            let mut types = vec!["text/html".to_string()];
            for t in &c.types {
                if !types.contains(t) {
                    types.push(t.clone());
                }
            }
            let ts: Vec<String> = types.iter().map(|s| q(s)).collect();
            let _ = writeln!(out, "  types: [{}]", ts.join(", "));
            let _ = writeln!(
                out,
                "  proxied: {}",
                if c.proxied_any == Some(true) {
                    "any"
                } else {
                    "off"
                }
            );
            let _ = writeln!(out, "  vary: {}", c.vary.unwrap_or(false));
        }
        out
    }

    fn upstreams_yaml(&self, header: &str) -> String {
        let mut out = String::new();
        comment(&mut out, "", header);
        out.push_str("upstreams:\n");
        for u in &self.upstreams {
            comment(&mut out, "  ", &u.comment);
            let _ = writeln!(out, "  - name: {}", q(&u.name));
            out.push_str("    endpoints:\n");
            for e in &u.endpoints {
                if e.weight == 1 && !e.backup {
                    let _ = writeln!(out, "      - {}", q(&e.address));
                } else {
                    let _ = write!(out, "      - {{ address: {}", q(&e.address));
                    if e.weight != 1 {
                        let _ = write!(out, ", weight: {}", e.weight);
                    }
                    if e.backup {
                        out.push_str(", backup: true");
                    }
                    out.push_str(" }\n");
                }
            }
            match &u.balance {
                BalanceOut::RoundRobin => {}
                BalanceOut::LeastConn => out.push_str("    balance: least_conn\n"),
                BalanceOut::Random => out.push_str("    balance: random\n"),
                BalanceOut::HashClientIp => out.push_str("    balance: { hash: client_ip }\n"),
                BalanceOut::HashHeader(h) => {
                    let _ = writeln!(out, "    balance: {{ hash: {{ header: {} }} }}", q(h));
                }
            }
            if let Some(t) = u.connect_timeout_ms {
                let _ = writeln!(out, "    connect_timeout: {}", q(&ms(t)));
            }
            if u.max_fails.is_some() || u.fail_timeout_ms.is_some() {
                out.push_str("    passive:\n");
                if let Some(n) = u.max_fails {
                    let _ = writeln!(out, "      max_fails: {n}");
                }
                if let Some(t) = u.fail_timeout_ms {
                    let _ = writeln!(out, "      fail_timeout: {}", q(&ms(t)));
                }
            }
        }
        out
    }

    fn rate_limits_yaml(&self, header: &str) -> String {
        let mut out = String::new();
        comment(&mut out, "", header);
        out.push_str("rate_limits:\n");
        for r in &self.rate_limits {
            comment(&mut out, "  ", &r.comment);
            let _ = writeln!(out, "  - name: {}", q(&r.name));
            let _ = writeln!(
                out,
                "    requests_per_second: {}",
                fmt_f64(r.requests_per_second)
            );
            let _ = writeln!(out, "    burst: {}", r.burst);
        }
        out
    }

    fn tls_yaml(&self, header: &str) -> String {
        let mut out = String::new();
        comment(&mut out, "", header);
        out.push_str("tls:\n");
        for t in &self.tls {
            comment(&mut out, "  ", &t.comment);
            let names: Vec<String> = t.server_names.iter().map(|s| q(s)).collect();
            let _ = writeln!(out, "  - server_names: [{}]", names.join(", "));
            let _ = writeln!(out, "    certificate: {}", q(&t.certificate));
            let _ = writeln!(out, "    key: {}", q(&t.key));
            if t.default {
                out.push_str("    default: true\n");
            }
        }
        out
    }

    fn routes_yaml(&self, header: &str) -> String {
        let mut out = String::new();
        comment(&mut out, "", header);
        if let Some(ri) = &self.real_ip {
            out.push_str("# nginx realip: the client address behind these proxies.\n");
            out.push_str("real_ip:\n");
            let fs: Vec<String> = ri.from.iter().map(|s| q(s)).collect();
            let _ = writeln!(out, "  from: [{}]", fs.join(", "));
            let _ = writeln!(out, "  header: {}", q(&ri.header));
            let _ = writeln!(out, "  recursive: {}", ri.recursive);
        }
        if !self.maps.is_empty() {
            out.push_str("# nginx map: a value chosen per request (an upstream, a header value, a redirect target).\n");
            out.push_str("maps:\n");
            for m in &self.maps {
                let _ = writeln!(out, "  - name: {}", q(&m.name));
                let _ = writeln!(out, "    source: {}", q(&m.source));
                if !m.exact.is_empty() {
                    out.push_str("    exact:\n");
                    for (k, v) in &m.exact {
                        let _ = writeln!(out, "      {}: {}", q(k), q(v));
                    }
                }
                if !m.regex.is_empty() {
                    out.push_str("    regex:\n");
                    for (k, v) in &m.regex {
                        let _ = writeln!(out, "      - {{ regex: {}, value: {} }}", q(k), q(v));
                    }
                }
                let _ = writeln!(out, "    default: {}", q(&m.default));
            }
        }
        if self.routes.is_empty() {
            out.push_str("routes: []\n");
            return out;
        }
        out.push_str("routes:\n");
        for r in &self.routes {
            comment(&mut out, "  ", &r.comment);
            let _ = writeln!(out, "  - name: {}", q(&r.name));
            if r.path == PathOut::Internal {
                out.push_str("    internal: true\n");
            } else {
                out.push_str("    match:\n");
            }
            match r.hosts.as_slice() {
                [] => {}
                [one] => {
                    let _ = writeln!(out, "      host: {}", q(one));
                }
                many => {
                    let hs: Vec<String> = many.iter().map(|s| q(s)).collect();
                    let _ = writeln!(out, "      hosts: [{}]", hs.join(", "));
                }
            }
            if !r.ports.is_empty() {
                let ps: Vec<String> = r.ports.iter().map(u16::to_string).collect();
                let _ = writeln!(out, "      ports: [{}]", ps.join(", "));
            }
            match &r.path {
                PathOut::Exact(p) => {
                    let _ = writeln!(out, "      path: {}", q(p));
                }
                PathOut::Prefix { prefix, stop_regex } => {
                    let _ = writeln!(out, "      path_prefix: {}", q(prefix));
                    if *stop_regex {
                        out.push_str("      stop_regex: true\n");
                    }
                }
                PathOut::Regex(re) => {
                    let _ = writeln!(out, "      path_regex: {}", q(re));
                    match &r.inside {
                        Some(InsideOut::Prefix(p)) => {
                            let _ = writeln!(out, "      inside_prefix: {}", q(p));
                        }
                        Some(InsideOut::Regex(o)) => {
                            let _ = writeln!(out, "      inside_regex: {}", q(o));
                        }
                        None => {}
                    }
                }
                PathOut::Internal => {}
            }
            match &r.action {
                ActionOut::Upstream {
                    name,
                    strip_prefix,
                    add_prefix,
                    host_rewrite,
                    timeout_ms,
                    location_rewrite,
                } => {
                    let _ = writeln!(out, "    upstream: {}", q(name));
                    if !location_rewrite.is_empty() {
                        out.push_str("    location_rewrite:\n");
                        for (from, to) in location_rewrite {
                            let _ = writeln!(out, "      - {{ from: {}, to: {} }}", q(from), q(to));
                        }
                    }
                    if let Some(s) = strip_prefix {
                        let _ = writeln!(out, "    strip_prefix: {}", q(s));
                    }
                    if let Some(s) = add_prefix {
                        let _ = writeln!(out, "    add_prefix: {}", q(s));
                    }
                    if let Some(s) = host_rewrite {
                        let _ = writeln!(out, "    host_rewrite: {}", q(s));
                    }
                    if let Some(t) = timeout_ms {
                        let _ = writeln!(out, "    timeout: {}", q(&ms(*t)));
                    }
                }
                ActionOut::Redirect { status, location } => {
                    let _ = writeln!(
                        out,
                        "    redirect: {{ status: {status}, location: {} }}",
                        q(location)
                    );
                }
                ActionOut::Respond {
                    status,
                    body,
                    headers,
                } => {
                    out.push_str("    respond:\n");
                    let _ = writeln!(out, "      status: {status}");
                    if !headers.is_empty() {
                        out.push_str("      headers:\n");
                        for (k, v) in headers {
                            let _ = writeln!(out, "        {}: {}", q(k), q(v));
                        }
                    }
                    if !body.is_empty() {
                        let _ = writeln!(out, "      body: {}", q(body));
                    }
                }
                ActionOut::Static {
                    root,
                    alias,
                    index,
                    try_files,
                    etag,
                } => {
                    out.push_str("    static:\n");
                    if let Some(r) = root {
                        let _ = writeln!(out, "      root: {}", q(r));
                    }
                    if let Some(a) = alias {
                        let _ = writeln!(out, "      alias: {}", q(a));
                    }
                    let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
                    let _ = writeln!(out, "      index: [{}]", list(index));
                    if !try_files.is_empty() {
                        let _ = writeln!(out, "      try_files: [{}]", list(try_files));
                    }
                    if !etag {
                        out.push_str("      etag: false\n");
                    }
                }
            }
            if !r.request_set.is_empty() || !r.request_remove.is_empty() {
                out.push_str("    request_headers:\n");
                edits(&mut out, "set", &r.request_set, &r.request_remove);
            }
            if !r.response_add.is_empty() || !r.response_remove.is_empty() {
                out.push_str("    response_headers:\n");
                edits(&mut out, "add", &r.response_add, &r.response_remove);
                if let Some(a) = r.response_always {
                    let _ = writeln!(out, "      always: {a}");
                }
            }
            if let Some(e) = &r.expires {
                let _ = writeln!(out, "    expires: {}", q(e));
            }
            if let Some(rl) = &r.rate_limit {
                let _ = writeln!(out, "    rate_limit: {}", q(rl));
            }
            if let Some(n) = r.max_request_body {
                let _ = writeln!(out, "    max_request_body: {n}");
            }
            access_yaml(&mut out, "    ", "access", &r.access);
            if let Some((methods, rules)) = &r.limit_except {
                out.push_str("    limit_except:\n");
                let ms: Vec<String> = methods.iter().map(|s| q(s)).collect();
                let _ = writeln!(out, "      methods: [{}]", ms.join(", "));
                access_yaml(&mut out, "      ", "access", rules);
            }
            if !r.error_pages.is_empty() {
                out.push_str("    error_pages:\n");
                for e in &r.error_pages {
                    let codes: Vec<String> = e.statuses.iter().map(u16::to_string).collect();
                    let _ = write!(
                        out,
                        "      - {{ statuses: [{}], uri: {}",
                        codes.join(", "),
                        q(&e.uri)
                    );
                    match e.status.as_deref() {
                        Some("target") => out.push_str(", status: target"),
                        Some(code) => {
                            let _ = write!(out, ", status: {code}");
                        }
                        None => {}
                    }
                    out.push_str(" }\n");
                }
            }
            if r.intercept_errors {
                out.push_str("    intercept_errors: true\n");
            }
            if !r.rewrites.is_empty() {
                out.push_str("    rewrites:\n");
                for w in &r.rewrites {
                    let _ = write!(out, "      - {{ regex: {}, to: {}", q(&w.regex), q(&w.to));
                    if let Some(f) = &w.flag {
                        let _ = write!(out, ", flag: {f}");
                    }
                    out.push_str(" }\n");
                }
            }
            if r.websocket {
                if engine_has_websocket() {
                    out.push_str("    websocket: true\n");
                } else {
                    out.push_str(
                        "    # websocket: true  (nginx upgrades here; this engine has no such key yet)\n",
                    );
                }
            }
        }
        out
    }
}

fn access_yaml(out: &mut String, indent: &str, key: &str, rules: &[(bool, String)]) {
    if rules.is_empty() {
        return;
    }
    let items: Vec<String> = rules
        .iter()
        .map(|(allow, what)| {
            format!(
                "{{ {}: {} }}",
                if *allow { "allow" } else { "deny" },
                q(what)
            )
        })
        .collect();
    let _ = writeln!(out, "{indent}{key}: [{}]", items.join(", "));
}

fn edits(out: &mut String, key: &str, pairs: &[(String, String)], remove: &[String]) {
    if !pairs.is_empty() {
        let _ = writeln!(out, "      {key}:");
        for (k, v) in pairs {
            let _ = writeln!(out, "        {}: {}", q(k), q(v));
        }
    }
    if !remove.is_empty() {
        let names: Vec<String> = remove.iter().map(|s| q(s)).collect();
        let _ = writeln!(out, "      remove: [{}]", names.join(", "));
    }
}

fn fmt_f64(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}
