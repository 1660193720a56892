//! The real-config battery (issue 17, item 3): every
//! `tests/parity/real/*.conf` runs under Debian's nginx and, imported with
//! `aegis import-nginx --allow-partial`, under `aegis run`, in front of the
//! same echo backends. The requests are derived from the config itself:
//! for every server (name × listen; https with SNI on `ssl` listeners) and
//! every location (a path that matches it), GET and HEAD; a 1 MiB POST on
//! the first proxied location; a WebSocket upgrade where the config sets
//! an `Upgrade` header.
//!
//! Each pair is compared (status, Location with the port remap undone,
//! backend reached with the path and Host it received, content-type,
//! cache-control, content-encoding and the config's `add_header` names) and
//! each difference is put in a class. The per-config table shows pairs,
//! exact matches, matches once documented differences are excused, and the
//! rest by class. The test fails only when a config matches fewer pairs
//! than recorded in `tests/parity/real/BASELINE` (exact or excused), so a
//! known gap does not fail it and a regression does.
//!
//! `cargo test --release -p aegis-proxy --test nginx_real -- --nocapture`;
//! `REAL_ONLY=name` runs one config, `REAL_VERBOSE=1` prints every pair,
//! `REAL_WRITE_BASELINE=1` rewrites the baseline from this run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aegis_import_nginx::parse::{Directive, parse_str};

#[path = "../../tests/parity/real/stage.rs"]
mod stage;
mod util;
use util::nginx::*;

fn corpus() -> PathBuf {
    repo_root().join("tests/parity/real")
}

/// Host names for the test certificate: every plain `server_name` word.
fn plain_names(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|w| {
            !w.is_empty()
                && *w != "_"
                && !w.starts_with('~')
                && !w.contains('*')
                && !w.contains('$')
                && !w.starts_with('.')
                && w.parse::<std::net::IpAddr>().is_err()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

fn all_directives<'a>(ds: &'a [Directive], out: &mut Vec<&'a Directive>) {
    for d in ds {
        out.push(d);
        if let Some(b) = &d.block {
            all_directives(b, out);
        }
    }
}

// ---------------------------------------------------------------- ports

/// The port remap of one side: listen ports of the config → free ports.
struct Remap {
    listen: BTreeMap<u16, u16>,
}

/// `listen` lines get 127.0.0.1 and a free port (one per original port,
/// IPv6 listeners dropped: the IPv4 one of the same server stays);
/// `127.0.0.1:P` / `localhost:P` elsewhere (upstreams) → `upstreams[P]`;
/// log and pid paths → `dir`.
fn render(text: &str, remap: &mut Remap, upstreams: &BTreeMap<u16, u16>, dir: &Path) -> String {
    let d = dir.display().to_string();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if t.starts_with("listen ") || t.starts_with("listen\t") {
            let rest = t["listen".len()..].trim_start();
            let (addr, params) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let addr = addr.trim_end_matches(';');
            if addr.starts_with('[') {
                out.push_str(&format!(
                    "{indent}# (IPv6 listener left out by the test) {t}\n"
                ));
                continue;
            }
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap_or(80);
            let new = *remap.listen.entry(port).or_insert_with(free_port);
            let params = if params.is_empty() { ";" } else { params };
            out.push_str(&format!("{indent}listen 127.0.0.1:{new} {params}\n"));
            continue;
        }
        if t.starts_with("user ") || t.starts_with("pid ") {
            continue;
        }
        if let Some(rest) = t.strip_prefix("proxy_cache_path ") {
            // A private cache: a shared one would answer from an earlier run.
            let rest = rest.trim_start();
            let tail = rest.split_once(char::is_whitespace).map_or("", |x| x.1);
            out.push_str(&format!("{indent}proxy_cache_path {d}/cache {tail}\n"));
            continue;
        }
        let mut l = line.replace("/var/log/nginx/", &format!("{d}/logs/"));
        for host in ["127.0.0.1:", "localhost:"] {
            let mut res = String::new();
            let mut rest = l.as_str();
            while let Some(i) = rest.find(host) {
                res.push_str(&rest[..i]);
                let after = &rest[i + host.len()..];
                let n = after.chars().take_while(char::is_ascii_digit).count();
                let port: Option<u16> = after[..n].parse().ok();
                match port.and_then(|p| upstreams.get(&p)) {
                    Some(new) => res.push_str(&format!("127.0.0.1:{new}")),
                    None => res.push_str(&rest[i..i + host.len() + n]),
                }
                rest = &after[n..];
            }
            res.push_str(rest);
            l = res;
        }
        out.push_str(&l);
        out.push('\n');
    }
    if text.contains("events") {
        out = out.replacen("http {", &format!("pid {d}/nginx.pid;\nhttp {{\n    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;"), 1);
    }
    out
}

/// Upstream ports of the config: every `127.0.0.1:P` / `localhost:P` outside
/// `listen` lines.
fn upstream_ports(text: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('#') || t.starts_with("listen") {
            continue;
        }
        for host in ["127.0.0.1:", "localhost:"] {
            let mut rest = t;
            while let Some(i) = rest.find(host) {
                let after = &rest[i + host.len()..];
                let n = after.chars().take_while(char::is_ascii_digit).count();
                if let Ok(p) = after[..n].parse::<u16>()
                    && !ports.contains(&p)
                {
                    ports.push(p);
                }
                rest = &after[n..];
            }
        }
    }
    ports
}

/// The `upstream` group of each backend label (`b<port>`): a pair is the
/// same when both proxies reached a member of one group, since where a
/// round robin starts is not behaviour.
fn upstream_groups(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut group: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("upstream ") {
            group = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        if t.starts_with('}') {
            group = None;
            continue;
        }
        if let Some(g) = &group {
            for p in upstream_ports(t) {
                out.insert(format!("b{p}"), g.clone());
            }
        }
    }
    out
}

/// Lays out one side: wrapper nginx.conf (unless the config is a whole
/// nginx.conf), the site, stand-in includes, certificate.
fn lay_out(dir: &Path, name: &str, rendered: &str, cert: &(String, String)) -> PathBuf {
    for sub in ["logs/domains", "conf.d/prod.d", "conf.d/web", "certs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for extra in ["mime.types", "fastcgi_params"] {
        std::fs::copy(corpus().join(extra), dir.join(extra)).unwrap();
    }
    std::fs::write(dir.join("certs/site.crt"), &cert.0).unwrap();
    std::fs::write(dir.join("certs/site.key"), &cert.1).unwrap();
    if rendered.contains("events") {
        let p = dir.join(format!("{name}.conf"));
        std::fs::write(&p, rendered).unwrap();
        return p;
    }
    std::fs::write(dir.join("site.conf"), rendered).unwrap();
    let wrapper = write_wrapper(dir, "real-config battery");
    // As Debian's nginx.conf around a site file: its MIME types (the site
    // files of the corpus rely on them for the files they serve).
    let debian = Path::new("/etc/nginx/mime.types");
    if debian.exists() {
        let text = std::fs::read_to_string(&wrapper).unwrap().replacen(
            "    include site.conf;",
            &format!(
                "    include {};\n    default_type application/octet-stream;\n    include site.conf;",
                debian.display()
            ),
            1,
        );
        std::fs::write(&wrapper, text).unwrap();
    }
    wrapper
}

// ---------------------------------------------------------------- battery

/// What a location does, for classifying its differences.
#[derive(Debug, Clone, Default)]
struct LocInfo {
    text: String,
    proxied: bool,
    variable_pass: bool,
    files: bool,
    ret: bool,
    rewrite: bool,
    auth: bool,
    upgrade: bool,
    cache: bool,
    expires: bool,
}

#[derive(Debug, Clone)]
struct Case {
    req: Req,
    /// The config's own port (before the remap) and whether it is TLS.
    port: u16,
    tls: bool,
    loc: LocInfo,
    /// Another server on another port has the same name: nginx picks
    /// servers per listen socket, Aegis by host only.
    shared: bool,
}

/// A path matching a simple regex, or None when the regex is not simple
/// (lookaround, backreferences, nested groups).
fn gen_regex(re: &str) -> Option<String> {
    if re.contains("(?") || re.contains("\\1") {
        return None;
    }
    let anchored = re.starts_with('^');
    let mut out = gen_atoms(re)?;
    if !anchored || !out.starts_with('/') {
        out = if out.starts_with('/') {
            format!("/x{out}")
        } else {
            format!("/x/{out}")
        };
    }
    Some(out)
}

/// The text one pass through `re` produces (first alternative, each
/// repeated atom once).
fn gen_atoms(re: &str) -> Option<String> {
    let chars: Vec<char> = re.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // The atom and where it ends.
        let (atom, next): (String, usize) = match c {
            '^' | '$' => {
                i += 1;
                continue;
            }
            '\\' => {
                let e = *chars.get(i + 1)?;
                let s = match e {
                    'd' => "0".to_string(),
                    'w' => "a".to_string(),
                    's' => return None,
                    _ => e.to_string(),
                };
                (s, i + 2)
            }
            '.' => ("a".to_string(), i + 1),
            '[' => {
                let end = chars[i..].iter().position(|&x| x == ']')? + i;
                let class: String = chars[i + 1..end].iter().collect();
                let s = if class.starts_with('^') || class.starts_with("\\w") {
                    "a".to_string()
                } else if class.starts_with("\\d") {
                    "0".to_string()
                } else if let Some(e) = class.strip_prefix('\\') {
                    e.chars().next()?.to_string()
                } else {
                    class.chars().next()?.to_string()
                };
                (s, end + 1)
            }
            '(' => {
                let mut depth = 0;
                let mut end = None;
                for (j, &x) in chars.iter().enumerate().skip(i) {
                    if x == '(' {
                        depth += 1;
                    } else if x == ')' {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                }
                let end = end?;
                let inner: String = chars[i + 1..end].iter().collect();
                if inner.contains('(') {
                    return None;
                }
                let first = inner.split('|').next().unwrap_or("");
                (gen_atoms(first)?, end + 1)
            }
            '|' => break,
            '*' | '+' | '?' | '{' | ')' => return None,
            _ => (c.to_string(), i + 1),
        };
        i = next;
        match chars.get(i) {
            Some('*') | Some('?') => i += 1,
            Some('+') => {
                i += 1;
                out.push_str(&atom);
            }
            Some('{') => {
                let end = chars[i..].iter().position(|&x| x == '}')? + i;
                let n: usize = chars[i + 1..end]
                    .iter()
                    .collect::<String>()
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                for _ in 0..n {
                    out.push_str(&atom);
                }
                i = end + 1;
            }
            _ => out.push_str(&atom),
        }
    }
    Some(out)
}

fn loc_info(
    block: &[Directive],
    server_files: bool,
    server_upgrade: bool,
    text: String,
) -> LocInfo {
    let mut info = LocInfo {
        text,
        ..Default::default()
    };
    let mut all = Vec::new();
    all_directives(block, &mut all);
    let mut own_headers = false;
    for d in &all {
        match d.name.as_str() {
            "proxy_pass" => {
                info.proxied = true;
                info.variable_pass |= d.args.iter().any(|a| a.contains('$'));
            }
            "root" | "alias" | "try_files" | "index" | "autoindex" => info.files = true,
            "return" => info.ret = true,
            "proxy_cache" => info.cache = true,
            "expires" => info.expires = true,
            "rewrite" => info.rewrite = true,
            "auth_basic" | "auth_request" | "allow" | "deny" | "limit_except" => info.auth = true,
            "proxy_set_header" => {
                own_headers = true;
                if d.arg(0).is_some_and(|h| h.eq_ignore_ascii_case("upgrade")) {
                    info.upgrade = true;
                }
            }
            _ => {}
        }
    }
    if !own_headers && server_upgrade {
        info.upgrade = true;
    }
    if !info.proxied && !info.ret && server_files {
        info.files = true;
    }
    info
}

fn locations(
    ds: &[Directive],
    server_files: bool,
    server_upgrade: bool,
    out: &mut Vec<(String, LocInfo)>,
    skipped: &mut usize,
) {
    for d in ds {
        if d.name != "location" {
            continue;
        }
        let block = d.block.as_deref().unwrap_or(&[]);
        let (m, p) = match d.args.as_slice() {
            [p] => ("", p.as_str()),
            [m, p, ..] => (m.as_str(), p.as_str()),
            _ => continue,
        };
        let path = match m {
            "" | "=" | "^~" if p.starts_with('@') => None,
            "" | "=" | "^~" => Some(p.to_string()),
            "~" | "~*" => gen_regex(p),
            _ => None,
        };
        if p.starts_with('@') {
            // Named locations are not addressable.
        } else if let Some(path) = path {
            out.push((
                path,
                loc_info(block, server_files, server_upgrade, d.text()),
            ));
        } else {
            *skipped += 1;
        }
        locations(block, server_files, server_upgrade, out, skipped);
    }
}

/// The battery of one config, from its nginx-side rendering.
fn battery(tree: &[Directive], back: &BTreeMap<u16, u16>) -> (Vec<Case>, usize, Vec<String>) {
    let mut all = Vec::new();
    all_directives(tree, &mut all);
    let mut add_headers: Vec<String> = all
        .iter()
        .filter(|d| d.name == "add_header")
        .filter_map(|d| d.arg(0).map(str::to_ascii_lowercase))
        .collect();
    add_headers.sort();
    add_headers.dedup();
    let mut cases: Vec<Case> = Vec::new();
    let mut skipped = 0;
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    let first = cases.len();
    let mut posted = false;
    for server in all
        .iter()
        .filter(|d| d.name == "server" && d.block.is_some())
    {
        let body = server.block.as_deref().unwrap_or(&[]);
        let mut listens = Vec::new();
        let mut names = Vec::new();
        for d in body {
            if d.name == "listen"
                && let Some(a) = d.arg(0)
                && let Some(p) = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok())
            {
                let orig = back.get(&p).copied().unwrap_or(p);
                listens.push((orig, d.args.iter().any(|x| x == "ssl")));
            }
            if d.name == "server_name" {
                names.extend(plain_names(&d.args));
            }
        }
        if listens.is_empty() {
            continue; // upstream `server` lines have no block; this is safe
        }
        if names.is_empty() {
            names.push("localhost".into());
        }
        for n in &names {
            *seen_names.entry(n.clone()).or_default() += 1;
        }
        let server_files = body
            .iter()
            .any(|d| matches!(d.name.as_str(), "root" | "alias" | "try_files" | "index"));
        let server_upgrade = body.iter().any(|d| {
            d.name == "proxy_set_header"
                && d.arg(0).is_some_and(|h| h.eq_ignore_ascii_case("upgrade"))
        });
        let mut locs = Vec::new();
        locations(body, server_files, server_upgrade, &mut locs, &mut skipped);
        if !locs.iter().any(|(p, _)| p == "/") {
            // What a client reaches first; the server level decides it.
            let info = loc_info(
                &body
                    .iter()
                    .filter(|d| d.name != "location")
                    .cloned()
                    .collect::<Vec<_>>(),
                server_files,
                false,
                "(server level)".into(),
            );
            locs.insert(0, ("/".to_string(), info));
        }
        for &(port, tls) in &listens {
            for host in &names {
                for (path, info) in &locs {
                    for method in ["GET", "HEAD"] {
                        // HEAD asks for gzip (the answer's headers show it);
                        // GET does not, so that the echo can be read.
                        let headers = if method == "HEAD" {
                            vec![("Accept-Encoding".into(), "gzip".into())]
                        } else {
                            Vec::new()
                        };
                        cases.push(Case {
                            req: Req {
                                method: method.into(),
                                host: host.clone(),
                                path: path.clone(),
                                body: 0,
                                headers,
                            },
                            port,
                            tls,
                            loc: info.clone(),
                            shared: false,
                        });
                    }
                }
                if !posted && let Some((path, info)) = locs.iter().find(|(_, i)| i.proxied) {
                    posted = true;
                    cases.push(Case {
                        req: Req {
                            method: "POST".into(),
                            host: host.clone(),
                            path: path.clone(),
                            body: 1 << 20,
                            headers: Vec::new(),
                        },
                        port,
                        tls,
                        loc: info.clone(),
                        shared: false,
                    });
                }
            }
        }
        let (port, tls) = listens[0];
        for (path, info) in locs.iter().filter(|(_, i)| i.upgrade && i.proxied) {
            cases.push(Case {
                req: Req {
                    method: "GET".into(),
                    host: names[0].clone(),
                    path: path.clone(),
                    body: 0,
                    headers: vec![
                        ("Upgrade".into(), "websocket".into()),
                        ("Connection".into(), "Upgrade".into()),
                        (
                            "Sec-WebSocket-Key".into(),
                            "dGhlIHNhbXBsZSBub25jZQ==".into(),
                        ),
                        ("Sec-WebSocket-Version".into(), "13".into()),
                    ],
                },
                port,
                tls,
                loc: info.clone(),
                shared: false,
            });
        }
    }
    for c in &mut cases[first..] {
        c.shared = seen_names.get(&c.req.host).is_some_and(|n| *n > 1);
    }
    (cases, skipped, add_headers)
}

// ---------------------------------------------------------------- comparison

/// `scheme://host:NEW/x` → the original port; the request's own origin →
/// a relative path.
fn normalize_location(loc: &str, case: &Case, remap: &Remap) -> String {
    let mut l = loc.to_string();
    for (orig, new) in &remap.listen {
        l = l.replace(&format!(":{new}/"), &format!(":{orig}/"));
        if l.ends_with(&format!(":{new}")) {
            l = format!("{}:{orig}", &l[..l.len() - new.to_string().len() - 1]);
        }
    }
    let scheme = if case.tls { "https" } else { "http" };
    for prefix in [
        format!("{scheme}://{}:{}", case.req.host, case.port),
        format!("{scheme}://127.0.0.1:{}", case.port),
    ] {
        if let Some(rest) = l.strip_prefix(&prefix) {
            return if rest.is_empty() {
                "/".into()
            } else {
                rest.into()
            };
        }
    }
    l
}

/// What the comparison needs to know of the config: its `add_header`
/// names, the headers showing the cache, the upstream group of each
/// backend.
#[derive(Clone, Copy)]
struct ConfFacts<'a> {
    add_headers: &'a [String],
    cache_headers: &'a [String],
    groups: &'a BTreeMap<String, String>,
}

/// Differences of one pair, each tagged with its class.
fn compare(
    case: &Case,
    n: &Resp,
    a: &Resp,
    nr: &Remap,
    ar: &Remap,
    facts: &ConfFacts<'_>,
) -> Vec<(&'static str, String)> {
    let ConfFacts {
        add_headers,
        cache_headers,
        groups,
    } = *facts;
    let loc = &case.loc;
    let mut diffs: Vec<(&'static str, String)> = Vec::new();
    let fallback = |default: &'static str| -> &'static str {
        if loc.files && !loc.proxied && !loc.ret {
            "static-files"
        } else if case.shared {
            "per-listener"
        } else if loc.variable_pass {
            "map"
        } else if loc.ret {
            "return"
        } else if loc.rewrite {
            "rewrite"
        } else if loc.files && !loc.proxied {
            "static-files"
        } else if loc.auth {
            "auth"
        } else {
            default
        }
    };
    if n.error.is_some() || a.error.is_some() {
        if n.error != a.error {
            let class = if case.tls { "tls" } else { fallback("other") };
            diffs.push((
                class,
                format!("errors nginx {:?} aegis {:?}", n.error, a.error),
            ));
        }
        return diffs;
    }
    let nb = n.header("x-backend");
    let ab = a.header("x-backend");
    if n.status != a.status {
        let class = if nb.is_none() && loc.files && n.status != 404 && !loc.proxied {
            "static-files"
        } else {
            fallback("status")
        };
        diffs.push((
            class,
            format!("status nginx {} aegis {}", n.status, a.status),
        ));
    }
    let group =
        |b: Option<&str>| b.map(|b| groups.get(b).cloned().unwrap_or_else(|| b.to_string()));
    if group(nb) != group(ab) {
        diffs.push((
            fallback("backend"),
            format!("backend nginx {nb:?} aegis {ab:?}"),
        ));
    }
    let nl = n
        .header("location")
        .map(|l| normalize_location(l, case, nr));
    let al = a
        .header("location")
        .map(|l| normalize_location(l, case, ar));
    if nl != al {
        let class = if nl.is_some() && al.is_some() {
            "redirect-location"
        } else {
            fallback("redirect-location")
        };
        diffs.push((class, format!("location nginx {nl:?} aegis {al:?}")));
    }
    let from_backend = nb.is_some();
    // Two different answers: their headers differ because the answers do
    // (an `add_header` Aegis adds only to 2xx/3xx is absent from its 404);
    // the status difference above already classifies the pair.
    if n.status != a.status {
        return diffs;
    }
    // Proxy-generated errors: status only (difference "error pages").
    if !from_backend && n.status >= 400 {
        return diffs;
    }
    let mut names: Vec<&str> = vec!["content-type", "cache-control", "content-encoding"];
    names.extend(add_headers.iter().map(String::as_str));
    names.sort();
    names.dedup();
    for name in names {
        if matches!(name, "content-length" | "location" | "server" | "date") {
            continue;
        }
        if !from_backend && n.status >= 300 && name == "content-type" {
            continue; // difference "redirect bodies"
        }
        if n.status == 101 && name == "content-type" {
            continue;
        }
        let nv = n.headers.get(name);
        let av = a.headers.get(name);
        if nv == av {
            continue;
        }
        // Difference "add_header without always": Aegis adds to every status.
        if nv.is_none() && !ADD_HEADER_STATUSES.contains(&n.status) {
            continue;
        }
        let class = if name == "content-encoding" {
            "gzip"
        } else if cache_headers.iter().any(|h| h == name) || (loc.cache && name == "cache-control")
        {
            "proxy-cache"
        } else if loc.expires && name == "cache-control" {
            "expires"
        } else if name == "content-type" && (!from_backend || nb != ab) {
            fallback("header")
        } else {
            "header"
        };
        diffs.push((class, format!("header {name}: nginx {nv:?} aegis {av:?}")));
    }
    // What the backend received.
    if from_backend && nb == ab {
        let (ne, ae) = if n.status == 101 {
            let get = |r: &Resp, k: &str| r.header(k).unwrap_or("").to_string();
            (
                BTreeMap::from([
                    ("uri".to_string(), get(n, "x-echo-uri")),
                    ("h:host".to_string(), get(n, "x-echo-host")),
                ]),
                BTreeMap::from([
                    ("uri".to_string(), get(a, "x-echo-uri")),
                    ("h:host".to_string(), get(a, "x-echo-host")),
                ]),
            )
        } else {
            (echo_lines(&n.body), echo_lines(&a.body))
        };
        for k in ["method", "uri", "h:host", "body-length"] {
            let nv = ne.get(k);
            let av = ae.get(k);
            if nv == av {
                continue;
            }
            let class = match k {
                "h:host" => {
                    // Ports of the remap are not differences.
                    let unport = |v: Option<&String>, r: &Remap| {
                        v.map(|v| {
                            let mut v = v.clone();
                            for (o, nw) in &r.listen {
                                v = v.replace(&format!(":{nw}"), &format!(":{o}"));
                            }
                            v
                        })
                    };
                    if unport(nv, nr) == unport(av, ar) {
                        continue;
                    }
                    "host-header"
                }
                // Difference "Without a URI part": nginx passes the path as
                // the client sent it, Aegis the normalized one.
                "uri"
                    if normalize_path(&case.req.path) != case.req.path
                        && nv.map(|v| normalize_path(v)).as_deref() == av.map(String::as_str) =>
                {
                    continue;
                }
                "uri" if loc.rewrite => "rewrite",
                "uri" => "upstream-path",
                _ => "other",
            };
            diffs.push((
                class,
                format!("upstream saw {k}: nginx {nv:?} aegis {av:?}"),
            ));
        }
    }
    diffs
}

/// Classes of difference docs/nginx-migration.md documents (features the
/// importer reports as dropped or differing, not carried by Aegis yet).
const EXCUSED: &[&str] = &["static-files", "gzip", "map", "rewrite", "auth", "return"];

// ---------------------------------------------------------------- the run

#[derive(Default)]
struct Row {
    name: String,
    pairs: usize,
    exact: usize,
    excused: usize,
    skipped: usize,
    classes: BTreeMap<&'static str, usize>,
    note: String,
}

fn run_conf(nginx: &Path, path: &Path, tmp: &Path, rt: &tokio::runtime::Runtime) -> Row {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut row = Row {
        name: name.clone(),
        ..Default::default()
    };
    // The files it serves, staged where both nginx and Aegis read them.
    let text = stage::stage_roots(
        &std::fs::read_to_string(path).unwrap(),
        &tmp.join(format!("{name}-www")),
    );
    // Backends: one per upstream port of the config, named by it.
    let mut upstreams = BTreeMap::new();
    let mut back_names = BTreeMap::new();
    for p in upstream_ports(&text) {
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let new = l.local_addr().unwrap().port();
        upstreams.insert(p, new);
        back_names.insert(new, p);
        let label: &'static str = Box::leak(format!("b{p}").into_boxed_str());
        rt.spawn(backend(label, l));
    }
    let mut hosts = vec!["localhost".to_string()];
    for l in text.lines() {
        if let Some(rest) = l.trim().strip_prefix("server_name") {
            let rest = rest.split('#').next().unwrap_or("");
            let words: Vec<String> = rest
                .split(|c: char| c.is_whitespace() || c == ';')
                .map(str::to_string)
                .collect();
            for w in plain_names(&words) {
                if !hosts.contains(&w) {
                    hosts.push(w);
                }
            }
        }
    }
    let groups = upstream_groups(&text);
    let cert = rsa_cert(&hosts, tmp, &name);
    let tls_client = client_tls(&cert.0);

    let n_dir = tmp.join(format!("{name}-nginx"));
    let a_dir = tmp.join(format!("{name}-aegis"));
    let mut nr = Remap {
        listen: BTreeMap::new(),
    };
    let mut ar = Remap {
        listen: BTreeMap::new(),
    };
    let n_text = render(&text, &mut nr, &upstreams, &n_dir);
    let a_text = render(&text, &mut ar, &upstreams, &a_dir);
    let n_conf = lay_out(&n_dir, &name, &n_text, &cert);
    let a_conf = lay_out(&a_dir, &name, &a_text, &cert);

    // The battery, from what nginx will run.
    let back: BTreeMap<u16, u16> = nr.listen.iter().map(|(o, n)| (*n, *o)).collect();
    let tree = match parse_str(&n_text, &format!("{name}.conf"), &n_dir) {
        Ok(t) => t,
        Err(e) => {
            row.note = format!("parse: {e}");
            return row;
        }
    };
    let (cases, skipped, add_headers) = battery(&tree, &back);
    // add_header values that show the cache (`$upstream_cache_status`).
    let mut all = Vec::new();
    all_directives(&tree, &mut all);
    let cache_headers: Vec<String> = all
        .iter()
        .filter(|d| d.name == "add_header" && d.args.iter().any(|a| a.contains("upstream_cache")))
        .filter_map(|d| d.arg(0).map(str::to_ascii_lowercase))
        .collect();
    row.skipped = skipped;
    row.pairs = cases.len();

    // nginx.
    let check = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(&n_dir)
        .arg("-e")
        .arg(n_dir.join("logs/error.log"))
        .arg("-c")
        .arg(&n_conf)
        .output()
        .unwrap();
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr);
        let why = why
            .lines()
            .find(|l| l.contains("[emerg]"))
            .unwrap_or("nginx -t failed")
            .to_string();
        // Not a pair of answers: left out of the totals, named in the table.
        row.note = format!("nginx-refused ({} pairs not run): {why}", row.pairs);
        row.pairs = 0;
        return row;
    }
    let n_log = n_dir.join("logs/stderr.log");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&n_dir)
        .arg("-e")
        .arg(n_dir.join("logs/error.log"))
        .arg("-c")
        .arg(&n_conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&n_log).unwrap())
        .spawn()
        .unwrap();
    let mut n_proc = Proc {
        child,
        what: format!("nginx ({name})"),
        log: n_log,
    };

    // Import and Aegis.
    let out_dir = a_dir.join("aegis");
    let imported = Command::new(AEGIS)
        .arg("import-nginx")
        .arg(&a_conf)
        .arg("--out")
        .arg(&out_dir)
        .arg("--admin")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--allow-partial")
        .output()
        .unwrap();
    if !imported.status.success() {
        row.note = format!(
            "import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        *row.classes.entry("import-failed").or_default() += row.pairs;
        return row;
    }
    let a_log = a_dir.join("aegis.log");
    let child = Command::new(AEGIS)
        .arg("run")
        .arg("--config-dir")
        .arg(&out_dir)
        .current_dir(&a_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(a_dir.join("aegis.out")).unwrap())
        .stderr(std::fs::File::create(&a_log).unwrap())
        .spawn()
        .unwrap();
    let mut a_proc = Proc {
        child,
        what: format!("aegis ({name})"),
        log: a_log,
    };
    for (proc_, remap) in [(&mut n_proc, &nr), (&mut a_proc, &ar)] {
        for port in remap.listen.values() {
            if let Err(e) = wait_listening(*port, proc_) {
                row.note = e.lines().take(4).collect::<Vec<_>>().join(" | ");
                *row.classes.entry("not-listening").or_default() += row.pairs;
                return row;
            }
        }
    }

    let verbose = std::env::var_os("REAL_VERBOSE").is_some();
    for case in &cases {
        let tls = case.tls.then_some(&tls_client);
        let n = send(nr.listen[&case.port], &case.req, tls);
        let a = send(ar.listen[&case.port], &case.req, tls);
        let facts = ConfFacts {
            add_headers: &add_headers,
            cache_headers: &cache_headers,
            groups: &groups,
        };
        let mut diffs = compare(case, &n, &a, &nr, &ar, &facts);
        // An upgrade nginx did not make (or Aegis did not) is one difference.
        if (n.status == 101) != (a.status == 101) {
            diffs = vec![(
                "websocket",
                format!("status nginx {} aegis {}", n.status, a.status),
            )];
        }
        if diffs.is_empty() {
            row.exact += 1;
            row.excused += 1;
        } else if diffs.iter().all(|(c, _)| EXCUSED.contains(c)) {
            row.excused += 1;
        }
        let class = diffs
            .iter()
            .find(|(c, _)| !EXCUSED.contains(c))
            .or(diffs.first())
            .map(|(c, _)| *c);
        if let Some(class) = class {
            *row.classes.entry(class).or_default() += 1;
        }
        if verbose && !diffs.is_empty() {
            let scheme = if case.tls { "https" } else { "http" };
            eprintln!(
                "{name}: {scheme}:{} {} [{}]: {}",
                case.port,
                case.req.label(),
                case.loc.text,
                diffs
                    .iter()
                    .map(|(c, d)| format!("{c}: {d}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    let _ = back_names;
    row
}

/// A self-signed RSA certificate for `hosts` (openssl): several configs
/// pin RSA-only cipher suites, which an ECDSA key cannot serve.
fn rsa_cert(hosts: &[String], tmp: &Path, name: &str) -> (String, String) {
    let crt = tmp.join(format!("{name}.crt"));
    let key = tmp.join(format!("{name}.key"));
    let san: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "60",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args(["-subj", &format!("/CN={}", hosts[0])])
        .args(["-addext", &format!("subjectAltName={}", san.join(","))])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(&crt).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    )
}

fn read_baseline(path: &Path) -> BTreeMap<String, (usize, usize)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [name, _pairs, exact, excused] => Some((
                    name.to_string(),
                    (exact.parse().ok()?, excused.parse().ok()?),
                )),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn nginx_real_corpus() {
    // A battery that did not run must not count as passed.
    let Some(nginx) = find_nginx() else {
        panic!("nginx is not installed: run `bash .ci/install-deps` (or `apt-get install nginx`)");
    };
    let mut confs: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    confs.sort();
    assert!(confs.len() >= 20, "the corpus has {} configs", confs.len());
    let only = std::env::var("REAL_ONLY").ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // nginx's workers may run as an unprivileged user.
    let _ = std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let mut rows = Vec::new();
    for path in &confs {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if only.as_ref().is_some_and(|o| !stem.contains(o.as_str())) {
            continue;
        }
        rows.push(run_conf(&nginx, path, tmp.path(), &rt));
    }

    let mut totals = Row::default();
    println!(
        "{:<30} {:>5} {:>5} {:>7} {:>4}  remaining differences by class",
        "config", "pairs", "exact", "excused", "skip"
    );
    for r in &rows {
        let rest: Vec<String> = r.classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "{:<30} {:>5} {:>5} {:>7} {:>4}  {} {}",
            r.name,
            r.pairs,
            r.exact,
            r.excused,
            r.skipped,
            rest.join(", "),
            r.note
        );
        totals.pairs += r.pairs;
        totals.exact += r.exact;
        totals.excused += r.excused;
        totals.skipped += r.skipped;
        for (c, n) in &r.classes {
            *totals.classes.entry(c).or_default() += n;
        }
    }
    let pct = |n: usize| {
        if totals.pairs == 0 {
            0.0
        } else {
            100.0 * n as f64 / totals.pairs as f64
        }
    };
    println!(
        "real corpus: {} pairs, {} exact ({:.1} %), {} once documented differences are excused ({:.1} %), {} locations skipped",
        totals.pairs,
        totals.exact,
        pct(totals.exact),
        totals.excused,
        pct(totals.excused),
        totals.skipped
    );
    let by_class: Vec<String> = totals
        .classes
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!(
        "real corpus: pairs with a difference, by class: {}",
        by_class.join(", ")
    );

    let baseline_path = corpus().join("BASELINE");
    if std::env::var_os("REAL_WRITE_BASELINE").is_some() {
        let mut text = String::from(
            "# Matched pairs per config of the real-config battery (proxy/tests/nginx_real.rs):\n\
             # config pairs exact excused. The test fails when a config matches fewer.\n\
             # Rewrite with REAL_WRITE_BASELINE=1 after an improvement.\n",
        );
        for r in &rows {
            text.push_str(&format!(
                "{} {} {} {}\n",
                r.name, r.pairs, r.exact, r.excused
            ));
        }
        std::fs::write(&baseline_path, text).unwrap();
        println!("baseline written to {}", baseline_path.display());
        return;
    }
    let baseline = read_baseline(&baseline_path);
    assert!(
        !baseline.is_empty(),
        "{} is missing or empty",
        baseline_path.display()
    );
    let mut regressions = Vec::new();
    for r in &rows {
        let Some(&(exact, excused)) = baseline.get(&r.name) else {
            regressions.push(format!("{}: not in the baseline", r.name));
            continue;
        };
        if r.exact < exact || r.excused < excused {
            regressions.push(format!(
                "{}: exact {} (baseline {exact}), excused {} (baseline {excused})",
                r.name, r.exact, r.excused
            ));
        }
    }
    assert!(
        regressions.is_empty(),
        "regressions against the baseline:\n{}",
        regressions.join("\n")
    );
}
