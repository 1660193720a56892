//! Raw config → compiled config: parse every file, merge, check every
//! reference and limit, and compile matchers. Every problem found is
//! reported, located, and nothing is compiled unless there are none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::{Regex, RegexBuilder};
use serde_saphyr::{Location, Spanned};

use super::diagnostic::{Diagnostic, Diagnostics};
use super::raw::{self, Balance, HashKey, HotFile};
use super::settings::{Limits, Settings};
use super::source::{
    ConfigSource, ConfinedError, ContentHasher, SourceFile, climbs_out, lexical, read_confined,
};
use crate::access::{AccessRules, LimitExcept, RealIp, RouteAccess, Rule};
use crate::compiled::{
    Certificate, CompiledConfig, CompiledRoute, EndpointSpec, ErrorAnswer, ErrorPageSpec,
    ErrorTarget, ExampleRequest, ForwardAction, HeaderCondition, HeaderEditList, HealthCheckSpec,
    ListenPorts, LocationPart, LocationTemplate, RateLimitSpec, RouteAction, Scoring, StaticAction,
    StaticFallback, UpstreamPool, has_captures,
};
use crate::features::{Feature, FeatureSet, Predicate, ValueTest};
use crate::map::{CompiledMap, MapId, MapSource, MapValue};
use crate::rewrite::{Flag, RewriteRule};
use crate::route_table::{HostKey, Inside, PathKey, RouteTableBuilder};

/// Parses `aegis.yaml` (defaults when absent).
pub fn parse_settings(source: &ConfigSource) -> Result<Settings, Diagnostics> {
    match &source.settings {
        None => Ok(Settings::default()),
        Some(file) => parse_yaml::<Settings>(file).map_err(|d| Diagnostics(vec![d])),
    }
}

fn parse_yaml<T: for<'de> serde::Deserialize<'de> + Default>(
    file: &SourceFile,
) -> Result<T, Diagnostic> {
    if file.text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_saphyr::from_str_with_options::<T>(&file.text, parser_options()).map_err(|e| {
        let at = e.location().unwrap_or(Location::UNKNOWN);
        let message = e.without_snippet().to_string();
        let message = strip_location_suffix(&message);
        Diagnostic::new(&file.name, at, "", message)
    })
}

/// The parser's budget. Its defaults (250 000 nodes) stop a file of about
/// 25 000 routes; a set may hold `limits.max_routes` (100 000) and a file is
/// already bounded by `limits.max_file_size`, so the node and event budgets
/// are raised to what such a file can hold. The alias and depth budgets
/// (against alias bombs and stack exhaustion) keep their defaults.
fn parser_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 8_000_000;
    budget.max_events = 16_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// serde-saphyr appends " at line L, column C" to some messages; the
/// diagnostic already carries the position.
fn strip_location_suffix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    match first.rfind(" at line ") {
        Some(i) => first.get(..i).unwrap_or(first).to_string(),
        None => first.to_string(),
    }
}

/// Compiles the hot content of a config set under the given limits.
pub fn compile(source: &ConfigSource, limits: &Limits) -> Result<CompiledConfig, Diagnostics> {
    let mut cx = Cx {
        diags: Diagnostics::default(),
        limits,
        dir: &source.dir,
        roots: FileRoots::of(source),
        hasher: ContentHasher::default(),
        fallbacks: Vec::new(),
        maps: Vec::new(),
        map_index: HashMap::new(),
    };
    let mut parsed: Vec<(&SourceFile, HotFile)> = Vec::new();
    for file in &source.files {
        cx.hasher.add(&file.name, file.text.as_bytes());
        match parse_yaml::<HotFile>(file) {
            Ok(hot) => parsed.push((file, hot)),
            Err(d) => cx.diags.push(d),
        }
    }

    // Upstreams first: routes refer to them.
    let mut upstreams = Vec::new();
    let mut upstream_index: HashMap<String, usize> = HashMap::new();
    let mut upstream_origin: HashMap<String, String> = HashMap::new();
    let mut endpoint_count: usize = 0;
    for (file, hot) in &parsed {
        for (i, u) in hot.upstreams.iter().enumerate() {
            let path = format!("upstreams[{i}]");
            if let Some(first) = upstream_origin.get(&u.value.name) {
                cx.err(
                    file,
                    u.referenced,
                    &path,
                    format!("upstream `{}` is already defined at {first}", u.value.name),
                );
                continue;
            }
            upstream_origin.insert(u.value.name.clone(), origin(file, u.referenced));
            endpoint_count = endpoint_count.saturating_add(u.value.endpoints.len());
            if let Some(pool) = cx.upstream(file, &path, u) {
                upstream_index.insert(pool.name.to_string(), upstreams.len());
                upstreams.push(pool);
            }
        }
    }
    if endpoint_count > limits.max_endpoints {
        cx.diags.push(Diagnostic {
            file: first_file(&parsed),
            line: 0,
            column: 0,
            path: "upstreams".into(),
            message: format!(
                "{endpoint_count} endpoints, over the limit of {} (limits.max_endpoints)",
                limits.max_endpoints
            ),
        });
    }

    let mut rate_limits = Vec::new();
    let mut rate_index: HashMap<String, usize> = HashMap::new();
    let mut rate_origin: HashMap<String, String> = HashMap::new();
    for (file, hot) in &parsed {
        for (i, r) in hot.rate_limits.iter().enumerate() {
            let path = format!("rate_limits[{i}]");
            if let Some(first) = rate_origin.get(&r.value.name) {
                cx.err(
                    file,
                    r.referenced,
                    &path,
                    format!(
                        "rate limit `{}` is already defined at {first}",
                        r.value.name
                    ),
                );
                continue;
            }
            rate_origin.insert(r.value.name.clone(), origin(file, r.referenced));
            let rps = r.value.requests_per_second;
            if !(rps.is_finite() && rps > 0.0) {
                cx.err(
                    file,
                    r.referenced,
                    &format!("{path}.requests_per_second"),
                    "must be a number above 0",
                );
                continue;
            }
            let burst = r
                .value
                .burst
                .unwrap_or_else(|| rps.ceil().clamp(1.0, u32::MAX as f64) as u32);
            rate_index.insert(r.value.name.clone(), rate_limits.len());
            rate_limits.push(RateLimitSpec {
                name: r.value.name.clone(),
                requests_per_second: rps,
                burst,
            });
        }
    }

    // Routes.
    // The ports the settings listen on, to check `match.ports` against
    // (None when the settings do not parse: that is reported elsewhere).
    let port_of = |a: &String| a.rsplit(':').next()?.parse::<u16>().ok();
    let listeners = parse_settings(source).ok().map(|s| ListenPorts {
        plain: s.listen.iter().filter_map(port_of).collect(),
        tls: s.listen_tls.iter().filter_map(port_of).collect(),
    });
    let listen_ports: Option<Vec<u16>> = listeners
        .as_ref()
        .map(|l| l.plain.iter().chain(l.tls.iter()).copied().collect());
    // Maps, before the routes that choose upstreams with them.
    for (file, hot) in &parsed {
        for (i, m) in hot.maps.iter().enumerate() {
            cx.map(file, &format!("maps[{i}]"), m);
        }
    }
    let mut routes = Vec::new();
    let mut table = RouteTableBuilder::default();
    let mut route_origin: HashMap<String, String> = HashMap::new();
    let route_total: usize = parsed.iter().map(|(_, h)| h.routes.len()).sum();
    if route_total > limits.max_routes {
        cx.diags.push(Diagnostic {
            file: first_file(&parsed),
            line: 0,
            column: 0,
            path: "routes".into(),
            message: format!(
                "{route_total} routes, over the limit of {} (limits.max_routes)",
                limits.max_routes
            ),
        });
    } else {
        for (file, hot) in &parsed {
            for (i, r) in hot.routes.iter().enumerate() {
                let path = format!("routes[{i}]");
                if let Some(first) = route_origin.get(&r.value.name) {
                    cx.err(
                        file,
                        r.referenced,
                        &path,
                        format!("route `{}` is already defined at {first}", r.value.name),
                    );
                    continue;
                }
                route_origin.insert(r.value.name.clone(), origin(file, r.referenced));
                if let Some((route, hosts, key)) =
                    cx.route(file, &path, r, &upstream_index, &rate_index)
                {
                    let id = routes.len();
                    let ports = &route.ports;
                    if let Some(listening) = &listen_ports
                        && let Some(p) = ports.iter().find(|p| !listening.contains(p))
                    {
                        cx.err(
                            file,
                            r.referenced,
                            &format!("{path}.match.ports"),
                            format!("no listener on port {p} (settings listen, listen_tls)"),
                        );
                        continue;
                    }
                    if r.value.internal {
                        // Reached only by name (`try_files ... @name`).
                        routes.push(route);
                        continue;
                    }
                    if hosts.is_empty() {
                        table.add(ports, HostKey::Any, &key, id);
                    }
                    for h in &hosts {
                        match h.strip_prefix('*') {
                            Some(suffix) => table.add(ports, HostKey::Wildcard(suffix), &key, id),
                            None => table.add(ports, HostKey::Exact(h), &key, id),
                        }
                    }
                    routes.push(route);
                }
            }
        }
    }

    // `try_files` fallbacks to named routes.
    let route_ids: HashMap<String, usize> = routes
        .iter()
        .enumerate()
        .map(|(i, r): (usize, &CompiledRoute)| (r.name.to_string(), i))
        .collect();
    let fallbacks = std::mem::take(&mut cx.fallbacks);
    for (from, to, diag) in fallbacks {
        let target = route_ids.get(&to).copied().filter(|id| {
            // A named route answers on its own: forwarding or responding
            // (a static target could fall back again).
            routes.get(*id).is_some_and(|r| {
                matches!(
                    r.action,
                    RouteAction::Forward(_) | RouteAction::Respond { .. }
                )
            })
        });
        match target {
            Some(id) => {
                if let Some(RouteAction::Static(st)) = route_ids
                    .get(&from)
                    .and_then(|i| routes.get_mut(*i))
                    .map(|r| &mut r.action)
                {
                    st.fallback = Some(StaticFallback::Route(id));
                }
            }
            None => cx.diags.push(diag),
        }
    }

    // Certificates.
    let mut certificates = Vec::new();
    for (file, hot) in &parsed {
        for (i, t) in hot.tls.iter().enumerate() {
            if let Some(c) = cx.certificate(file, &format!("tls[{i}]"), t) {
                certificates.push(c);
            }
        }
    }

    // Features.
    let feature_total: usize = parsed.iter().map(|(_, h)| h.features.len()).sum();
    let mut features = Vec::new();
    let mut feature_origin: HashMap<String, String> = HashMap::new();
    if feature_total > limits.max_features {
        // Name the file (and entry) where the limit is crossed.
        let mut seen: usize = 0;
        let mut reported = false;
        for (file, hot) in &parsed {
            for (i, f) in hot.features.iter().enumerate() {
                seen = seen.saturating_add(1);
                if seen > limits.max_features && !reported {
                    reported = true;
                    cx.err(
                        file,
                        f.referenced,
                        &format!("features[{i}]"),
                        format!(
                            "{feature_total} features, limit max_features {} (feature `{}` is number {seen}); \
                             raise limits.max_features in aegis.yaml or remove features",
                            limits.max_features, f.value.name
                        ),
                    );
                }
            }
        }
    } else {
        for (file, hot) in &parsed {
            for (i, f) in hot.features.iter().enumerate() {
                let path = format!("features[{i}]");
                if let Some(first) = feature_origin.get(&f.value.name) {
                    cx.err(
                        file,
                        f.referenced,
                        &path,
                        format!("feature `{}` is already defined at {first}", f.value.name),
                    );
                    continue;
                }
                feature_origin.insert(f.value.name.clone(), origin(file, f.referenced));
                if let Some(feature) = cx.feature(file, &path, f) {
                    features.push(feature);
                }
            }
        }
    }

    // Scoring.
    let mut scoring = Scoring::default();
    let mut scoring_origin: Option<String> = None;
    for (file, hot) in &parsed {
        let Some(s) = &hot.scoring else { continue };
        if let Some(first) = &scoring_origin {
            cx.err(
                file,
                s.referenced,
                "scoring",
                format!("scoring is already defined at {first}"),
            );
            continue;
        }
        scoring_origin = Some(origin(file, s.referenced));
        if let Some(at) = s.value.block_at {
            if !at.is_finite() {
                cx.err(
                    file,
                    s.referenced,
                    "scoring.block_at",
                    "must be a finite number",
                );
            }
            scoring.block_at = Some(at);
        }
        if let Some(h) = &s.value.header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => scoring.header = name,
                Err(_) => cx.err(
                    file,
                    s.referenced,
                    "scoring.header",
                    format!("`{h}` is not a valid header name"),
                ),
            }
        }
    }

    let has_error_pages = routes.iter().any(|r| !r.error_pages.is_empty());

    // The client address behind trusted proxies.
    let mut real_ip: Option<RealIp> = None;
    let mut real_ip_origin: Option<String> = None;
    for (file, hot) in &parsed {
        let Some(r) = &hot.real_ip else { continue };
        if let Some(first) = &real_ip_origin {
            cx.err(
                file,
                r.referenced,
                "real_ip",
                format!("real_ip is already defined at {first}"),
            );
            continue;
        }
        real_ip_origin = Some(origin(file, r.referenced));
        let mut from = Vec::new();
        for (i, c) in r.value.from.iter().enumerate() {
            match parse_cidr(c.trim()) {
                Some(n) => from.push(n),
                None => cx.err(
                    file,
                    r.referenced,
                    &format!("real_ip.from[{i}]"),
                    format!("`{c}` is not an address or CIDR"),
                ),
            }
        }
        if from.is_empty() {
            cx.err(
                file,
                r.referenced,
                "real_ip.from",
                "name the proxies whose header is believed",
            );
        }
        let header = r.value.header.as_deref().unwrap_or("x-real-ip");
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(header) => {
                real_ip = Some(RealIp {
                    from,
                    header,
                    recursive: r.value.recursive,
                });
            }
            Err(_) => cx.err(
                file,
                r.referenced,
                "real_ip.header",
                format!("`{header}` is not a valid header name"),
            ),
        }
    }

    if !cx.diags.is_empty() {
        return Err(cx.diags);
    }
    let features = match FeatureSet::new(features, limits.max_features) {
        Ok(f) => f,
        Err(e) => {
            return Err(Diagnostics(vec![Diagnostic {
                file: first_file(&parsed),
                line: 0,
                column: 0,
                path: "features".into(),
                message: e.to_string(),
            }]));
        }
    };
    let regex_set_limit = usize::try_from(limits.max_regex_size.0)
        .unwrap_or(usize::MAX)
        .saturating_mul(8);
    let sha256 = cx.hasher.finish_full();
    Ok(CompiledConfig {
        version: sha256.get(..12).unwrap_or(&sha256).to_string(),
        sha256,
        routes,
        table: table.build(regex_set_limit),
        listen_ports: listeners.unwrap_or_default(),
        upstreams,
        upstream_index,
        certificates,
        rate_limits,
        features,
        scoring,
        files: source.files.iter().map(|f| f.name.clone()).collect(),
        real_ip,
        has_error_pages,
        maps: std::mem::take(&mut cx.maps),
    })
}

/// Reads a file a `tls` entry names, confined by [`FileRoots`]. The error
/// names the path and why; never the content.
fn read_referenced(dir: &Path, roots: &FileRoots, name: &str, max: u64) -> Result<Vec<u8>, String> {
    let written = Path::new(name);
    let outside_hint = "a file outside the config directory is named by its absolute path under one of `tls_dirs` (aegis.yaml)";
    let (path, allowed): (PathBuf, &[PathBuf]) = if written.is_absolute() {
        // Checked as written first, so a refused path does not tell whether
        // something exists there.
        let claimed = lexical(written);
        let listed = roots
            .tls_dirs
            .iter()
            .chain(&roots.tls_dirs_real)
            .any(|d| claimed.starts_with(d));
        if !listed {
            return Err(format!(
                "`{name}` is an absolute path not under any of `tls_dirs` (aegis.yaml): not read; name a file in the config directory by a relative path"
            ));
        }
        (written.to_path_buf(), &roots.tls_dirs_real)
    } else {
        if climbs_out(written) {
            return Err(format!(
                "`{name}` leaves the config directory: not read; {outside_hint}"
            ));
        }
        (dir.join(written), &roots.config_dir)
    };
    read_confined(&path, allowed, max).map_err(|e| match e {
        ConfinedError::Outside { target } if written.is_absolute() => format!(
            "`{name}` resolves to {}, outside `tls_dirs` (aegis.yaml): not read",
            target.display()
        ),
        ConfinedError::Outside { target } => format!(
            "`{name}` resolves to {}, outside the config directory: not read; {outside_hint}",
            target.display()
        ),
        ConfinedError::NotFile => format!("`{name}` is not a regular file"),
        ConfinedError::TooLarge { size, limit } => format!(
            "`{name}`: {size} bytes, over the limit of {limit} bytes (limits.max_file_size)"
        ),
        ConfinedError::Changed => format!("`{name}` changed while it was being read"),
        ConfinedError::Io(e) => format!("cannot read {}: {e}", path.display()),
    })
}

fn origin(file: &SourceFile, at: Location) -> String {
    format!("{}:{}:{}", file.name, at.line(), at.column())
}

fn first_file(parsed: &[(&SourceFile, HotFile)]) -> String {
    parsed
        .first()
        .map(|(f, _)| f.name.clone())
        .unwrap_or_default()
}

struct Cx<'a> {
    diags: Diagnostics,
    limits: &'a Limits,
    dir: &'a Path,
    roots: FileRoots,
    hasher: ContentHasher,
    /// `try_files` fallbacks naming a route (`@name`), resolved once every
    /// route is compiled: (the static route, the route named, the error to
    /// report when it does not exist).
    fallbacks: Vec<(String, String, Diagnostic)>,
    /// `maps`, compiled before the routes that use them.
    maps: Vec<CompiledMap>,
    map_index: HashMap<String, MapId>,
}

/// Where the files a config set names (certificates, keys) may be read
/// from: a relative name inside the config directory, an absolute one under
/// `tls_dirs`. A relative name is copied with the set into the gate's
/// snapshot and an absolute one is read where it is, so a relative name
/// leaving the directory would mean another file in the copy, and an
/// absolute one into the directory would bypass the copy.
struct FileRoots {
    /// The config directory, canonical; empty when it cannot be resolved (a
    /// set made in memory), so that nothing relative is read.
    config_dir: Vec<PathBuf>,
    /// `tls_dirs` as written (lexically normalized) and canonical.
    tls_dirs: Vec<PathBuf>,
    tls_dirs_real: Vec<PathBuf>,
}

impl FileRoots {
    fn of(source: &ConfigSource) -> Self {
        // Taken from the set's own aegis.yaml rather than the caller's
        // settings: the runner, the gate and every worker compile the same
        // snapshot, so they agree on what it may read. A settings file that
        // does not parse allows nothing outside (its errors are reported by
        // parse_settings).
        let tls_dirs: Vec<PathBuf> = parse_settings(source)
            .map(|s| s.tls_dirs)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.is_absolute())
            .collect();
        // A directory that does not exist holds nothing to read.
        let tls_dirs_real = tls_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect();
        Self {
            config_dir: std::fs::canonicalize(&source.dir).into_iter().collect(),
            tls_dirs: tls_dirs.iter().map(|d| lexical(d)).collect(),
            tls_dirs_real,
        }
    }
}

impl Cx<'_> {
    fn err(&mut self, file: &SourceFile, at: Location, path: &str, message: impl Into<String>) {
        self.diags
            .push(Diagnostic::new(&file.name, at, path, message));
    }

    fn regex(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        pattern: &str,
    ) -> Option<Regex> {
        let limit = usize::try_from(self.limits.max_regex_size.0).unwrap_or(usize::MAX);
        match RegexBuilder::new(pattern).size_limit(limit).build() {
            Ok(re) => Some(re),
            Err(regex::Error::CompiledTooBig(_)) => {
                self.err(
                    file,
                    at,
                    path,
                    format!(
                        "compiled regex exceeds size limit ({})",
                        human_size(self.limits.max_regex_size.0)
                    ),
                );
                None
            }
            Err(e) => {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or(&msg).trim().to_string();
                self.err(file, at, path, format!("invalid regex: {last}"));
                None
            }
        }
    }

    fn upstream(
        &mut self,
        file: &SourceFile,
        path: &str,
        u: &Spanned<raw::Upstream>,
    ) -> Option<UpstreamPool> {
        let at = u.referenced;
        let raw = &u.value;
        let before = self.diags.len();
        if raw.name.is_empty() {
            self.err(file, at, &format!("{path}.name"), "must not be empty");
        }
        if raw.endpoints.is_empty() {
            self.err(
                file,
                at,
                &format!("{path}.endpoints"),
                "an upstream needs at least one endpoint",
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in raw.endpoints.iter().enumerate() {
            let spec = &e.value.0;
            let epath = format!("{path}.endpoints[{i}]");
            if let Err(why) = check_address(&spec.address) {
                self.err(file, e.referenced, &epath, why);
            }
            if spec.weight == 0 {
                self.err(
                    file,
                    e.referenced,
                    &format!("{epath}.weight"),
                    "must be 1 or more",
                );
            }
            endpoints.push(EndpointSpec {
                address: spec.address.clone(),
                weight: spec.weight,
                backup: spec.backup,
            });
        }
        if !endpoints.is_empty() && endpoints.iter().all(|e| e.backup) {
            self.err(
                file,
                at,
                &format!("{path}.endpoints"),
                "every endpoint is a backup; at least one must not be",
            );
        }
        let hash_header = match &raw.balance {
            Balance::Hash(HashKey::Header(h)) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(
                        file,
                        at,
                        &format!("{path}.balance.hash.header"),
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            },
            _ => None,
        };
        let health_check = raw.health_check.as_ref().map(|h| HealthCheckSpec {
            path: h.path.clone(),
            interval: h.interval.map_or(Duration::from_secs(5), |d| d.0),
            timeout: h.timeout.map_or(Duration::from_secs(2), |d| d.0),
            rise: h.rise.unwrap_or(2),
            fall: h.fall.unwrap_or(3),
        });
        if let Some(h) = &health_check {
            if !h.path.starts_with('/') {
                self.err(
                    file,
                    at,
                    &format!("{path}.health_check.path"),
                    "must start with /",
                );
            }
            if h.interval.is_zero() || h.timeout.is_zero() || h.rise == 0 || h.fall == 0 {
                self.err(
                    file,
                    at,
                    &format!("{path}.health_check"),
                    "interval, timeout, rise and fall must be above 0",
                );
            }
        }
        let connect_timeout = raw.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
        let response_timeout = raw
            .response_timeout
            .map_or(Duration::from_secs(60), |d| d.0);
        if connect_timeout.is_zero() || response_timeout.is_zero() {
            self.err(file, at, path, "timeouts must be above 0");
        }
        if self.diags.len() != before {
            return None;
        }
        Some(UpstreamPool {
            name: Arc::from(raw.name.as_str()),
            endpoints,
            balance: raw.balance.clone(),
            hash_header,
            connect_timeout,
            response_timeout,
            health_check,
            max_fails: raw.passive.as_ref().and_then(|p| p.max_fails).unwrap_or(1),
            fail_timeout: raw
                .passive
                .as_ref()
                .and_then(|p| p.fail_timeout)
                .map_or(Duration::from_secs(10), |d| d.0),
        })
    }

    fn route(
        &mut self,
        file: &SourceFile,
        path: &str,
        r: &Spanned<raw::Route>,
        upstreams: &HashMap<String, usize>,
        rate_limits: &HashMap<String, usize>,
    ) -> Option<(CompiledRoute, Vec<String>, PathKey)> {
        let at = r.referenced;
        let raw = &r.value;
        let before = self.diags.len();
        if raw.name.is_empty() {
            self.err(file, at, &format!("{path}.name"), "must not be empty");
        }
        let m = &raw.matcher;

        // Hosts.
        let mut hosts = Vec::new();
        for (i, h) in m.host.iter().chain(m.hosts.iter()).enumerate() {
            let hpath = if m.host.is_some() && i == 0 {
                format!("{path}.match.host")
            } else {
                format!("{path}.match.hosts")
            };
            match check_host(&h.value) {
                Ok(()) => hosts.push(h.value.to_ascii_lowercase()),
                Err(why) => self.err(file, h.referenced, &hpath, why),
            }
        }

        // Path.
        let given = [
            m.path.is_some(),
            m.path_prefix.is_some(),
            m.path_regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            self.err(
                file,
                at,
                &format!("{path}.match"),
                "give one of path, path_prefix and path_regex",
            );
        }
        if (m.inside_prefix.is_some() || m.inside_regex.is_some()) && m.path_regex.is_none() {
            self.err(
                file,
                at,
                &format!("{path}.match"),
                "inside_prefix and inside_regex apply only to path_regex",
            );
        }
        if m.stop_regex && m.path_prefix.is_none() {
            self.err(
                file,
                at,
                &format!("{path}.match.stop_regex"),
                "only applies to path_prefix",
            );
        }
        let key = if let Some(p) = &m.path {
            if !p.starts_with('/') {
                self.err(file, at, &format!("{path}.match.path"), "must start with /");
            }
            PathKey::Exact(p.clone())
        } else if let Some(re) = &m.path_regex {
            match self.regex(
                file,
                re.referenced,
                &format!("{path}.match.path_regex"),
                &re.value,
            ) {
                Some(re) => match (&m.inside_prefix, &m.inside_regex) {
                    (None, None) => PathKey::Regex(re),
                    (Some(p), None) if p.starts_with('/') => PathKey::NestedRegex {
                        re,
                        inside: Inside::Prefix(p.clone()),
                    },
                    (None, Some(outer)) => PathKey::NestedRegex {
                        re,
                        inside: Inside::Regex(outer.clone()),
                    },
                    _ => {
                        self.err(
                            file,
                            at,
                            &format!("{path}.match"),
                            "give at most one of inside_prefix (starting with /) and inside_regex",
                        );
                        PathKey::Exact(String::new())
                    }
                },
                None => PathKey::Exact(String::new()),
            }
        } else {
            let prefix = m.path_prefix.clone().unwrap_or_else(|| "/".to_string());
            if !prefix.starts_with('/') {
                self.err(
                    file,
                    at,
                    &format!("{path}.match.path_prefix"),
                    "must start with /",
                );
            }
            PathKey::Prefix {
                prefix,
                stop_regex: m.stop_regex,
            }
        };

        // Methods and headers.
        let methods = if m.methods.is_empty() {
            None
        } else {
            let mut out = Vec::new();
            for meth in &m.methods {
                match Method::from_bytes(meth.to_ascii_uppercase().as_bytes()) {
                    Ok(x) => out.push(x),
                    Err(_) => self.err(
                        file,
                        at,
                        &format!("{path}.match.methods"),
                        format!("`{meth}` is not a method"),
                    ),
                }
            }
            Some(out)
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let hpath = format!("{path}.match.headers[{i}]");
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                self.err(
                    file,
                    at,
                    &hpath,
                    format!("`{}` is not a valid header name", h.name),
                );
                continue;
            };
            match (&h.equals, h.present) {
                (Some(v), None) => headers.push(HeaderCondition::Equals(name, v.clone())),
                (None, Some(true)) => headers.push(HeaderCondition::Present(name)),
                (None, Some(false)) => headers.push(HeaderCondition::Absent(name)),
                _ => self.err(file, at, &hpath, "give exactly one of equals and present"),
            }
        }

        // Action.
        let actions = [
            raw.upstream.is_some(),
            raw.redirect.is_some(),
            raw.respond.is_some(),
            raw.static_files.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if actions != 1 {
            self.err(
                file,
                at,
                path,
                "a route needs exactly one action: upstream, redirect, respond or static",
            );
        }
        let upstream_only = raw.strip_prefix.is_some()
            || raw.add_prefix.is_some()
            || raw.host_rewrite.is_some()
            || raw.timeout.is_some()
            || raw.retries.is_some();
        if upstream_only && raw.upstream.is_none() {
            self.err(file, at, path, "strip_prefix, add_prefix, host_rewrite, timeout and retries apply only to upstream routes");
        }
        let by_map = raw
            .upstream
            .as_ref()
            .and_then(|u| u.value.strip_prefix('$'))
            .map(|name| self.upstream_map(file, at, path, name, upstreams));
        let action = if let Some(u) = &raw.upstream {
            let named = match &by_map {
                Some(Some((_, first))) => Some(first),
                Some(None) => return None,
                None => upstreams.get(&u.value),
            };
            match named {
                Some(id) => {
                    let host_rewrite =
                        raw.host_rewrite
                            .as_ref()
                            .and_then(|h| match HeaderValue::from_str(h) {
                                Ok(v) => Some(v),
                                Err(_) => {
                                    self.err(
                                        file,
                                        at,
                                        &format!("{path}.host_rewrite"),
                                        "not a valid Host value",
                                    );
                                    None
                                }
                            });
                    for (field, v) in [
                        ("strip_prefix", &raw.strip_prefix),
                        ("add_prefix", &raw.add_prefix),
                    ] {
                        if let Some(v) = v
                            && !v.starts_with('/')
                        {
                            self.err(file, at, &format!("{path}.{field}"), "must start with /");
                        }
                    }
                    RouteAction::Forward(ForwardAction {
                        upstream: *id,
                        upstream_map: by_map.flatten().map(|(m, _)| m),
                        strip_prefix: raw.strip_prefix.clone(),
                        add_prefix: raw.add_prefix.clone(),
                        host_rewrite,
                        timeout: raw.timeout.map(|d| d.0),
                        retries: raw.retries.unwrap_or(1),
                        location_rewrite: self.location_rewrites(file, at, path, raw),
                    })
                }
                None => {
                    self.err(
                        file,
                        u.referenced,
                        &format!("{path}.upstream"),
                        format!("no upstream named `{}`", u.value),
                    );
                    return None;
                }
            }
        } else if let Some(rd) = &raw.redirect {
            let status = match StatusCode::from_u16(rd.status) {
                Ok(s) if s.is_redirection() => s,
                _ => {
                    self.err(
                        file,
                        at,
                        &format!("{path}.redirect.status"),
                        format!("{} is not a 3xx status", rd.status),
                    );
                    StatusCode::FOUND
                }
            };
            let location = match parse_location(&rd.location, &self.map_index) {
                Ok(t) if t.uses_request_id(&self.maps) => {
                    self.err(
                        file,
                        at,
                        &format!("{path}.redirect.location"),
                        "`$request_id` is for request headers: a redirect target must not change from one request to the next",
                    );
                    LocationTemplate(Vec::new())
                }
                Ok(t) => t,
                Err(why) => {
                    self.err(file, at, &format!("{path}.redirect.location"), why);
                    LocationTemplate(Vec::new())
                }
            };
            RouteAction::Redirect { status, location }
        } else if let Some(rs) = &raw.respond {
            let status = match StatusCode::from_u16(rs.status) {
                Ok(s) => s,
                Err(_) => {
                    self.err(
                        file,
                        at,
                        &format!("{path}.respond.status"),
                        format!("{} is not a status", rs.status),
                    );
                    StatusCode::OK
                }
            };
            let mut hs = Vec::new();
            for (k, v) in &rs.headers {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(v)) => hs.push((k, v)),
                    _ => self.err(
                        file,
                        at,
                        &format!("{path}.respond.headers.{k}"),
                        "not a valid header",
                    ),
                }
            }
            RouteAction::Respond {
                status,
                body: Arc::from(rs.body.as_str()),
                headers: hs,
            }
        } else if let Some(st) = &raw.static_files {
            match self.static_action(file, at, path, &raw.name, st, m) {
                Some(a) => RouteAction::Static(a),
                None => return None,
            }
        } else {
            return None;
        };
        let expires = match raw.expires.as_deref().map(parse_expires) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(e))) => Some(e),
            Some(Err(why)) => {
                self.err(file, at, &format!("{path}.expires"), why);
                None
            }
        };
        if raw.request_headers.always.is_some() {
            self.err(
                file,
                at,
                &format!("{path}.request_headers.always"),
                "applies to response_headers only",
            );
        }

        let request_edits = self.edits(
            file,
            at,
            &format!("{path}.request_headers"),
            &raw.request_headers,
        );
        let response_edits = self.edits(
            file,
            at,
            &format!("{path}.response_headers"),
            &raw.response_headers,
        );
        let rate_limit = match &raw.rate_limit {
            None => None,
            Some(name) => match rate_limits.get(&name.value) {
                Some(i) => Some(*i),
                None => {
                    self.err(
                        file,
                        name.referenced,
                        &format!("{path}.rate_limit"),
                        format!("no rate limit named `{}`", name.value),
                    );
                    None
                }
            },
        };
        let access = self.access(file, at, path, raw);
        let error_pages = self.error_pages(file, at, path, raw);
        let rewrites = self.rewrites(file, at, path, raw);
        if !raw.location_rewrite.is_empty() && raw.upstream.is_none() {
            self.err(
                file,
                at,
                &format!("{path}.location_rewrite"),
                "applies only to upstream routes",
            );
        }
        if raw.internal && !m.is_empty() {
            self.err(
                file,
                at,
                &format!("{path}.match"),
                "an internal route is reached only by name (`try_files ... @name`): it takes no match",
            );
        }
        if self.diags.len() != before {
            return None;
        }
        let mut ports = m.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let examples = if raw.internal {
            Vec::new()
        } else {
            example_requests(&hosts, &key, methods.as_deref(), &headers, &ports)
        };
        let route = CompiledRoute {
            name: Arc::from(raw.name.as_str()),
            origin: origin(file, at),
            methods,
            headers,
            ports,
            action,
            request_edits,
            response_edits,
            expires,
            rate_limit,
            max_request_body: raw.max_request_body.map(|s| s.0),
            websocket: raw.websocket,
            access,
            error_pages,
            intercept_errors: raw.intercept_errors,
            rewrites,
            examples,
        };
        Some((route, hosts, key))
    }

    /// One `maps` entry. A value is text, a request variable (`$host`…) or
    /// a map defined before this one.
    fn map(&mut self, file: &SourceFile, path: &str, m: &Spanned<raw::MapDef>) {
        let at = m.referenced;
        let raw = &m.value;
        if self.map_index.contains_key(&raw.name) {
            self.err(
                file,
                at,
                &format!("{path}.name"),
                format!("map `{}` is already defined", raw.name),
            );
            return;
        }
        if LocationPart::of_variable(&raw.name).is_some()
            || raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.err(
                file,
                at,
                &format!("{path}.name"),
                format!(
                    "`{}` cannot name a map: a name is letters, digits and `_`, and not a variable Aegis has",
                    raw.name
                ),
            );
            return;
        }
        let source = match raw.source.strip_prefix('$').and_then(MapSource::parse) {
            Some(s) => s,
            None => {
                self.err(
                    file,
                    at,
                    &format!("{path}.source"),
                    format!(
                        "`{}` is not a variable a map can read ($http_NAME, $request_method, $host, $uri, $args, $arg_NAME, $scheme)",
                        raw.source
                    ),
                );
                return;
            }
        };
        let before = self.diags.len();
        let mut exact = HashMap::new();
        for (k, v) in &raw.exact {
            let v = self.map_value(file, at, &format!("{path}.exact.{k}"), v);
            exact.insert(k.to_ascii_lowercase(), v);
        }
        let mut regex = Vec::new();
        for (i, r) in raw.regex.iter().enumerate() {
            let rpath = format!("{path}.regex[{i}]");
            let v = self.map_value(file, at, &rpath, &r.value);
            if let Some(re) = self.regex(file, at, &rpath, &r.regex) {
                regex.push((re, v));
            }
        }
        let default = self.map_value(file, at, &format!("{path}.default"), &raw.default);
        if self.diags.len() != before {
            return;
        }
        self.map_index.insert(raw.name.clone(), self.maps.len());
        self.maps.push(CompiledMap {
            name: raw.name.clone(),
            source,
            exact,
            regex,
            default,
        });
    }

    /// A map value: `$other` (a map defined above), text with request
    /// variables (no maps), or text.
    fn map_value(&mut self, file: &SourceFile, at: Location, path: &str, v: &str) -> MapValue {
        if let Some(id) = v.strip_prefix('$').and_then(|n| self.map_index.get(n)) {
            return MapValue::Map(*id);
        }
        if !v.contains('$') {
            return MapValue::Text(v.to_string());
        }
        match parse_location(v, &HashMap::new()) {
            Ok(t) => MapValue::Template(t),
            Err(why) => {
                self.err(
                    file,
                    at,
                    path,
                    format!("`{v}`: {why}; a value is text with request variables, or a whole `$name` of a map defined above"),
                );
                MapValue::Text(String::new())
            }
        }
    }

    /// `upstream: "$name"`: the map, and the first upstream it can name.
    /// Every text the map (and the maps it leads to) can answer must name
    /// an upstream (`http://` and a trailing `/` allowed, as nginx's
    /// `proxy_pass` URL); a variable's value is checked per request (502
    /// when it names none).
    fn upstream_map(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        name: &str,
        upstreams: &HashMap<String, usize>,
    ) -> Option<(MapId, usize)> {
        let Some(&id) = self.map_index.get(name) else {
            self.err(
                file,
                at,
                &format!("{path}.upstream"),
                format!("no map named `{name}` (define it under `maps`)"),
            );
            return None;
        };
        let mut texts: Vec<String> = crate::map::reachable_values(&self.maps, id)
            .into_iter()
            .filter_map(|v| match v {
                MapValue::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        texts.sort();
        texts.dedup();
        let mut first = None;
        for t in &texts {
            match upstreams.get(crate::decide::upstream_name(t)) {
                Some(u) => {
                    first = first.or(Some(*u));
                }
                None => self.err(
                    file,
                    at,
                    &format!("{path}.upstream"),
                    format!("map `{name}` can answer `{t}`, which names no upstream"),
                ),
            }
        }
        // Only variables: every request is checked as it comes; the first
        // upstream stands for the route in reports.
        let first = first.or_else(|| {
            texts
                .is_empty()
                .then(|| upstreams.values().min().copied())
                .flatten()
        });
        match first {
            Some(u) => Some((id, u)),
            None => {
                self.err(
                    file,
                    at,
                    &format!("{path}.upstream"),
                    format!("map `{name}` names no upstream"),
                );
                None
            }
        }
    }

    /// `rewrites`.
    fn rewrites(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        raw: &raw::Route,
    ) -> Vec<RewriteRule> {
        let mut out = Vec::new();
        for (i, r) in raw.rewrites.iter().enumerate() {
            let rpath = format!("{path}.rewrites[{i}]");
            let flag = match r.flag.as_deref() {
                None => Flag::None,
                Some("last") => Flag::Last,
                Some("break") => Flag::Break,
                Some("redirect") => Flag::Redirect,
                Some("permanent") => Flag::Permanent,
                Some(other) => {
                    self.err(
                        file,
                        at,
                        &format!("{rpath}.flag"),
                        format!("`{other}` is not last, break, redirect or permanent"),
                    );
                    continue;
                }
            };
            let Some(regex) = self.regex(file, at, &format!("{rpath}.regex"), &r.regex) else {
                continue;
            };
            let redirect = matches!(flag, Flag::Redirect | Flag::Permanent)
                || r.to.starts_with("http://")
                || r.to.starts_with("https://")
                || r.to.starts_with("$scheme");
            let (text, keep_args) = match r.to.strip_suffix('?') {
                Some(t) => (t, false),
                None => (r.to.as_str(), true),
            };
            if !redirect && text.contains('?') {
                self.err(
                    file,
                    at,
                    &format!("{rpath}.to"),
                    "a query string in an internal rewrite is not supported",
                );
                continue;
            }
            if !redirect && !text.starts_with('/') && !text.starts_with('$') {
                self.err(
                    file,
                    at,
                    &format!("{rpath}.to"),
                    "an internal rewrite must give a path",
                );
                continue;
            }
            match crate::rewrite::parse_replacement(text) {
                Ok(to) => out.push(RewriteRule {
                    regex,
                    to,
                    flag,
                    redirect,
                    keep_args,
                }),
                Err(why) => self.err(file, at, &format!("{rpath}.to"), why),
            }
        }
        out
    }

    /// `error_pages`.
    fn error_pages(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        raw: &raw::Route,
    ) -> Vec<ErrorPageSpec> {
        let mut out = Vec::new();
        for (i, e) in raw.error_pages.iter().enumerate() {
            let epath = format!("{path}.error_pages[{i}]");
            let mut statuses = Vec::new();
            for code in &e.statuses {
                match StatusCode::from_u16(*code) {
                    Ok(s) if (300..=599).contains(code) => statuses.push(s),
                    _ => self.err(
                        file,
                        at,
                        &format!("{epath}.statuses"),
                        format!("{code} is not a status from 300 to 599"),
                    ),
                }
            }
            if statuses.is_empty() {
                self.err(
                    file,
                    at,
                    &format!("{epath}.statuses"),
                    "name at least one status",
                );
            }
            let redirect = e.uri.starts_with("http://") || e.uri.starts_with("https://");
            let target = if redirect {
                match HeaderValue::from_str(&e.uri) {
                    Ok(v) => ErrorTarget::Redirect(v),
                    Err(_) => {
                        self.err(file, at, &format!("{epath}.uri"), "not a valid Location");
                        continue;
                    }
                }
            } else if e.uri.starts_with('/')
                && http::uri::PathAndQuery::from_maybe_shared(e.uri.clone()).is_ok()
            {
                ErrorTarget::Uri(e.uri.clone())
            } else {
                self.err(
                    file,
                    at,
                    &format!("{epath}.uri"),
                    "give a path (`/50x.html`) or an http(s):// URL",
                );
                continue;
            };
            let answer = match &e.status {
                None if redirect => ErrorAnswer::Code(StatusCode::FOUND),
                None => ErrorAnswer::Original,
                Some(raw::ErrorPageStatus::Word(w)) if w == "target" && !redirect => {
                    ErrorAnswer::Target
                }
                Some(raw::ErrorPageStatus::Code(c)) => match StatusCode::from_u16(*c) {
                    Ok(s) if !redirect || matches!(*c, 301 | 302 | 303 | 307 | 308) => {
                        ErrorAnswer::Code(s)
                    }
                    _ => {
                        self.err(
                            file,
                            at,
                            &format!("{epath}.status"),
                            format!("{c} is not a status for this page (a URL takes 301, 302, 303, 307 or 308)"),
                        );
                        continue;
                    }
                },
                Some(_) => {
                    self.err(
                        file,
                        at,
                        &format!("{epath}.status"),
                        "give a status code, or `target` for the page's own (paths only)",
                    );
                    continue;
                }
            };
            out.push(ErrorPageSpec {
                statuses,
                target,
                answer,
            });
        }
        out
    }

    /// `access` and `limit_except`.
    fn access(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        raw: &raw::Route,
    ) -> RouteAccess {
        let rules = self.access_rules(file, at, &format!("{path}.access"), &raw.access);
        let limit_except = raw.limit_except.as_ref().map(|le| {
            let mut methods = Vec::new();
            for m in &le.methods {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(x) => methods.push(x),
                    Err(_) => self.err(
                        file,
                        at,
                        &format!("{path}.limit_except.methods"),
                        format!("`{m}` is not a method"),
                    ),
                }
            }
            if methods.is_empty() {
                self.err(
                    file,
                    at,
                    &format!("{path}.limit_except.methods"),
                    "name at least one method",
                );
            }
            LimitExcept {
                methods,
                rules: self.access_rules(
                    file,
                    at,
                    &format!("{path}.limit_except.access"),
                    &le.access,
                ),
            }
        });
        RouteAccess {
            rules,
            limit_except,
        }
    }

    fn access_rules(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        raw: &[raw::AccessRule],
    ) -> AccessRules {
        let mut out = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let (text, allow) = match r {
                raw::AccessRule::Allow(t) => (t, true),
                raw::AccessRule::Deny(t) => (t, false),
            };
            let net = if text.trim() == "all" {
                None
            } else {
                match parse_cidr(text.trim()) {
                    Some(n) => Some(n),
                    None => {
                        self.err(
                            file,
                            at,
                            &format!("{path}[{i}]"),
                            format!("`{text}` is not an address, a CIDR or `all`"),
                        );
                        continue;
                    }
                }
            };
            out.push(if allow {
                Rule::Allow(net)
            } else {
                Rule::Deny(net)
            });
        }
        AccessRules(out)
    }

    fn location_rewrites(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        raw: &raw::Route,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, r) in raw.location_rewrite.iter().enumerate() {
            if r.from.is_empty() {
                self.err(
                    file,
                    at,
                    &format!("{path}.location_rewrite[{i}].from"),
                    "must not be empty",
                );
                continue;
            }
            if HeaderValue::from_str(&r.to).is_err() {
                self.err(
                    file,
                    at,
                    &format!("{path}.location_rewrite[{i}].to"),
                    "not a valid header value",
                );
                continue;
            }
            out.push((r.from.clone(), r.to.clone()));
        }
        out
    }

    fn edits(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        raw: &raw::HeaderEdits,
    ) -> HeaderEditList {
        let mut out = HeaderEditList {
            only_add_header_statuses: raw.always == Some(false),
            ..HeaderEditList::default()
        };
        for (list, field, append) in [(&raw.set, "set", false), (&raw.add, "add", true)] {
            for (k, v) in list {
                let at_key = format!("{path}.{field}.{k}");
                let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                    self.err(file, at, &at_key, "not a valid header name");
                    continue;
                };
                if v.contains('$') {
                    match parse_location(v, &self.map_index) {
                        Ok(t) => {
                            out.uses_request_id |= t.uses_request_id(&self.maps);
                            if append {
                                out.add_vars.push((name, t));
                            } else {
                                out.set_vars.push((name, t));
                            }
                        }
                        Err(why) => self.err(file, at, &at_key, why),
                    }
                    continue;
                }
                match HeaderValue::from_str(v) {
                    Ok(v) if append => out.add.push((name, v)),
                    Ok(v) => out.set.push((name, v)),
                    Err(_) => self.err(file, at, &at_key, "not a valid header value"),
                }
            }
        }
        for k in &raw.remove {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(k) => out.remove.push(k),
                Err(_) => self.err(
                    file,
                    at,
                    &format!("{path}.remove"),
                    format!("`{k}` is not a valid header name"),
                ),
            }
        }
        out
    }

    /// Compiles a `static` action; the root must be a directory now (a
    /// root that moved is the change the gate exists to stop).
    fn static_action(
        &mut self,
        file: &SourceFile,
        at: Location,
        path: &str,
        route: &str,
        st: &raw::Static,
        m: &raw::Match,
    ) -> Option<StaticAction> {
        let (path_prefix, exact_path) = (m.path_prefix.as_deref(), m.path.as_deref());
        // `location = /config.js { alias /etc/app/config.js; }`: on an exact
        // path the alias may name the file itself.
        let file_alias = st.alias.is_some() && path_prefix.is_none() && exact_path.is_some();
        // On a regex route an alias without captures names one file, served
        // for every path the route takes (nginx: `location ~ ... { alias
        // /etc/app/config.js; }`).
        let regex_file = match (&st.alias, &m.path_regex) {
            (Some(a), Some(_)) if !has_captures(a) => {
                let given = Path::new(a.as_str());
                let full = if given.is_absolute() {
                    given.to_path_buf()
                } else {
                    self.dir.join(given)
                };
                full.is_file().then_some(full)
            }
            _ => None,
        };
        let (written, field, alias_prefix) = match (&st.root, &st.alias) {
            (Some(r), None) => (r, "root", None),
            (None, Some(a)) => {
                let Some(prefix) = path_prefix.or(exact_path).or_else(|| {
                    // On a regex route the alias names the file with captures.
                    m.path_regex
                        .as_ref()
                        .filter(|_| has_captures(a) || regex_file.is_some())
                        .map(|_| "")
                }) else {
                    self.err(
                        file,
                        at,
                        &format!("{path}.static.alias"),
                        "needs match.path_prefix or match.path (the part of the path it replaces)",
                    );
                    return None;
                };
                (a, "alias", Some(prefix.to_string()))
            }
            _ => {
                self.err(
                    file,
                    at,
                    &format!("{path}.static"),
                    "give exactly one of root and alias",
                );
                return None;
            }
        };
        let at_field = format!("{path}.static.{field}");
        // Regex captures (`$1`) in alias or try_files: nginx's regex
        // locations (`location ~ ^/(libs|css)/(.*)$ { alias /srv/$1/$2; }`).
        let uses_captures = has_captures(written) || st.try_files.iter().any(|e| has_captures(e));
        let captures = match (&m.path_regex, uses_captures) {
            (_, false) => None,
            (Some(re), true) => regex::Regex::new(&re.value).ok(),
            (None, true) => {
                self.err(
                    file,
                    at,
                    &format!("{path}.static"),
                    "$1..$9 take the captures of match.path_regex: this route has none",
                );
                return None;
            }
        };
        // `alias /srv/app/$1/$2`: the directory is the literal part, the
        // rest is filled in per request.
        let (written, alias_captures): (&str, Option<String>) = match (field, written.find('$')) {
            ("alias", Some(i)) if captures.is_some() => split_at_slash(
                written,
                written.get(..i).and_then(|s| s.rfind('/')).unwrap_or(0),
            ),
            // The one file: its directory is the root, its name what
            // every request is served.
            ("alias", None) if regex_file.is_some() => match written.rfind('/') {
                Some(cut) => split_at_slash(written, cut),
                None => (".", Some(written.clone())),
            },
            _ => (written.as_str(), None),
        };
        let alias_prefix = if alias_captures.is_some() {
            None
        } else {
            alias_prefix
        };
        let given = Path::new(written);
        // Absolute roots are usual (files live outside the config); a
        // relative one is relative to the config directory.
        let joined = if given.is_absolute() {
            given.to_path_buf()
        } else {
            self.dir.join(given)
        };
        let root = match std::fs::canonicalize(&joined) {
            Ok(p) if p.is_dir() || (file_alias && p.is_file()) => p,
            Ok(_) => {
                self.err(file, at, &at_field, format!("{written} is not a directory"));
                return None;
            }
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist".to_string()
                } else {
                    format!("cannot be read: {e}")
                };
                self.err(file, at, &at_field, format!("{written} {why}"));
                return None;
            }
        };
        let index = st
            .index
            .clone()
            .unwrap_or_else(|| vec!["index.html".to_string()]);
        for name in &index {
            if name.is_empty() || name.split('/').any(|s| s == "..") {
                self.err(
                    file,
                    at,
                    &format!("{path}.static.index"),
                    format!("`{name}` is not a file name"),
                );
            }
        }
        let mut try_files = st.try_files.clone();
        let fallback = match try_files.pop() {
            None => None,
            Some(_) if try_files.is_empty() => {
                self.err(
                    file,
                    at,
                    &format!("{path}.static.try_files"),
                    "needs at least one entry before the fallback",
                );
                None
            }
            Some(last) => {
                if let Some(code) = last.strip_prefix('=') {
                    match code
                        .parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                    {
                        Some(s) => Some(StaticFallback::Status(s)),
                        None => {
                            self.err(
                                file,
                                at,
                                &format!("{path}.static.try_files"),
                                format!("`{last}` is not =<status>"),
                            );
                            None
                        }
                    }
                } else if let Some(name) = last.strip_prefix('@') {
                    self.fallbacks.push((
                        route.to_string(),
                        name.to_string(),
                        Diagnostic::new(
                            &file.name,
                            at,
                            format!("{path}.static.try_files"),
                            format!("`{last}`: no upstream or respond route named `{name}`"),
                        ),
                    ));
                    // Set once every route is known.
                    Some(StaticFallback::Status(StatusCode::NOT_FOUND))
                } else if last.starts_with('/') || last.starts_with("$uri") {
                    Some(StaticFallback::Uri(last))
                } else {
                    self.err(
                        file,
                        at,
                        &format!("{path}.static.try_files"),
                        format!("`{last}`: the fallback is =<status>, @route or a URI"),
                    );
                    None
                }
            }
        };
        for e in &try_files {
            if !(e.starts_with('/') || e.starts_with("$uri")) {
                self.err(
                    file,
                    at,
                    &format!("{path}.static.try_files"),
                    format!("`{e}` must start with / or $uri"),
                );
            }
        }
        Some(StaticAction {
            root,
            alias_prefix,
            index,
            try_files,
            fallback,
            follow_symlinks: st.symlinks == raw::Symlinks::Follow,
            etag: st.etag,
            captures,
            alias_captures,
        })
    }

    fn certificate(
        &mut self,
        file: &SourceFile,
        path: &str,
        t: &Spanned<raw::TlsCert>,
    ) -> Option<Certificate> {
        let at = t.referenced;
        let raw = &t.value;
        if raw.server_names.is_empty() {
            self.err(
                file,
                at,
                &format!("{path}.server_names"),
                "name at least one server name",
            );
            return None;
        }
        let (dir, roots, max) = (self.dir, &self.roots, self.limits.max_file_size.0);
        let read = |name: &str| read_referenced(dir, roots, name, max);
        let cert_pem = match read(&raw.certificate) {
            Ok(b) => b,
            Err(why) => {
                self.err(file, at, &format!("{path}.certificate"), why);
                return None;
            }
        };
        let key_pem = match read(&raw.key) {
            Ok(b) => b,
            Err(why) => {
                self.err(file, at, &format!("{path}.key"), why);
                return None;
            }
        };
        self.hasher.add(&raw.certificate, &cert_pem);
        self.hasher.add(&raw.key, &key_pem);
        match crate::tls::load_certified_key(&cert_pem, &key_pem, &raw.server_names) {
            Ok(key) => Some(Certificate {
                server_names: raw
                    .server_names
                    .iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
                key: Arc::new(key),
                default: raw.default,
            }),
            Err(why) => {
                self.err(file, at, path, why.to_string());
                None
            }
        }
    }

    fn feature(
        &mut self,
        file: &SourceFile,
        path: &str,
        f: &Spanned<raw::Feature>,
    ) -> Option<Feature> {
        let at = f.referenced;
        let raw = &f.value;
        let before = self.diags.len();
        if !raw.weight.is_finite() {
            self.err(
                file,
                at,
                &format!("{path}.weight"),
                "must be a finite number",
            );
        }
        let w = &raw.when;
        let wpath = format!("{path}.when");
        let subjects = [
            w.header.is_some(),
            w.query.is_some(),
            w.path_regex.is_some(),
            !w.method.is_empty(),
            !w.client_ip.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if subjects != 1 {
            self.err(
                file,
                at,
                &wpath,
                "give exactly one of header, query, path_regex, method and client_ip",
            );
            return None;
        }
        let tests = [
            w.equals.is_some(),
            w.contains.is_some(),
            w.regex.is_some(),
            w.present.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let value_test = if w.header.is_some() || w.query.is_some() {
            if tests != 1 {
                self.err(
                    file,
                    at,
                    &wpath,
                    "give exactly one of equals, contains, regex and present",
                );
                return None;
            }
            Some(if let Some(v) = &w.equals {
                ValueTest::Equals(v.clone())
            } else if let Some(v) = &w.contains {
                ValueTest::Contains(v.clone())
            } else if let Some(v) = &w.regex {
                ValueTest::Regex(self.regex(file, at, &format!("{wpath}.regex"), v)?)
            } else {
                ValueTest::Present(w.present.unwrap_or(true))
            })
        } else {
            if tests != 0 {
                self.err(
                    file,
                    at,
                    &wpath,
                    "equals, contains, regex and present apply only to header and query",
                );
            }
            None
        };
        let predicate = if let Some(h) = &w.header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => value_test.map(|test| Predicate::Header { name, test }),
                Err(_) => {
                    self.err(
                        file,
                        at,
                        &format!("{wpath}.header"),
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            }
        } else if let Some(q) = &w.query {
            value_test.map(|test| Predicate::Query {
                name: q.clone(),
                test,
            })
        } else if let Some(re) = &w.path_regex {
            self.regex(file, at, &format!("{wpath}.path_regex"), re)
                .map(Predicate::PathRegex)
        } else if !w.method.is_empty() {
            let mut ms = Vec::new();
            for m in &w.method {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(x) => ms.push(x),
                    Err(_) => self.err(
                        file,
                        at,
                        &format!("{wpath}.method"),
                        format!("`{m}` is not a method"),
                    ),
                }
            }
            Some(Predicate::Method(ms))
        } else {
            let mut nets = Vec::new();
            for c in &w.client_ip {
                match parse_cidr(c) {
                    Some(n) => nets.push(n),
                    None => self.err(
                        file,
                        at,
                        &format!("{wpath}.client_ip"),
                        format!("`{c}` is not an address or CIDR"),
                    ),
                }
            }
            Some(Predicate::ClientIp(nets))
        };
        if self.diags.len() != before {
            return None;
        }
        predicate.map(|predicate| Feature {
            name: raw.name.clone(),
            weight: raw.weight,
            predicate,
        })
    }
}

/// One request per host that the route matches. Wildcards get a made-up
/// label; regex routes get none (no general way to invent a match).
fn example_requests(
    hosts: &[String],
    key: &PathKey,
    methods: Option<&[Method]>,
    conditions: &[HeaderCondition],
    ports: &[u16],
) -> Vec<ExampleRequest> {
    let path = match key {
        PathKey::Exact(p) => p.clone(),
        PathKey::Prefix { prefix, .. } => prefix.clone(),
        PathKey::Regex(_) | PathKey::NestedRegex { .. } => return Vec::new(),
    };
    let method = methods
        .and_then(|m| m.first())
        .cloned()
        .unwrap_or(Method::GET);
    let headers: Vec<(HeaderName, HeaderValue)> = conditions
        .iter()
        .filter_map(|c| match c {
            HeaderCondition::Equals(n, v) => HeaderValue::from_str(v).ok().map(|v| (n.clone(), v)),
            HeaderCondition::Present(n) => Some((n.clone(), HeaderValue::from_static("1"))),
            HeaderCondition::Absent(_) => None,
        })
        .collect();
    let hosts: Vec<Option<String>> = if hosts.is_empty() {
        vec![None]
    } else {
        hosts
            .iter()
            .map(|h| {
                Some(
                    h.strip_prefix('*')
                        .map_or_else(|| h.clone(), |s| format!("synthetic{s}")),
                )
            })
            .collect()
    };
    hosts
        .into_iter()
        .map(|host| ExampleRequest {
            method: method.clone(),
            port: ports.first().copied(),
            host,
            path: path.clone(),
            headers: headers.clone(),
        })
        .collect()
}

/// nginx `expires`: `off` (None), `epoch`, `max`, or a time (`30d`,
/// `1h30m`, `-1`, `3600`) in seconds; units y M w d h m s, as nginx.
fn parse_expires(text: &str) -> Result<Option<crate::compiled::Expires>, String> {
    use crate::compiled::Expires;
    let t = text.trim();
    match t {
        "off" => return Ok(None),
        "epoch" => return Ok(Some(Expires::Epoch)),
        "max" => return Ok(Some(Expires::Max)),
        _ => {}
    }
    let bad = || format!("`{text}`: expected off, epoch, max or a time such as 30d, 1h, -1");
    let (negative, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut num: Option<i64> = None;
    for c in rest.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = num
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(i64::from(d)))
                .ok_or_else(bad)?;
            num = Some(n);
            continue;
        }
        let unit: i64 = match c {
            'y' => 365 * 86400,
            'M' => 30 * 86400,
            'w' => 7 * 86400,
            'd' => 86400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            ' ' => continue,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if let Some(n) = num {
        total = total.checked_add(n).ok_or_else(bad)?;
    }
    Ok(Some(Expires::Seconds(if negative {
        -total
    } else {
        total
    })))
}

fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// `host:port` with a port, host a name, IPv4 or `[IPv6]`.
fn check_address(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("`{addr}` is not host:port"));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("`{addr}`: `{port}` is not a port"));
    }
    if host.is_empty() {
        return Err(format!("`{addr}`: missing host"));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("`{addr}`: bad IPv6 address"));
    }
    check_host(host).map_err(|why| format!("`{addr}`: {why}"))
}

/// A host name, an IP address, or `*.suffix`.
fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{host}` is not a host name"));
    }
    if host.contains('*') && !host.starts_with("*.") || name.contains('*') {
        return Err(format!(
            "`{host}`: only a leading `*.` wildcard is supported"
        ));
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name"))
    }
}

/// Splits `https://$host$request_uri` into literal and variable parts; a
/// `$name` in `maps` is that map's value.
fn parse_location(text: &str, maps: &HashMap<String, MapId>) -> Result<LocationTemplate, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        let (lit, var) = rest.split_at(i);
        if !lit.is_empty() {
            parts.push(LocationPart::Literal(lit.to_string()));
        }
        let name_len = var
            .bytes()
            .skip(1)
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = var.get(1..name_len.saturating_add(1)).unwrap_or("");
        parts.push(match (maps.get(name), LocationPart::of_variable(name)) {
            (Some(id), _) => LocationPart::Map(*id),
            (None, Some(p)) => p,
            (None, None) => {
                return Err(format!(
                    "unknown variable `${name}` (use {}, or a map's name)",
                    LocationPart::VARIABLES
                ));
            }
        });
        rest = var.get(name_len.saturating_add(1)..).unwrap_or("");
    }
    if !rest.is_empty() {
        parts.push(LocationPart::Literal(rest.to_string()));
    }
    if HeaderValue::from_str(&text.replace('$', "")).is_err() {
        return Err("not a valid Location header value".into());
    }
    Ok(LocationTemplate(parts))
}

/// `written` cut after the `/` at byte `cut`: the directory (with its
/// slash) and the rest, filled in per request.
fn split_at_slash(written: &str, cut: usize) -> (&str, Option<String>) {
    (
        written.get(..=cut).unwrap_or("/"),
        Some(
            written
                .get(cut.saturating_add(1)..)
                .unwrap_or("")
                .to_string(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_hosts() {
        assert!(check_address("127.0.0.1:9001").is_ok());
        assert!(check_address("backend.internal:80").is_ok());
        assert!(check_address("[::1]:80").is_ok());
        assert!(check_address("127.0.0.1").is_err());
        assert!(check_address("x:0").is_err());
        assert!(check_address(":80").is_err());
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("a.*.com").is_err());
        assert!(check_host("exa mple.com").is_err());
    }

    #[test]
    fn location_templates() {
        let t = parse_location("https://$host$request_uri", &HashMap::new()).unwrap();
        assert_eq!(
            t.0,
            vec![
                LocationPart::Literal("https://".into()),
                LocationPart::Host,
                LocationPart::RequestUri
            ]
        );
        assert!(parse_location("/x/$nope", &HashMap::new()).is_err());
        assert!(parse_location("", &HashMap::new()).is_err());
    }

    /// Copies the example certificate for shop.example.com into `dir` as
    /// `shop.pem` / `shop.key`.
    fn put_cert(dir: &Path) {
        let certs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/examples/multi-upstream/certs");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(certs.join("shop.cert.pem"), dir.join("shop.pem")).unwrap();
        std::fs::copy(certs.join("shop.key.pem"), dir.join("shop.key")).unwrap();
    }

    fn tls_yaml(cert: &str, key: &str) -> String {
        format!(
            "tls:\n  - server_names: [shop.example.com]\n    certificate: \"{cert}\"\n    key: \"{key}\"\n"
        )
    }

    /// The set in `dir` with `files` written, compiled as the runner does.
    fn compile_with(dir: &Path, files: &[(&str, &str)]) -> Result<CompiledConfig, String> {
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let source = ConfigSource::read_dir(dir, 1 << 20).map_err(|e| e.to_string())?;
        let settings = parse_settings(&source).map_err(|d| d.to_string())?;
        compile(&source, &settings.limits).map_err(|d| d.to_string())
    }

    const SECRET: &str = "root:$6$containment-secret-line:19000:0:99999:7:::";

    #[test]
    fn tls_files_outside_the_config_directory_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        put_cert(outside.path());
        std::fs::write(outside.path().join("shadow"), format!("{SECRET}\n")).unwrap();
        let out = outside.path().display().to_string();
        let d = tempfile::tempdir().unwrap();
        let no_settings = [("aegis.yaml", "")];

        // `../x.pem`: refused as written, whatever is there.
        let e = compile_with(
            d.path(),
            &[
                no_settings[0],
                ("tls.yaml", &tls_yaml("../x.pem", "../x.key")),
            ],
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "tls.yaml:2:5: tls[0].certificate: `../x.pem` leaves the config directory"
            ),
            "{e}"
        );
        // ... also when it climbs back to a real certificate.
        let up = |f: &str| format!("{}{}/{f}", "../".repeat(40), out.trim_start_matches('/'));
        let e = compile_with(
            d.path(),
            &[("tls.yaml", &tls_yaml(&up("shop.pem"), &up("shop.key")))],
        )
        .unwrap_err();
        assert!(e.contains("tls[0].certificate: `../../"), "{e}");
        assert!(e.contains("leaves the config directory"), "{e}");

        // `/abs/x.pem`: refused without tls_dirs, before the file system is asked.
        let abs = |f: &str| format!("{out}/{f}");
        for cert in [abs("shop.pem"), "/abs/x.pem".to_string(), abs("shadow")] {
            let e = compile_with(
                d.path(),
                &[("tls.yaml", &tls_yaml(&cert, &abs("shop.key")))],
            )
            .unwrap_err();
            assert!(
                e.contains(&format!(
                    "tls[0].certificate: `{cert}` is an absolute path not under any of `tls_dirs`"
                )),
                "{e}"
            );
            assert!(!e.contains("containment-secret-line"), "{e}");
        }

        // A symlink inside that leads out is caught after resolution, and
        // the content of what it points at is not in the message.
        std::os::unix::fs::symlink(outside.path(), d.path().join("certs")).unwrap();
        let e = compile_with(
            d.path(),
            &[("tls.yaml", &tls_yaml("certs/shadow", "certs/shop.key"))],
        )
        .unwrap_err();
        assert!(
            e.contains("tls[0].certificate: `certs/shadow` resolves to "),
            "{e}"
        );
        assert!(e.contains("outside the config directory: not read"), "{e}");
        assert!(!e.contains("containment-secret-line"), "{e}");
        std::fs::remove_file(d.path().join("certs")).unwrap();
    }

    #[test]
    fn tls_files_under_tls_dirs_are_read_where_they_are() {
        let outside = tempfile::tempdir().unwrap();
        put_cert(&outside.path().join("live"));
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("shadow"), format!("{SECRET}\n")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path().join("shadow"),
            outside.path().join("live/escape.pem"),
        )
        .unwrap();
        let live = outside.path().join("live").display().to_string();
        let d = tempfile::tempdir().unwrap();
        let settings = format!("tls_dirs: [\"{live}\"]\n");
        let c = compile_with(
            d.path(),
            &[
                ("aegis.yaml", &settings),
                (
                    "tls.yaml",
                    &tls_yaml(&format!("{live}/shop.pem"), &format!("{live}/shop.key")),
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.certificates.len(), 1);
        // `..` out of the allowed directory, as written.
        let e = compile_with(
            d.path(),
            &[(
                "tls.yaml",
                &tls_yaml(&format!("{live}/../live2/x.pem"), "x"),
            )],
        )
        .unwrap_err();
        assert!(
            e.contains("is an absolute path not under any of `tls_dirs`"),
            "{e}"
        );
        // A symlink in it that leads out of it.
        let e = compile_with(
            d.path(),
            &[(
                "tls.yaml",
                &tls_yaml(&format!("{live}/escape.pem"), &format!("{live}/shop.key")),
            )],
        )
        .unwrap_err();
        assert!(
            e.contains("outside `tls_dirs` (aegis.yaml): not read"),
            "{e}"
        );
        assert!(!e.contains("containment-secret-line"), "{e}");
        // A relative name still has to stay in the config directory.
        let e =
            compile_with(d.path(), &[("tls.yaml", &tls_yaml("../x.pem", "../x.key"))]).unwrap_err();
        assert!(e.contains("leaves the config directory"), "{e}");
        // And an entry of tls_dirs must be absolute.
        let e = compile_with(d.path(), &[("aegis.yaml", "tls_dirs: [certs]\n")]).unwrap_err();
        assert!(e.starts_with("aegis.yaml:"), "{e}");
        assert!(e.contains("`certs` is not an absolute path"), "{e}");
    }

    #[test]
    fn tls_files_in_a_configmap_or_secret_layout_are_accepted() {
        // The kubelet's layout: names are symlinks into `..data`, itself a
        // symlink to the timestamped directory; all inside.
        let lay_out = |dir: &Path| {
            let ts = dir.join("..2026_12_01_00_00_00.123");
            put_cert(&ts);
            std::os::unix::fs::symlink("..2026_12_01_00_00_00.123", dir.join("..data")).unwrap();
            for f in ["shop.pem", "shop.key"] {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
            }
        };
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("certs")).unwrap();
        lay_out(&d.path().join("certs"));
        let ts = d.path().join("..2026_12_01_00_00_00.123");
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(
            ts.join("tls.yaml"),
            tls_yaml("certs/shop.pem", "certs/shop.key"),
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_12_01_00_00_00.123", d.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.yaml", d.path().join("tls.yaml")).unwrap();
        assert_eq!(compile_with(d.path(), &[]).unwrap().certificates.len(), 1);

        // A Secret volume named by tls_dirs.
        let secret = tempfile::tempdir().unwrap();
        lay_out(secret.path());
        let s = secret.path().display();
        let c = compile_with(
            d.path(),
            &[
                ("aegis.yaml", &format!("tls_dirs: [\"{s}\"]\n")),
                (
                    "tls.yaml",
                    &tls_yaml(&format!("{s}/shop.pem"), &format!("{s}/shop.key")),
                ),
            ],
        );
        assert_eq!(c.unwrap().certificates.len(), 1);
    }
}
