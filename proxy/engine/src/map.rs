//! nginx's `map`: a value chosen per request from one of its variables, by
//! exact match (case-insensitive, as nginx lower-cases both sides), then by
//! regex in order, else the default. A value is text, text with request
//! variables (`$scheme`, `https://$host`), or another map (compiled in
//! dependency order, so a chain has no cycle).
//!
//! Used for the upstream of a route (`upstream: "$name"`, nginx's
//! `proxy_pass $name`), and as `$name` in header values and redirect
//! targets: a pure function of the request head, so `decide` and the
//! sandbox's replay answer as the data plane.

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderMap, HeaderName};
use regex::Regex;

use crate::compiled::{HeaderVars, LocationPart, LocationTemplate};

/// Index of a map in [`crate::CompiledConfig::maps`].
pub type MapId = usize;

/// What a map looks at (an nginx variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapSource {
    /// `$http_NAME`: the first value of a request header ("" when absent).
    Header(HeaderName),
    /// `$request_method`.
    Method,
    /// `$host`: the normalized host.
    Host,
    /// `$uri`: the normalized path.
    Uri,
    /// `$args`.
    Args,
    /// `$arg_NAME`: a query parameter ("" when absent).
    Arg(String),
    /// `$scheme`.
    Scheme,
}

impl MapSource {
    /// An nginx variable name (without `$`) as a source; `None` for one the
    /// engine does not have.
    pub fn parse(var: &str) -> Option<Self> {
        // One table of variable names: the templates' own.
        Some(match LocationPart::of_variable(var)? {
            LocationPart::Method => Self::Method,
            LocationPart::Host => Self::Host,
            LocationPart::Uri => Self::Uri,
            LocationPart::Args => Self::Args,
            LocationPart::Scheme => Self::Scheme,
            LocationPart::Header(h) => Self::Header(h),
            LocationPart::Arg(a) => Self::Arg(a),
            _ => return None,
        })
    }
}

/// A map's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapValue {
    Text(String),
    /// Text with request variables (`$scheme`, `https://$host`…: the
    /// variables of [`LocationPart::of_variable`], not other maps),
    /// rendered after the choice.
    Template(LocationTemplate),
    /// The whole value is another map's (`$other`).
    Map(MapId),
}

#[derive(Debug)]
pub struct CompiledMap {
    pub name: String,
    pub source: MapSource,
    /// Lower-cased keys.
    pub exact: HashMap<String, MapValue>,
    pub regex: Vec<(Regex, MapValue)>,
    pub default: MapValue,
}

impl CompiledMap {
    /// Every value the map can answer.
    pub fn values(&self) -> impl Iterator<Item = &MapValue> {
        self.exact
            .values()
            .chain(self.regex.iter().map(|(_, v)| v))
            .chain(std::iter::once(&self.default))
    }
}

/// The first value of request header `name` ("" when absent or not text).
pub fn header_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Query parameter `name` of `query`, as sent ("" when absent).
pub fn arg_value<'a>(query: Option<&'a str>, name: &str) -> &'a str {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            k.eq_ignore_ascii_case(name).then_some(v)
        })
        .unwrap_or("")
}

/// The value of a map's source for one request, borrowed from it.
fn source_value<'a>(s: &MapSource, v: &HeaderVars<'a>) -> &'a str {
    match s {
        MapSource::Header(h) => header_value(v.headers, h),
        MapSource::Method => v.method.as_str(),
        MapSource::Host => v.host,
        MapSource::Uri => v.path,
        MapSource::Args => v.query.unwrap_or(""),
        MapSource::Arg(name) => arg_value(v.query, name),
        MapSource::Scheme => v.scheme,
    }
}

/// The value map `id` answers for the request of `v` (another map's, when
/// it names one). Maps refer only to maps compiled before them, so the
/// chain ends; a depth guard stops it anyway.
pub fn choose<'a>(id: MapId, v: &HeaderVars<'a>) -> Option<&'a MapValue> {
    let maps: &'a [CompiledMap] = v.maps;
    let mut id = id;
    for _ in 0..=maps.len() {
        let m = maps.get(id)?;
        let key = source_value(&m.source, v);
        let lower;
        let lookup = if key.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = key.to_ascii_lowercase();
            lower.as_str()
        } else {
            key
        };
        let value = m
            .exact
            .get(lookup)
            .or_else(|| {
                m.regex
                    .iter()
                    .find(|(re, _)| re.is_match(key))
                    .map(|(_, v)| v)
            })
            .unwrap_or(&m.default);
        match value {
            MapValue::Map(next) => id = *next,
            other => return Some(other),
        }
    }
    None
}

/// Map `id`'s value for the request of `v`: borrowed when it is text.
pub fn eval<'a>(id: MapId, v: &HeaderVars<'a>) -> Cow<'a, str> {
    match choose(id, v) {
        Some(MapValue::Text(t)) => Cow::Borrowed(t.as_str()),
        Some(MapValue::Template(t)) => Cow::Owned(t.render(v)),
        Some(MapValue::Map(_)) | None => Cow::Borrowed(""),
    }
}

/// Map `id`'s value for the request of `v`, onto `out`.
pub fn eval_into(id: MapId, v: &HeaderVars<'_>, out: &mut String) {
    match choose(id, v) {
        Some(MapValue::Text(t)) => out.push_str(t),
        Some(MapValue::Template(t)) => {
            // A map's template has no maps (the compile refuses them), so
            // this does not recurse further.
            for part in &t.0 {
                if !matches!(part, LocationPart::Map(_)) {
                    part.render_into(v, out);
                }
            }
        }
        Some(MapValue::Map(_)) | None => {}
    }
}

/// Every value map `id` can answer, following the maps it leads to
/// (each map once, whatever the cycles): the texts and templates, not
/// the `$other` links themselves.
pub fn reachable_values(maps: &[CompiledMap], id: MapId) -> Vec<&MapValue> {
    let mut out = Vec::new();
    let mut stack = vec![id];
    let mut seen = Vec::new();
    while let Some(m) = stack.pop() {
        if seen.contains(&m) {
            continue;
        }
        seen.push(m);
        for v in maps.get(m).into_iter().flat_map(CompiledMap::values) {
            match v {
                MapValue::Map(n) => stack.push(*n),
                v => out.push(v),
            }
        }
    }
    out
}

/// Map `id`, or a map it leads to, can answer a value with `$request_id`.
pub fn uses_request_id(maps: &[CompiledMap], id: MapId) -> bool {
    reachable_values(maps, id)
        .iter()
        .any(|v| matches!(v, MapValue::Template(t) if t.0.contains(&LocationPart::RequestId)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn vars<'a>(
        maps: &'a [CompiledMap],
        method: &'a Method,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> HeaderVars<'a> {
        HeaderVars {
            method,
            scheme: "http",
            host: "a",
            path: "/p",
            request_path: "/p",
            query,
            headers,
            client_ip: "127.0.0.1".parse().unwrap(),
            request_id: "",
            maps,
        }
    }

    #[test]
    fn exact_then_regex_then_default_through_a_chain() {
        let accept = CompiledMap {
            name: "accept".into(),
            source: MapSource::Header(HeaderName::from_static("accept")),
            exact: [(
                "application/activity+json".to_string(),
                MapValue::Text("api".into()),
            )]
            .into_iter()
            .collect(),
            regex: vec![(Regex::new("^text/").unwrap(), MapValue::Text("ui".into()))],
            default: MapValue::Template(LocationTemplate(vec![LocationPart::Scheme])),
        };
        let method = CompiledMap {
            name: "m".into(),
            source: MapSource::Method,
            exact: [("post".to_string(), MapValue::Text("api".into()))]
                .into_iter()
                .collect(),
            regex: Vec::new(),
            default: MapValue::Map(0),
        };
        let maps = vec![accept, method];
        let mut headers = HeaderMap::new();
        assert_eq!(eval(1, &vars(&maps, &Method::POST, &headers, None)), "api");
        assert_eq!(eval(1, &vars(&maps, &Method::GET, &headers, None)), "http");
        headers.insert("accept", "Application/Activity+JSON".parse().unwrap());
        assert_eq!(eval(1, &vars(&maps, &Method::GET, &headers, None)), "api");
        headers.insert("accept", "text/html".parse().unwrap());
        let v = vars(&maps, &Method::GET, &headers, None);
        assert!(
            matches!(eval(1, &v), Cow::Borrowed("ui")),
            "text is borrowed"
        );
        let mut out = String::from("x-");
        eval_into(1, &v, &mut out);
        assert_eq!(out, "x-ui");
    }

    /// nginx's Nextcloud idiom: `map $arg_v $asset_immutable { "" "";
    /// default ", immutable"; }`, and a template value.
    #[test]
    fn query_parameter_source_and_template_values() {
        let immutable = CompiledMap {
            name: "asset_immutable".into(),
            source: MapSource::Arg("v".into()),
            exact: [(String::new(), MapValue::Text(String::new()))]
                .into_iter()
                .collect(),
            regex: Vec::new(),
            default: MapValue::Template(LocationTemplate(vec![
                LocationPart::Literal(", immutable-".into()),
                LocationPart::Arg("v".into()),
                LocationPart::RequestId,
            ])),
        };
        let maps = vec![immutable];
        let headers = HeaderMap::new();
        let m = Method::GET;
        assert_eq!(eval(0, &vars(&maps, &m, &headers, None)), "");
        assert_eq!(eval(0, &vars(&maps, &m, &headers, Some("a=1&v="))), "");
        assert_eq!(
            eval(0, &vars(&maps, &m, &headers, Some("a=1&V=abc"))),
            ", immutable-abc"
        );
        assert!(uses_request_id(&maps, 0));
        assert_eq!(arg_value(Some("x&y=2"), "x"), "");
        assert_eq!(arg_value(Some("x&y=2"), "y"), "2");
        assert_eq!(arg_value(None, "y"), "");
    }

    fn compiled(yaml: &str) -> Result<crate::CompiledConfig, String> {
        let source = crate::config::ConfigSource::from_files(
            std::path::Path::new("."),
            vec![crate::config::SourceFile {
                name: "routes.yaml".into(),
                text: yaml.into(),
            }],
        );
        crate::config::compile(&source, &crate::config::Limits::default())
            .map_err(|d| d.to_string())
    }

    /// Discourse's `$thescheme` (default `$scheme`) and Nextcloud's
    /// `$asset_immutable`, in request and response headers and a redirect.
    const MAPS: &str = r#"
maps:
  - name: thescheme
    source: "$http_x_forwarded_proto"
    exact: { https: https }
    default: "$scheme"
  - name: asset_immutable
    source: "$arg_v"
    exact: { "": "" }
    default: ", immutable"
  - name: rid
    source: "$request_method"
    default: "id-$request_id"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - name: app
    match: { path_prefix: / }
    upstream: u
    request_headers:
      set: { x-forwarded-proto: "$thescheme", x-rid: "$rid", x-empty: "$asset_immutable" }
      add: { x-both: "$thescheme+$host" }
    response_headers:
      set: { cache-control: "public, max-age=15778463$asset_immutable", x-static: plain }
      add: { x-scheme: "$thescheme" }
  - name: go
    match: { path_prefix: /go/ }
    redirect: { status: 301, location: "$thescheme://$host/x$request_uri" }
"#;

    #[test]
    fn maps_in_header_values_and_redirects() {
        let c = compiled(MAPS).unwrap();
        let app = c.routes.iter().find(|r| &*r.name == "app").unwrap();
        assert!(app.request_edits.has_vars() && app.request_edits.uses_request_id);
        assert!(app.response_edits.has_vars() && !app.response_edits.uses_request_id);
        let mut headers = HeaderMap::new();
        let v = |headers: &'static HeaderMap, query| HeaderVars {
            request_id: "r1",
            ..vars(&c.maps, &Method::GET, headers, query)
        };
        let h: &'static HeaderMap = Box::leak(Box::new(headers.clone()));
        // Request: the default `$scheme`; the empty value removes the
        // header the client sent, as nginx sends no empty header.
        let mut out = HeaderMap::new();
        out.insert("x-empty", "from-client".parse().unwrap());
        app.request_edits.apply_request(&mut out, &v(h, None));
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-rid"], "id-r1");
        assert_eq!(out["x-both"], "http+a");
        assert!(!out.contains_key("x-empty"));
        headers.insert("x-forwarded-proto", "HTTPS".parse().unwrap());
        let h: &'static HeaderMap = Box::leak(Box::new(headers));
        let mut out = HeaderMap::new();
        app.request_edits
            .apply_request(&mut out, &v(h, Some("v=3")));
        assert_eq!(out["x-forwarded-proto"], "https");
        // Response: rendered from the request, applied with the static ones.
        let rendered = app.response_edits.render(&v(h, Some("v=3")));
        let mut resp = HeaderMap::new();
        app.response_edits
            .apply_response(http::StatusCode::OK, &mut resp, &rendered);
        assert_eq!(resp["cache-control"], "public, max-age=15778463, immutable");
        assert_eq!(resp["x-static"], "plain");
        assert_eq!(resp["x-scheme"], "https");
        let rendered = app.response_edits.render(&v(h, None));
        let mut resp = HeaderMap::new();
        app.response_edits
            .apply_response(http::StatusCode::OK, &mut resp, &rendered);
        assert_eq!(resp["cache-control"], "public, max-age=15778463");
        // Redirect: `decide` renders the map.
        let head = crate::RequestHead {
            method: &Method::GET,
            scheme: "http",
            host: Some("shop.test"),
            path: "/go/a",
            query: Some("q=1"),
            headers: h,
            client_ip: "127.0.0.1".parse().unwrap(),
            port: 0,
        };
        let d = crate::decide(&c, &head, crate::DecideOptions::default());
        match d.outcome {
            crate::Outcome::Redirect { location, .. } => {
                assert_eq!(location, "https://shop.test/x/go/a?q=1")
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn map_variables_that_cannot_be_are_errors() {
        let with = |extra_map: &str, route: &str| {
            compiled(&format!(
                "maps:\n  - {{ name: m, source: \"$host\", default: a }}\n{extra_map}routes:\n{route}"
            ))
            .map(|_| ())
        };
        // Unknown variables name themselves and what is allowed.
        let e = with(
            "",
            "  - { name: r, match: { path_prefix: / }, respond: { status: 200 }, response_headers: { set: { x-a: \"$mm\" } } }\n",
        )
        .unwrap_err();
        assert!(
            e.contains("unknown variable `$mm`") && e.contains("a map's name"),
            "{e}"
        );
        // A map's `$request_id` is no redirect target.
        let e = with(
            "  - { name: id, source: \"$host\", default: \"$request_id\" }\n",
            "  - { name: r, match: { path_prefix: / }, redirect: { location: \"/$id\" } }\n",
        )
        .unwrap_err();
        assert!(e.contains("$request_id"), "{e}");
        // In a header it is fine.
        with(
            "  - { name: id, source: \"$host\", default: \"$request_id\" }\n",
            "  - { name: r, match: { path_prefix: / }, respond: { status: 200 }, response_headers: { set: { x-id: \"$id $m\" } } }\n",
        )
        .unwrap();
        // A value's template has no maps; a value's variable must exist.
        for bad in ["x$m", "$nope"] {
            let e = with(
                &format!("  - {{ name: n, source: \"$host\", default: \"{bad}\" }}\n"),
                "  - { name: r, match: { path_prefix: / }, respond: { status: 200 } }\n",
            )
            .unwrap_err();
            assert!(e.contains("unknown variable"), "{bad}: {e}");
        }
        // A map cannot take a variable's name.
        let e = with(
            "  - { name: host, source: \"$host\", default: a }\n",
            "  - { name: r, match: { path_prefix: / }, respond: { status: 200 } }\n",
        )
        .unwrap_err();
        assert!(e.contains("cannot name a map"), "{e}");
    }
}
