//! `aegis-loadgen sample`: a traffic sample drawn from a scenario's mix.

use std::net::{IpAddr, Ipv4Addr};

use aegis_engine::sample::{SampledRequest, TrafficSample};

use crate::scenario::Scenario;
use crate::util::Rng;

/// Draws `count` requests from the scenario's weighted mix. The same seed
/// gives the same sample. `scheme` is recorded on every request; `host` is
/// the Host used when the scenario gives none.
pub fn generate(
    scenario: &Scenario,
    count: usize,
    seed: u64,
    scheme: &str,
    host: Option<&str>,
) -> TrafficSample {
    let picker = scenario.picker();
    let mut rng = Rng::new(seed);
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        let i = picker.pick(&mut rng);
        let Some(spec) = scenario.requests.get(i) else {
            continue;
        };
        let (path, query) = match spec.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (spec.path.clone(), None),
        };
        let headers = scenario
            .headers
            .iter()
            .filter(|(k, _)| !spec.headers.contains_key(*k))
            .chain(&spec.headers)
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let client_ip = if scenario.client_ips.is_empty() {
            let x = rng.next_u64();
            IpAddr::V4(Ipv4Addr::new(10, 0, (x >> 8) as u8, (x as u8).max(1)))
        } else {
            let j = rng.below(scenario.client_ips.len() as u64) as usize;
            scenario
                .client_ips
                .get(j)
                .copied()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        };
        let mut req = SampledRequest {
            method: spec.method.clone(),
            scheme: scheme.to_string(),
            host: spec
                .host
                .clone()
                .or_else(|| scenario.host.clone())
                .or(host.map(String::from)),
            path,
            query,
            headers,
            client_ip,
            body_len: spec.body_size,
            status: scenario.expected(i).first().copied(),
            route: None,
            synthetic: false,
            ..SampledRequest::default()
        };
        req.redact(&[]);
        requests.push(req);
    }
    TrafficSample { requests }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_redacted() {
        let s = Scenario::parse(
            "requests:\n  - path: /a?x=1\n    weight: 2\n    headers: { authorization: secret }\n  - path: /b\n    expect: [204]\n",
        )
        .unwrap();
        let a = generate(&s, 100, 42, "http", Some("h.example"));
        let b = generate(&s, 100, 42, "http", Some("h.example"));
        let c = generate(&s, 100, 43, "http", Some("h.example"));
        assert_eq!(a.requests, b.requests);
        assert_ne!(a.requests, c.requests);
        let first_a = a.requests.iter().find(|r| r.path == "/a").unwrap();
        assert_eq!(first_a.query.as_deref(), Some("x=1"));
        assert_eq!(first_a.headers[0].1, aegis_engine::sample::REDACTED);
        assert_eq!(first_a.host.as_deref(), Some("h.example"));
        let first_b = a.requests.iter().find(|r| r.path == "/b").unwrap();
        assert_eq!(first_b.status, Some(204));
        let n_a = a.requests.iter().filter(|r| r.path == "/a").count();
        assert!((50..85).contains(&n_a), "{n_a}");
    }
}
