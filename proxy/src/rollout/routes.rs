//! Per-route answers of one worker, for the canary's per-route comparison.
//!
//! The data plane already counts every request by version, route and
//! status class (`aegis_route_requests_total{version, route, class}`,
//! handles resolved once per version: `telemetry::VersionMetrics`), so the
//! request path pays nothing more for this. A worker reads those counters
//! of the version it serves out of its own Prometheus text when the
//! supervisor probes it (`health.interval`, off the request path) and sends
//! them with its [`TrafficTotals`](crate::pipeline::traffic::TrafficTotals).
//! Bounded: the routes of the compiled config (plus `-`, no route), at most
//! [`MAX_ROUTES`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Routes one report carries at most (a larger config is compared on its
/// first routes by name; the global shares still cover all of them).
pub const MAX_ROUTES: usize = 4096;

/// Answers by class, in `telemetry::STATUS_CLASSES` order: 1xx, 2xx, 3xx,
/// 4xx, 5xx.
pub type Classes = [u64; 5];

/// Index of the 3xx, 4xx and 5xx classes in [`Classes`].
pub const C3XX: usize = 2;
pub const C4XX: usize = 3;
pub const C5XX: usize = 4;

/// One worker's cumulative per-route counts of the version it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounts {
    /// The engine version whose counters these are (they start at zero for
    /// a version the process had not served).
    pub version: String,
    pub routes: BTreeMap<String, Classes>,
}

impl RouteCounts {
    /// The `aegis_route_requests_total` samples of `version` in a
    /// Prometheus text exposition. Lines that do not parse are skipped.
    pub fn from_prometheus(text: &str, version: &str) -> RouteCounts {
        let mut routes: BTreeMap<String, Classes> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("aegis_route_requests_total{") else {
                continue;
            };
            let Some((labels, value)) = split_labels(rest) else {
                continue;
            };
            let (mut v, mut route, mut class) = (None, None, None);
            for (k, val) in labels {
                match k {
                    "version" => v = Some(val),
                    "route" => route = Some(val),
                    "class" => class = Some(val),
                    _ => {}
                }
            }
            if v.as_deref() != Some(version) {
                continue;
            }
            let (Some(route), Some(class)) = (route, class) else {
                continue;
            };
            let i = match class.as_str() {
                "1xx" => 0,
                "2xx" => 1,
                "3xx" => C3XX,
                "4xx" => C4XX,
                "5xx" => C5XX,
                _ => continue,
            };
            let n = value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map_or(0, |f| f as u64);
            if routes.len() >= MAX_ROUTES && !routes.contains_key(&route) {
                continue;
            }
            if let Some(c) = routes.entry(route).or_default().get_mut(i) {
                *c = n;
            }
        }
        RouteCounts {
            version: version.to_string(),
            routes,
        }
    }
}

/// `k="v",k2="v2"} value` → the labels (unescaped) and the value text.
fn split_labels(s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key, value));
        rest = after.get(end.saturating_add(1)..)?;
    }
}

/// Adds `b` to `a`, class by class.
pub fn add(a: &mut Classes, b: &Classes) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.saturating_add(*y);
    }
}

/// `later - earlier`, class by class (saturating).
pub fn sub(later: &Classes, earlier: &Classes) -> Classes {
    std::array::from_fn(|i| {
        let l = later.get(i).copied().unwrap_or(0);
        let e = earlier.get(i).copied().unwrap_or(0);
        l.saturating_sub(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_served_versions_route_counters() {
        let text = "# TYPE aegis_route_requests_total counter\n\
            aegis_route_requests_total{version=\"v1\",route=\"a\",class=\"2xx\"} 7\n\
            aegis_route_requests_total{version=\"v1\",route=\"a\",class=\"5xx\"} 2\n\
            aegis_route_requests_total{version=\"v1\",route=\"we\\\"ird,\\\\n}\",class=\"4xx\"} 3\n\
            aegis_route_requests_total{version=\"v0\",route=\"a\",class=\"2xx\"} 100\n\
            aegis_route_requests_total{version=\"v1\",route=\"-\",class=\"4xx\"} 1\n\
            aegis_requests_total{route=\"a\",status=\"200\"} 7\n\
            aegis_route_requests_total{version=\"v1\",route=\"broken\n";
        let c = RouteCounts::from_prometheus(text, "v1");
        assert_eq!(c.routes.get("a"), Some(&[0, 7, 0, 0, 2]));
        assert_eq!(c.routes.get("we\"ird,\\n}"), Some(&[0, 0, 0, 3, 0]));
        assert_eq!(c.routes.get("-"), Some(&[0, 0, 0, 1, 0]));
        assert_eq!(c.routes.len(), 3);
    }
}
