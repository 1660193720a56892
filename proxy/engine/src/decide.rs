//! `decide`: what Aegis does with one request head under one config.
//!
//! A pure, deterministic function of the compiled config, the request head
//! and the module switches. It picks the route and action, scores the
//! request, and says whether it is blocked. It does not pick an endpoint
//! (load balancing is the data plane's, and depends on live state), so the
//! sandbox can diff the decisions of two configs request by request.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::compiled::{
    CompiledConfig, CompiledRoute, HeaderCondition, HeaderVars, LocationTemplate, RouteAction,
    RouteId, UpstreamPool,
};
use crate::features::{FeatureInput, Score, ScoreError};
use crate::rewrite::Rewritten;

/// The parts of a request the engine looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The Host header or `:authority`, as sent (port included).
    pub host: Option<&'a str>,
    /// The path as sent, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The local port the request arrived on (0: unknown, as in a sample
    /// recorded before ports were): picks the routes of that port.
    pub port: u16,
}

/// Run-time switches of the modules (the kill switch), passed in so that
/// `decide` stays a pure function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideOptions {
    pub features_enabled: bool,
    /// When scoring fails: block (`true`) or serve unscored (`false`, the default).
    pub fail_closed: bool,
}

impl Default for DecideOptions {
    fn default() -> Self {
        Self {
            features_enabled: true,
            fail_closed: false,
        }
    }
}

/// How scoring went for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Scored {
    Scored(Score),
    /// The module is switched off.
    Disabled,
    /// Scoring failed; see [`DecideOptions::fail_closed`].
    Failed(ScoreError),
}

/// What happens to the request.
#[derive(Debug, Clone)]
pub enum Outcome<'c> {
    /// Forward to this upstream pool.
    Forward {
        upstream: &'c UpstreamPool,
        /// Its index in [`CompiledConfig::upstreams`].
        id: crate::compiled::UpstreamId,
    },
    /// The route's map named no upstream of the config (502, as nginx
    /// when `proxy_pass $var` names an unknown host and no resolver).
    BadUpstream,
    /// `rewrite`s sent the request round more than nginx's 10 cycles (500).
    RewriteLoop,
    Redirect {
        status: StatusCode,
        location: String,
    },
    Respond {
        status: StatusCode,
    },
    /// Served from files by the data plane: the status depends on the file
    /// system, so the summary carries none (the pipeline's outcome does).
    Static,
    /// Blocked by the feature score (403).
    Blocked,
    /// Refused by the route's `access` or `limit_except` rules (403, as
    /// nginx's `deny`).
    Denied,
    /// No route matched (404).
    NoRoute,
    /// The path cannot be normalized (it climbs above the root): 400.
    BadPath,
}

/// The decision for one request.
#[derive(Debug, Clone)]
pub struct Decision<'c, 'r> {
    pub route_id: Option<RouteId>,
    pub route: Option<&'c CompiledRoute>,
    pub outcome: Outcome<'c>,
    pub scored: Scored,
    /// The normalized path the route was matched on.
    pub path: Cow<'r, str>,
}

impl<'c> Decision<'c, '_> {
    /// The score to send upstream, when there is one.
    pub fn score(&self) -> Option<f64> {
        match &self.scored {
            Scored::Scored(s) => Some(s.value),
            _ => None,
        }
    }

    pub fn is_blocked(&self) -> bool {
        matches!(self.outcome, Outcome::Blocked)
    }

    /// The path (without query) to send upstream: the normalized path with the
    /// route's `strip_prefix` removed and `add_prefix` put in front. The two
    /// are joined as plain strings, as nginx joins a location prefix's rest to
    /// `proxy_pass`'s URI (`/api/` + `/v1/` turns `/api/x` into `/v1/x` and
    /// `/api/` into `/v1/`); only a path left empty becomes `/`.
    pub fn upstream_path(&self) -> Cow<'_, str> {
        let Some(RouteAction::Forward(fwd)) = self.route.map(|r| &r.action) else {
            return Cow::Borrowed(&self.path);
        };
        let mut path: &str = &self.path;
        if let Some(strip) = &fwd.strip_prefix
            && let Some(rest) = path.strip_prefix(strip.as_str())
        {
            path = rest;
        }
        match &fwd.add_prefix {
            Some(add) => {
                let mut out = String::with_capacity(add.len().saturating_add(path.len()));
                out.push_str(add);
                out.push_str(path);
                if out.is_empty() {
                    out.push('/');
                }
                Cow::Owned(out)
            }
            None if path.is_empty() => Cow::Borrowed("/"),
            None if !path.starts_with('/') => Cow::Owned(format!("/{path}")),
            None => Cow::Borrowed(path),
        }
    }

    /// An owned, comparable summary for the sandbox report.
    pub fn summary(&self) -> DecisionSummary {
        let (action, upstream, status) = match &self.outcome {
            Outcome::Forward { upstream, .. } => ("forward", Some(upstream.name.clone()), None),
            Outcome::BadUpstream => ("bad_upstream", None, Some(502)),
            Outcome::RewriteLoop => ("rewrite_loop", None, Some(500)),
            Outcome::Redirect { status, .. } => ("redirect", None, Some(status.as_u16())),
            Outcome::Respond { status } => ("respond", None, Some(status.as_u16())),
            Outcome::Static => ("static", None, None),
            Outcome::Blocked => ("block", None, Some(403)),
            Outcome::Denied => ("deny", None, Some(403)),
            Outcome::NoRoute => ("no_route", None, Some(404)),
            Outcome::BadPath => ("bad_path", None, Some(400)),
        };
        let location = match &self.outcome {
            Outcome::Redirect { location, .. } => Some(location.clone()),
            _ => None,
        };
        let upstream_path = upstream.as_ref().map(|_| self.upstream_path().into_owned());
        DecisionSummary {
            route: self.route.map(|r| r.name.clone()),
            action: Cow::Borrowed(action),
            upstream,
            upstream_path,
            location,
            status,
            score: self.score(),
            blocked: self.is_blocked(),
            scoring_failed: matches!(self.scored, Scored::Failed(_)),
        }
    }
}

/// A decision with owned fields: what the sandbox compares between configs.
/// Built on every request, so its names are the compiled config's own
/// (`Arc<str>`, a reference count) and its action a constant: only the
/// upstream path and a redirect's location are new strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionSummary {
    #[serde(with = "crate::serde_arc")]
    pub route: Option<Arc<str>>,
    /// `forward`, `redirect`, `respond`, `static`, `block`, `deny`,
    /// `no_route`, `bad_path`, `bad_upstream` or `rewrite_loop`.
    pub action: Cow<'static, str>,
    #[serde(with = "crate::serde_arc")]
    pub upstream: Option<Arc<str>>,
    pub upstream_path: Option<String>,
    pub location: Option<String>,
    /// The status the proxy itself answers with (none when forwarded).
    pub status: Option<u16>,
    pub score: Option<f64>,
    pub blocked: bool,
    pub scoring_failed: bool,
}

/// Decides what to do with a request.
pub fn decide<'c, 'r>(
    config: &'c CompiledConfig,
    req: &RequestHead<'r>,
    opts: DecideOptions,
) -> Decision<'c, 'r> {
    let scored = if !opts.features_enabled {
        Scored::Disabled
    } else if config.features.is_empty() {
        Scored::Scored(Score::default())
    } else {
        let input = FeatureInput {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
            client_ip: req.client_ip,
        };
        match config.features.score(&input) {
            Ok(s) => Scored::Scored(s),
            Err(e) => Scored::Failed(e),
        }
    };
    let blocked = match (&scored, config.scoring.block_at) {
        (Scored::Scored(s), Some(at)) => s.value >= at,
        (Scored::Failed(_), _) => opts.fail_closed,
        _ => false,
    };

    let Some(mut path) = normalize_path(req.path) else {
        return Decision {
            route_id: None,
            route: None,
            outcome: Outcome::BadPath,
            scored,
            path: Cow::Borrowed(req.path),
        };
    };
    let host = normalize_host(req.host.unwrap_or(""));
    let port = config.match_port(req.port, req.scheme);
    let lookup = |path: &str| {
        config.table.lookup(port, &host, path, |id| {
            config
                .routes
                .get(id)
                .is_some_and(|r| conditions_hold(r, req))
        })
    };
    let mut route_id = lookup(&path);
    // nginx's rewrite phase: before access, possibly round again.
    let mut rewritten: Option<(StatusCode, String)> = None;
    let mut looped = false;
    let mut cycles = 0usize;
    while let Some(r) = route_id.and_then(|id| config.routes.get(id)) {
        if r.rewrites.is_empty() {
            break;
        }
        let vars = HeaderVars {
            method: req.method,
            scheme: req.scheme,
            host: &host,
            path: &path,
            request_path: req.path,
            query: req.query,
            headers: req.headers,
            client_ip: req.client_ip,
            request_id: "",
            maps: &config.maps,
        };
        match crate::rewrite::apply(&r.rewrites, &path, &vars) {
            Rewritten::Unchanged => break,
            Rewritten::Redirect {
                permanent,
                location,
            } => {
                let status = if permanent {
                    StatusCode::MOVED_PERMANENTLY
                } else {
                    StatusCode::FOUND
                };
                rewritten = Some((status, location));
                break;
            }
            Rewritten::Break(p) => {
                path = Cow::Owned(p);
                break;
            }
            Rewritten::Again(p) => {
                cycles = cycles.saturating_add(1);
                if cycles > crate::rewrite::MAX_CYCLES {
                    looped = true;
                    break;
                }
                route_id = lookup(&p);
                path = Cow::Owned(p);
            }
        }
    }
    let route = route_id.and_then(|id| config.routes.get(id));
    let outcome = if blocked {
        Outcome::Blocked
    } else if looped {
        Outcome::RewriteLoop
    } else if let Some((status, location)) = rewritten {
        Outcome::Redirect { status, location }
    } else if route.is_some_and(|r| !r.access.allows(req.method, req.client_ip)) {
        Outcome::Denied
    } else {
        match route.map(|r| &r.action) {
            None => Outcome::NoRoute,
            Some(RouteAction::Forward(f)) => {
                let id = match f.upstream_map {
                    None => Some(f.upstream),
                    Some(m) => {
                        let vars = HeaderVars {
                            method: req.method,
                            scheme: req.scheme,
                            host: &host,
                            path: &path,
                            request_path: req.path,
                            query: req.query,
                            headers: req.headers,
                            client_ip: req.client_ip,
                            request_id: "",
                            maps: &config.maps,
                        };
                        let value = crate::map::eval(m, &vars);
                        config.upstream_index.get(upstream_name(&value)).copied()
                    }
                };
                match id.and_then(|id| config.upstreams.get(id).map(|u| (id, u))) {
                    Some((id, upstream)) => Outcome::Forward { upstream, id },
                    None if f.upstream_map.is_some() => Outcome::BadUpstream,
                    None => Outcome::NoRoute,
                }
            }
            Some(RouteAction::Redirect { status, location }) => Outcome::Redirect {
                status: *status,
                location: render_location(location, req, &host, &path, &config.maps),
            },
            Some(RouteAction::Respond { status, .. }) => Outcome::Respond { status: *status },
            Some(RouteAction::Static(_)) => Outcome::Static,
        }
    };
    Decision {
        route_id,
        route,
        outcome,
        scored,
        path,
    }
}

/// The upstream a `proxy_pass` URL from a map names: `http://lemmy` and
/// `http://lemmy/` are `lemmy`.
pub fn upstream_name(value: &str) -> &str {
    let v = value.strip_prefix("http://").unwrap_or(value);
    v.strip_suffix('/').unwrap_or(v)
}

fn conditions_hold(route: &CompiledRoute, req: &RequestHead<'_>) -> bool {
    if let Some(methods) = &route.methods {
        // HEAD is served by GET routes, as in nginx.
        let ok = methods.contains(req.method)
            || (req.method == Method::HEAD && methods.contains(&Method::GET));
        if !ok {
            return false;
        }
    }
    route.headers.iter().all(|c| match c {
        HeaderCondition::Equals(name, value) => req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes()),
        HeaderCondition::Present(name) => req.headers.contains_key(name),
        HeaderCondition::Absent(name) => !req.headers.contains_key(name),
    })
}

/// Lower-cases the host and drops the port and a trailing dot.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        host.find(']').and_then(|i| host.get(..=i)).unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Resolves `.` and `..` segments (also written `%2e`) and merges repeated
/// slashes, as nginx does before matching locations, so `/public/../admin`
/// cannot dodge the `/admin` route. `None` when the path climbs above the
/// root or does not start with `/`.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return if path == "*" {
            Some(Cow::Borrowed("*"))
        } else {
            None
        };
    }
    let suspicious = path.contains("//") || path.contains("/.") || path.contains('%');
    if !suspicious {
        return Some(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let decoded_dots = is_dot_segment(seg);
        match decoded_dots {
            Some(1) => trailing_slash = i == last,
            Some(2) => {
                out.pop()?;
                trailing_slash = i == last;
            }
            _ if seg.is_empty() => trailing_slash = i == last,
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    Some(Cow::Owned(normalized))
}

/// `Some(1)` for `.`, `Some(2)` for `..` (either possibly percent-encoded).
fn is_dot_segment(seg: &str) -> Option<u8> {
    let lower = seg.to_ascii_lowercase();
    match lower.as_str() {
        "." | "%2e" => Some(1),
        ".." | "%2e." | ".%2e" | "%2e%2e" => Some(2),
        _ => None,
    }
}

fn render_location(
    t: &LocationTemplate,
    req: &RequestHead<'_>,
    host: &str,
    path: &str,
    maps: &[crate::map::CompiledMap],
) -> String {
    t.render(&HeaderVars {
        method: req.method,
        scheme: req.scheme,
        host,
        path,
        request_path: req.path,
        query: req.query,
        headers: req.headers,
        client_ip: req.client_ip,
        request_id: "",
        maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(n("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(n("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(n("/public/%2E%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(n("//a//b/").as_deref(), Some("/a/b/"));
        assert_eq!(n("/a/..").as_deref(), Some("/"));
        assert_eq!(n("/..").as_deref(), None);
        assert_eq!(n("relative").as_deref(), None);
        assert_eq!(n("/%41").as_deref(), Some("/%41"));
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
        assert_eq!(normalize_host(""), "");
    }

    use crate::compiled::LocationPart;

    #[test]
    fn query_variables_in_locations() {
        let t = LocationTemplate(vec![
            LocationPart::Literal("/new".into()),
            LocationPart::Uri,
            LocationPart::IsArgs,
            LocationPart::Args,
        ]);
        let headers = HeaderMap::new();
        let mut head = RequestHead {
            method: &Method::GET,
            scheme: "http",
            host: None,
            path: "/a",
            query: Some("x=1"),
            headers: &headers,
            client_ip: "127.0.0.1".parse().unwrap(),
            port: 0,
        };
        assert_eq!(render_location(&t, &head, "h", "/a", &[]), "/new/a?x=1");
        head.query = None;
        assert_eq!(render_location(&t, &head, "h", "/a", &[]), "/new/a");
    }
}
