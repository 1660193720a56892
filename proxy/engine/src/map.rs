//! nginx's `map`: a value chosen per request from one of its variables, by
//! exact match (case-insensitive, as nginx lower-cases both sides), then by
//! regex in order, else the default. A value is text, a request variable,
//! or another map (compiled in dependency order, so a chain has no cycle).
//!
//! Used for the upstream of a route (`upstream: "$name"`, nginx's
//! `proxy_pass $name`): a pure function of the request head, so `decide`
//! and the sandbox's replay choose the same upstream as the data plane.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

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
        Some(match var {
            "request_method" => Self::Method,
            "host" => Self::Host,
            "uri" | "document_uri" => Self::Uri,
            "args" | "query_string" => Self::Args,
            "scheme" => Self::Scheme,
            _ => {
                if let Some(h) = var.strip_prefix("http_") {
                    Self::Header(HeaderName::from_bytes(h.replace('_', "-").as_bytes()).ok()?)
                } else if let Some(a) = var.strip_prefix("arg_") {
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
}

/// A map's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapValue {
    Text(String),
    Var(MapSource),
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

/// The parts of a request a map reads.
#[derive(Debug, Clone, Copy)]
pub struct MapInput<'a> {
    pub method: &'a Method,
    pub scheme: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl MapInput<'_> {
    fn var(&self, s: &MapSource) -> String {
        match s {
            MapSource::Header(h) => self
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            MapSource::Method => self.method.as_str().to_string(),
            MapSource::Host => self.host.to_string(),
            MapSource::Uri => self.path.to_string(),
            MapSource::Args => self.query.unwrap_or("").to_string(),
            MapSource::Arg(name) => self
                .query
                .unwrap_or("")
                .split('&')
                .find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    k.eq_ignore_ascii_case(name).then(|| v.to_string())
                })
                .unwrap_or_default(),
            MapSource::Scheme => self.scheme.to_string(),
        }
    }
}

/// Evaluates map `id`. Maps refer only to maps compiled before them, so
/// the chain ends; `depth` guards it anyway.
pub fn eval(maps: &[CompiledMap], id: MapId, input: &MapInput<'_>) -> String {
    eval_at(maps, id, input, 0)
}

fn eval_at(maps: &[CompiledMap], id: MapId, input: &MapInput<'_>, depth: usize) -> String {
    let Some(m) = maps.get(id) else {
        return String::new();
    };
    if depth > maps.len() {
        return String::new();
    }
    let key = input.var(&m.source);
    let value = m
        .exact
        .get(&key.to_ascii_lowercase())
        .or_else(|| {
            m.regex
                .iter()
                .find(|(re, _)| re.is_match(&key))
                .map(|(_, v)| v)
        })
        .unwrap_or(&m.default);
    match value {
        MapValue::Text(t) => t.clone(),
        MapValue::Var(s) => input.var(s),
        MapValue::Map(next) => eval_at(maps, *next, input, depth.saturating_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            default: MapValue::Var(MapSource::Scheme),
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
        let input = |m: &'static Method, h: &'static HeaderMap| MapInput {
            method: m,
            scheme: "http",
            host: "a",
            path: "/",
            query: None,
            headers: h,
        };
        let h: &'static HeaderMap = Box::leak(Box::new(headers.clone()));
        assert_eq!(eval(&maps, 1, &input(&Method::POST, h)), "api");
        assert_eq!(eval(&maps, 1, &input(&Method::GET, h)), "http");
        headers.insert("accept", "Application/Activity+JSON".parse().unwrap());
        let h: &'static HeaderMap = Box::leak(Box::new(headers.clone()));
        assert_eq!(eval(&maps, 1, &input(&Method::GET, h)), "api");
        headers.insert("accept", "text/html".parse().unwrap());
        let h: &'static HeaderMap = Box::leak(Box::new(headers));
        assert_eq!(eval(&maps, 1, &input(&Method::GET, h)), "ui");
    }
}
