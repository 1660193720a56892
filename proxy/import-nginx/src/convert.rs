//! nginx directive tree → Aegis [`ConfigSet`] plus [`Finding`]s.
//!
//! The converter walks the tree the way nginx merges it: a scope per level
//! (http → server → location) where scalar directives override and the
//! array-like ones (`proxy_set_header`, `add_header`, `proxy_hide_header`,
//! `limit_req`) are inherited only by a level that defines none of its own,
//! exactly nginx's rule. Every directive is either carried over, or listed
//! as a finding with its `file:line` and why (see `docs/nginx-migration.md`
//! for the table).
//!
//! Server blocks become host groups: a server's names become the routes'
//! `hosts`, and the default server of the listen socket (the one marked
//! `default_server`, else the first) becomes the routes that name no host,
//! which is where Aegis sends unknown hosts. Locations become routes with the
//! matching kind of path (`=` exact, `^~` prefix with `stop_regex`, `~`/`~*`
//! regex in declaration order, plain prefix), so the engine's lookup
//! reproduces nginx's matching order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::finding::{Finding, Impact};
use crate::model::{
    ActionOut, BalanceOut, ConfigSet, EndpointOut, PathOut, RateLimitOut, RouteOut, TlsOut,
    UpstreamOut,
};
use crate::parse::{Directive, Loc};

/// Options of a conversion.
#[derive(Debug, Clone)]
pub struct Options {
    /// `admin` in the generated `aegis.yaml`.
    pub admin: String,
    /// The directory relative paths in the nginx config are taken from
    /// (nginx's conf prefix: the directory of the main config file).
    pub prefix: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            admin: "127.0.0.1:9901".to_string(),
            prefix: PathBuf::from("."),
        }
    }
}

/// The result of a conversion.
#[derive(Debug, Clone)]
pub struct Conversion {
    pub set: ConfigSet,
    /// What was not carried over exactly: the entries of [`Self::report`]
    /// that are not [`Impact::Carried`], sorted by file and line.
    pub findings: Vec<Finding>,
    /// Every directive of the input (includes and the directives inside
    /// blocks too), exactly once each, in input order: carried, differs,
    /// dropped or ignored.
    pub report: Vec<Finding>,
}

impl Conversion {
    /// True when something that changes what clients see was dropped.
    pub fn dropped_anything(&self) -> bool {
        self.findings.iter().any(|f| f.impact == Impact::Dropped)
    }

    /// The features Aegis leaves out that this config uses (each of
    /// [`crate::finding::LEFT_OUT`] at most once, in that order).
    pub fn left_out(&self) -> Vec<&'static str> {
        let used: HashSet<&str> = self
            .findings
            .iter()
            .filter_map(crate::finding::left_out_feature)
            .collect();
        crate::finding::LEFT_OUT
            .iter()
            .copied()
            .filter(|f| used.contains(f))
            .collect()
    }

    /// Dropped directives that are not part of a left-out feature: what
    /// keeps the import from being complete for the features Aegis has.
    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| {
            f.impact == Impact::Dropped && crate::finding::left_out_feature(f).is_none()
        })
    }
}

const NGINX_DEFAULT_TIMEOUT_MS: u64 = 60_000;
const NGINX_DEFAULT_BODY: u64 = 1 << 20;
/// Stands for nginx's `client_max_body_size 0` (no limit).
const UNLIMITED_BODY: u64 = 1 << 50;

/// Converts a parsed nginx configuration.
pub fn convert(tree: &[Directive], opts: &Options) -> Conversion {
    let mut constants = HashSet::new();
    let tree = &substitute_constant_sets(tree, &mut constants);
    let mut cx = Cx::new(opts);
    cx.constant_sets = constants;
    cx.caches = uses_cache(tree);
    let has_http = tree.iter().any(|d| d.name == "http");
    if has_http {
        for d in tree {
            cx.main_directive(d);
        }
    } else {
        // A site file given on its own (`server { ... }` at the top): read it
        // as the inside of `http`.
        cx.http(tree);
    }
    cx.finish(tree)
}

/// nginx `set $v VALUE` at server level with a value without variables,
/// the only assignment of `$v` in the config (no other `set`, no `map` or
/// `geo` making it): it runs before any location is chosen, so `$v` is
/// that value in every request of the server. Its uses in the server
/// (not in `location` patterns or `rewrite` regexes, which nginx does not
/// expand) are written with the value, and its place is put in `carried`.
/// Discourse's `set $public /var/www/discourse/public; ... root $public;`.
fn substitute_constant_sets(
    tree: &[Directive],
    carried: &mut HashSet<(String, usize)>,
) -> Vec<Directive> {
    fn assigns(ds: &[Directive], var: &str, n: &mut usize) {
        for d in ds {
            let made = match d.name.as_str() {
                "set" => d.arg(0) == Some(var),
                "map" | "geo" | "split_clients" => d.args.last().map(String::as_str) == Some(var),
                _ => false,
            };
            if made {
                *n = n.saturating_add(1);
            }
            if let Some(b) = &d.block {
                assigns(b, var, n);
            }
        }
    }
    fn replace(arg: &str, var: &str, value: &str) -> String {
        let braced = format!("${{{}}}", var.trim_start_matches('$'));
        let mut out = arg.replace(&braced, value);
        let mut from = 0;
        while let Some(i) = out.get(from..).and_then(|r| r.find(var)) {
            let at = from.saturating_add(i);
            let end = at.saturating_add(var.len());
            if out
                .get(end..)
                .and_then(|r| r.chars().next())
                .is_some_and(is_var_char)
            {
                from = end;
                continue;
            }
            out.replace_range(at..end, value);
            from = at.saturating_add(value.len());
        }
        out
    }
    fn substitute(ds: &mut [Directive], var: &str, value: &str) {
        for d in ds {
            let skip_first = d.name == "rewrite";
            if d.name != "location" && !(d.name == "set" && d.arg(0) == Some(var)) {
                for (i, a) in d.args.iter_mut().enumerate() {
                    if !(skip_first && i == 0) && a.contains('$') {
                        *a = replace(a, var, value);
                    }
                }
            }
            if let Some(b) = &mut d.block {
                substitute(b, var, value);
            }
        }
    }
    fn walk(ds: &mut [Directive], all: &[Directive], carried: &mut HashSet<(String, usize)>) {
        for d in ds.iter_mut() {
            let Some(block) = &mut d.block else { continue };
            if d.name != "server" {
                walk(block, all, carried);
                continue;
            }
            let consts: Vec<(String, String, Loc)> = block
                .iter()
                .filter(|c| c.name == "set" && c.args.len() == 2)
                .filter_map(|c| {
                    let (var, value) = (c.arg(0)?, c.arg(1)?);
                    let ok = var.starts_with('$') && !value.contains('$');
                    ok.then(|| (var.to_string(), value.to_string(), c.at.clone()))
                })
                .filter(|(var, _, _)| {
                    let mut n = 0;
                    assigns(all, var, &mut n);
                    n == 1
                })
                .collect();
            for (var, value, at) in consts {
                substitute(block, &var, &value);
                carried.insert((at.file.to_string(), at.line));
            }
        }
    }
    let mut out = tree.to_vec();
    walk(&mut out, tree, carried);
    out
}

#[derive(Debug, Clone, Default)]
struct Scope {
    set_headers: Option<Vec<Directive>>,
    add_headers: Option<Vec<Directive>>,
    hide_headers: Option<Vec<Directive>>,
    limit_reqs: Option<Vec<Directive>>,
    connect_timeout: Option<(u64, Loc, String)>,
    read_timeout: Option<u64>,
    body_size: Option<u64>,
    default_type: Option<String>,
    limit_req_status: Option<(u16, Loc)>,
    ssl_certificate: Option<Directive>,
    ssl_certificate_key: Option<Directive>,
    /// `proxy_redirect` lines (array-like: inherited only by a level that
    /// has none).
    redirects: Option<Vec<Directive>>,
    /// `expires`, inherited like any scalar directive.
    expires: Option<Directive>,
    /// `root` and `index`, inherited (the static-file action).
    root: Option<String>,
    index: Option<Vec<String>>,
    /// nginx `etag off` (inherited): the static routes send no ETag.
    etag_off: bool,
    /// `allow`/`deny` lines (array-like: inherited only by a level that
    /// has none).
    access: Option<Vec<Directive>>,
    /// The location's `limit_except` block.
    limit_except: Option<Directive>,
    /// `error_page` lines with a path or URL target (array-like).
    error_pages: Option<Vec<Directive>>,
    /// `proxy_intercept_errors`.
    intercept_errors: Option<Directive>,
}

/// Directives that the scope handles (at http, server and location level).
const SCOPE_DIRECTIVES: &[&str] = &[
    "proxy_set_header",
    "add_header",
    "proxy_hide_header",
    "limit_req",
    "proxy_connect_timeout",
    "proxy_read_timeout",
    "client_max_body_size",
    "default_type",
    "limit_req_status",
    "ssl_certificate",
    "ssl_certificate_key",
    "proxy_redirect",
    "expires",
    "allow",
    "deny",
    "limit_except",
    "proxy_intercept_errors",
];

#[derive(Debug, Clone)]
struct Zone {
    rps: f64,
}

#[derive(Debug, Clone)]
struct UpstreamBlock {
    out: UpstreamOut,
}

#[derive(Debug, Clone)]
struct Listen {
    addr: String,
    ssl: bool,
    default: bool,
}

#[derive(Debug, Clone)]
struct Server {
    at: Loc,
    /// Host names as Aegis writes them (exact and `*.suffix`), each with
    /// the `server_name` directive that named it.
    name_dirs: Vec<(String, Directive)>,
    listens: Vec<Listen>,
    routes: Vec<RouteOut>,
}

impl Server {
    /// The `server` directive itself (what findings about the whole server
    /// point at).
    fn directive(&self) -> Directive {
        Directive {
            name: "server".into(),
            args: Vec::new(),
            block: None,
            at: self.at.clone(),
        }
    }

    /// Every route redirects (the usual `return 301 https://...` server).
    fn redirect_only(&self) -> bool {
        !self.routes.is_empty()
            && self
                .routes
                .iter()
                .all(|r| matches!(r.action, ActionOut::Redirect { .. }))
    }
}

#[derive(Debug, Clone)]
enum LocKind {
    Exact(String),
    Prefix(String),
    Stop(String),
    Regex { pattern: String, re: Regex },
    Named(String),
}

#[derive(Debug, Clone)]
struct LocInfo {
    kind: LocKind,
    at: Loc,
    text: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

impl LocInfo {
    /// The `location` directive as written (without its block).
    fn directive(&self) -> Directive {
        Directive {
            name: "location".into(),
            args: self.args.clone(),
            block: None,
            at: self.at.clone(),
        }
    }
}

struct ServerCtx<'a> {
    label: String,
    primary_name: &'a str,
    ports: Vec<String>,
}

struct Cx<'o> {
    opts: &'o Options,
    findings: Vec<Finding>,
    upstreams: Vec<UpstreamBlock>,
    zones: HashMap<String, Zone>,
    /// connect timeouts asked for, per upstream name.
    connect_timeouts: BTreeMap<String, Vec<TimeoutAsk>>,
    rate_limits: Vec<RateLimitOut>,
    rate_names: HashMap<(String, u32), String>,
    servers: Vec<Server>,
    workers: Option<u32>,
    route_names: HashSet<String>,
    copies: Vec<(PathBuf, String)>,
    tls: Vec<CertIn>,
    /// File extension → MIME type, from `types` (nginx's built-in map
    /// when there is none).
    types: HashMap<String, String>,
    /// Upstream blocks that could not be carried over.
    unusable_upstreams: HashSet<String>,
    /// The server being read: its scope, named locations, the named
    /// locations a `try_files` used, its first name and ports (for
    /// `$server_name` and `$server_port`).
    server_scope: Scope,
    server_block: Vec<Directive>,
    named: Vec<LocInfo>,
    used_named: HashSet<String>,
    /// Named locations of the current server written as internal routes
    /// (a static `try_files ... @name` falls back to them): name → route.
    internal_named: HashMap<String, String>,
    /// Those routes, written once after every server's routes (they have
    /// no host or port, so the per-socket copies do not repeat them).
    internal_routes: Vec<RouteOut>,
    /// Server-level `set`s of constants, substituted where used
    /// ([`substitute_constant_sets`]): (file, line).
    constant_sets: HashSet<(String, usize)>,
    cur_primary: String,
    cur_ports: Vec<String>,
    /// Depth of named-location fallbacks being followed (a guard).
    depth: u8,
    /// Depth of the nested location being read (0: a server's own).
    nesting: u8,
    /// Some `proxy_cache` (other than `off`) is set: without one, the
    /// other `proxy_cache_*` directives have no effect.
    caches: bool,
    /// `gzip`/`brotli` and their tuning, collected at every level (Aegis
    /// compresses per process: `compression` in aegis.yaml).
    compression: crate::model::CompressionOut,
    /// `set_real_ip_from`, `real_ip_header`, `real_ip_recursive`, with the
    /// context they were in (Aegis has one `real_ip` per set).
    real_ip_lines: Vec<(Directive, String)>,
    /// `map`s carried (choosing upstreams), in definition order.
    maps: Vec<crate::model::MapOut>,
    /// Their variable names, for `proxy_pass $name`.
    upstream_maps: HashSet<String>,
}

fn find(d: &Directive, impact: Impact, reason: impl Into<String>) -> Finding {
    Finding {
        at: d.at.clone(),
        directive: d.text(),
        impact,
        reason: reason.into(),
        left_out: None,
    }
}

impl<'o> Cx<'o> {
    fn new(opts: &'o Options) -> Self {
        Self {
            opts,
            findings: Vec::new(),
            upstreams: Vec::new(),
            zones: HashMap::new(),
            connect_timeouts: BTreeMap::new(),
            rate_limits: Vec::new(),
            rate_names: HashMap::new(),
            servers: Vec::new(),
            workers: None,
            compression: crate::model::CompressionOut::default(),
            route_names: HashSet::new(),
            copies: Vec::new(),
            tls: Vec::new(),
            types: [
                ("html", "text/html"),
                ("htm", "text/html"),
                ("shtml", "text/html"),
                ("gif", "image/gif"),
                ("jpg", "image/jpeg"),
                ("jpeg", "image/jpeg"),
            ]
            .into_iter()
            .map(|(e, t)| (e.to_string(), t.to_string()))
            .collect(),
            unusable_upstreams: HashSet::new(),
            server_scope: Scope::default(),
            server_block: Vec::new(),
            named: Vec::new(),
            used_named: HashSet::new(),
            internal_named: HashMap::new(),
            internal_routes: Vec::new(),
            constant_sets: HashSet::new(),
            cur_primary: String::new(),
            cur_ports: Vec::new(),
            depth: 0,
            nesting: 0,
            caches: false,
            real_ip_lines: Vec::new(),
            maps: Vec::new(),
            upstream_maps: HashSet::new(),
        }
    }

    /// Marks a directive as carried over exactly (a note made about it
    /// elsewhere takes precedence in the report).
    fn carried(&mut self, d: &Directive) {
        self.findings.push(find(d, Impact::Carried, ""));
    }

    fn note(&mut self, d: &Directive, impact: Impact, reason: impl Into<String>) {
        self.findings.push(find(d, impact, reason));
    }

    /// A drop that is a consequence of a feature Aegis leaves out
    /// (`LEFT_OUT[feature]`), named so in the report.
    fn note_left_out(&mut self, d: &Directive, feature: usize, reason: impl Into<String>) {
        let mut f = find(d, Impact::Dropped, reason);
        f.left_out = crate::finding::LEFT_OUT.get(feature).copied();
        self.findings.push(f);
    }

    // ---------------------------------------------------------------- main

    fn main_directive(&mut self, d: &Directive) {
        self.carried(d);
        match d.name.as_str() {
            "include" => {}
            "http" => match &d.block {
                Some(b) => self.http(b),
                None => self.note(d, Impact::Dropped, "`http` without a block"),
            },
            "worker_processes" => match d.arg(0) {
                Some("auto") => self.workers = None,
                Some(n) => match n.parse::<u32>() {
                    Ok(n) if n > 0 => self.workers = Some(n),
                    _ => self.note(
                        d,
                        Impact::Ignored,
                        "not a number of workers; Aegis uses `auto`",
                    ),
                },
                None => {}
            },
            "events"
            | "user"
            | "pid"
            | "error_log"
            | "worker_rlimit_nofile"
            | "daemon"
            | "master_process"
            | "env"
            | "pcre_jit"
            | "timer_resolution"
            | "worker_cpu_affinity"
            | "worker_priority"
            | "worker_shutdown_timeout"
            | "lock_file"
            | "thread_pool"
            | "working_directory"
            | "worker_rlimit_core"
            | "ssl_engine"
            | "debug_points" => self.note(
                d,
                Impact::Ignored,
                "a process setting of nginx; Aegis has its own (docs/CONFIG.md)",
            ),
            "load_module" => self.note(
                d,
                Impact::Differs,
                "dynamic modules do not exist in Aegis; directives they add are listed where used",
            ),
            "stream" => self.note(
                d,
                Impact::Dropped,
                "TCP/UDP proxying (`stream`) is not part of Aegis",
            ),
            "mail" => self.note(d, Impact::Dropped, "mail proxying is not part of Aegis"),
            _ => self.unknown(d, "main"),
        }
    }

    fn http(&mut self, block: &[Directive]) {
        let scope = self.child_scope(&Scope::default(), block);
        // Upstreams, zones and types first: servers refer to them.
        let mut types_seen = false;
        for d in block {
            match d.name.as_str() {
                "upstream" => self.upstream(d),
                "limit_req_zone" => self.limit_req_zone(d),
                "types" => {
                    if !types_seen {
                        self.types.clear();
                        types_seen = true;
                    }
                    for t in d.block.iter().flatten() {
                        for ext in &t.args {
                            self.types.insert(ext.to_ascii_lowercase(), t.name.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        for d in block {
            self.carried(d);
            match d.name.as_str() {
                "upstream" | "limit_req_zone" | "types" | "include" => {}
                "map" => self.map(d, block),
                "server" => match &d.block {
                    Some(b) => self.server(d, b, &scope),
                    None => self.note(d, Impact::Dropped, "`server` without a block"),
                },
                n if SCOPE_DIRECTIVES.contains(&n) => {}
                "proxy_send_timeout" => self.send_timeout(d),
                _ => self.common(d, "http"),
            }
        }
    }

    // ---------------------------------------------------------------- scope

    fn child_scope(&mut self, parent: &Scope, block: &[Directive]) -> Scope {
        let mut s = parent.clone();
        let mut sets = Vec::new();
        let mut adds = Vec::new();
        let mut hides = Vec::new();
        let mut limits = Vec::new();
        let mut redirects = Vec::new();
        let mut access = Vec::new();
        let mut error_pages = Vec::new();
        for d in block {
            match d.name.as_str() {
                "allow" | "deny" => access.push(d.clone()),
                "error_page" if !d.args.last().is_some_and(|a| a.starts_with('@')) => {
                    error_pages.push(d.clone());
                }
                "proxy_intercept_errors" => s.intercept_errors = Some(d.clone()),
                "limit_except" => s.limit_except = Some(d.clone()),
                "proxy_set_header" => sets.push(d.clone()),
                "add_header" => adds.push(d.clone()),
                "proxy_hide_header" => hides.push(d.clone()),
                "limit_req" => limits.push(d.clone()),
                "proxy_redirect" => redirects.push(d.clone()),
                "proxy_connect_timeout" => {
                    if let Some(ms) = self.duration_arg(d) {
                        s.connect_timeout = Some((ms, d.at.clone(), d.text()));
                    }
                }
                "proxy_read_timeout" => {
                    if let Some(ms) = self.duration_arg(d) {
                        s.read_timeout = Some(ms);
                    }
                }
                "client_max_body_size" => match d.arg(0).map(parse_nginx_size) {
                    Some(Some(0)) => s.body_size = Some(UNLIMITED_BODY),
                    Some(Some(n)) => s.body_size = Some(n),
                    _ => self.note(d, Impact::Dropped, "not a size"),
                },
                "default_type" => s.default_type = d.arg(0).map(str::to_string),
                "limit_req_status" => match d.arg(0).and_then(|a| a.parse::<u16>().ok()) {
                    Some(code) => s.limit_req_status = Some((code, d.at.clone())),
                    None => self.note(d, Impact::Dropped, "not a status code"),
                },
                "ssl_certificate" => s.ssl_certificate = Some(d.clone()),
                "expires" => s.expires = Some(d.clone()),
                "root" => s.root = d.arg(0).map(str::to_string),
                "index" => s.index = Some(d.args.clone()),
                "etag" => s.etag_off = d.arg(0) == Some("off"),
                "ssl_certificate_key" => s.ssl_certificate_key = Some(d.clone()),
                _ => {}
            }
        }
        if !sets.is_empty() {
            s.set_headers = Some(sets);
        }
        if !adds.is_empty() {
            s.add_headers = Some(adds);
        }
        if !hides.is_empty() {
            s.hide_headers = Some(hides);
        }
        if !limits.is_empty() {
            s.limit_reqs = Some(limits);
        }
        if !redirects.is_empty() {
            s.redirects = Some(redirects);
        }
        if !access.is_empty() {
            s.access = Some(access);
        }
        if !error_pages.is_empty() {
            s.error_pages = Some(error_pages);
        }
        s
    }

    /// `map $src $var { ... }`: carried where the engine has an equivalent
    /// (the WebSocket `Connection` idiom), else listed.
    fn map(&mut self, d: &Directive, http: &[Directive]) {
        let (Some(src), Some(var)) = (d.arg(0), d.arg(1)) else {
            self.note(d, Impact::Dropped, "map takes a source and a variable");
            return;
        };
        let mut uses = Vec::new();
        uses_of(http, var, &mut uses);
        let mut in_maps = false;
        for_each_map(http, &mut |m| {
            in_maps |= m
                .block
                .iter()
                .flatten()
                .any(|e| e.args.iter().any(|a| a == var));
        });
        if uses.is_empty() && !in_maps {
            self.note(
                d,
                Impact::Ignored,
                format!("no effect: `{var}` is not used"),
            );
        } else if src == "$http_upgrade"
            && uses.iter().all(|u| {
                u.name == "proxy_set_header"
                    && u.arg(0)
                        .is_some_and(|h| h.eq_ignore_ascii_case("connection"))
            })
        {
            self.note(
                d,
                Impact::Carried,
                "the WebSocket idiom: routes whose Connection header uses it upgrade \
                 (`websocket: true`)",
            );
        } else if let Some(m) = self.upstream_choice_map(d, http, src, var) {
            self.note(
                d,
                Impact::Carried,
                "maps: chooses the upstream of the routes that proxy_pass to it",
            );
            self.maps.push(m);
        } else if uses.iter().any(|u| value_use(u, var)) {
            match self.value_map(d, src, var) {
                Ok(m) => {
                    self.note(
                        d,
                        Impact::Carried,
                        format!(
                            "maps: `{var}` in the header values and redirect targets that use it"
                        ),
                    );
                    self.maps.push(m);
                }
                Err(why) => self.note(d, Impact::Dropped, why),
            }
        } else {
            self.note(
                d,
                Impact::Dropped,
                format!(
                    "variables from `map` are carried where they choose an upstream \
                     (`proxy_pass ${{name}}`) or in proxy_set_header, add_header and `return` \
                     targets; the {} directive(s) using `{var}` are listed where they are",
                    uses.len()
                ),
            );
        }
    }

    /// A map whose variable is used in header values or redirect targets:
    /// exact and regex keys, values that are text, text with variables
    /// Aegis has, or `$name` of a map carried before it.
    fn value_map(
        &self,
        d: &Directive,
        src: &str,
        var: &str,
    ) -> Result<crate::model::MapOut, String> {
        let name = var
            .strip_prefix('$')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .ok_or_else(|| format!("`{var}` is not a variable name Aegis can carry"))?;
        if aegis_engine::compiled::LocationPart::of_variable(name).is_some() {
            return Err(format!("`{var}` is a variable Aegis has itself"));
        }
        if src
            .strip_prefix('$')
            .and_then(aegis_engine::map::MapSource::parse)
            .is_none()
        {
            return Err(format!(
                "a map of `{src}` is not expressible: Aegis maps read $http_NAME, \
                 $request_method, $host, $uri, $args, $arg_NAME or $scheme"
            ));
        }
        let value = |v: &str| -> Result<String, String> {
            if let Some(m) = v.strip_prefix('$')
                && self.maps.iter().any(|x| x.name == m)
            {
                return Ok(v.to_string());
            }
            if v.contains("$server_name") || v.contains("$server_port") {
                return Err(format!(
                    "the map value `{v}` uses a server's variable, which a map (of every \
                     server) does not have in Aegis"
                ));
            }
            request_value_template(v, "$", &[], &[], "map value")
        };
        let mut out = crate::model::MapOut {
            name: name.to_string(),
            source: src.to_string(),
            exact: Vec::new(),
            regex: Vec::new(),
            default: String::new(),
        };
        for e in d.block.iter().flatten() {
            let key = e.name.as_str();
            if matches!(key, "hostnames" | "volatile" | "include") {
                return Err(format!("`{key}` in a map is not expressible in Aegis"));
            }
            let [v] = e.args.as_slice() else {
                return Err(format!("the map entry `{key}` does not have one value"));
            };
            let v = value(v)?;
            if key == "default" {
                out.default = v;
            } else if let Some(re) = key.strip_prefix("~*") {
                out.regex.push((format!("(?i){re}"), v));
            } else if let Some(re) = key.strip_prefix('~') {
                out.regex.push((re.to_string(), v));
            } else {
                out.exact
                    .push((key.trim_start_matches('\\').to_string(), v));
            }
        }
        Ok(out)
    }

    /// A map whose variable is used only by `proxy_pass $var` and by maps
    /// that are themselves carried, with exact and regex keys, and values
    /// that are `http://UPSTREAM` of an upstream block or a carried map.
    fn upstream_choice_map(
        &mut self,
        d: &Directive,
        http: &[Directive],
        src: &str,
        var: &str,
    ) -> Option<crate::model::MapOut> {
        let name = var.strip_prefix('$')?;
        aegis_engine::map::MapSource::parse(src.strip_prefix('$')?)?;
        // Every use: `proxy_pass $var`, or a map's value (that map is
        // judged after this one, in order, and carried or not by itself).
        let mut uses = Vec::new();
        uses_of(http, var, &mut uses);
        let mut in_maps = false;
        for_each_map(http, &mut |m| {
            if m.block
                .iter()
                .flatten()
                .any(|e| e.args.iter().any(|a| a == var))
            {
                in_maps = true;
            }
        });
        if uses.is_empty() && !in_maps {
            return None;
        }
        if !uses
            .iter()
            .all(|u| u.name == "proxy_pass" && u.args.len() == 1 && u.arg(0) == Some(var))
        {
            return None;
        }
        let known = |v: &str| -> bool {
            if let Some(m) = v.strip_prefix('$') {
                return self.maps.iter().any(|x| x.name == m);
            }
            let host = aegis_engine::decide::upstream_name(v);
            v.starts_with("http://") && self.upstreams.iter().any(|u| u.out.name == host)
        };
        let mut out = crate::model::MapOut {
            name: name.to_string(),
            source: src.to_string(),
            exact: Vec::new(),
            regex: Vec::new(),
            default: String::new(),
        };
        for e in d.block.iter().flatten() {
            let (key, value) = match (e.args.as_slice(), e.name.as_str()) {
                ([v], k) => (k.to_string(), v.clone()),
                _ => return None,
            };
            if !known(&value) {
                return None;
            }
            if key == "default" {
                out.default = value;
            } else if let Some(re) = key.strip_prefix("~*") {
                out.regex.push((format!("(?i){re}"), value));
            } else if let Some(re) = key.strip_prefix('~') {
                out.regex.push((re.to_string(), value));
            } else if matches!(key.as_str(), "hostnames" | "volatile" | "include") {
                return None;
            } else {
                out.exact
                    .push((key.trim_start_matches('\\').to_string(), value));
            }
        }
        if !known(&out.default) && !out.default.is_empty() {
            return None;
        }
        self.upstream_maps.insert(name.to_string());
        Some(out)
    }

    fn duration_arg(&mut self, d: &Directive) -> Option<u64> {
        match d.arg(0).and_then(parse_nginx_duration) {
            Some(ms) => Some(ms),
            None => {
                self.note(d, Impact::Dropped, "not a duration");
                None
            }
        }
    }

    fn send_timeout(&mut self, d: &Directive) {
        self.note(
            d,
            Impact::Differs,
            "Aegis has no separate timeout for sending the request to the upstream; \
             the route `timeout` covers the wait for the response head",
        );
    }

    // ---------------------------------------------------------------- upstream

    fn upstream(&mut self, d: &Directive) {
        let (Some(name), Some(block)) = (d.arg(0), &d.block) else {
            self.note(d, Impact::Dropped, "an upstream needs a name and a block");
            return;
        };
        let mut endpoints = Vec::new();
        let mut balance = BalanceOut::RoundRobin;
        let mut fails: Vec<(Option<u32>, Option<u64>, Loc)> = Vec::new();
        for s in block {
            self.carried(s);
            match s.name.as_str() {
                "include" => {}
                "server" => {
                    if let Some((Some(e), mf, ft)) = self.upstream_server(s) {
                        endpoints.push(e);
                        fails.push((mf, ft, s.at.clone()));
                    }
                }
                "least_conn" => balance = BalanceOut::LeastConn,
                "ip_hash" => {
                    balance = BalanceOut::HashClientIp;
                    self.note(
                        s,
                        Impact::Differs,
                        "carried as `hash: client_ip`: each client still sticks to one server, \
                         but nginx hashes only the first three octets of an IPv4 address and \
                         picks with its own hash, so which server a client gets differs",
                    );
                }
                "hash" => match s.arg(0) {
                    Some("$remote_addr" | "$binary_remote_addr") => {
                        balance = BalanceOut::HashClientIp;
                        self.note(
                            s,
                            Impact::Differs,
                            "carried as `hash: client_ip`; which server a given client gets differs from nginx's",
                        );
                    }
                    Some(key)
                        if key
                            .strip_prefix("$http_")
                            .is_some_and(|h| !h.is_empty() && !h.contains('$')) =>
                    {
                        let header = key
                            .strip_prefix("$http_")
                            .unwrap_or_default()
                            .replace('_', "-")
                            .to_ascii_lowercase();
                        balance = BalanceOut::HashHeader(header.clone());
                        self.note(
                            s,
                            Impact::Differs,
                            format!(
                                "carried as `hash: {{ header: {header} }}`; requests with the same value \
                                 still reach one server, but not necessarily the one nginx picks"
                            ),
                        );
                    }
                    _ => self.note(
                        s,
                        Impact::Dropped,
                        "Aegis hashes only on the client address or one request header; \
                         falls back to round robin",
                    ),
                },
                "random" => {
                    balance = BalanceOut::Random;
                    if s.args.is_empty() {
                        // exact
                    } else {
                        self.note(
                            s,
                            Impact::Differs,
                            "`random two` is carried as plain `random`",
                        );
                    }
                }
                "keepalive" | "keepalive_timeout" | "keepalive_requests" | "keepalive_time"
                | "zone" => self.note(
                    s,
                    Impact::Ignored,
                    "Aegis pools upstream connections itself and keeps its state per worker",
                ),
                _ => self.note(
                    s,
                    Impact::Dropped,
                    "not understood inside `upstream` by the importer",
                ),
            }
        }
        let non_backup: Vec<_> = fails.iter().collect();
        let (max_fails, fail_timeout_ms) = match non_backup.first() {
            None => (None, None),
            Some((mf, ft, _)) => {
                if non_backup.iter().any(|(m, f, _)| m != mf || f != ft) {
                    self.note(
                        d,
                        Impact::Differs,
                        "servers have different max_fails/fail_timeout; Aegis has one pair per \
                         upstream, the first server's is used",
                    );
                }
                let mf = match mf {
                    Some(1) | None => None,
                    Some(n) => Some(*n),
                };
                let ft = match ft {
                    Some(10_000) | None => None,
                    Some(t) => Some(*t),
                };
                (mf, ft)
            }
        };
        if endpoints.is_empty() {
            self.note(
                d,
                Impact::Dropped,
                "no usable server in this upstream; routes to it are dropped",
            );
            self.unusable_upstreams.insert(name.to_string());
            return;
        }
        if endpoints.iter().all(|e| e.backup) {
            for e in &mut endpoints {
                e.backup = false;
            }
        }
        // nginx never considers the only (non-backup) server of a group
        // unavailable; Aegis's `max_fails: 0` is the same.
        let max_fails = if endpoints.iter().filter(|e| !e.backup).count() == 1 {
            Some(0)
        } else {
            max_fails
        };
        self.upstreams.push(UpstreamBlock {
            out: UpstreamOut {
                name: name.to_string(),
                comment: format!("nginx: upstream {name} ({})", d.at),
                endpoints,
                balance,
                connect_timeout_ms: None,
                max_fails,
                fail_timeout_ms,
            },
        });
    }

    /// `server addr [params]` inside `upstream`: `None` on a parse problem
    /// (listed), `Some((None, ..))` for a server that is not used (`down`).
    #[allow(clippy::type_complexity)]
    fn upstream_server(
        &mut self,
        s: &Directive,
    ) -> Option<(Option<EndpointOut>, Option<u32>, Option<u64>)> {
        let Some(addr) = s.arg(0) else {
            self.note(s, Impact::Dropped, "server without an address");
            return None;
        };
        if addr.starts_with("unix:") {
            self.note(
                s,
                Impact::Dropped,
                "Unix-socket upstreams are not supported by Aegis",
            );
            return None;
        }
        let address = with_port(addr, 80);
        let mut e = EndpointOut {
            address,
            weight: 1,
            backup: false,
        };
        let mut max_fails = None;
        let mut fail_timeout = None;
        let mut down = false;
        for p in s.args.iter().skip(1) {
            if let Some(v) = p.strip_prefix("weight=") {
                match v.parse::<u32>() {
                    Ok(w) if w > 0 => e.weight = w,
                    _ => self.note(s, Impact::Dropped, format!("bad weight `{v}`")),
                }
            } else if let Some(v) = p.strip_prefix("max_fails=") {
                match v.parse::<u32>() {
                    Ok(n) => max_fails = Some(n),
                    _ => self.note(s, Impact::Dropped, format!("bad max_fails `{v}`")),
                }
            } else if let Some(v) = p.strip_prefix("fail_timeout=") {
                match parse_nginx_duration(v) {
                    Some(ms) => fail_timeout = Some(ms),
                    None => self.note(s, Impact::Dropped, format!("bad fail_timeout `{v}`")),
                }
            } else if p == "backup" {
                e.backup = true;
            } else if p == "down" {
                down = true;
            } else if p.starts_with("max_conns=") {
                self.note(
                    s,
                    Impact::Differs,
                    "max_conns is not carried over: Aegis does not cap connections per server",
                );
            } else {
                self.note(
                    s,
                    Impact::Dropped,
                    format!("server parameter `{p}` is not supported"),
                );
            }
        }
        if down {
            // Marked permanently unavailable: leaving it out is exact.
            return Some((None, max_fails, fail_timeout));
        }
        Some((Some(e), max_fails, fail_timeout))
    }

    fn limit_req_zone(&mut self, d: &Directive) {
        let key = d.arg(0).unwrap_or("");
        let mut name = None;
        let mut rps = None;
        for a in d.args.iter().skip(1) {
            if let Some(z) = a.strip_prefix("zone=") {
                name = z.split(':').next().map(str::to_string);
            } else if let Some(r) = a.strip_prefix("rate=") {
                rps = parse_rate(r);
            }
        }
        let (Some(name), Some(rps)) = (name, rps) else {
            self.note(
                d,
                Impact::Dropped,
                "needs zone=NAME:SIZE and rate=Nr/s or Nr/m",
            );
            return;
        };
        if key != "$binary_remote_addr" && key != "$remote_addr" {
            self.note(
                d,
                Impact::Dropped,
                format!(
                    "Aegis limits per client address only; a key of `{key}` is not expressible"
                ),
            );
            return;
        }
        self.zones.insert(name, Zone { rps });
    }

    // ---------------------------------------------------------------- server

    fn server(&mut self, d: &Directive, block: &[Directive], parent: &Scope) {
        let scope = self.child_scope(parent, block);
        let mut names = Vec::new();
        let mut name_dirs: Vec<(String, Directive)> = Vec::new();
        let mut primary_name = String::new();
        let mut listens = Vec::new();
        let mut locations = Vec::new();
        let mut server_rewrites = Vec::new();
        let mut ssl_on = false;
        for c in block {
            self.carried(c);
            match c.name.as_str() {
                "include" => {}
                "listen" => {
                    if let Some(l) = self.listen(c) {
                        listens.push(l);
                    }
                }
                "server_name" => {
                    for n in &c.args {
                        if primary_name.is_empty() {
                            primary_name = n.clone();
                        }
                        let before = names.len();
                        self.server_name(c, n, &mut names);
                        for added in names.iter().skip(before) {
                            name_dirs.push((added.clone(), bare(c)));
                        }
                    }
                }
                "location" => {
                    if let Some(l) = self.location_info(c) {
                        locations.push(l);
                    }
                }
                "set"
                    if self
                        .constant_sets
                        .contains(&(c.at.file.to_string(), c.at.line)) =>
                {
                    self.note(
                        c,
                        Impact::Carried,
                        "a constant for every request of the server (its only assignment): \
                         its uses are written with the value",
                    );
                }
                "return" | "rewrite" | "set" | "if" | "break" => server_rewrites.push(c.clone()),
                "ssl" => ssl_on = c.arg(0) == Some("on"),
                "http2"
                | "ssl_protocols"
                | "ssl_ciphers"
                | "ssl_prefer_server_ciphers"
                | "ssl_session_cache"
                | "ssl_session_timeout"
                | "ssl_session_tickets"
                | "ssl_dhparam"
                | "ssl_ecdh_curve"
                | "ssl_stapling"
                | "ssl_stapling_verify"
                | "ssl_trusted_certificate"
                | "ssl_buffer_size"
                | "ssl_conf_command"
                | "ssl_early_data" => self.tls_tuning(c),
                n if SCOPE_DIRECTIVES.contains(&n) => {}
                "proxy_send_timeout" => self.send_timeout(c),
                _ => self.common(c, "server"),
            }
        }
        if ssl_on {
            for l in &mut listens {
                l.ssl = true;
            }
        }
        if listens.is_empty() {
            listens.push(Listen {
                addr: "0.0.0.0:80".to_string(),
                ssl: false,
                default: false,
            });
        }
        let label = names
            .first()
            .cloned()
            .unwrap_or_else(|| format!("server@{}", d.at.line));
        let ports: Vec<String> = {
            let mut p: Vec<String> = listens
                .iter()
                .filter_map(|l| l.addr.rsplit_once(':').map(|(_, p)| p.to_string()))
                .collect();
            p.dedup();
            p
        };
        self.server_scope = scope.clone();
        self.server_block = block.to_vec();
        self.named = locations
            .iter()
            .filter(|l| matches!(l.kind, LocKind::Named(_)))
            .cloned()
            .collect();
        self.used_named.clear();
        self.internal_named.clear();
        self.cur_primary = primary_name.clone();
        self.cur_ports = ports.clone();
        let sctx = ServerCtx {
            label,
            primary_name: &primary_name,
            ports,
        };
        let mut routes = Vec::new();
        let mut shadowed = false;
        // Server-level rewrite-module directives run before any location is
        // chosen.
        for r in &server_rewrites {
            if shadowed {
                self.note(
                    r,
                    Impact::Ignored,
                    "never reached: the server-level `return` above answers every request",
                );
                continue;
            }
            match r.name.as_str() {
                "return" => {
                    if let Some(action) = self.return_action(r, &sctx, &scope, None) {
                        let route = self.route_for(
                            &sctx,
                            r,
                            "return",
                            PathOut::Prefix {
                                prefix: "/".to_string(),
                                stop_regex: true,
                            },
                            action,
                        );
                        routes.push(self.decorate(route, &scope, false));
                        shadowed = true;
                    }
                }
                "rewrite" => {
                    if let Some((path, action)) = self.simple_redirect(r, &sctx, true) {
                        let clash = match &path {
                            PathOut::Prefix { prefix, .. } => {
                                locations.iter().any(|l| match &l.kind {
                                    LocKind::Exact(p) | LocKind::Prefix(p) | LocKind::Stop(p) => {
                                        p.starts_with(prefix.as_str())
                                    }
                                    _ => false,
                                })
                            }
                            _ => false,
                        };
                        if clash {
                            self.note(
                                r,
                                Impact::Dropped,
                                "a location under this prefix would win over the redirect in Aegis",
                            );
                            continue;
                        }
                        let route = self.route_for(&sctx, r, "rewrite", path, action);
                        routes.push(self.decorate(route, &scope, false));
                    }
                }
                _ => self.note(
                    r,
                    Impact::Dropped,
                    "rewrite-module logic (`if`, `set`, `break`) is not expressible in Aegis",
                ),
            }
        }
        if shadowed {
            for l in &locations {
                self.findings.push(Finding {
                    at: l.at.clone(),
                    directive: l.text.clone(),
                    impact: Impact::Ignored,
                    reason: "never reached: the server-level `return` answers every request".into(),
                    left_out: None,
                });
            }
        } else {
            for (i, l) in locations.iter().enumerate() {
                let mut rs = self.location_routes(&sctx, l, i, &locations, &scope);
                routes.append(&mut rs);
            }
            self.auto_redirects(&sctx, &locations, &scope, &mut routes);
            self.server_files(&sctx, d, &locations, &scope, &mut routes);
            self.named_locations();
        }
        self.named.clear();
        let index = self.servers.len();
        self.server_tls(d, index, &listens, &scope);
        self.servers.push(Server {
            at: d.at.clone(),
            name_dirs,
            listens,
            routes,
        });
    }

    fn tls_tuning(&mut self, d: &Directive) {
        if d.name == "ssl_protocols" || d.name == "ssl_ciphers" {
            self.note(
                d,
                Impact::Differs,
                "Aegis uses rustls's protocol and cipher choice: TLS 1.2 and 1.3 with modern suites",
            );
        } else if d.name == "http2" {
            self.note(
                d,
                Impact::Ignored,
                "Aegis offers HTTP/2 by ALPN on TLS and h2c with prior knowledge on plain listeners",
            );
        } else {
            self.note(
                d,
                Impact::Ignored,
                "TLS session, stapling and key-exchange tuning: rustls's own choices; the \
                 same content reaches the client",
            );
        }
    }

    fn listen(&mut self, d: &Directive) -> Option<Listen> {
        let Some(addr) = d.arg(0) else {
            self.note(d, Impact::Dropped, "listen without an address");
            return None;
        };
        if addr.starts_with("unix:") {
            self.note(
                d,
                Impact::Dropped,
                "Unix-socket listeners are not supported",
            );
            return None;
        }
        let mut l = Listen {
            addr: listen_addr(addr),
            ssl: false,
            default: false,
        };
        for p in d.args.iter().skip(1) {
            match p.as_str() {
                "ssl" => l.ssl = true,
                "default_server" | "default" => l.default = true,
                "http2" => {}
                "proxy_protocol" => self.note(
                    d,
                    Impact::Dropped,
                    "the PROXY protocol is not supported by Aegis listeners",
                ),
                "quic" | "http3" => self.note(d, Impact::Dropped, "HTTP/3 is not supported"),
                _ => {}
            }
        }
        Some(l)
    }

    fn server_name(&mut self, d: &Directive, n: &str, names: &mut Vec<String>) {
        let lower = n.to_ascii_lowercase();
        if n.is_empty() || n == "_" {
            return;
        }
        if n.starts_with('~') {
            self.note(
                d,
                Impact::Dropped,
                format!(
                    "regex server name `{n}`: Aegis matches exact names and `*.suffix` wildcards"
                ),
            );
            return;
        }
        if let Some(rest) = lower.strip_prefix('.') {
            push_unique(names, rest.to_string());
            push_unique(names, format!("*.{rest}"));
            return;
        }
        if lower.ends_with(".*") || (lower.contains('*') && !lower.starts_with("*.")) {
            self.note(
                d,
                Impact::Dropped,
                format!("wildcard `{n}`: Aegis supports only a leading `*.`"),
            );
            return;
        }
        push_unique(names, lower);
    }

    fn server_tls(&mut self, d: &Directive, index: usize, listens: &[Listen], scope: &Scope) {
        if !listens.iter().any(|l| l.ssl) {
            return;
        }
        let (Some(cert), Some(key)) = (&scope.ssl_certificate, &scope.ssl_certificate_key) else {
            self.note(
                d,
                Impact::Dropped,
                "a TLS listener without ssl_certificate and ssl_certificate_key",
            );
            return;
        };
        let (Some(cert_path), Some(key_path)) = (cert.arg(0), key.arg(0)) else {
            return;
        };
        if cert_path.contains('$') || key_path.contains('$') {
            self.note(
                cert,
                Impact::Dropped,
                "certificates chosen by variables are not supported",
            );
            return;
        }
        if cert_path.starts_with("data:") || key_path.starts_with("data:") {
            self.note(
                cert,
                Impact::Dropped,
                "inline `data:` certificates are not supported",
            );
            return;
        }
        let cert_name = self.copy_file(cert_path, index, "crt");
        let key_name = self.copy_file(key_path, index, "key");
        let source = if Path::new(cert_path).is_absolute() {
            PathBuf::from(cert_path)
        } else {
            self.opts.prefix.join(cert_path)
        };
        self.tls.push(CertIn {
            server: index,
            out: TlsOut {
                server_names: Vec::new(),
                certificate: cert_name,
                key: key_name,
                default: false,
                comment: format!("nginx: {} and {}", cert.at, key.at),
            },
            cert: cert.clone(),
            source,
        });
    }

    fn copy_file(&mut self, path: &str, index: usize, ext: &str) -> String {
        let full = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.opts.prefix.join(path)
        };
        let base = Path::new(path)
            .file_stem()
            .map(|s| sanitize(&s.to_string_lossy()))
            .unwrap_or_else(|| "file".to_string());
        let name = format!("certs/{index}-{base}.{ext}");
        self.copies.push((full, name.clone()));
        name
    }

    // ---------------------------------------------------------------- location

    fn location_info(&mut self, d: &Directive) -> Option<LocInfo> {
        let Some(block) = &d.block else {
            self.note(d, Impact::Dropped, "location without a block");
            return None;
        };
        let (modifier, pattern) = match d.args.as_slice() {
            [m, p] => (m.as_str(), p.clone()),
            [one] => {
                let one = one.as_str();
                if let Some(p) = one.strip_prefix("^~") {
                    ("^~", p.to_string())
                } else if let Some(p) = one.strip_prefix("~*") {
                    ("~*", p.to_string())
                } else if let Some(p) = one.strip_prefix('~') {
                    ("~", p.to_string())
                } else if let Some(p) = one.strip_prefix('=') {
                    ("=", p.to_string())
                } else if one.starts_with('@') {
                    ("@", one.to_string())
                } else {
                    ("", one.to_string())
                }
            }
            _ => {
                self.note(
                    d,
                    Impact::Dropped,
                    "location needs a modifier and a pattern",
                );
                return None;
            }
        };
        let kind = match modifier {
            "=" => LocKind::Exact(pattern),
            "^~" => LocKind::Stop(pattern),
            "" => LocKind::Prefix(pattern),
            "~" | "~*" => {
                let rust = if modifier == "~*" {
                    format!("(?i){pattern}")
                } else {
                    pattern.clone()
                };
                match Regex::new(&rust) {
                    Ok(re) => LocKind::Regex { pattern: rust, re },
                    Err(e) => {
                        let msg = e.to_string();
                        let last = msg.lines().last().unwrap_or("").trim().to_string();
                        self.note(
                            d,
                            Impact::Dropped,
                            format!(
                                "the regex is not supported by Aegis's regex engine ({last}); \
                                 lookaround and backreferences have no equivalent"
                            ),
                        );
                        return None;
                    }
                }
            }
            "@" => LocKind::Named(pattern.trim_start_matches('@').to_string()),
            other => {
                self.note(
                    d,
                    Impact::Dropped,
                    format!("unknown location modifier `{other}`"),
                );
                return None;
            }
        };
        if let LocKind::Exact(p) | LocKind::Prefix(p) | LocKind::Stop(p) = &kind
            && !p.starts_with('/')
        {
            self.note(
                d,
                Impact::Dropped,
                "a location that does not start with `/` never matches a normal request",
            );
            return None;
        }
        Some(LocInfo {
            kind,
            at: d.at.clone(),
            text: d.text(),
            args: d.args.clone(),
            block: block.clone(),
        })
    }

    fn location_routes(
        &mut self,
        sctx: &ServerCtx<'_>,
        loc: &LocInfo,
        index: usize,
        all: &[LocInfo],
        parent: &Scope,
    ) -> Vec<RouteOut> {
        let ld = loc.directive();
        if let LocKind::Named(_) = loc.kind {
            // Reached through `try_files` (carried by the caller) or
            // `error_page`; accounted for in `named_locations`.
            return Vec::new();
        }
        let scope = self.child_scope(parent, &loc.block);
        let mut out = Vec::new();
        // A FastCGI (uwsgi, SCGI) location: Aegis leaves these backends
        // out, so the whole location is that feature's; it keeps its place
        // in the location order with a 404 stand-in (the file-system paths
        // it would hand to PHP are never served as files).
        if let Some(h) = fastcgi_handler(&loc.block) {
            self.note_left_out(
                &ld,
                crate::finding::FASTCGI,
                format!(
                    "hands requests to a FastCGI/uwsgi/SCGI backend (`{}`), which Aegis leaves \
                     out: the location answers 404",
                    h.text()
                ),
            );
            let Some(path) = path_out(&loc.kind) else {
                return out;
            };
            let route = self.route_for(sctx, &ld, "", path, placeholder("FastCGI is not carried"));
            out.push(self.decorate(route, &scope, false));
            return out;
        }
        let mut proxy: Option<&Directive> = None;
        let mut returned: Option<ActionOut> = None;
        let mut strip: Option<(String, String)> = None;
        let mut statics: Vec<&Directive> = Vec::new();
        let mut try_files: Option<&Directive> = None;
        let mut internal: Option<&Directive> = None;
        let mut nested: Vec<LocInfo> = Vec::new();
        let via_error_page = self.error_page_idiom(&loc.block);
        let mut loc_rewrites: Vec<crate::model::RewriteOut> = Vec::new();
        for c in &loc.block {
            self.carried(c);
            match c.name.as_str() {
                "location" => {
                    if let Some(n) = self.location_info(c) {
                        nested.push(n);
                    }
                }
                "proxy_pass" => proxy = Some(c),
                // Noted below, with the named location they lead to.
                "return" | "error_page" if via_error_page.is_some() => {}
                "return" => {
                    if returned.is_some() {
                        self.note(
                            c,
                            Impact::Ignored,
                            "never reached: an earlier `return` answers",
                        );
                    } else if let Some(a) =
                        self.return_action(c, sctx, &scope, exact_path(&loc.kind))
                    {
                        returned = Some(a);
                    } else {
                        // Listed; keep the location's place with a stand-in.
                        returned = Some(placeholder("return not carried over"));
                    }
                }
                "rewrite" => {
                    if returned.is_some() {
                        self.note(
                            c,
                            Impact::Ignored,
                            "never reached: an earlier `return` answers",
                        );
                        continue;
                    }
                    if let Some(s) = self.strip_idiom(c, &loc.kind) {
                        strip = Some(s);
                        continue;
                    }
                    if let Some(r) = rewrite_out(c) {
                        self.note(c, Impact::Carried, "rewrites");
                        loc_rewrites.push(r);
                        continue;
                    }
                    if let Some((path, action)) = self.simple_redirect(c, sctx, false) {
                        // Emitted ahead of the location; exact only when nginx
                        // would bring that path to this very location.
                        let ok = match &path {
                            PathOut::Exact(p) => nginx_pick(all, p) == Some(index),
                            _ => false,
                        };
                        if ok {
                            let r = self.route_for(sctx, c, "rewrite", path, action);
                            out.push(self.decorate(r, &scope, false));
                        } else {
                            self.note(
                                c,
                                Impact::Dropped,
                                "this redirect would apply to requests another location serves in nginx",
                            );
                        }
                    }
                }
                "break"
                    if !loc.block.iter().any(|o| {
                        matches!(o.name.as_str(), "if" | "set" | "rewrite" | "return")
                    }) =>
                {
                    self.note(
                        c,
                        Impact::Ignored,
                        "no effect: no other rewrite-module directive in this location",
                    );
                }
                "if" | "set" | "break" => self.note(
                    c,
                    Impact::Dropped,
                    "rewrite-module logic (`if`, `set`, `break`) is not expressible in Aegis",
                ),
                "try_files" => try_files = Some(c),
                "internal" => internal = Some(c),
                "root" | "alias" | "autoindex" | "index" => statics.push(c),
                n if SCOPE_DIRECTIVES.contains(&n) => {}
                "proxy_send_timeout" => self.send_timeout(c),
                _ => self.common(c, "location"),
            }
        }
        let Some(path) = path_out(&loc.kind) else {
            return out;
        };
        // `try_files $uri /index.php$request_uri`: the fallback is a
        // FastCGI location (left out); the files are still served, with
        // 404 where nginx would run the script.
        let php_fallback = try_files
            .and_then(|t| t.args.last().filter(|a| a.starts_with('/')))
            .and_then(|last| lands_in_fastcgi(all, last))
            .map(|l| (l.text.clone(), l.at.clone()));
        let php_try_files = php_fallback.as_ref().and(try_files).map(|t| {
            let mut t = t.clone();
            if let Some(last) = t.args.last_mut() {
                *last = "=404".to_string();
            }
            t
        });
        let php_try = php_try_files.as_ref();
        // `try_files ... @name`: nginx goes on in the named location when no
        // file matches.
        let fallback = try_files.and_then(|t| {
            let last = t.args.last()?;
            let name = last.strip_prefix('@')?;
            self.named
                .iter()
                .find(|n| matches!(&n.kind, LocKind::Named(x) if x == name))
                .cloned()
                .map(|n| (t, n))
        });
        if let Some((ret, t, named)) = via_error_page
            && self.depth < 4
        {
            self.note(
                &ret,
                Impact::Carried,
                format!(
                    "handled by {} through `error_page` (nginx answers nothing itself)",
                    t.args.last().map_or("", String::as_str)
                ),
            );
            return self.named_fallback(sctx, loc, &t, &named, &scope, &statics, out, nested);
        }
        let (action, is_proxy) = if let Some(a) = returned {
            if let Some(p) = proxy {
                self.note(p, Impact::Ignored, "never reached: `return` answers first");
            }
            (a, false)
        } else if let Some(i) = internal {
            self.note(
                i,
                Impact::Carried,
                "requests from clients get 404, as in nginx (Aegis makes no internal requests, \
                 so the rest of this location is never used)",
            );
            for c in &loc.block {
                if c.name != "internal" && c.name != "location" {
                    self.note(
                        c,
                        Impact::Ignored,
                        "in an `internal` location: used only by nginx's internal requests \
                         (auth_request, error_page, try_files), which Aegis does not make",
                    );
                }
            }
            (
                ActionOut::Respond {
                    status: 404,
                    body: String::new(),
                    headers: Vec::new(),
                },
                false,
            )
        } else if let Some(p) = proxy {
            if let Some(t) = try_files {
                if only_dev_null(t) {
                    self.note(t, Impact::Carried, "no file ever matches; nginx proxies");
                } else {
                    self.note(
                        t,
                        Impact::Dropped,
                        "try_files checks the file system first; Aegis always proxies",
                    );
                }
            }
            match self.proxy_action(p, &loc.kind, strip.take(), &scope) {
                Some(a) => (a, true),
                None => (placeholder("proxy_pass not carried over"), false),
            }
        } else if let Some((t, named)) = fallback
            && self.depth < 4
        {
            if let Some(a) = self.static_then_named(sctx, loc, t, &named, &scope, &statics) {
                (a, false)
            } else {
                return self.named_fallback(sctx, loc, t, &named, &scope, &statics, out, nested);
            }
        } else if let Some(a) = static_action(&loc.kind, &scope, &statics, php_try.or(try_files)) {
            if let (Some(t), Some((text, at))) = (try_files, &php_fallback) {
                self.note_left_out(
                    t,
                    crate::finding::FASTCGI,
                    format!(
                        "files are served as nginx serves them; the last entry goes on in \
                         `{text}` ({at}), a FastCGI location Aegis leaves out, so where no file \
                         exists Aegis answers 404"
                    ),
                );
            }
            (self.without_fastcgi_index(a, all, &statics), false)
        } else {
            let why = match statics.first().copied().or(try_files) {
                Some(s) => format!(
                    "serves files (`{}`) in a way the `static` action cannot (a root missing \
                     here, variables other than `$uri` and captures, autoindex): the location \
                     answers 404",
                    s.name
                ),
                None => "has no proxy_pass or return; nginx serves files from `root` here, \
                         Aegis answers 404"
                    .to_string(),
            };
            self.note(&ld, Impact::Dropped, why);
            for s in statics.iter().copied().chain(try_files) {
                self.note(
                    s,
                    Impact::Dropped,
                    "not carried: the location's files cannot be served as nginx serves them \
                     (see the location)",
                );
            }
            (placeholder("static files are not served by Aegis"), false)
        };
        if is_proxy {
            for s in &statics {
                self.note(
                    s,
                    Impact::Ignored,
                    "no effect: the location proxies and serves no files",
                );
            }
        }
        let mut route = self.route_for(sctx, &ld, "", path, action);
        route.rewrites = loc_rewrites;
        out.push(self.decorate(route, &scope, is_proxy));
        self.nested_routes(sctx, loc, &nested, &scope, &mut out);
        out
    }

    /// Whether a `set $var ...` appears anywhere in the server being read.
    fn set_anywhere(&self, var: &str) -> bool {
        fn walk(ds: &[Directive], var: &str) -> bool {
            ds.iter().any(|d| {
                (d.name == "set" && d.arg(0).and_then(|a| a.strip_prefix('$')) == Some(var))
                    || d.block.as_deref().is_some_and(|b| walk(b, var))
            })
        }
        !var.is_empty() && walk(&self.server_block, var)
    }

    /// A static action without the `index` entries nginx would hand to a
    /// FastCGI location (`index index.php`): served as files they would
    /// show the script's source.
    fn without_fastcgi_index(
        &mut self,
        mut a: ActionOut,
        all: &[LocInfo],
        statics: &[&Directive],
    ) -> ActionOut {
        let ActionOut::Static { index, .. } = &mut a else {
            return a;
        };
        let scripts = |e: &String| {
            let uri = if e.starts_with('/') {
                e.clone()
            } else {
                format!("/{e}")
            };
            lands_in_fastcgi(all, &uri).is_some()
        };
        if !index.iter().any(scripts) {
            return a;
        }
        index.retain(|e| !scripts(e));
        let written = statics
            .iter()
            .copied()
            .find(|d| d.name == "index")
            .or_else(|| self.server_block.iter().find(|d| d.name == "index"))
            .cloned();
        if let Some(d) = written {
            self.note_left_out(
                &d,
                crate::finding::FASTCGI,
                "the entries nginx hands to a FastCGI location (`index.php`) are left out of \
                 the static routes' index (served as files they would show the script)",
            );
        }
        a
    }

    /// GitLab's idiom `error_page N = @name; return N;` in a location
    /// without proxy_pass: every request is handled by `@name`, as with
    /// `try_files /dev/null @name`. The `return`, the `error_page` and the
    /// named location, when the idiom applies.
    fn error_page_idiom(&self, block: &[Directive]) -> Option<(Directive, Directive, LocInfo)> {
        if block.iter().any(|d| {
            matches!(
                d.name.as_str(),
                "proxy_pass" | "rewrite" | "if" | "try_files"
            )
        }) {
            return None;
        }
        let mut returns = block.iter().filter(|d| d.name == "return");
        let ret = returns.next()?;
        if returns.next().is_some() || ret.args.len() != 1 {
            return None;
        }
        let code = ret.arg(0)?;
        code.parse::<u16>().ok()?;
        let ep = block.iter().find(|d| {
            d.name == "error_page"
                && d.args.len() >= 3
                && d.args.iter().rev().nth(1).is_some_and(|a| a == "=")
                && d.args.iter().any(|a| a == code)
        })?;
        let name = ep.args.last()?.strip_prefix('@')?;
        let named = self
            .named
            .iter()
            .find(|n| matches!(&n.kind, LocKind::Named(x) if x == name))?
            .clone();
        Some((ret.clone(), ep.clone(), named))
    }

    /// Locations inside a location: flattened into routes of their own,
    /// inheriting the outer location's settings, as nginx does.
    fn nested_routes(
        &mut self,
        sctx: &ServerCtx<'_>,
        outer: &LocInfo,
        nested: &[LocInfo],
        scope: &Scope,
        out: &mut Vec<RouteOut>,
    ) {
        // nginx tries a nested regex only inside its location: when the
        // outer prefix is the longest (before other regexes), or when the
        // outer regex has matched. The engine's `inside_*` says so for one
        // level; deeper or under `^~`, or beside nested prefixes (which
        // the engine's flat prefixes would then hide), it stays flat.
        let nested_prefixes = nested
            .iter()
            .any(|n| matches!(n.kind, LocKind::Prefix(_) | LocKind::Stop(_)));
        let inside = match &outer.kind {
            LocKind::Prefix(p) if !nested_prefixes && self.nesting == 0 => {
                Some(crate::model::InsideOut::Prefix(p.clone()))
            }
            LocKind::Regex { pattern, .. } if self.nesting <= 1 => {
                Some(crate::model::InsideOut::Regex(pattern.clone()))
            }
            _ => None,
        };
        for (j, n) in nested.iter().enumerate() {
            let is_regex = matches!(n.kind, LocKind::Regex { .. });
            if is_regex && inside.is_none() && !matches!(outer.kind, LocKind::Regex { .. }) {
                let nd = n.directive();
                self.note(
                    &nd,
                    Impact::Differs,
                    format!(
                        "nginx tries this regex only for requests whose longest prefix location \
                         is `{}`; Aegis's route table has no nesting at this depth, so it is \
                         tried, in declaration order, for every request no exact or `^~` \
                         location answers",
                        outer.text
                    ),
                );
            }
            self.nesting = self.nesting.saturating_add(1);
            let mut rs = self.location_routes(sctx, n, j, nested, scope);
            self.nesting = self.nesting.saturating_sub(1);
            if is_regex && let Some(i) = &inside {
                for r in &mut rs {
                    if matches!(r.path, PathOut::Regex(_)) && r.inside.is_none() {
                        r.inside = Some(i.clone());
                    }
                }
            }
            out.append(&mut rs);
        }
    }

    /// The routes of named location `named` read as a location of `kind`
    /// at server level (its settings, not the caller's), one fallback
    /// deeper.
    fn named_as(&mut self, sctx: &ServerCtx<'_>, named: &LocInfo, kind: LocKind) -> Vec<RouteOut> {
        let as_here = LocInfo {
            kind,
            at: named.at.clone(),
            text: named.text.clone(),
            args: named.args.clone(),
            block: named.block.clone(),
        };
        let server_scope = self.server_scope.clone();
        self.depth = self.depth.saturating_add(1);
        let rs = self.location_routes(
            sctx,
            &as_here,
            0,
            std::slice::from_ref(&as_here),
            &server_scope,
        );
        self.depth = self.depth.saturating_sub(1);
        rs
    }

    /// `try_files $uri ... @name` where the files can be served: a static
    /// route whose fallback is the named location, written once per server
    /// as an internal route (nginx looks the files up, then hands the
    /// request over with its URI unchanged). `None` when the files cannot
    /// be served here or the named location is not a single proxy or
    /// `return` route: the caller then carries the named location's action
    /// alone.
    fn static_then_named(
        &mut self,
        sctx: &ServerCtx<'_>,
        loc: &LocInfo,
        t: &Directive,
        named: &LocInfo,
        scope: &Scope,
        statics: &[&Directive],
    ) -> Option<ActionOut> {
        let name = t.args.last()?.trim_start_matches('@').to_string();
        if only_dev_null(t) {
            return None;
        }
        let ActionOut::Static {
            root,
            alias,
            index,
            mut try_files,
            etag,
        } = static_action(&loc.kind, scope, statics, Some(t))?
        else {
            return None;
        };
        // Jitsi's `location @root_path { rewrite ^/(.*)$ / break; }`: the
        // named location serves one path from the server's root, which is
        // the try_files entry that path would be.
        if let Some((rw, to)) = constant_break_rewrite(named)
            && !statics
                .iter()
                .any(|d| d.name == "root" || d.name == "alias")
        {
            try_files.pop();
            try_files.push(to.clone());
            try_files.push("=404".to_string());
            self.note(
                &rw,
                Impact::Carried,
                format!("carried as the try_files entry `{to}` (served from the server's root)"),
            );
            self.note(
                t,
                Impact::Carried,
                format!("files are looked up, then `{to}` (what @{name} serves), else 404"),
            );
            self.used_named.insert(name);
            return Some(ActionOut::Static {
                root,
                alias,
                index,
                try_files,
                etag,
            });
        }
        let route = match self.internal_named.get(&name) {
            Some(r) => r.clone(),
            None => {
                let mut rs = self.named_as(sctx, named, LocKind::Prefix("/".to_string()));
                let one = match (rs.pop(), rs.is_empty()) {
                    (Some(r), true)
                        if matches!(
                            r.action,
                            ActionOut::Upstream { .. } | ActionOut::Respond { .. }
                        ) && r.rewrites.is_empty() =>
                    {
                        r
                    }
                    _ => return None,
                };
                let name_of = self
                    .route_for(
                        sctx,
                        &named.directive(),
                        "",
                        PathOut::Internal,
                        one.action.clone(),
                    )
                    .name;
                let r = RouteOut {
                    name: name_of.clone(),
                    comment: format!(
                        "nginx: {} ({}): the try_files fallback",
                        named.text, named.at
                    ),
                    path: PathOut::Internal,
                    hosts: Vec::new(),
                    ports: Vec::new(),
                    ..one
                };
                self.internal_routes.push(r);
                self.internal_named.insert(name.clone(), name_of.clone());
                name_of
            }
        };
        if let Some(last) = try_files.last_mut() {
            *last = format!("@{route}");
        }
        self.note(
            t,
            Impact::Carried,
            format!("files are looked up; when none exists the request goes to @{name} (route `{route}`)"),
        );
        self.used_named.insert(name);
        Some(ActionOut::Static {
            root,
            alias,
            index,
            try_files,
            etag,
        })
    }

    /// A location whose `try_files` falls back to a named location: the
    /// route keeps this location's path and takes the named location's
    /// action and settings (nginx hands the request over; only the
    /// request-body limit checked on arrival stays this location's).
    #[allow(clippy::too_many_arguments)]
    fn named_fallback(
        &mut self,
        sctx: &ServerCtx<'_>,
        loc: &LocInfo,
        t: &Directive,
        named: &LocInfo,
        scope: &Scope,
        statics: &[&Directive],
        mut out: Vec<RouteOut>,
        nested: Vec<LocInfo>,
    ) -> Vec<RouteOut> {
        let name = t.args.last().cloned().unwrap_or_default();
        if t.name == "error_page" {
            self.note(
                t,
                Impact::Carried,
                format!("the location's `return` is answered by {name}, carried as its action"),
            );
        } else if only_dev_null(t) {
            self.note(
                t,
                Impact::Carried,
                format!("no file ever matches; every request goes to {name}"),
            );
        } else {
            self.note(
                t,
                Impact::Dropped,
                format!(
                    "files are not looked up (the files or the fallback cannot be carried as a \
                     `static` route): every request goes to {name}, whose handling is carried"
                ),
            );
        }
        for s in statics {
            self.note(
                s,
                Impact::Ignored,
                format!("no effect: no file is served, the request goes to {name}"),
            );
        }
        for c in &loc.block {
            if matches!(
                c.name.as_str(),
                "add_header" | "proxy_set_header" | "proxy_hide_header"
            ) {
                self.note(
                    c,
                    Impact::Ignored,
                    format!("no effect: the request is handled by {name}, whose settings apply"),
                );
            }
        }
        self.used_named
            .insert(name.trim_start_matches('@').to_string());
        let rs = self.named_as(sctx, named, loc.kind.clone());
        let limit = scope.body_size.filter(|n| *n != NGINX_DEFAULT_BODY);
        for mut r in rs {
            r.comment = format!(
                "nginx: {} ({}), handled by {name} ({})",
                loc.text, loc.at, named.at
            );
            r.max_request_body = limit;
            // nginx checks access in the calling location, before
            // try_files hands the request on (and again in the named one:
            // the caller's rules are the ones the engine keeps when both
            // have some).
            if scope.access.is_some() || scope.limit_except.is_some() {
                r.access.clear();
                r.limit_except = None;
                self.route_access(&mut r, scope);
            }
            out.push(r);
        }
        self.nested_routes(sctx, loc, &nested, scope, &mut out);
        out
    }

    /// The named locations of the server that was just read: carried when
    /// a `try_files` falls back to them, else listed.
    fn named_locations(&mut self) {
        for n in std::mem::take(&mut self.named) {
            let LocKind::Named(name) = &n.kind else {
                continue;
            };
            let d = n.directive();
            let target = format!("@{name}");
            let mut refs = Vec::new();
            uses_of(&self.server_block, &target, &mut refs);
            refs.retain(|r| r.name != "location");
            if self.used_named.contains(name) {
                self.note(
                    &d,
                    Impact::Carried,
                    "the fallback of try_files (its settings are on the routes that use it)",
                );
            } else if refs.is_empty() {
                self.note(
                    &d,
                    Impact::Ignored,
                    "never used: nothing in the server refers to it",
                );
            } else {
                self.note(
                    &d,
                    Impact::Dropped,
                    "named locations reached only through error_page (or nothing) are not \
                     carried over: Aegis has no error_page",
                );
            }
        }
        self.used_named.clear();
    }

    /// A request no location matches is served by the server itself: from
    /// its `root` (Jitsi's `/`). Written as a `path_prefix: /` static route
    /// when the server has no `location /` and an explicit root that exists
    /// here (nginx's compiled-in default root is not assumed).
    fn server_files(
        &mut self,
        sctx: &ServerCtx<'_>,
        server: &Directive,
        locations: &[LocInfo],
        scope: &Scope,
        routes: &mut Vec<RouteOut>,
    ) {
        if locations
            .iter()
            .any(|l| matches!(&l.kind, LocKind::Prefix(p) | LocKind::Stop(p) if p == "/"))
        {
            return;
        }
        let Some(root_dir) = server
            .block
            .iter()
            .flatten()
            .find(|c| c.name == "root")
            .cloned()
        else {
            return;
        };
        let kind = LocKind::Prefix("/".to_string());
        let Some(action) = static_action(&kind, scope, &[], None) else {
            return;
        };
        self.note(
            &root_dir,
            Impact::Carried,
            "serves the requests no location matches, as nginx does (a `path_prefix: /` \
             static route)",
        );
        let path = PathOut::Prefix {
            prefix: "/".to_string(),
            stop_regex: false,
        };
        let route = self.route_for(sctx, &root_dir, "files", path, action);
        routes.push(self.decorate(route, scope, false));
    }

    /// nginx answers `/api` with a 301 to `/api/` when `location /api/` has
    /// proxy_pass and no location is `/api` itself.
    fn auto_redirects(
        &mut self,
        sctx: &ServerCtx<'_>,
        locations: &[LocInfo],
        scope: &Scope,
        routes: &mut Vec<RouteOut>,
    ) {
        for l in locations {
            let (LocKind::Prefix(p) | LocKind::Stop(p)) = &l.kind else {
                continue;
            };
            let Some(short) = p.strip_suffix('/') else {
                continue;
            };
            if short.is_empty() {
                continue;
            }
            let proxies = l.block.iter().any(|d| d.name == "proxy_pass");
            let returns = l.block.iter().any(|d| d.name == "return");
            if !proxies || returns {
                continue;
            }
            let taken = locations.iter().any(|o| match &o.kind {
                LocKind::Exact(q) | LocKind::Prefix(q) | LocKind::Stop(q) => q == short,
                _ => false,
            });
            if taken {
                continue;
            }
            let d = Directive {
                name: "location".into(),
                args: vec![p.clone()],
                block: None,
                at: l.at.clone(),
            };
            let route = self.route_for(
                sctx,
                &d,
                "slash",
                PathOut::Exact(short.to_string()),
                ActionOut::Redirect {
                    status: 301,
                    location: p.clone(),
                },
            );
            let loc_scope = self.child_scope(scope, &l.block);
            let mut route = self.decorate(route, &loc_scope, false);
            route.comment = format!(
                "nginx: {} answers {short} with a redirect to {p} ({})",
                l.text, l.at
            );
            routes.push(route);
        }
    }

    /// `rewrite ^/x/(.*)$ /$1 break;` in a location every request of which
    /// matches `^/x/`: the same as stripping `/x/` and adding `/`.
    fn strip_idiom(&mut self, d: &Directive, kind: &LocKind) -> Option<(String, String)> {
        let (Some(re), Some(rep)) = (d.arg(0), d.arg(1)) else {
            return None;
        };
        if d.arg(2) != Some("break") {
            return None;
        }
        let inner = re.strip_prefix('^')?;
        let inner = inner.strip_suffix('$').unwrap_or(inner);
        let lit = inner.strip_suffix("(.*)")?;
        let lit = literal_regex(lit)?;
        let add = rep.strip_suffix("$1")?;
        if add.contains('$') || !add.starts_with('/') {
            return None;
        }
        let covers = match kind {
            LocKind::Prefix(p) | LocKind::Stop(p) | LocKind::Exact(p) => p.starts_with(&lit),
            _ => false,
        };
        if !covers {
            return None;
        }
        if !(lit.ends_with('/') && add.ends_with('/')) {
            self.note(
                d,
                Impact::Differs,
                "carried as strip_prefix/add_prefix; Aegis joins the parts with exactly one `/`",
            );
        }
        Some((lit, add.to_string()))
    }

    // ---------------------------------------------------------------- actions

    fn proxy_action(
        &mut self,
        d: &Directive,
        kind: &LocKind,
        strip: Option<(String, String)>,
        scope: &Scope,
    ) -> Option<ActionOut> {
        let Some(url) = d.arg(0) else {
            self.note(d, Impact::Dropped, "proxy_pass without a URL");
            return None;
        };
        if let Some(var) = url.strip_prefix('$')
            && self.upstream_maps.contains(var)
        {
            self.note(d, Impact::Carried, "upstream chosen by the map");
            return Some(ActionOut::Upstream {
                name: url.to_string(),
                strip_prefix: None,
                add_prefix: None,
                host_rewrite: self.host_header(scope, "$proxy_host"),
                timeout_ms: scope
                    .read_timeout
                    .filter(|t| *t != NGINX_DEFAULT_TIMEOUT_MS),
                location_rewrite: Vec::new(),
            });
        }
        // A variable only `set` assigns (Jitsi's `?prefix=$prefix`): its
        // value comes from rewrite-module scripting, left out.
        if let Some(var) = url
            .split('$')
            .skip(1)
            .map(|v| v.split(|c: char| !is_var_char(c)).next().unwrap_or(""))
            .find(|v| self.set_anywhere(v))
        {
            self.note_left_out(
                d,
                crate::finding::SCRIPTING,
                format!(
                    "uses `${var}`, which only `set` assigns (rewrite-module scripting, left \
                     out): the location answers 404"
                ),
            );
            return None;
        }
        if url.contains('$') {
            self.note(
                d,
                Impact::Dropped,
                "proxy_pass with variables (a target chosen per request) is not expressible",
            );
            return None;
        }
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            self.note(
                d,
                Impact::Dropped,
                "TLS to the upstream (`https://`) is not supported by Aegis upstreams yet",
            );
            return None;
        } else {
            self.note(d, Impact::Dropped, "only http:// upstreams are supported");
            return None;
        };
        if rest.starts_with("unix:") {
            self.note(
                d,
                Impact::Dropped,
                "Unix-socket upstreams are not supported",
            );
            return None;
        }
        let (hostport, uri) = match rest.find('/') {
            Some(i) => {
                let (hp, uri) = rest.split_at(i);
                (hp, Some(uri.to_string()))
            }
            None => (rest, None),
        };
        if self.unusable_upstreams.contains(hostport) {
            self.note(
                d,
                Impact::Dropped,
                format!("upstream `{hostport}` was not carried over (listed at its definition)"),
            );
            return None;
        }
        let (upstream, proxy_host) =
            if let Some(u) = self.upstreams.iter().find(|u| u.out.name == hostport) {
                (u.out.name.clone(), hostport.to_string())
            } else {
                let address = with_port(hostport, 80);
                let name = sanitize(&address);
                if !self.upstreams.iter().any(|u| u.out.name == name) {
                    self.upstreams.push(UpstreamBlock {
                        out: UpstreamOut {
                            name: name.clone(),
                            comment: format!("nginx: proxy_pass {url} ({})", d.at),
                            endpoints: vec![EndpointOut {
                                address: address.clone(),
                                weight: 1,
                                backup: false,
                            }],
                            balance: BalanceOut::RoundRobin,
                            connect_timeout_ms: None,
                            // A single server is never marked unavailable by nginx.
                            max_fails: Some(0),
                            fail_timeout_ms: None,
                        },
                    });
                }
                let proxy_host = address
                    .strip_suffix(":80")
                    .map_or(address.clone(), str::to_string);
                (name, proxy_host)
            };
        let ct = scope.connect_timeout.clone();
        self.connect_timeouts
            .entry(upstream.clone())
            .or_default()
            .push(match ct {
                Some((ms, at, text)) => (ms, Some((at, text))),
                None => (NGINX_DEFAULT_TIMEOUT_MS, None),
            });

        let (strip_prefix, add_prefix) = if let Some((s, a)) = strip {
            if uri.is_some() {
                // nginx ignores the URI part once rewrite changed the URI.
            }
            (Some(s), Some(a))
        } else {
            match (&uri, kind) {
                (None, _) => (None, None),
                (Some(u), LocKind::Regex { .. }) => {
                    self.note(
                        d,
                        Impact::Dropped,
                        format!(
                            "nginx refuses a URI part (`{u}`) in proxy_pass inside a regex location"
                        ),
                    );
                    return None;
                }
                (Some(u), LocKind::Prefix(p) | LocKind::Stop(p) | LocKind::Exact(p)) => {
                    if u == p {
                        (None, None)
                    } else {
                        let exact = matches!(kind, LocKind::Exact(_));
                        let same = if exact {
                            u.ends_with('/')
                        } else {
                            p.ends_with('/') && u.ends_with('/')
                        };
                        if !same {
                            self.note(
                                d,
                                Impact::Differs,
                                format!(
                                    "nginx replaces `{p}` with `{u}` as text; Aegis strips `{p}` and \
                                     joins `{u}` and the rest with exactly one `/`, so some paths \
                                     differ (see docs/nginx-migration.md)"
                                ),
                            );
                        }
                        (Some(p.clone()), Some(u.clone()))
                    }
                }
                (Some(_), LocKind::Named(_)) => (None, None),
            }
        };
        let location_rewrite = self.proxy_redirects(scope, url, uri.as_deref(), kind);
        let host_rewrite = self.host_header(scope, &proxy_host);
        let timeout_ms = scope
            .read_timeout
            .filter(|t| *t != NGINX_DEFAULT_TIMEOUT_MS);
        Some(ActionOut::Upstream {
            name: upstream,
            strip_prefix,
            add_prefix,
            host_rewrite,
            timeout_ms,
            location_rewrite,
        })
    }

    /// nginx rewrites `Location` and `Refresh` headers from the upstream
    /// (`proxy_redirect`): by default, implicitly, from the proxied address
    /// to the location the client asked (`http://app/` to `/`, or the
    /// `proxy_pass` URL with a URI to the location's prefix); the route's
    /// `location_rewrite` carries the same pairs.
    fn proxy_redirects(
        &mut self,
        scope: &Scope,
        url: &str,
        uri: Option<&str>,
        kind: &LocKind,
    ) -> Vec<(String, String)> {
        // nginx's default pair (ngx_http_proxy_merge_loc_conf): without a
        // URI, `URL/` → `/`; with one, the URL → the location's name.
        let default_pair = match (uri, kind) {
            (None, _) => Some((format!("{url}/"), "/".to_string())),
            (Some(_), LocKind::Prefix(p) | LocKind::Stop(p) | LocKind::Exact(p)) => {
                Some((url.to_string(), p.clone()))
            }
            (Some(_), _) => None,
        };
        let Some(list) = scope.redirects.clone() else {
            return default_pair.into_iter().collect();
        };
        let mut out = Vec::new();
        for r in &list {
            match (r.arg(0), r.arg(1)) {
                (Some("off"), None) => {}
                (Some("default"), None) => match &default_pair {
                    Some(p) => {
                        self.note(r, Impact::Carried, "location_rewrite");
                        out.push(p.clone());
                    }
                    None => self.note(
                        r,
                        Impact::Dropped,
                        "no default replacement for this location; the Location reaches the \
                         client as sent",
                    ),
                },
                (Some(from), Some(to))
                    if !from.starts_with('~') && !from.contains('$') && !to.contains('$') =>
                {
                    self.note(r, Impact::Carried, "location_rewrite");
                    out.push((from.to_string(), to.to_string()));
                }
                (Some(from), Some(to)) => self.note(
                    r,
                    Impact::Dropped,
                    format!(
                        "a regex or variables in proxy_redirect are not carried: a Location \
                         matching `{from}` reaches the client as sent instead of with `{to}`"
                    ),
                ),
                _ => self.note(
                    r,
                    Impact::Dropped,
                    "not a proxy_redirect form the importer knows",
                ),
            }
        }
        out
    }

    /// The Host nginx sends: `$proxy_host` unless proxy_set_header says otherwise.
    fn host_header(&mut self, scope: &Scope, proxy_host: &str) -> Option<String> {
        let host = scope
            .set_headers
            .iter()
            .flatten()
            .rev()
            .find(|d| d.arg(0).is_some_and(|n| n.eq_ignore_ascii_case("host")));
        let Some(d) = host else {
            return Some(proxy_host.to_string());
        };
        match d.arg(1).unwrap_or("") {
            "$host" | "$http_host" | "${host}" | "${http_host}" => None,
            "$proxy_host" => Some(proxy_host.to_string()),
            v if !v.contains('$') && !v.is_empty() => Some(v.to_string()),
            _ => {
                let d = d.clone();
                self.note(
                    &d,
                    Impact::Dropped,
                    "a Host built from variables is not expressible; the client's Host is passed",
                );
                None
            }
        }
    }

    /// A `return`: a redirect or a fixed answer.
    fn return_action(
        &mut self,
        d: &Directive,
        sctx: &ServerCtx<'_>,
        scope: &Scope,
        exact: Option<&str>,
    ) -> Option<ActionOut> {
        let (code, text) = match d.args.as_slice() {
            [one] => match one.parse::<u16>() {
                Ok(c) => (c, None),
                Err(_) => (302, Some(one.clone())),
            },
            [c, t] => match c.parse::<u16>() {
                Ok(c) => (c, Some(t.clone())),
                Err(_) => {
                    self.note(d, Impact::Dropped, "not a status code");
                    return None;
                }
            },
            _ => {
                self.note(d, Impact::Dropped, "return takes a code and a text or URL");
                return None;
            }
        };
        if !(100..=999).contains(&code) {
            self.note(d, Impact::Dropped, "status out of range");
            return None;
        }
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            let Some(url) = text else {
                return Some(ActionOut::Respond {
                    status: code,
                    body: String::new(),
                    headers: Vec::new(),
                });
            };
            let location = match self.template(&url, sctx) {
                Ok(l) => l,
                Err(why) => {
                    self.note(d, Impact::Dropped, why);
                    return None;
                }
            };
            return Some(ActionOut::Redirect {
                status: code,
                location,
            });
        }
        let body = text.unwrap_or_default();
        if body.contains('$') {
            self.note(
                d,
                Impact::Dropped,
                "a response body with variables is not expressible",
            );
            return None;
        }
        let mut headers = Vec::new();
        if !body.is_empty() {
            // nginx types the answer by the URI's extension (`types`), then
            // default_type. Known only for an exact location.
            let by_ext = exact.and_then(|p| {
                let ext = p.rsplit('/').next()?.rsplit_once('.')?.1;
                self.types.get(ext).cloned()
            });
            if exact.is_none() {
                self.note(
                    d,
                    Impact::Differs,
                    "nginx picks the Content-Type of this text by the requested file's \
                     extension (`types`); Aegis always sends default_type",
                );
            }
            let ct = by_ext.or_else(|| scope.default_type.clone());
            headers.push((
                "content-type".to_string(),
                ct.unwrap_or_else(|| "text/plain".to_string()),
            ));
        }
        Some(ActionOut::Respond {
            status: code,
            body,
            headers,
        })
    }

    /// `rewrite ^/old$ /new permanent|redirect;` and, at server level,
    /// `rewrite ^/old /new permanent;`.
    fn simple_redirect(
        &mut self,
        d: &Directive,
        sctx: &ServerCtx<'_>,
        allow_prefix: bool,
    ) -> Option<(PathOut, ActionOut)> {
        let (Some(re), Some(rep)) = (d.arg(0), d.arg(1)) else {
            self.note(
                d,
                Impact::Dropped,
                "rewrite takes a regex and a replacement",
            );
            return None;
        };
        let flag = d.arg(2);
        let absolute =
            rep.starts_with("http://") || rep.starts_with("https://") || rep.starts_with("$scheme");
        let status = match flag {
            Some("permanent") => 301,
            Some("redirect") => 302,
            None if absolute => 302,
            _ => {
                self.note(
                    d,
                    Impact::Dropped,
                    "internal rewrites (`last`, `break`) change the URI nginx goes on with; \
                     only redirects and the `^/prefix/(.*)$ /new/$1 break` form are carried over",
                );
                return None;
            }
        };
        let Some(body) = re.strip_prefix('^') else {
            self.note(
                d,
                Impact::Dropped,
                "only anchored (`^/...`) rewrites are carried over",
            );
            return None;
        };
        let (lit, exact) = match body.strip_suffix('$') {
            Some(b) => (literal_regex(b), true),
            None => (literal_regex(body), false),
        };
        let Some(lit) = lit else {
            self.note(
                d,
                Impact::Dropped,
                "a rewrite regex with patterns or captures is not expressible; \
                 only literal paths are carried over",
            );
            return None;
        };
        if !exact && !allow_prefix {
            self.note(
                d,
                Impact::Dropped,
                "a prefix rewrite inside a location is not carried over (only exact `^/path$`)",
            );
            return None;
        }
        if !lit.starts_with('/') {
            self.note(
                d,
                Impact::Dropped,
                "the rewrite regex does not start with `/`",
            );
            return None;
        }
        if rep.contains("$1") || rep.contains("$2") {
            self.note(
                d,
                Impact::Dropped,
                "captures in the replacement are not expressible",
            );
            return None;
        }
        let (rep_text, keeps_args) = match rep.strip_suffix('?') {
            Some(r) => (r, false),
            None => (rep, true),
        };
        let location = match self.template(rep_text, sctx) {
            Ok(l) => l,
            Err(why) => {
                self.note(d, Impact::Dropped, why);
                return None;
            }
        };
        if keeps_args {
            self.note(
                d,
                Impact::Differs,
                "nginx appends the request's query string to the new location; Aegis does not \
                 (end the replacement with `?` in nginx for the same behaviour)",
            );
        }
        let path = if exact {
            PathOut::Exact(lit)
        } else {
            PathOut::Prefix {
                prefix: lit,
                stop_regex: true,
            }
        };
        Some((path, ActionOut::Redirect { status, location }))
    }

    /// An nginx string with variables → an Aegis redirect template.
    fn template(&mut self, text: &str, sctx: &ServerCtx<'_>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            let (lit, var) = rest.split_at(i);
            out.push_str(lit);
            let var = var.get(1..).unwrap_or("");
            let (name, len) = if let Some(inner) = var.strip_prefix('{') {
                match inner.find('}') {
                    Some(j) => (inner.get(..j).unwrap_or(""), j + 2),
                    None => return Err("unterminated `${`".into()),
                }
            } else {
                let n = var
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                (var.get(..n).unwrap_or(""), n)
            };
            match name {
                "scheme" | "host" | "request_uri" | "uri" | "args" | "is_args" => {
                    out.push('$');
                    out.push_str(name);
                }
                "query_string" => out.push_str("$args"),
                "document_uri" => out.push_str("$uri"),
                "http_host" => out.push_str("$host"),
                "server_name" => out.push_str(sctx.primary_name),
                "server_port" => match sctx.ports.as_slice() {
                    [one] => out.push_str(one),
                    _ => return Err("`$server_port` of a server on several ports".into()),
                },
                m if self.maps.iter().any(|x| x.name == m) => {
                    if var.get(len..).is_some_and(starts_with_name_char) {
                        return Err(format!(
                            "`${{{m}}}` followed by a letter, digit or `_` is not expressible"
                        ));
                    }
                    out.push('$');
                    out.push_str(m);
                }
                other => {
                    return Err(format!(
                        "`${other}` is not available in Aegis redirects \
                         (only $scheme, $host, $request_uri, $uri, $args, $is_args, $server_name, \
                         and variables of a carried `map`)"
                    ));
                }
            }
            rest = var.get(len..).unwrap_or("");
        }
        out.push_str(rest);
        Ok(out)
    }

    // ---------------------------------------------------------------- routes

    fn route_for(
        &mut self,
        sctx: &ServerCtx<'_>,
        d: &Directive,
        what: &str,
        path: PathOut,
        action: ActionOut,
    ) -> RouteOut {
        let file = Path::new(&*d.at.file)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pat = match &path {
            PathOut::Exact(p) => format!("={p}"),
            PathOut::Prefix {
                prefix,
                stop_regex: true,
            } => format!("^~{prefix}"),
            PathOut::Prefix { prefix, .. } => prefix.clone(),
            PathOut::Regex(r) => format!("~{r}"),
            PathOut::Internal => "internal".to_string(),
        };
        let mut base = format!("{}|{}|{}:{}", sctx.label, pat, file, d.at.line);
        if !what.is_empty() {
            base = format!("{base}|{what}");
        }
        let mut name = base.clone();
        let mut n = 2;
        while self.route_names.contains(&name) {
            name = format!("{base}#{n}");
            n += 1;
        }
        self.route_names.insert(name.clone());
        RouteOut {
            name,
            comment: format!("nginx: {} ({})", d.text(), d.at),
            hosts: Vec::new(),
            ports: Vec::new(),
            response_always: None,
            expires: None,
            path,
            action,
            request_set: Vec::new(),
            request_remove: Vec::new(),
            response_add: Vec::new(),
            response_remove: Vec::new(),
            rate_limit: None,
            max_request_body: None,
            websocket: false,
            access: Vec::new(),
            limit_except: None,
            error_pages: Vec::new(),
            intercept_errors: false,
            rewrites: Vec::new(),
            inside: None,
        }
    }

    /// `allow`/`deny` and `limit_except` of the scope, on a route that
    /// serves or proxies. nginx checks access after its rewrite phase, so a
    /// `return` or `rewrite ... redirect` answers whatever the rules say:
    /// those routes get none.
    fn route_access(&mut self, r: &mut RouteOut, scope: &Scope) {
        let answers_first = matches!(
            r.action,
            ActionOut::Redirect { .. } | ActionOut::Respond { .. }
        );
        for d in scope.access.clone().iter().flatten() {
            if answers_first {
                self.note(
                    d,
                    Impact::Ignored,
                    "no effect on a `return`/`rewrite` answer: nginx answers before it checks access",
                );
                continue;
            }
            if let Some(rule) = self.access_rule(d) {
                r.access.push(rule);
            }
        }
        let Some(le) = scope.limit_except.clone() else {
            return;
        };
        if answers_first {
            self.note(
                &le,
                Impact::Ignored,
                "no effect on a `return`/`rewrite` answer: nginx answers before it checks access",
            );
            for c in le.block.iter().flatten() {
                self.note(c, Impact::Ignored, "inside an ineffective limit_except");
            }
            return;
        }
        let methods: Vec<String> = le.args.iter().map(|m| m.to_ascii_uppercase()).collect();
        let mut rules = Vec::new();
        for c in le.block.iter().flatten() {
            match c.name.as_str() {
                "allow" | "deny" => {
                    if let Some(rule) = self.access_rule(c) {
                        rules.push(rule);
                    }
                }
                _ => self.note(
                    c,
                    Impact::Dropped,
                    "inside limit_except only allow/deny are carried: the other methods are \
                     served without it",
                ),
            }
        }
        self.note(&le, Impact::Carried, "limit_except");
        r.limit_except = Some((methods, rules));
    }

    /// `error_page` lines of the scope (path and URL targets), and
    /// `proxy_intercept_errors` on proxied routes.
    fn route_error_pages(&mut self, r: &mut RouteOut, scope: &Scope, is_proxy: bool) {
        if let Some(d) = scope.intercept_errors.clone() {
            if is_proxy {
                r.intercept_errors = d.arg(0) == Some("on");
                self.note(&d, Impact::Carried, "intercept_errors");
            } else {
                self.note(&d, Impact::Ignored, "no effect: this route does not proxy");
            }
        }
        for d in scope.error_pages.clone().iter().flatten() {
            match error_page_out(d) {
                Ok(e) => {
                    if !r.error_pages.contains(&e) {
                        r.error_pages.push(e);
                    }
                    self.note(d, Impact::Carried, "error_pages");
                }
                Err(why) => self.note(d, Impact::Dropped, why),
            }
        }
    }

    /// One `allow`/`deny` line: (allow, address or CIDR or `all`).
    fn access_rule(&mut self, d: &Directive) -> Option<(bool, String)> {
        let arg = d.arg(0).unwrap_or("");
        let ok = arg == "all"
            || arg.parse::<std::net::IpAddr>().is_ok()
            || arg.parse::<ipnet::IpNet>().is_ok();
        if !ok {
            self.note(
                d,
                Impact::Dropped,
                format!(
                    "`{arg}` is not an address, a CIDR or `all` (unix: sockets have no address)"
                ),
            );
            return None;
        }
        self.note(d, Impact::Carried, "access");
        Some((d.name == "allow", arg.to_string()))
    }

    /// Applies the scope's header edits, body size and rate limit.
    fn decorate(&mut self, mut r: RouteOut, scope: &Scope, is_proxy: bool) -> RouteOut {
        self.route_access(&mut r, scope);
        self.route_error_pages(&mut r, scope, is_proxy);
        if is_proxy {
            for d in scope.set_headers.clone().iter().flatten() {
                self.request_header(d, &mut r);
            }
            for d in scope.hide_headers.clone().iter().flatten() {
                if let Some(n) = d.arg(0) {
                    push_unique(&mut r.response_remove, n.to_ascii_lowercase());
                }
            }
            if let Some(limits) = scope.limit_reqs.clone() {
                self.limit_req(&limits, scope, &mut r);
            }
        }
        let adds: Vec<Directive> = scope.add_headers.clone().into_iter().flatten().collect();
        for d in &adds {
            self.add_header(d, &mut r);
        }
        // nginx's `add_header` adds only to 2xx/3xx answers unless `always`;
        // the engine's `response_headers.always: false` is that rule, for
        // every edit of the route. Exact when no add is `always` and no
        // header is hidden (proxy_hide_header applies to every status).
        let carried: Vec<&Directive> = adds
            .iter()
            .filter(|d| {
                r.response_add
                    .iter()
                    .any(|(k, _)| d.arg(0).is_some_and(|n| n.eq_ignore_ascii_case(k)))
            })
            .collect();
        let non_always: Vec<&Directive> = carried
            .iter()
            .copied()
            .filter(|d| d.arg(2) != Some("always"))
            .collect();
        if !non_always.is_empty() {
            if non_always.len() == carried.len() && r.response_remove.is_empty() {
                r.response_always = Some(false);
            } else {
                for d in non_always {
                    self.note(
                        d,
                        Impact::Differs,
                        "Aegis adds the header to every response; nginx only to 200, 201, 204, \
                         206, 301, 302, 303, 304, 307 and 308 unless `always` (this route mixes \
                         it with `always` headers or hidden ones)",
                    );
                }
            }
        }
        if let Some(d) = &scope.expires {
            match d.args.as_slice() {
                [v] if expires_value(v) => {
                    self.note(d, Impact::Carried, "expires");
                    r.expires = Some(v.clone());
                }
                _ => self.note(
                    d,
                    Impact::Dropped,
                    "only a duration, `max`, `epoch`, `off` or a negative duration is carried \
                     (not `modified` or a time of day)",
                ),
            }
        }
        if let Some(n) = scope.body_size.filter(|n| *n != NGINX_DEFAULT_BODY) {
            r.max_request_body = Some(n);
        }
        r
    }

    fn request_header(&mut self, d: &Directive, r: &mut RouteOut) {
        let (Some(name), Some(value)) = (d.arg(0), d.arg(1)) else {
            self.note(
                d,
                Impact::Dropped,
                "proxy_set_header takes a name and a value",
            );
            return;
        };
        let lname = name.to_ascii_lowercase();
        match (lname.as_str(), value) {
            ("host", _) => {} // host_rewrite
            ("x-forwarded-for", "$proxy_add_x_forwarded_for") => {}
            ("x-forwarded-proto", "$scheme") => {}
            ("x-forwarded-host", "$host" | "$http_host") => {}
            ("x-forwarded-for", "$remote_addr") => {
                // A replacement: request edits apply after Aegis appended the
                // client, so this leaves the client address alone, as nginx.
                r.request_set.push((lname, "$remote_addr".to_string()));
            }
            ("upgrade", v) => {
                r.websocket = true;
                if !v.contains("$http_upgrade") {
                    self.note(
                        d,
                        Impact::Differs,
                        format!(
                            "nginx sends `Upgrade: {v}` upstream on every request; Aegis upgrades \
                             the route (`websocket: true`) but passes Upgrade only when the client \
                             asks for it"
                        ),
                    );
                }
                if !crate::model::engine_has_websocket() {
                    self.note(
                        d,
                        Impact::Differs,
                        "this engine has no route `websocket` key yet: Aegis passes upgrades \
                         on every route, nginx only where the Upgrade header is set",
                    );
                }
            }
            ("connection", _) => {
                // Aegis strips and rebuilds connection headers itself.
            }
            (_, "") => push_unique(&mut r.request_remove, lname),
            (_, v) if v == format!("$http_{}", lname.replace('-', "_")) => {
                // Passing a request header on unchanged is the default.
            }
            (_, v) if !v.contains('$') => {
                if r.request_set.iter().any(|(k, _)| *k == lname) {
                    self.note(
                        d,
                        Impact::Dropped,
                        "the same header is set twice; the first is kept",
                    );
                } else {
                    r.request_set.push((lname, v.to_string()));
                }
            }
            (_, v) => match request_value_template(
                v,
                &self.cur_primary,
                &self.cur_ports,
                &self.maps,
                "request header",
            ) {
                Ok(t) => r.request_set.push((lname, t)),
                Err(why) => self.note(d, Impact::Dropped, &why),
            },
        }
    }

    fn add_header(&mut self, d: &Directive, r: &mut RouteOut) {
        let (Some(name), Some(value)) = (d.arg(0), d.arg(1)) else {
            self.note(d, Impact::Dropped, "add_header takes a name and a value");
            return;
        };
        let value = if value.contains('$') {
            match request_value_template(
                value,
                &self.cur_primary,
                &self.cur_ports,
                &self.maps,
                "response header",
            ) {
                Ok(t) => t,
                Err(why) => {
                    self.note(d, Impact::Dropped, why);
                    return;
                }
            }
        } else {
            value.to_string()
        };
        if value.is_empty() {
            // nginx adds nothing for an empty value.
            return;
        }
        let lname = name.to_ascii_lowercase();
        if r.response_add.iter().any(|(k, _)| *k == lname) {
            self.note(
                d,
                Impact::Dropped,
                "a second add_header of the same name is not expressible; the first is kept",
            );
            return;
        }
        r.response_add.push((lname, value));
    }

    fn limit_req(&mut self, limits: &[Directive], scope: &Scope, r: &mut RouteOut) {
        for (i, d) in limits.iter().enumerate() {
            if i > 0 {
                self.note(
                    d,
                    Impact::Dropped,
                    "Aegis applies one rate limit per route; the first is kept",
                );
                continue;
            }
            let mut zone = None;
            let mut burst: u32 = 0;
            let mut nodelay = false;
            for a in &d.args {
                if let Some(z) = a.strip_prefix("zone=") {
                    zone = Some(z.to_string());
                } else if let Some(b) = a.strip_prefix("burst=") {
                    burst = b.parse().unwrap_or(0);
                } else if a == "nodelay" {
                    nodelay = true;
                } else if a.starts_with("delay=") {
                    self.note(d, Impact::Differs, "`delay=` is carried as nodelay");
                    nodelay = true;
                }
            }
            let Some(zone) = zone else {
                self.note(d, Impact::Dropped, "limit_req without zone=");
                continue;
            };
            let Some(z) = self.zones.get(&zone).cloned() else {
                self.note(
                    d,
                    Impact::Dropped,
                    format!("zone `{zone}` is not defined by a usable limit_req_zone"),
                );
                continue;
            };
            if burst > 0 && !nodelay {
                self.note(
                    d,
                    Impact::Differs,
                    "nginx delays requests over the rate (up to burst) without nodelay; \
                     Aegis answers them at once, like nodelay",
                );
            }
            let status = scope.limit_req_status.as_ref().map_or(503, |(s, _)| *s);
            if status != 429 {
                self.note(
                    d,
                    Impact::Differs,
                    format!(
                        "requests over the limit get {status} from nginx (limit_req_status) and 429 from Aegis"
                    ),
                );
            }
            // nginx lets through the request that arrives plus `burst`
            // more; an Aegis bucket holds `burst` tokens.
            let aegis_burst = burst.saturating_add(1);
            let key = (zone.clone(), aegis_burst);
            let name = if let Some(n) = self.rate_names.get(&key) {
                n.clone()
            } else {
                let n = if self.rate_limits.iter().any(|x| x.name == zone) {
                    format!("{zone}-burst{burst}")
                } else {
                    zone.clone()
                };
                self.rate_limits.push(RateLimitOut {
                    name: n.clone(),
                    requests_per_second: z.rps,
                    burst: aegis_burst,
                    comment: format!("nginx: limit_req_zone {zone} with burst={burst} ({})", d.at),
                });
                self.rate_names.insert(key, n.clone());
                n
            };
            r.rate_limit = Some(name);
        }
    }

    // ---------------------------------------------------------------- everything else

    /// `gzip*` and `brotli*`: Aegis compresses per process (aegis.yaml
    /// `compression`), so the directives of every level are merged into one
    /// setting; below `http` that is a difference (it then applies to every
    /// server).
    fn compression_directive(&mut self, d: &Directive, ctx: &str) {
        let n = d.name.as_str();
        let on = d.arg(0) == Some("on");
        let c = &mut self.compression;
        let (impact, why): (Impact, String) = match n {
            "gzip" | "brotli" if !on => {
                self.note(d, Impact::Ignored, "compression off: Aegis's default");
                return;
            }
            "gzip" | "brotli" => {
                if n == "gzip" {
                    c.gzip = true;
                } else {
                    c.brotli = true;
                }
                if ctx == "http" {
                    (Impact::Carried, format!("compression.{n}: true"))
                } else {
                    (
                        Impact::Differs,
                        format!(
                            "compression.{n}: true in aegis.yaml applies to every server and                              location, not only this {ctx}"
                        ),
                    )
                }
            }
            "gzip_types" | "brotli_types" => {
                for t in &d.args {
                    if !c.types.contains(t) {
                        c.types.push(t.clone());
                    }
                }
                (Impact::Carried, "compression.types".into())
            }
            "gzip_comp_level" | "brotli_comp_level" => {
                match d.arg(0).and_then(|a| a.parse().ok()) {
                    Some(l) if n == "gzip_comp_level" => {
                        c.level = Some(l);
                        (Impact::Carried, "compression.level".into())
                    }
                    _ => (
                        Impact::Ignored,
                        "brotli's quality follows compression.level".into(),
                    ),
                }
            }
            "gzip_min_length" | "brotli_min_length" => match d.arg(0).and_then(parse_nginx_size) {
                Some(m) => {
                    c.min_length = Some(m);
                    (Impact::Carried, "compression.min_length".into())
                }
                None => (Impact::Dropped, "not a size".into()),
            },
            "gzip_vary" => {
                c.vary = Some(on);
                (Impact::Carried, "compression.vary".into())
            }
            "gzip_proxied" => {
                // nginx: whether to compress for requests that came through
                // another proxy (a `Via` header); `any` compresses them all.
                let any = d.args.iter().any(|a| a == "any");
                c.proxied_any = Some(any);
                if any || d.args.iter().all(|a| a == "off") {
                    (Impact::Carried, "compression.proxied".into())
                } else {
                    (
                        Impact::Differs,
                        "only `off` and `any` are carried; the conditions on the response                          (expired, no-cache, auth…) are read as `off`"
                            .into(),
                    )
                }
            }
            "gzip_static" => (
                Impact::Differs,
                "Aegis does not serve precompressed `.gz` files; it compresses on the fly".into(),
            ),
            "gunzip" => (
                Impact::Differs,
                "Aegis does not decompress upstream responses for clients without gzip".into(),
            ),
            _ => (
                Impact::Ignored,
                "compression tuning (buffers, versions)".into(),
            ),
        };
        self.note(d, impact, why);
    }

    /// Directives valid at several levels that are not the scope's.
    fn common(&mut self, d: &Directive, ctx: &str) {
        let n = d.name.as_str();
        if n.starts_with("gzip") || n.starts_with("brotli") {
            self.compression_directive(d, ctx);
            return;
        }
        let ignored_quietly = [
            "sendfile",
            "sendfile_max_chunk",
            "tcp_nopush",
            "tcp_nodelay",
            "keepalive_timeout",
            "keepalive_requests",
            "keepalive_time",
            "reset_timedout_connection",
            "client_body_timeout",
            "client_header_timeout",
            "send_timeout",
            "client_body_buffer_size",
            "client_header_buffer_size",
            "large_client_header_buffers",
            "types_hash_max_size",
            "types_hash_bucket_size",
            "server_names_hash_bucket_size",
            "server_names_hash_max_size",
            "variables_hash_max_size",
            "variables_hash_bucket_size",
            "proxy_headers_hash_max_size",
            "proxy_headers_hash_bucket_size",
            "open_file_cache",
            "open_file_cache_valid",
            "open_file_cache_min_uses",
            "open_file_cache_errors",
            "output_buffers",
            "postpone_output",
            "aio",
            "directio",
            "lingering_close",
            "lingering_time",
            "lingering_timeout",
            "client_body_temp_path",
            "proxy_temp_path",
            "fastcgi_temp_path",
            "uwsgi_temp_path",
            "scgi_temp_path",
            "proxy_buffering",
            "proxy_buffer_size",
            "proxy_buffers",
            "proxy_busy_buffers_size",
            "proxy_max_temp_file_size",
            "proxy_temp_file_write_size",
            "proxy_request_buffering",
            "proxy_http_version",
            "proxy_socket_keepalive",
            "resolver",
            "resolver_timeout",
            "access_log",
            "error_log",
            "log_format",
            "log_not_found",
            "log_subrequest",
            "open_log_file_cache",
            "types",
            "include",
            "server_tokens",
            "charset_types",
            "ssl_session_cache",
            "ssl_session_timeout",
            "ssl_prefer_server_ciphers",
            "ssl_session_tickets",
            "ssl_dhparam",
            "ssl_ecdh_curve",
            "ssl_stapling",
            "ssl_stapling_verify",
            "ssl_trusted_certificate",
            "ssl_buffer_size",
            "http2",
            "http2_max_concurrent_streams",
            "http2_recv_buffer_size",
            "http2_chunk_size",
            "proxy_ignore_client_abort",
            "proxy_next_upstream_timeout",
            "proxy_next_upstream_tries",
            "msie_padding",
            "server_name_in_redirect",
            "absolute_redirect",
            "port_in_redirect",
            "proxy_connect_timeout",
            "map_hash_bucket_size",
            "map_hash_max_size",
            "limit_req_log_level",
            "limit_req_dry_run",
            "index",
            "root",
        ];
        if n == "include" || n == "types" {
            // Followed by the reader / used for `return` text.
            return;
        }
        if ignored_quietly.contains(&n) {
            self.note(d, Impact::Ignored, ignored_reason(n));
            return;
        }
        let (impact, why): (Impact, &str) = match n {
            "ssl_protocols" | "ssl_ciphers" => {
                self.tls_tuning(d);
                return;
            }
            "merge_slashes" if d.arg(0) == Some("on") => return,
            "etag" if d.arg(0) == Some("on") => (
                Impact::Ignored,
                "nginx's default: Aegis's static files carry an ETag too",
            ),
            "etag" => (
                Impact::Carried,
                "static routes here send no ETag (`static.etag: false`)",
            ),
            "merge_slashes" => (
                Impact::Dropped,
                "Aegis always merges slashes before matching",
            ),
            "proxy_redirect" if matches!(d.arg(0), Some("off" | "default")) => {
                if d.arg(0) == Some("default") {
                    (
                        Impact::Differs,
                        "Aegis does not rewrite Location headers from the upstream",
                    )
                } else {
                    return;
                }
            }
            "proxy_redirect" => (
                Impact::Dropped,
                "Aegis does not rewrite Location headers from the upstream",
            ),
            "proxy_next_upstream" => (
                Impact::Differs,
                "Aegis retries on another server only after a connect failure, for idempotent methods",
            ),
            "proxy_pass_header" => (
                Impact::Differs,
                "Aegis passes the upstream's headers except hop-by-hop ones; Date and Server are its own",
            ),
            "underscores_in_headers" | "ignore_invalid_headers" => {
                (Impact::Differs, "Aegis passes headers with underscores on")
            }
            // A path or URL target: carried by the routes (`decorate`).
            "error_page" if !d.args.last().is_some_and(|a| a.starts_with('@')) => return,
            "error_page" => (
                Impact::Dropped,
                "an error page in a named location is not carried (only GitLab's `return` \
                 idiom is); Aegis answers that error itself",
            ),
            "try_files" | "alias" | "autoindex" => (
                Impact::Dropped,
                "not carried here: files are served only by a location's `static` route",
            ),
            "allow" | "deny" => (
                Impact::Dropped,
                "address-based access control is not expressible per route (features score \
                 requests globally)",
            ),
            "auth_basic" | "auth_basic_user_file" | "auth_request" | "satisfy" => {
                (Impact::Dropped, "authentication is not part of Aegis")
            }
            "if" | "set" | "map" | "geo" | "split_clients" | "break" => (
                Impact::Dropped,
                "rewrite-module logic and variables are not expressible in Aegis",
            ),
            "real_ip_header" | "set_real_ip_from" | "real_ip_recursive" => {
                self.real_ip_lines.push((d.clone(), ctx.to_string()));
                return;
            }
            "charset" | "source_charset" => {
                (Impact::Dropped, "charset conversion is not supported")
            }
            "limit_conn" | "limit_conn_zone" | "limit_conn_status" | "limit_rate"
            | "limit_rate_after" => (
                Impact::Dropped,
                "connection and bandwidth limits are not supported",
            ),
            "limit_except" => (
                Impact::Dropped,
                "method restrictions with access rules are not carried over",
            ),
            "fastcgi_pass" | "uwsgi_pass" | "scgi_pass" | "grpc_pass" | "memcached_pass" => (
                Impact::Dropped,
                "only HTTP proxying (proxy_pass http://) is supported",
            ),
            "internal" => (Impact::Dropped, "internal-only locations are not supported"),
            "listen" | "server_name" | "location" | "upstream" | "server" => {
                (Impact::Dropped, "not valid in this context")
            }
            "proxy_pass" | "return" | "rewrite" => (Impact::Dropped, "not valid in this context"),
            "ssl_certificate" | "ssl_certificate_key" => return,
            "proxy_send_timeout" => {
                self.send_timeout(d);
                return;
            }
            "default_type" => return,
            _ if n.starts_with("proxy_cache") && !self.caches => (
                Impact::Ignored,
                "no effect: no proxy_cache is set anywhere in this config",
            ),
            _ if n.starts_with("proxy_cache") || n.starts_with("proxy_store") => (
                Impact::Dropped,
                "response caching is not part of Aegis (out of scope for now): responses are \
                 not cached",
            ),
            _ if n.starts_with("sub_filter") => {
                (Impact::Dropped, "response body rewriting is not supported")
            }
            _ if n.starts_with("ssl_") => (
                Impact::Differs,
                "TLS tuning is not carried over; Aegis uses rustls defaults",
            ),
            _ if n.starts_with("proxy_ssl") => (
                Impact::Dropped,
                "TLS to the upstream is not supported by Aegis upstreams yet",
            ),
            _ => {
                self.unknown(d, ctx);
                return;
            }
        };
        self.note(d, impact, why);
    }

    fn unknown(&mut self, d: &Directive, ctx: &str) {
        self.note(
            d,
            Impact::Dropped,
            format!("not understood by the importer (in {ctx} context); check it by hand"),
        );
    }

    // ---------------------------------------------------------------- finish

    fn finish(mut self, tree: &[Directive]) -> Conversion {
        let servers = std::mem::take(&mut self.servers);
        // Listen sockets, in order of first appearance, with their servers.
        let mut sockets: Vec<Socket> = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            for l in &s.listens {
                match sockets.iter_mut().find(|k| k.addr == l.addr) {
                    Some(k) => {
                        k.ssl |= l.ssl;
                        if !k.members.contains(&i) {
                            k.members.push(i);
                        }
                    }
                    None => sockets.push(Socket {
                        addr: l.addr.clone(),
                        ssl: l.ssl,
                        members: vec![i],
                    }),
                }
            }
        }
        // nginx's default server of a socket: `default_server`, else the first.
        let defaults: Vec<Option<usize>> = sockets
            .iter()
            .map(|k| {
                k.members
                    .iter()
                    .copied()
                    .find(|i| {
                        servers.get(*i).is_some_and(|s| {
                            s.listens.iter().any(|l| l.addr == k.addr && l.default)
                        })
                    })
                    .or_else(|| k.members.first().copied())
            })
            .collect();

        // Names are looked up per socket, as nginx does: the first server of
        // a socket with a name keeps it there.
        let mut claims: Vec<HashMap<String, usize>> = Vec::new();
        for k in &sockets {
            let mut claim: HashMap<String, usize> = HashMap::new();
            for &m in &k.members {
                let Some(s) = servers.get(m) else { continue };
                for (n, dir) in &s.name_dirs {
                    match claim.get(n) {
                        Some(&first) if first != m => {
                            let first_at = servers.get(first).map(|f| f.at.to_string());
                            self.note(
                                dir,
                                Impact::Ignored,
                                format!(
                                    "`{n}` is also named by the server at {} on {}: nginx uses the \
                                     first server there, and so does the import",
                                    first_at.unwrap_or_default(),
                                    k.addr
                                ),
                            );
                        }
                        Some(_) => {}
                        None => {
                            claim.insert(n.clone(), m);
                        }
                    }
                }
            }
            claims.push(claim);
        }

        // When servers differ in the sockets they listen on (the :80
        // redirect + :443 site pair, a second port), the engine's per-port
        // routes (`match.ports`) model nginx socket by socket; otherwise
        // every route serves every port and names are global.
        let per_port = sockets.iter().zip(&defaults).any(|(k, d)| {
            sockets
                .first()
                .zip(defaults.first())
                .is_some_and(|(f, fd)| f.members != k.members || fd != d)
        });
        let mut routes = Vec::new();
        if per_port {
            routes = per_port_routes(&servers, &sockets, &claims, &defaults);
        } else {
            // Aegis picks routes by host, on every listener alike: one server per
            // name. When sockets disagree (the :80 redirect + :443 site pair),
            // the server that serves content wins, preferring one on TLS.
            let mut order: Vec<String> = Vec::new();
            for s in &servers {
                for (n, _) in &s.name_dirs {
                    if !order.contains(n) {
                        order.push(n.clone());
                    }
                }
            }
            let mut emitted: Vec<Vec<String>> = vec![Vec::new(); servers.len()];
            for n in &order {
                let mut cands: Vec<(usize, Vec<usize>)> = Vec::new();
                for (si, c) in claims.iter().enumerate() {
                    if let Some(&m) = c.get(n) {
                        match cands.iter_mut().find(|(s, _)| *s == m) {
                            Some((_, socks)) => socks.push(si),
                            None => cands.push((m, vec![si])),
                        }
                    }
                }
                let score = |(m, socks): &(usize, Vec<usize>)| {
                    let content = servers.get(*m).is_some_and(|s| !s.redirect_only());
                    let tls = socks
                        .iter()
                        .any(|si| sockets.get(*si).is_some_and(|k| k.ssl));
                    (content, tls)
                };
                let Some(winner) = cands
                    .iter()
                    .enumerate()
                    .max_by(|(ia, a), (ib, b)| score(a).cmp(&score(b)).then(ib.cmp(ia)))
                    .map(|(_, c)| c.0)
                else {
                    continue;
                };
                if let Some(e) = emitted.get_mut(winner) {
                    e.push(n.clone());
                }
                let winner_at = servers
                    .get(winner)
                    .map(|s| s.at.to_string())
                    .unwrap_or_default();
                for (m, socks) in &cands {
                    if *m == winner {
                        continue;
                    }
                    let Some(s) = servers.get(*m) else { continue };
                    let Some((_, dir)) = s.name_dirs.iter().find(|(x, _)| x == n) else {
                        continue;
                    };
                    let on: Vec<String> = socks
                        .iter()
                        .filter_map(|si| sockets.get(*si).map(|k| k.addr.clone()))
                        .collect();
                    let what = if s.redirect_only() {
                        " (it only redirects)"
                    } else {
                        ""
                    };
                    self.note(
                        dir,
                        Impact::Dropped,
                        format!(
                            "on {} nginx answers `{n}` with this server{what}; Aegis chooses routes \
                             by host, not by listener, so requests for `{n}` there get the routes of \
                             the server at {winner_at} instead (the engine lacks per-listener routes)",
                            on.join(", ")
                        ),
                    );
                }
            }

            // Unknown hosts: Aegis has one set of routes for them, the default
            // server of the first socket.
            let any_server = defaults.first().copied().flatten();
            let any_at = any_server
                .and_then(|i| servers.get(i))
                .map(|s| s.at.to_string())
                .unwrap_or_default();
            let mut reported_default: HashSet<usize> = HashSet::new();
            for (si, k) in sockets.iter().enumerate() {
                let Some(d) = defaults.get(si).copied().flatten() else {
                    continue;
                };
                if Some(d) == any_server || !reported_default.insert(d) {
                    continue;
                }
                let Some(s) = servers.get(d) else { continue };
                let named = emitted.get(d).is_some_and(|e| !e.is_empty());
                let (impact, tail) = if named || s.routes.is_empty() {
                    (Impact::Differs, "")
                } else {
                    (
                        Impact::Dropped,
                        "; this server has no name to route by, so its routes are not served at all",
                    )
                };
                let dir = s.directive();
                self.note(
                    &dir,
                    impact,
                    format!(
                        "nginx's default server of {}; in Aegis unknown hosts there get the default \
                         server of the first socket ({any_at}){tail}",
                        k.addr
                    ),
                );
            }
            let all_addrs: Vec<String> = sockets.iter().map(|k| k.addr.clone()).collect();
            for s in &servers {
                let mine: Vec<&String> = s.listens.iter().map(|l| &l.addr).collect();
                let others: Vec<String> = all_addrs
                    .iter()
                    .filter(|a| !mine.contains(a))
                    .cloned()
                    .collect();
                if !others.is_empty() && !s.routes.is_empty() {
                    let dir = s.directive();
                    self.note(
                        &dir,
                        Impact::Differs,
                        format!(
                            "Aegis serves every route on every listener; this server's routes are \
                             also reachable on {}",
                            others.join(", ")
                        ),
                    );
                }
            }
            let wildcards: Vec<String> = emitted
                .iter()
                .flatten()
                .filter(|n| n.starts_with("*."))
                .cloned()
                .collect();

            for (i, s) in servers.iter().enumerate() {
                let names = emitted.get(i).cloned().unwrap_or_default();
                if any_server == Some(i) {
                    // Its routes answer unknown hosts. Its own names must still
                    // win over other servers' wildcards that would cover them.
                    let needs_named = names.iter().any(|n| {
                        n.starts_with("*.")
                            || wildcards
                                .iter()
                                .any(|w| w.get(1..).is_some_and(|suffix| n.ends_with(suffix)))
                    });
                    routes.extend(s.routes.iter().cloned());
                    if needs_named {
                        for r in &s.routes {
                            let mut r = r.clone();
                            r.name = format!("{}|named", r.name);
                            r.hosts = names.clone();
                            routes.push(r);
                        }
                    }
                } else if names.is_empty() {
                    let is_default = defaults.contains(&Some(i));
                    if !s.routes.is_empty() && !is_default && s.name_dirs.is_empty() {
                        let dir = s.directive();
                        self.note(
                            &dir,
                            Impact::Ignored,
                            "a server with no name that is not the default server of any of its \
                             sockets: nginx reaches it only for requests without a Host header \
                             (HTTP/1.0); its routes are left out",
                        );
                    }
                } else {
                    for r in &s.routes {
                        let mut r = r.clone();
                        r.hosts = names.clone();
                        routes.push(r);
                    }
                }
            }
        }

        // Upstreams: the connect timeout nginx would use.
        let mut upstreams = Vec::new();
        for u in std::mem::take(&mut self.upstreams) {
            let mut out = u.out;
            let asks = self
                .connect_timeouts
                .get(&out.name)
                .cloned()
                .unwrap_or_default();
            let first = asks.first().map_or(NGINX_DEFAULT_TIMEOUT_MS, |(t, _)| *t);
            if let Some((_, Some((at, text)))) = asks.iter().find(|(t, _)| *t != first) {
                self.findings.push(Finding {
                    at: at.clone(),
                    directive: text.clone(),
                    impact: Impact::Differs,
                    reason: format!(
                        "Aegis has one connect timeout per upstream; `{}` uses {first} ms",
                        out.name
                    ),
                    left_out: None,
                });
            }
            out.connect_timeout_ms = Some(first);
            upstreams.push(out);
        }

        // TLS: a server's certificate serves the names it holds on its TLS
        // sockets; the default server of a TLS socket also answers unknown SNI.
        let mut tls: Vec<TlsOut> = Vec::new();
        let mut tls_default = false;
        let mut sni_taken: HashSet<String> = HashSet::new();
        for c in std::mem::take(&mut self.tls) {
            let i = c.server;
            let mut names: Vec<String> = Vec::new();
            let mut is_default = false;
            for (si, k) in sockets.iter().enumerate() {
                if !k.ssl || !k.members.contains(&i) {
                    continue;
                }
                if defaults.get(si).copied().flatten() == Some(i) {
                    is_default = true;
                }
                if let Some(claim) = claims.get(si)
                    && let Some(s) = servers.get(i)
                {
                    for (n, _) in &s.name_dirs {
                        if claim.get(n) == Some(&i) && !names.contains(n) {
                            names.push(n.clone());
                        }
                    }
                }
            }
            let covered = cert_names(&c.source);
            if let Some(cov) = &covered {
                let (ok, not): (Vec<String>, Vec<String>) =
                    names.into_iter().partition(|n| name_covered(cov, n));
                names = ok;
                if !not.is_empty() {
                    self.note(
                        &c.cert,
                        Impact::Differs,
                        format!(
                            "the certificate does not cover {}: nginx serves it anyway (clients \
                             see a name mismatch), Aegis does not offer it for those names",
                            not.join(", ")
                        ),
                    );
                }
            }
            names.retain(|n| !sni_taken.contains(n));
            if names.is_empty() && is_default {
                // `server_name _` (or a name the certificate does not cover):
                // name the certificate by what it covers, so it can be the
                // default one.
                names = covered
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| !sni_taken.contains(n))
                    .collect();
            }
            if names.is_empty() {
                let (impact, why) = if is_default {
                    (
                        Impact::Dropped,
                        "this default server's certificate names nothing Aegis can file it \
                         under (no server_name and no DNS name in the certificate); TLS \
                         handshakes that nginx answers with it fail",
                    )
                } else {
                    (
                        Impact::Ignored,
                        "nginx never picks this server for a TLS connection (its names belong \
                         to other servers on its TLS sockets), so its certificate is never served",
                    )
                };
                self.note(&c.cert, impact, why);
                continue;
            }
            for n in &names {
                sni_taken.insert(n.clone());
            }
            let mut t = c.out;
            t.server_names = names;
            if is_default && !tls.iter().any(|t| t.default) {
                t.default = true;
                tls_default = true;
            }
            tls.push(t);
        }

        let mut listen = Vec::new();
        let mut listen_tls = Vec::new();
        for k in &sockets {
            if k.ssl {
                listen_tls.push(k.addr.clone());
            } else {
                listen.push(k.addr.clone());
            }
        }

        let real_ip = self.real_ip();
        let report = self.account(tree);
        let mut findings: Vec<Finding> = report
            .iter()
            .filter(|f| f.impact != Impact::Carried)
            .cloned()
            .collect();
        findings
            .sort_by(|a, b| (a.at.file.as_ref(), a.at.line).cmp(&(b.at.file.as_ref(), b.at.line)));

        Conversion {
            set: ConfigSet {
                settings: crate::model::SettingsOut {
                    listen,
                    listen_tls,
                    tls_default_certificate: tls_default,
                    admin: self.opts.admin.clone(),
                    workers: self.workers,
                    compression: std::mem::take(&mut self.compression),
                },
                upstreams,
                routes: {
                    let mut routes = routes;
                    routes.append(&mut self.internal_routes);
                    routes
                },
                tls,
                rate_limits: self.rate_limits,
                copies: self.copies,
                real_ip,
                maps: std::mem::take(&mut self.maps),
            },
            findings,
            report,
        }
    }

    /// The set's `real_ip` from nginx's realip directives. Aegis has one for
    /// every server and location, nginx one per level: the same lines at
    /// one level (http, or a single server) are exact; anything else
    /// differs.
    fn real_ip(&mut self) -> Option<crate::model::RealIpOut> {
        let lines = std::mem::take(&mut self.real_ip_lines);
        if lines.is_empty() {
            return None;
        }
        let mut out = crate::model::RealIpOut {
            from: Vec::new(),
            header: "X-Real-IP".to_string(),
            recursive: false,
        };
        let contexts: HashSet<&str> = lines.iter().map(|(_, c)| c.as_str()).collect();
        let one_level = contexts.len() == 1
            && (contexts.contains("http")
                || (contexts.contains("server") && self.servers.len() <= 1));
        let mut usable = true;
        for (d, _) in &lines {
            match (d.name.as_str(), d.arg(0)) {
                ("set_real_ip_from", Some(a))
                    if a.parse::<std::net::IpAddr>().is_ok()
                        || a.parse::<ipnet::IpNet>().is_ok() =>
                {
                    out.from.push(a.to_string());
                }
                ("real_ip_header", Some(h)) if h != "proxy_protocol" => out.header = h.to_string(),
                ("real_ip_recursive", Some(v)) => out.recursive = v == "on",
                _ => usable = false,
            }
        }
        if !usable || out.from.is_empty() {
            for (d, _) in &lines {
                self.note(
                    d,
                    Impact::Dropped,
                    "not a realip form Aegis carries (unix: or proxy_protocol); Aegis takes the \
                     client address from the connection",
                );
            }
            return None;
        }
        for (d, _) in &lines {
            if one_level {
                self.note(d, Impact::Carried, "real_ip");
            } else {
                self.note(
                    d,
                    Impact::Differs,
                    "carried as the set's one `real_ip`: Aegis applies it to every server and \
                     location, nginx only to the level it is written in",
                );
            }
        }
        Some(out)
    }

    /// One report entry per directive of the input, in input order. The
    /// notes made while converting are merged per directive (the most severe
    /// impact wins, the reasons are joined); a directive inside a block
    /// that was not carried shares its block's fate; anything else that
    /// nothing accounted for is listed as dropped, never silently carried.
    fn account(&mut self, tree: &[Directive]) -> Vec<Finding> {
        let mut merged: Merged = HashMap::new();
        for f in std::mem::take(&mut self.findings) {
            let key = (f.at.file.to_string(), f.at.line, f.directive.clone());
            let e = merged
                .entry(key)
                .or_insert((Impact::Carried, Vec::new(), None));
            e.0 = e.0.min(f.impact);
            if !f.reason.is_empty() && !e.1.contains(&f.reason) {
                e.1.push(f.reason);
            }
            e.2 = e.2.or(f.left_out);
        }
        let mut out = Vec::new();
        walk_report(tree, None, &merged, &mut out);
        out
    }
}

/// The notes about each directive, keyed by file, line and text: the most
/// severe impact, the reasons and the left-out feature it belongs to.
type Merged = HashMap<(String, usize, String), (Impact, Vec<String>, Option<&'static str>)>;

/// Blocks whose children are data of the block itself (carried with it).
const DATA_BLOCKS: &[&str] = &["types", "map", "geo", "split_clients"];

/// The reason a directive nothing accounted for gets (the completeness test
/// looks for it).
pub const UNACCOUNTED: &str = "not accounted for by the importer; check it by hand";

fn walk_report(
    ds: &[Directive],
    parent: Option<(&Directive, Impact, Option<&'static str>)>,
    merged: &Merged,
    out: &mut Vec<Finding>,
) {
    for d in ds {
        let key = (d.at.file.to_string(), d.at.line, d.text());
        let (impact, reason, left_out) = match (merged.get(&key), parent) {
            (Some((impact, reasons, lo)), _) => (*impact, reasons.join("; "), *lo),
            (None, Some((p, pi, lo))) if pi != Impact::Carried => (
                pi,
                format!("inside `{}` ({}), which is {}", p.text(), p.at, pi.label()),
                lo,
            ),
            (None, Some((p, _, _))) if DATA_BLOCKS.contains(&p.name.as_str()) => (
                Impact::Carried,
                format!("an entry of `{}` ({})", p.name, p.at),
                None,
            ),
            (None, _) => (Impact::Dropped, UNACCOUNTED.to_string(), None),
        };
        out.push(Finding {
            at: d.at.clone(),
            directive: d.text(),
            impact,
            reason,
            left_out,
        });
        if let Some(b) = &d.block {
            walk_report(b, Some((d, impact, left_out)), merged, out);
        }
    }
}

/// A connect timeout a location asks of an upstream: milliseconds, and
/// where (with the directive's text) when it was written out.
type TimeoutAsk = (u64, Option<(Loc, String)>);

/// The `static` action for a location that serves files, when the engine
/// can serve them as nginx would: an absolute `root` (or `alias` on a
/// prefix location) that exists here (the engine refuses a missing root, so
/// a set imported on another machine than the one with the files is
/// listed instead), no `autoindex`, and `try_files` entries of the forms
/// `$uri` with a literal suffix (`$uri/`, `$uri.html`), `/path` and a last
/// `=code` or `@name` (the caller
/// puts the named location's internal route in its place).
fn static_action(
    kind: &LocKind,
    scope: &Scope,
    statics: &[&Directive],
    try_files: Option<&Directive>,
) -> Option<ActionOut> {
    if statics
        .iter()
        .any(|d| d.name == "autoindex" && d.arg(0) == Some("on"))
    {
        return None;
    }
    let alias = statics
        .iter()
        .find(|d| d.name == "alias")
        .and_then(|d| d.arg(0))
        .map(str::to_string);
    let root = match &alias {
        Some(_) => None,
        None => Some(scope.root.clone()?),
    };
    let exact = matches!(kind, LocKind::Exact(_));
    let regex = matches!(kind, LocKind::Regex { .. });
    // Regex captures (`$1`..`$9`, nothing else) in a regex location: the
    // engine fills them from the route's regex.
    let only_captures = |t: &str| {
        regex
            && t.split('$')
                .skip(1)
                .all(|v| v.starts_with(|c: char| ('1'..='9').contains(&c)))
    };
    let alias_captures = alias
        .as_deref()
        .is_some_and(|a| a.contains('$') && only_captures(a));
    // An alias naming one file serves it for every path the location
    // takes (Jitsi's `location = /config.js`, and its regex
    // `location ~ ^/([^/?&:'"]+)/config.js$`).
    let names_file = |a: &str| !a.contains('$') && Path::new(a).is_file();
    let regex_file = regex && alias.as_deref().is_some_and(names_file);
    if alias.is_some()
        && !(exact
            || alias_captures
            || regex_file
            || matches!(kind, LocKind::Prefix(_) | LocKind::Stop(_)))
    {
        return None;
    }
    let written = alias.as_deref().or(root.as_deref())?;
    // The directory that must exist: with captures, the alias's literal
    // part.
    let dir = if alias_captures {
        let cut = written.split('$').next().unwrap_or("");
        cut.get(..cut.rfind('/')?.saturating_add(1))?
    } else {
        written
    };
    // On `location = /x` an alias may name the file itself (Jitsi's
    // `config.js`).
    let file_alias = (exact || regex_file) && alias.is_some() && Path::new(dir).is_file();
    if !dir.starts_with('/') || dir.contains('$') || !(Path::new(dir).is_dir() || file_alias) {
        return None;
    }
    let mut tries = Vec::new();
    if let Some(t) = try_files {
        let n = t.args.len();
        for (i, a) in t.args.iter().enumerate() {
            let last = i.saturating_add(1) == n;
            // `$uri`, `$uri/`, `$uri.html`: the path and a literal suffix.
            let ok = a
                .strip_prefix("$uri")
                .is_some_and(|rest| !rest.contains('$') && !rest.starts_with(is_var_char))
                || (a.starts_with('/') && (!a.contains('$') || only_captures(a)))
                || (last
                    && (a
                        .strip_prefix('=')
                        .is_some_and(|c| c.parse::<u16>().is_ok())
                        || a.starts_with('@')));
            if !ok {
                return None;
            }
            tries.push(a.clone());
        }
    }
    Some(ActionOut::Static {
        root,
        alias,
        index: scope
            .index
            .clone()
            .unwrap_or_else(|| vec!["index.html".to_string()]),
        try_files: tries,
        etag: !scope.etag_off,
    })
}

/// A character that continues an nginx variable name (`$uri_x` is not
/// `$uri` followed by `_x`).
fn is_var_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A location's `rewrite` as the engine's `rewrites` entry, when the
/// engine can run it as nginx does: a regex the Rust engine compiles, a
/// flag it knows, a replacement with captures and the variables it has, and
/// no query string in an internal rewrite. `None` leaves the line to the
/// older, narrower forms (and their findings).
fn rewrite_out(d: &Directive) -> Option<crate::model::RewriteOut> {
    let (re, to) = (d.arg(0)?, d.arg(1)?);
    let flag = match d.arg(2) {
        None => None,
        Some(f @ ("last" | "break" | "redirect" | "permanent")) => Some(f.to_string()),
        Some(_) => return None,
    };
    if d.args.len() > 3 || regex::Regex::new(re).is_err() {
        return None;
    }
    let redirect = matches!(flag.as_deref(), Some("redirect" | "permanent"))
        || to.starts_with("http://")
        || to.starts_with("https://")
        || to.starts_with("$scheme");
    let text = to.strip_suffix('?').unwrap_or(to);
    if !redirect && (text.contains('?') || !(text.starts_with('/') || text.starts_with('$'))) {
        return None;
    }
    aegis_engine::rewrite::parse_replacement(text).ok()?;
    Some(crate::model::RewriteOut {
        regex: re.to_string(),
        to: to.to_string(),
        flag,
    })
}

/// `error_page CODE... [=[STATUS]] URI` as the engine's `error_pages`
/// entry.
fn error_page_out(d: &Directive) -> Result<crate::model::ErrorPageOut, String> {
    let (uri, rest) = d
        .args
        .split_last()
        .ok_or_else(|| "error_page without a target".to_string())?;
    if uri.contains('$') {
        return Err("an error page target with variables is not carried".into());
    }
    let mut statuses = Vec::new();
    let mut status = None;
    for a in rest {
        if let Some(code) = a.strip_prefix('=') {
            status = Some(if code.is_empty() {
                "target".to_string()
            } else {
                code.parse::<u16>()
                    .map_err(|_| format!("`{a}` is not a status"))?
                    .to_string()
            });
        } else {
            let code = a
                .parse::<u16>()
                .ok()
                .filter(|c| (300..=599).contains(c))
                .ok_or_else(|| format!("`{a}` is not a status from 300 to 599"))?;
            statuses.push(code);
        }
    }
    let url = uri.starts_with("http://") || uri.starts_with("https://");
    if !url && !uri.starts_with('/') {
        return Err(format!("`{uri}` is not a path or an http(s) URL"));
    }
    if url && status.as_deref() == Some("target") {
        return Err("`=` with a URL has no page status to take".into());
    }
    Ok(crate::model::ErrorPageOut {
        statuses,
        uri: uri.clone(),
        status,
    })
}

/// An `expires` value the engine takes: a duration (`30d`, `1h30m`, `-1`),
/// `max`, `epoch` or `off`.
fn expires_value(v: &str) -> bool {
    matches!(v, "max" | "epoch" | "off")
        || parse_nginx_duration(v.strip_prefix('-').unwrap_or(v)).is_some()
}

/// The routes of every server, socket by socket, as nginx picks them: on
/// each socket a server's routes serve the names it claims there (`hosts`)
/// and, on the sockets where it is the default server, unknown hosts (no
/// `hosts`), each bound to the sockets' ports (`ports`). Sockets where a
/// server plays the same part share one copy of its routes. A default
/// server's own names are written as well when a wildcard of another server
/// of the socket could otherwise take them.
fn per_port_routes(
    servers: &[Server],
    sockets: &[Socket],
    claims: &[HashMap<String, usize>],
    defaults: &[Option<usize>],
) -> Vec<RouteOut> {
    let mut routes = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        // (hosts, ports) in order of first socket.
        let mut groups: Vec<(Vec<String>, Vec<u16>)> = Vec::new();
        let mut add =
            |hosts: Vec<String>, port: u16| match groups.iter_mut().find(|(h, _)| *h == hosts) {
                Some((_, ports)) => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                None => groups.push((hosts, vec![port])),
            };
        for (si, k) in sockets.iter().enumerate() {
            if !k.members.contains(&i) {
                continue;
            }
            let Some(port) = k
                .addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let mut names: Vec<String> = Vec::new();
            if let Some(claim) = claims.get(si) {
                for (n, _) in &s.name_dirs {
                    if claim.get(n) == Some(&i) && !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
            let is_default = defaults.get(si).copied().flatten() == Some(i);
            if is_default {
                let wildcards: Vec<&String> = claims
                    .get(si)
                    .map(|c| {
                        c.iter()
                            .filter(|(n, m)| **m != i && n.starts_with("*."))
                            .map(|(n, _)| n)
                            .collect()
                    })
                    .unwrap_or_default();
                let needs_named = names.iter().any(|n| {
                    n.starts_with("*.")
                        || wildcards
                            .iter()
                            .any(|w| w.get(1..).is_some_and(|suffix| n.ends_with(suffix)))
                });
                add(Vec::new(), port);
                if needs_named {
                    add(names, port);
                }
            } else if !names.is_empty() {
                add(names, port);
            }
        }
        for (g, (hosts, mut ports)) in groups.into_iter().enumerate() {
            ports.sort_unstable();
            for r in &s.routes {
                let mut r = r.clone();
                if g > 0 {
                    let ps: Vec<String> = ports.iter().map(u16::to_string).collect();
                    r.name = format!("{}|:{}", r.name, ps.join(","));
                }
                r.hosts = hosts.clone();
                r.ports = ports.clone();
                routes.push(r);
            }
        }
    }
    routes
}

#[derive(Debug, Clone)]
struct Socket {
    addr: String,
    ssl: bool,
    members: Vec<usize>,
}

/// A server's certificate, before the names it serves are known.
#[derive(Debug, Clone)]
struct CertIn {
    server: usize,
    out: TlsOut,
    cert: Directive,
    /// The certificate file as nginx reads it.
    source: PathBuf,
}

/// The DNS names a PEM certificate covers (its subjectAltNames, else its
/// common name), lower-cased; `None` when the file cannot be read.
fn cert_names(path: &Path) -> Option<Vec<String>> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                push_unique(&mut names, d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                push_unique(&mut names, s.to_ascii_lowercase());
            }
        }
    }
    Some(names)
}

/// Whether a certificate name list covers `name` (one-label `*.` wildcards).
fn name_covered(cov: &[String], name: &str) -> bool {
    let probe = match name.strip_prefix("*.") {
        Some(rest) => format!("aegis-probe.{rest}"),
        None => name.to_string(),
    };
    cov.iter().any(|c| match c.strip_prefix("*.") {
        Some(suffix) => probe
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => *c == probe,
    })
}

/// Whether any `proxy_cache ZONE` (not `off`) is set in the tree.
fn uses_cache(ds: &[Directive]) -> bool {
    ds.iter().any(|d| {
        (d.name == "proxy_cache" && d.arg(0) != Some("off"))
            || d.block.as_deref().is_some_and(uses_cache)
    })
}

/// A directive without its block (for findings and lookups).
fn bare(d: &Directive) -> Directive {
    Directive {
        name: d.name.clone(),
        args: d.args.clone(),
        block: None,
        at: d.at.clone(),
    }
}

/// `try_files /dev/null @x`: no file ever matches (PeerTube's way of always
/// using the fallback).
fn only_dev_null(t: &Directive) -> bool {
    let n = t.args.len().saturating_sub(1);
    n > 0 && t.args.iter().take(n).all(|a| a == "/dev/null")
}

/// Why a directive with no effect a client sees is ignored.
fn ignored_reason(n: &str) -> &'static str {
    match n {
        "sendfile" | "sendfile_max_chunk" | "tcp_nopush" | "tcp_nodelay" | "aio" | "directio"
        | "output_buffers" | "postpone_output" => {
            "how nginx writes to sockets; Aegis has its own I/O"
        }
        _ if n.starts_with("open_file_cache") => "nginx's file-descriptor cache",
        _ if n.starts_with("keepalive")
            || n.starts_with("lingering")
            || n.ends_with("_timeout")
            || n == "reset_timedout_connection" =>
        {
            "client connection keep-alive and timeouts: Aegis uses its own limits (docs/CONFIG.md)"
        }
        "proxy_http_version" => {
            "Aegis talks HTTP/1.1 to upstreams over pooled connections (upgrades per route)"
        }
        _ if n.contains("buffer") || n.contains("temp_") || n.ends_with("_buffering") => {
            "buffering: Aegis streams bodies"
        }
        "access_log"
        | "error_log"
        | "log_format"
        | "log_not_found"
        | "log_subrequest"
        | "open_log_file_cache" => "logging: Aegis writes its own access log",
        _ if n.contains("hash_") => "nginx's table sizing",
        "resolver" | "resolver_timeout" => "DNS: Aegis resolves upstream names itself",
        "server_tokens" => "the Server header: each proxy sends its own",
        _ if n.starts_with("ssl_") || n.starts_with("http2") => {
            "TLS and HTTP/2 tuning: rustls and hyper's own choices"
        }
        "index" | "root" => "used where files are served: the `static` routes carry it",
        _ => "no difference a client sees",
    }
}

/// Calls `f` with every `map` block of `ds`.
fn for_each_map<'a>(ds: &'a [Directive], f: &mut dyn FnMut(&'a Directive)) {
    for d in ds {
        if d.name == "map" {
            f(d);
        } else if let Some(b) = &d.block {
            for_each_map(b, f);
        }
    }
}

/// The directives (outside `map` blocks) whose arguments use `var`.
fn uses_of<'a>(ds: &'a [Directive], var: &str, out: &mut Vec<&'a Directive>) {
    let bare_var = var.trim_start_matches('$');
    let braced = format!("${{{bare_var}}}");
    for d in ds {
        if d.name == "map" {
            continue;
        }
        let hit = d.args.iter().any(|a| {
            a.contains(&braced)
                || a.match_indices(var).any(|(i, _)| {
                    let end = i.saturating_add(var.len());
                    !a.as_bytes()
                        .get(end)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                })
        });
        if hit {
            out.push(d);
        }
        if let Some(b) = &d.block {
            uses_of(b, var, out);
        }
    }
}

fn exact_path(kind: &LocKind) -> Option<&str> {
    match kind {
        LocKind::Exact(p) => Some(p),
        _ => None,
    }
}

/// A named location that only rewrites every path to one constant path
/// with `break` (and so serves that path from the server's root): the
/// rewrite and its target. The regex must take any path (it is tried on
/// a few).
fn constant_break_rewrite(named: &LocInfo) -> Option<(Directive, String)> {
    let [rw] = named.block.as_slice() else {
        return None;
    };
    let (re, to) = (rw.arg(0)?, rw.arg(1)?);
    if rw.name != "rewrite"
        || rw.arg(2) != Some("break")
        || rw.args.len() != 3
        || !to.starts_with('/')
        || to.contains('$')
        || to.contains('?')
    {
        return None;
    }
    let re = regex::Regex::new(re).ok()?;
    ["/", "/room", "/a/b.c"]
        .iter()
        .all(|p| re.is_match(p))
        .then(|| (rw.clone(), to.to_string()))
}

/// A location's match as a route's path; `None` for a named location
/// (reached only through `try_files` or `error_page`).
fn path_out(kind: &LocKind) -> Option<PathOut> {
    Some(match kind {
        LocKind::Exact(p) => PathOut::Exact(p.clone()),
        LocKind::Prefix(p) => PathOut::Prefix {
            prefix: p.clone(),
            stop_regex: false,
        },
        LocKind::Stop(p) => PathOut::Prefix {
            prefix: p.clone(),
            stop_regex: true,
        },
        LocKind::Regex { pattern, .. } => PathOut::Regex(pattern.clone()),
        LocKind::Named(_) => return None,
    })
}

/// The FastCGI, uwsgi or SCGI `*_pass` a location block hands its
/// requests to.
fn fastcgi_handler(block: &[Directive]) -> Option<&Directive> {
    block
        .iter()
        .find(|d| matches!(d.name.as_str(), "fastcgi_pass" | "uwsgi_pass" | "scgi_pass"))
}

/// Whether nginx would hand `uri` (its literal part, up to the first
/// variable) to a FastCGI location of `locs`: the `index.php` entries and
/// `/index.php$request_uri` fallbacks of PHP apps.
fn lands_in_fastcgi<'l>(locs: &'l [LocInfo], uri: &str) -> Option<&'l LocInfo> {
    let literal = uri.split('$').next().unwrap_or("");
    let l = locs.get(nginx_pick(locs, literal)?)?;
    fastcgi_handler(&l.block).map(|_| l)
}

fn placeholder(why: &str) -> ActionOut {
    ActionOut::Respond {
        status: 404,
        body: String::new(),
        headers: vec![("x-aegis-import".to_string(), why.to_string())],
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// nginx's location choice for a path, among one server's locations
/// (used to check that an exact-path route stands in for a rewrite
/// inside the right location).
fn nginx_pick(locs: &[LocInfo], path: &str) -> Option<usize> {
    if let Some(i) = locs
        .iter()
        .position(|l| matches!(&l.kind, LocKind::Exact(p) if p == path))
    {
        return Some(i);
    }
    let mut best: Option<(usize, usize, bool)> = None;
    for (i, l) in locs.iter().enumerate() {
        let (p, stop) = match &l.kind {
            LocKind::Prefix(p) => (p, false),
            LocKind::Stop(p) => (p, true),
            _ => continue,
        };
        if path.starts_with(p.as_str()) && best.is_none_or(|(_, len, _)| p.len() > len) {
            best = Some((i, p.len(), stop));
        }
    }
    if let Some((i, _, true)) = best {
        return Some(i);
    }
    for (i, l) in locs.iter().enumerate() {
        if let LocKind::Regex { re, .. } = &l.kind
            && re.is_match(path)
        {
            return Some(i);
        }
    }
    best.map(|(i, _, _)| i)
}

/// The literal a regex matches, when it has no metacharacters (escaped
/// punctuation such as `\.` allowed).
fn literal_regex(re: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let e = chars.next()?;
                if e.is_ascii_alphanumeric() {
                    return None;
                }
                out.push(e);
            }
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// `host[:port]` with the default port added; `[v6]` kept.
fn with_port(addr: &str, default: u16) -> String {
    if addr.starts_with('[') {
        if addr.contains("]:") {
            addr.to_string()
        } else {
            format!("{addr}:{default}")
        }
    } else if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{default}")
    }
}

/// An nginx `listen` address as an Aegis socket address.
fn listen_addr(a: &str) -> String {
    if a.bytes().all(|b| b.is_ascii_digit()) {
        return format!("0.0.0.0:{a}");
    }
    if let Some(port) = a.strip_prefix("*:") {
        return format!("0.0.0.0:{port}");
    }
    let a = with_port(a, 80);
    match a.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => a,
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// nginx time: `30s`, `1m`, `500ms`, `1h`, `1m30s`, a bare number of seconds.
pub fn parse_nginx_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok()?.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let value: u64 = rest.get(..n)?.parse().ok()?;
        rest = rest.get(n..)?;
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = rest.get(..unit_len)?;
        rest = rest.get(unit_len..)?;
        let factor: u64 = match unit {
            "ms" => 1,
            "s" | "" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "M" => 2_592_000_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(value.checked_mul(factor)?)?;
    }
    Some(total)
}

/// nginx size: `512`, `8k`, `10m`, `1g` (binary multiples).
pub fn parse_nginx_size(s: &str) -> Option<u64> {
    let (num, factor) = match s.chars().last()? {
        'k' | 'K' => (s.get(..s.len() - 1)?, 1u64 << 10),
        'm' | 'M' => (s.get(..s.len() - 1)?, 1 << 20),
        'g' | 'G' => (s.get(..s.len() - 1)?, 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(factor)
}

/// `10r/s`, `30r/m`, `0.5r/s` → requests per second.
fn parse_rate(s: &str) -> Option<f64> {
    let (n, per) = if let Some(n) = s.strip_suffix("r/s") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("r/m") {
        (n, 60.0)
    } else {
        return None;
    };
    let v: f64 = n.parse().ok()?;
    (v > 0.0 && v.is_finite()).then_some(v / per)
}

#[cfg(test)]
mod tests;

/// A `proxy_set_header` or `add_header` value (or a map's value: `what`
/// says which) with variables → an Aegis header-value template
/// (`$remote_addr`, `$scheme`, `$host`, `$request_uri`, `$uri`, `$args`,
/// `$is_args`, `$request_id`, and the variable of a carried map in `maps`).
fn request_value_template(
    text: &str,
    server_name: &str,
    ports: &[String],
    maps: &[crate::model::MapOut],
    what: &str,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        let (lit, var) = rest.split_at(i);
        out.push_str(lit);
        let var = var.get(1..).unwrap_or("");
        let (name, len) = if let Some(inner) = var.strip_prefix('{') {
            match inner.find('}') {
                Some(j) => (inner.get(..j).unwrap_or(""), j.saturating_add(2)),
                None => return Err(format!("unterminated `${{` in a {what}")),
            }
        } else {
            let n = var
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (var.get(..n).unwrap_or(""), n)
        };
        let mapped = match name {
            "remote_addr" | "scheme" | "host" | "request_uri" | "uri" | "args" | "is_args"
            | "request_id" | "request_method" => name,
            // The engine's own `$http_NAME` / `$arg_NAME` (`$http_host`,
            // the Host as sent, stays nginx's `$host` above, as before).
            n if n != "http_host"
                && (n.strip_prefix("http_").is_some_and(|h| !h.is_empty())
                    || n.strip_prefix("arg_").is_some_and(|a| !a.is_empty()))
                && aegis_engine::compiled::LocationPart::of_variable(n).is_some() =>
            {
                n
            }
            "http_host" => "host",
            "document_uri" => "uri",
            "query_string" => "args",
            "server_name" if !server_name.contains('$') => {
                out.push_str(server_name);
                rest = var.get(len..).unwrap_or("");
                continue;
            }
            "server_port" => match ports {
                [one] => {
                    out.push_str(one);
                    rest = var.get(len..).unwrap_or("");
                    continue;
                }
                _ => {
                    return Err(format!(
                        "{what} with `$server_port` of a server on several ports: \
                         Aegis has no per-listener variable; the header is not sent"
                    ));
                }
            },
            m if maps.iter().any(|x| x.name == m) => {
                if var.get(len..).is_some_and(starts_with_name_char) {
                    return Err(format!(
                        "{what} with `${{{m}}}` followed by a letter, digit or `_`: not expressible"
                    ));
                }
                m
            }
            other => {
                return Err(format!(
                    "{what} with `${other}`: Aegis header values take $remote_addr, \
                     $scheme, $host, $request_uri, $uri, $args, $is_args, $request_id, \
                     $request_method, $http_NAME, $arg_NAME and the variables of carried maps"
                ));
            }
        };
        out.push('$');
        out.push_str(mapped);
        rest = var.get(len..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

/// `s` starts with a character of a variable name.
fn starts_with_name_char(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A directive that takes `var` in a value Aegis renders per request: a
/// request or response header, or a `return` target.
fn value_use(d: &Directive, var: &str) -> bool {
    let braced = format!("${{{}}}", var.trim_start_matches('$'));
    let has = |a: &str| a.contains(var) || a.contains(&braced);
    match d.name.as_str() {
        "proxy_set_header" | "add_header" => d.arg(1).is_some_and(has),
        "return" => d.args.iter().any(|a| has(a)),
        _ => false,
    }
}
