//! The nginx parity suite: every `tests/parity/configs/*.conf` runs for real
//! under nginx and, imported with `aegis import-nginx`, under `aegis run`, in
//! front of the same backends. One fixed set of requests goes to both;
//! status, backend reached, Location, headers and body must match, apart
//! from the differences documented in docs/nginx-migration.md (each
//! allowance below names the one it stands for).
//!
//! Skipped, with a message, when nginx is not installed (CI installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod util;
use util::nginx::*;

// ---------------------------------------------------------------- configs

/// The paths every config gets, with each of its hosts.
const BASE_PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/users?id=7",
    "/app",
    "/app/page",
    "/static/app.js",
    "/images/logo.PNG",
    "/old",
    "/health",
    "/public/../api/x",
    "//api//double",
];

struct ParityConf {
    name: String,
    text: String,
    requests: Vec<Req>,
    pools: Vec<Vec<String>>,
    files: Vec<String>,
    allow_partial: bool,
    /// Served over TLS with a certificate made for `hosts`.
    tls: bool,
    hosts: Vec<String>,
}

fn load_conf(path: &Path) -> ParityConf {
    let text = std::fs::read_to_string(path).unwrap();
    let mut hosts = Vec::new();
    let mut extra = Vec::new();
    let mut pools = Vec::new();
    let mut files = Vec::new();
    let mut allow_partial = false;
    let mut tls = false;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("# parity:") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        match words.next() {
            Some("hosts") => hosts.extend(words.map(str::to_string)),
            Some("pool") => pools.push(words.map(str::to_string).collect()),
            Some("files") => files.extend(words.map(str::to_string)),
            Some("allow-partial") => allow_partial = true,
            Some("tls") => tls = true,
            Some("request") => {
                let method = words.next().unwrap().to_string();
                let host = words.next().unwrap().to_string();
                let req_path = words.next().unwrap().to_string();
                let mut req = Req {
                    method,
                    host,
                    path: req_path,
                    body: 0,
                    headers: Vec::new(),
                };
                for w in words {
                    if let Some(n) = w.strip_prefix("body=") {
                        req.body = n.parse().unwrap();
                    } else if let Some(h) = w.strip_prefix("header=") {
                        let (k, v) = h.split_once(':').unwrap();
                        req.headers.push((k.to_string(), v.to_string()));
                    } else {
                        panic!("{}: unknown request option {w}", path.display());
                    }
                }
                extra.push(req);
            }
            other => panic!("{}: unknown parity line {other:?}", path.display()),
        }
    }
    let mut requests = Vec::new();
    for h in &hosts {
        for p in BASE_PATHS {
            requests.push(Req {
                method: "GET".into(),
                host: h.clone(),
                path: p.to_string(),
                body: 0,
                headers: Vec::new(),
            });
        }
    }
    requests.extend(extra);
    ParityConf {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        text,
        requests,
        pools,
        files,
        allow_partial,
        tls,
        hosts,
    }
}

struct Ports {
    b: [u16; 3],
    dead: u16,
}

fn render(text: &str, ports: &Ports, listen: u16) -> String {
    text.replace("{{PORT}}", &listen.to_string())
        .replace("{{B1}}", &ports.b[0].to_string())
        .replace("{{B2}}", &ports.b[1].to_string())
        .replace("{{B3}}", &ports.b[2].to_string())
        .replace("{{DEAD}}", &ports.dead.to_string())
}

/// Writes the private nginx.conf wrapper, the site file and its extra
/// directories into `dir`, rendered for `listen`.
fn lay_out(
    dir: &Path,
    conf: &ParityConf,
    ports: &Ports,
    listen: u16,
    configs: &Path,
    cert: Option<&(String, String)>,
) {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    if let Some((crt, key)) = cert {
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        std::fs::write(dir.join("certs/site.crt"), crt).unwrap();
        std::fs::write(dir.join("certs/site.key"), key).unwrap();
    }
    write_wrapper(dir, "parity suite");
    std::fs::write(dir.join("site.conf"), render(&conf.text, ports, listen)).unwrap();
    for sub in &conf.files {
        let from = configs.join(sub);
        let to = dir.join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            std::fs::write(to.join(e.file_name()), render(&text, ports, listen)).unwrap();
        }
    }
}

fn pool_of(conf: &ParityConf, backend: &str) -> String {
    conf.pools
        .iter()
        .find(|p| p.iter().any(|b| b == backend))
        .map_or(backend.to_string(), |p| p.join("|"))
}

/// `http://host:port/x` with the proxy's own port → `/x` (difference
/// "absolute redirects": nginx makes relative redirects absolute).
fn normalize_location(loc: &str, host: &str, own_port: u16) -> String {
    for prefix in [
        format!("http://{host}:{own_port}"),
        format!("http://127.0.0.1:{own_port}"),
        format!("https://{host}:{own_port}"),
    ] {
        if let Some(rest) = loc.strip_prefix(&prefix) {
            return if rest.is_empty() {
                "/".into()
            } else {
                rest.into()
            };
        }
    }
    loc.to_string()
}

/// The differences between nginx's and Aegis's answer to one request, after
/// the documented allowances.
fn compare(
    conf: &ParityConf,
    req: &Req,
    n: &Resp,
    a: &Resp,
    n_port: u16,
    a_port: u16,
) -> Vec<String> {
    let mut diffs = Vec::new();
    if let Some(e) = &n.error {
        diffs.push(format!("nginx: {e}"));
    }
    if let Some(e) = &a.error {
        diffs.push(format!("aegis: {e}"));
    }
    if !diffs.is_empty() {
        return diffs;
    }
    if n.status != a.status {
        diffs.push(format!("status nginx {} aegis {}", n.status, a.status));
    }
    let nb = n.header("x-backend").map(|b| pool_of(conf, b));
    let ab = a.header("x-backend").map(|b| pool_of(conf, b));
    if nb != ab {
        diffs.push(format!("backend nginx {nb:?} aegis {ab:?}"));
    }
    let nl = n
        .header("location")
        .map(|l| normalize_location(l, &req.host, n_port));
    let al = a
        .header("location")
        .map(|l| normalize_location(l, &req.host, a_port));
    if nl != al {
        diffs.push(format!("location nginx {nl:?} aegis {al:?}"));
    }
    let from_backend = nb.is_some();
    // Proxy-generated errors: status only (difference "error pages").
    if !from_backend && n.status >= 400 {
        return diffs;
    }
    // Headers.
    let mut names: Vec<&String> = n.headers.keys().chain(a.headers.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        // x-backend and location are compared above.
        if IGNORED_RESPONSE.contains(&name.as_str()) || name == "location" || name == "x-backend" {
            continue;
        }
        // Difference "redirect bodies": nginx's 3xx carry an HTML page.
        if !from_backend && n.status >= 300 && name == "content-type" {
            continue;
        }
        // Difference "Content-Type of return text": nginx types it by the
        // URI's extension.
        if !from_backend && name == "content-type" && has_extension(&req.path) {
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
        diffs.push(format!("header {name}: nginx {nv:?} aegis {av:?}"));
    }
    // Body.
    if from_backend {
        let ne = echo_lines(&n.body);
        let ae = echo_lines(&a.body);
        let mut keys: Vec<&String> = ne.keys().chain(ae.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if k == "backend" {
                continue; // compared above, through the pools
            }
            if k == "h:connection" {
                continue; // nginx speaks HTTP/1.0 with Connection: close by default
            }
            let nv = ne.get(k);
            let av = ae.get(k);
            if nv == av {
                continue;
            }
            if nv.is_none() && AEGIS_DEFAULT_REQUEST.contains(&k.as_str()) {
                continue;
            }
            // Difference "Without a URI part": nginx
            // passes the path as the client sent it, Aegis the normalized one.
            if k == "uri"
                && normalize_path(&req.path) != req.path
                && nv.map(|v| normalize_path(v)).as_deref() == av.map(String::as_str)
            {
                continue;
            }
            diffs.push(format!("upstream saw {k}: nginx {nv:?} aegis {av:?}"));
        }
    } else if n.status < 300 && n.body != a.body {
        diffs.push(format!(
            "body nginx {:?} aegis {:?}",
            String::from_utf8_lossy(&n.body),
            String::from_utf8_lossy(&a.body)
        ));
    }
    diffs
}

// ---------------------------------------------------------------- the suite

struct ConfResult {
    name: String,
    pairs: usize,
    matched: usize,
    failures: Vec<String>,
}

fn run_conf(
    nginx: &Path,
    conf: &ParityConf,
    ports: &Ports,
    configs: &Path,
    tmp: &Path,
) -> Result<ConfResult, String> {
    let n_port = free_port();
    let a_port = free_port();
    let admin_port = free_port();
    let n_dir = tmp.join(format!("{}-nginx", conf.name));
    let a_dir = tmp.join(format!("{}-aegis", conf.name));
    let cert = conf.tls.then(|| {
        let c = rcgen::generate_simple_self_signed(conf.hosts.clone()).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    });
    lay_out(&n_dir, conf, ports, n_port, configs, cert.as_ref());
    lay_out(&a_dir, conf, ports, a_port, configs, cert.as_ref());
    let tls = cert.as_ref().map(|(crt, _)| client_tls(crt));

    // nginx.
    let n_log = n_dir.join("logs/stderr.log");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&n_dir)
        .arg("-e")
        .arg(n_dir.join("logs/error.log"))
        .arg("-c")
        .arg(n_dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&n_log).unwrap())
        .spawn()
        .map_err(|e| format!("starting nginx: {e}"))?;
    let mut n_proc = Proc {
        child,
        what: format!("nginx ({})", conf.name),
        log: n_log,
    };

    // Import, then aegis.
    let out_dir = a_dir.join("aegis");
    let mut import = Command::new(AEGIS);
    import
        .arg("import-nginx")
        .arg(a_dir.join("nginx.conf"))
        .arg("--out")
        .arg(&out_dir)
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin_port}"));
    if conf.allow_partial {
        import.arg("--allow-partial");
    }
    let imported = import.output().map_err(|e| format!("import: {e}"))?;
    if !imported.status.success() {
        return Err(format!(
            "aegis import-nginx failed ({}):\n{}{}",
            imported.status,
            String::from_utf8_lossy(&imported.stdout),
            String::from_utf8_lossy(&imported.stderr)
        ));
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
        .map_err(|e| format!("starting aegis: {e}"))?;
    let mut a_proc = Proc {
        child,
        what: format!("aegis ({})", conf.name),
        log: a_log,
    };
    wait_listening(n_port, &mut n_proc)?;
    wait_listening(a_port, &mut a_proc)?;

    let mut result = ConfResult {
        name: conf.name.clone(),
        pairs: 0,
        matched: 0,
        failures: Vec::new(),
    };
    let n_resps: Vec<Resp> = conf
        .requests
        .iter()
        .map(|r| send(n_port, r, tls.as_ref()))
        .collect();
    let a_resps: Vec<Resp> = conf
        .requests
        .iter()
        .map(|r| send(a_port, r, tls.as_ref()))
        .collect();
    if std::env::var_os("PARITY_VERBOSE").is_some() {
        for ((r, n), a) in conf.requests.iter().zip(&n_resps).zip(&a_resps) {
            eprintln!(
                "{}: {}: nginx {} {:?} {:?} | aegis {} {:?} {:?}",
                conf.name,
                r.label(),
                n.status,
                n.header("x-backend"),
                n.header("location"),
                a.status,
                a.header("x-backend"),
                a.header("location")
            );
        }
    }
    for ((req, n), a) in conf.requests.iter().zip(&n_resps).zip(&a_resps) {
        result.pairs += 1;
        let diffs = compare(conf, req, n, a, n_port, a_port);
        if diffs.is_empty() {
            result.matched += 1;
        } else {
            result.failures.push(format!(
                "{}: {}: {}",
                conf.name,
                req.label(),
                diffs.join("; ")
            ));
        }
    }
    if std::env::var_os("PARITY_VERBOSE").is_some() {
        eprintln!(
            "--- {} import:\n{}",
            conf.name,
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    Ok(result)
}

#[test]
fn nginx_parity() {
    // A parity suite that did not run must not count as passed.
    let Some(nginx) = find_nginx() else {
        panic!("nginx is not installed: run `bash .ci/install-deps` (or `apt-get install nginx`)");
    };
    let configs = repo_root().join("tests/parity/configs");
    let mut confs: Vec<PathBuf> = std::fs::read_dir(&configs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    confs.sort();
    assert!(confs.len() >= 8, "the suite needs at least 8 configs");
    let only = std::env::var("PARITY_ONLY").ok();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let names = ["B1", "B2", "B3"];
    let mut b = [0u16; 3];
    for (i, name) in names.iter().enumerate() {
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        b[i] = l.local_addr().unwrap().port();
        rt.spawn(backend(name, l));
    }
    let ports = Ports {
        b,
        dead: free_port(),
    };
    let tmp = tempfile::tempdir().unwrap();
    // nginx's workers may run as an unprivileged user.
    let _ = std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );

    let mut total = 0;
    let mut matched = 0;
    let mut failures = Vec::new();
    for path in &confs {
        let conf = load_conf(path);
        if only
            .as_ref()
            .is_some_and(|o| !conf.name.contains(o.as_str()))
        {
            continue;
        }
        match run_conf(&nginx, &conf, &ports, &configs, tmp.path()) {
            Ok(r) => {
                println!("parity: {}: {}/{} matched", r.name, r.matched, r.pairs);
                total += r.pairs;
                matched += r.matched;
                failures.extend(r.failures);
            }
            Err(e) => {
                let pairs = conf.requests.len();
                println!("parity: {}: 0/{pairs} matched: {e}", conf.name);
                total += pairs;
                failures.push(format!("{}: {e}", conf.name));
            }
        }
    }
    for f in &failures {
        println!("MISMATCH {f}");
    }
    println!("parity: {matched}/{total} request/config pairs matched");
    assert!(
        failures.is_empty(),
        "{} mismatches (listed above)",
        failures.len()
    );
}

/// The import's contract on the command line: the error listing names
/// `file:line` and why; exit 1 and nothing written when something that
/// changes behaviour was dropped, unless --allow-partial; exit 2 when the
/// nginx config cannot be read. (No nginx needed.)
#[test]
fn import_exit_codes_and_error_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("nginx.conf");
    std::fs::write(
        &conf,
        "events {}\nhttp {\n  gzip on;\n  server {\n    listen 127.0.0.1:8080;\n    location / {\n      proxy_set_header X-Conn $connection;\n      proxy_pass http://127.0.0.1:9001;\n    }\n  }\n}\n",
    )
    .unwrap();
    let run = |extra: &[&str], out: &Path| {
        Command::new(AEGIS)
            .arg("import-nginx")
            .arg(&conf)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = tmp.path().join("strict");
    let o = run(&[], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // `gzip on` is carried (aegis.yaml `compression`) and never fails the
    // import (issue 17).
    assert!(!err.contains("`gzip on`"), "{err}");
    assert!(
        err.contains("nginx.conf:7: dropped: `proxy_set_header X-Conn $connection`"),
        "{err}"
    );
    assert!(err.contains("--allow-partial"), "{err}");
    assert!(!out.join("routes.yaml").exists());

    let out = tmp.path().join("partial");
    let o = run(&["--allow-partial", "--admin", "off"], &out);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.join("routes.yaml").exists());
    let report = std::fs::read_to_string(out.join("IMPORT-REPORT.txt")).unwrap();
    assert!(
        report.contains("Dropped (clients would see a difference): 1"),
        "{report}"
    );
    let check = Command::new(AEGIS)
        .args(["check", "--config-dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A second import into the same directory refuses to mix sets.
    let o = run(&["--allow-partial"], &out);
    assert_eq!(o.status.code(), Some(2));

    std::fs::write(&conf, "http {\n  server {\n    listen 80\n  }\n").unwrap();
    let o = run(&[], &tmp.path().join("broken"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("nginx.conf:4"), "{err}");
}
