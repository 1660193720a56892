//! `decide` at 10 to 100 000 routes, and compiling 10 000 routes.
//!
//! The route mix is what large edges carry: a few hundred hosts (exact and
//! wildcard), prefix routes under each, some exact paths and a regex per
//! host group. Requests hit routes spread over the whole table.
//!
//! Run: `cargo bench -p aegis-engine --bench decide`

use std::hint::black_box;
use std::path::Path;

use aegis_engine::config::{ConfigSource, Limits, SourceFile, compile};
use aegis_engine::{CompiledConfig, DecideOptions, RequestHead, decide};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};

fn routes_yaml(n: usize) -> String {
    let hosts = (n / 100).clamp(1, 1000);
    let mut y =
        String::from("upstreams:\n  - { name: u, endpoints: [\"127.0.0.1:9\"] }\nroutes:\n");
    for i in 0..n {
        let h = i % hosts;
        let host = if h.is_multiple_of(10) {
            format!("\"*.w{h}.example.com\"")
        } else {
            format!("h{h}.example.com")
        };
        let m = match i % 20 {
            0 => format!("path_regex: \"^/r{i}/[0-9]+$\""),
            1 => format!("path: /exact/{i}"),
            _ => format!("path_prefix: /svc{i}/v1/"),
        };
        y.push_str(&format!(
            "  - {{ name: r{i}, match: {{ host: {host}, {m} }}, upstream: u }}\n"
        ));
    }
    y.push_str(concat!(
        "features:\n",
        "  - { name: ua, weight: 0.2, when: { header: user-agent, contains: curl } }\n",
        "  - { name: q, weight: 0.2, when: { query: debug, present: true } }\n",
        "scoring: { block_at: 1.0 }\n"
    ));
    y
}

fn compiled(n: usize) -> CompiledConfig {
    let source = ConfigSource::from_files(
        Path::new("."),
        vec![SourceFile {
            name: "routes.yaml".into(),
            text: routes_yaml(n),
        }],
    );
    let limits = Limits {
        max_routes: 200_000,
        ..Limits::default()
    };
    match compile(&source, &limits) {
        Ok(c) => c,
        Err(d) => panic!("{d}"),
    }
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let config = compiled(n);
        let hosts = (n / 100).clamp(1, 1000);
        // 64 requests spread over the table, mostly prefix hits.
        let reqs: Vec<(String, String)> = (0..64)
            .map(|k| {
                let i = (k * 7919) % n;
                let h = i % hosts;
                let host = if h.is_multiple_of(10) {
                    format!("api.w{h}.example.com")
                } else {
                    format!("h{h}.example.com")
                };
                let path = match i % 20 {
                    0 => format!("/r{i}/42"),
                    1 => format!("/exact/{i}"),
                    _ => format!("/svc{i}/v1/items/17"),
                };
                (host, path)
            })
            .collect();
        let mut headers = HeaderMap::new();
        headers.insert(
            "user-agent",
            "Mozilla/5.0".parse().unwrap_or_else(|_| unreachable!()),
        );
        let ip = "192.0.2.1".parse().unwrap_or_else(|_| unreachable!());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut k = 0usize;
            b.iter(|| {
                let (host, path) = &reqs[k % reqs.len()];
                k = k.wrapping_add(1);
                let head = RequestHead {
                    method: &Method::GET,
                    scheme: "http",
                    host: Some(host),
                    path,
                    query: None,
                    headers: &headers,
                    client_ip: ip,
                    port: 0,
                };
                let d = decide(&config, &head, DecideOptions::default());
                black_box(d.route_id)
            })
        });
    }
    group.finish();
}

fn bench_compile(c: &mut Criterion) {
    let text = routes_yaml(10_000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("10000_routes", |b| {
        b.iter(|| {
            let source = ConfigSource::from_files(
                Path::new("."),
                vec![SourceFile {
                    name: "routes.yaml".into(),
                    text: text.clone(),
                }],
            );
            black_box(
                compile(&source, &Limits::default())
                    .map(|c| c.routes.len())
                    .unwrap_or(0),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_compile);
criterion_main!(benches);
