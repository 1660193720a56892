//! The `static` route action over real sockets: a real `aegis run` serving
//! a temporary root, checked against nginx's behaviour for `root`, `alias`,
//! `index`, `try_files`, validators, ranges, `expires` and `add_header`'s
//! status rule; and `aegis check` refusing a root that is not there.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use util::*;

use util::aegis_check as check;
use util::request as req;

/// Lays out a root, a single-page app and a directory outside both.
fn lay_out(base: &Path) {
    let root = base.join("root");
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    std::fs::write(root.join("hello.txt"), "hello world\n").unwrap();
    std::fs::write(root.join("dir/index.html"), "<p>dir</p>").unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(base.join("outside/secret.txt"), "SECRET").unwrap();
    std::os::unix::fs::symlink(base.join("outside/secret.txt"), root.join("leak")).unwrap();
    std::os::unix::fs::symlink(root.join("hello.txt"), root.join("inside")).unwrap();
    let spa = base.join("spa");
    std::fs::create_dir_all(spa.join("assets")).unwrap();
    std::fs::write(spa.join("index.html"), "<html>spa</html>").unwrap();
    std::fs::write(spa.join("assets/app.js"), "console.log(1)").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_served_as_nginx_serves_them() {
    let files = tempfile::tempdir().unwrap();
    lay_out(files.path());
    let root = files.path().join("root");
    let spa = files.path().join("spa");
    let app = Backend::start("app").await;
    let routes = format!(
        r#"
upstreams:
  - name: app
    endpoints: ["{app}"]
routes:
  - name: assets
    match: {{ host: files.test, path_prefix: /assets/ }}
    static: {{ alias: "{spa}/assets/" }}
  - name: files
    match: {{ host: files.test, path_prefix: / }}
    static: {{ root: "{root}" }}
    expires: 30d
    response_headers: {{ set: {{ x-ok: "1" }}, always: false }}
  - name: spa
    match: {{ host: spa.test, path_prefix: / }}
    static: {{ root: "{spa}", try_files: ["$uri", "$uri/", "/index.html"] }}
  - name: captured
    match: {{ host: cap.test, path_regex: "^/c/(dir|x)/(.*)$" }}
    static: {{ alias: "{root}/$1/$2" }}
  - name: captured-try
    match: {{ host: cap.test, path_regex: "^/t/(.*)$" }}
    static: {{ root: "{root}", try_files: ["/dir/$1", "=404"] }}
  - name: one-file
    match: {{ host: noetag.test, path: /config.js }}
    static: {{ alias: "{root}/hello.txt" }}
  - name: one-file-regex
    match: {{ host: noetag.test, path_regex: "^/([a-z]+)/config.js$" }}
    static: {{ alias: "{root}/hello.txt" }}
  - name: no-etag
    match: {{ host: noetag.test, path_prefix: / }}
    static: {{ root: "{root}", etag: false }}
  - name: strict
    match: {{ host: strict.test, path_prefix: / }}
    static: {{ root: "{root}", try_files: ["$uri", "=404"] }}
  - name: hybrid
    match: {{ host: hybrid.test, path_prefix: / }}
    static: {{ root: "{root}", try_files: ["$uri", "@app"] }}
  - name: app
    internal: true
    upstream: app
  - name: follow
    match: {{ host: follow.test, path_prefix: / }}
    static: {{ root: "{root}", symlinks: follow }}
"#,
        app = app.addr,
        spa = spa.display(),
        root = root.display(),
    );
    let p = Proxy::start("", &routes);
    let c = client();

    // A file: type, length, nginx's ETag, Last-Modified, expires, the edit.
    let meta = std::fs::metadata(root.join("hello.txt")).unwrap();
    let etag = format!("\"{:x}-{:x}\"", meta.mtime(), meta.len());
    let got = send(&c, req(&p, "GET", "files.test", "/hello.txt", &[])).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello world\n");
    assert_eq!(got.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(got.header("content-length").as_deref(), Some("12"));
    assert_eq!(got.header("etag"), Some(etag.clone()));
    assert!(got.header("last-modified").unwrap().ends_with(" GMT"));
    assert_eq!(
        got.header("cache-control").as_deref(),
        Some("max-age=2592000")
    );
    assert!(got.header("expires").unwrap().ends_with(" GMT"));
    assert_eq!(got.header("x-ok").as_deref(), Some("1"));

    let got = send(&c, req(&p, "HEAD", "files.test", "/hello.txt", &[])).await;
    assert_eq!((got.status, got.body.len()), (200, 0));
    assert_eq!(got.header("content-length").as_deref(), Some("12"));

    // Validators.
    let got = send(
        &c,
        req(
            &p,
            "GET",
            "files.test",
            "/hello.txt",
            &[("if-none-match", &etag)],
        ),
    )
    .await;
    assert_eq!((got.status, got.body.len()), (304, 0));
    assert_eq!(
        got.header("x-ok").as_deref(),
        Some("1"),
        "304 is an add_header status"
    );
    // nginx `etag off`: no ETag, so If-None-Match with the old one does
    // not match; Last-Modified still validates.
    let got = send(
        &c,
        req(
            &p,
            "GET",
            "noetag.test",
            "/hello.txt",
            &[("if-none-match", &etag)],
        ),
    )
    .await;
    assert_eq!((got.status, got.header("etag")), (200, None));
    assert!(got.header("last-modified").is_some());
    // Regex captures in alias and try_files (Jitsi's `alias .../$1/$2`,
    // PeerTube's `try_files /storage/.../$1`), and no climbing out through
    // an encoded capture.
    for (path, want) in [
        ("/c/dir/index.html", 200),
        ("/t/index.html", 200),
        ("/c/x/index.html", 404),
        ("/c/dir/..%2f..%2foutside%2fsecret.txt", 404),
        ("/t/..%2f..%2foutside%2fsecret.txt", 404),
    ] {
        let got = send(&c, req(&p, "GET", "cap.test", path, &[])).await;
        assert_eq!(got.status, want, "{path}");
        if want == 200 {
            assert_eq!(&got.body[..], b"<p>dir</p>", "{path}");
        }
    }
    // nginx `location = /config.js { alias /path/to/file; }`: the alias is
    // the file.
    let got = send(&c, req(&p, "GET", "noetag.test", "/config.js", &[])).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"hello world\n"[..]));
    // On a regex route (Jitsi's `location ~ ^/([^/]+)/config.js$`) the
    // one file answers every path the regex takes, with its own type.
    let got = send(&c, req(&p, "GET", "noetag.test", "/room/config.js", &[])).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"hello world\n"[..]));
    assert_eq!(got.header("content-type").as_deref(), Some("text/plain"));
    let lm = send(&c, req(&p, "GET", "files.test", "/hello.txt", &[]))
        .await
        .header("last-modified")
        .unwrap();
    let got = send(
        &c,
        req(
            &p,
            "GET",
            "files.test",
            "/hello.txt",
            &[("if-modified-since", &lm)],
        ),
    )
    .await;
    assert_eq!(got.status, 304);

    // Ranges.
    let got = send(
        &c,
        req(
            &p,
            "GET",
            "files.test",
            "/hello.txt",
            &[("range", "bytes=0-4")],
        ),
    )
    .await;
    assert_eq!((got.status, got.text().as_str()), (206, "hello"));
    assert_eq!(got.header("content-range").as_deref(), Some("bytes 0-4/12"));
    let got = send(
        &c,
        req(
            &p,
            "GET",
            "files.test",
            "/hello.txt",
            &[("range", "bytes=-6")],
        ),
    )
    .await;
    assert_eq!((got.status, got.text().as_str()), (206, "world\n"));
    let got = send(
        &c,
        req(
            &p,
            "GET",
            "files.test",
            "/hello.txt",
            &[("range", "bytes=100-")],
        ),
    )
    .await;
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range").as_deref(), Some("bytes */12"));
    // nginx's add_header without `always`, and expires: not on a 416.
    assert_eq!(got.header("x-ok"), None);
    assert_eq!(got.header("cache-control"), None);

    // Directories: the slash redirect, the index, no autoindex.
    let got = send(&c, req(&p, "GET", "files.test", "/dir", &[])).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location").as_deref(), Some("/dir/"));
    let got = send(&c, req(&p, "GET", "files.test", "/dir/", &[])).await;
    assert_eq!((got.status, got.text().as_str()), (200, "<p>dir</p>"));
    assert_eq!(got.header("content-type").as_deref(), Some("text/html"));
    assert_eq!(
        send(&c, req(&p, "GET", "files.test", "/emptydir/", &[]))
            .await
            .status,
        403
    );
    let got = send(&c, req(&p, "GET", "files.test", "/missing", &[])).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("x-ok"), None);

    let got = send(&c, req(&p, "POST", "files.test", "/hello.txt", &[])).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.header("allow").as_deref(), Some("GET, HEAD"));

    // alias: the route's prefix is replaced by the alias.
    let got = send(&c, req(&p, "GET", "files.test", "/assets/app.js", &[])).await;
    assert_eq!((got.status, got.text().as_str()), (200, "console.log(1)"));
    assert_eq!(
        got.header("content-type").as_deref(),
        Some("application/javascript")
    );

    // try_files: the SPA fallback, =404, and a named route.
    let got = send(&c, req(&p, "GET", "spa.test", "/deep/link", &[])).await;
    assert_eq!((got.status, got.text().as_str()), (200, "<html>spa</html>"));
    let got = send(&c, req(&p, "GET", "spa.test", "/assets/app.js", &[])).await;
    assert_eq!((got.status, got.text().as_str()), (200, "console.log(1)"));
    assert_eq!(
        send(&c, req(&p, "GET", "strict.test", "/nope", &[]))
            .await
            .status,
        404
    );
    assert_eq!(
        send(&c, req(&p, "GET", "strict.test", "/hello.txt", &[]))
            .await
            .status,
        200
    );
    let got = send(&c, req(&p, "GET", "hybrid.test", "/hello.txt", &[])).await;
    assert_eq!((got.status, got.backend()), (200, None));
    let got = send(&c, req(&p, "GET", "hybrid.test", "/api/x", &[])).await;
    assert_eq!((got.status, got.backend().as_deref()), (200, Some("app")));
    // `$uri` tests a file: a directory (even one with an index) is not
    // one, so nginx hands `/dir/` to the named location (only `$uri/`
    // would serve the index).
    let got = send(&c, req(&p, "GET", "hybrid.test", "/dir/", &[])).await;
    assert_eq!((got.status, got.backend().as_deref()), (200, Some("app")));
    // try_files looks before the method matters: a POST for a path with no
    // file reaches the named route, body and all (Discourse's `POST /`);
    // a POST for a file that exists is 405.
    let post = http::Request::post(p.url("/upload"))
        .header("host", "hybrid.test")
        .body(full(vec![b'x'; 5000]))
        .unwrap();
    let got = send(&c, post).await;
    assert_eq!(
        (got.status, &got.body[..], got.backend().as_deref()),
        (200, &b"5000"[..], Some("app"))
    );
    let got = send(&c, req(&p, "POST", "hybrid.test", "/hello.txt", &[])).await;
    assert_eq!(got.status, 405);
    // The named route is reached only through the fallback: a request of
    // its own, whatever its host, is not routed to it.
    let got = send(&c, req(&p, "GET", "app.internal", "/api/x", &[])).await;
    assert_eq!((got.status, got.backend()), (404, None));

    // Symlinks: out of the root only with `follow`.
    assert_eq!(
        send(&c, req(&p, "GET", "files.test", "/leak", &[]))
            .await
            .status,
        404
    );
    assert_eq!(
        send(&c, req(&p, "GET", "files.test", "/inside", &[]))
            .await
            .status,
        200
    );
    let got = send(&c, req(&p, "GET", "follow.test", "/leak", &[])).await;
    assert_eq!((got.status, got.text().as_str()), (200, "SECRET"));

    // Traversal, plain and encoded (also through an encoded slash).
    for path in [
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/dir/%2E%2E/%2e%2e/outside/secret.txt",
        "/dir/..%2f..%2foutside%2fsecret.txt",
        "/dir%2f..%2f..%2foutside%2fsecret.txt",
    ] {
        let answer = raw(
            p.http,
            format!("GET {path} HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        );
        let status = status_of(&answer);
        assert!(status == 400 || status == 404, "{path}: {answer}");
        assert!(!answer.contains("SECRET"), "{path}: {answer}");
    }
}

/// A 50 MiB file is streamed: with the client reading only the first
/// chunk and then stalling, the proxy's RSS does not grow by the file's
/// size (a reader that loads the file whole would hold all 50 MiB now, since
/// the socket buffers take a few MiB at most), and the whole file arrives
/// once the client reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_streamed_not_loaded() {
    const SIZE: usize = 50 * 1024 * 1024;
    let files = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(files.path().join("big.bin"), &data).unwrap();
    drop(data);
    let routes = format!(
        "routes:\n  - name: f\n    match: {{ path_prefix: / }}\n    static: {{ root: \"{}\" }}\n",
        files.path().display()
    );
    let p = Proxy::start("", &routes);
    // Warm up the process's runtime and allocator first.
    let c = client();
    assert_eq!(get(&c, &p.url("/nothing"), None).await.status, 404);
    let before = p.rss_kib();
    let addr = p.http;
    let mut s = TcpStream::connect(addr).unwrap();
    // A small receive window keeps the kernel from buffering much for us.
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    let n = s.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n.min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {SIZE}")),
        "{head}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = p.rss_kib();
    let grown = during.saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "RSS grew {grown} KiB while serving a 50 MiB file"
    );
    let mut total = n;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => total += k,
            Err(e) => panic!("read: {e}"),
        }
    }
    let header_len = first[..n]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    assert_eq!(total - header_len, SIZE);
}

#[test]
fn check_refuses_a_root_that_is_not_there_and_unknown_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(dir.path().join("aegis.yaml"), "listen: [\"127.0.0.1:0\"]\n").unwrap();
    let write = |text: String| std::fs::write(dir.path().join("routes.yaml"), text).unwrap();

    write(format!(
        "routes:\n  - name: f\n    match: {{ path_prefix: / }}\n    static: {{ root: \"{}\" }}\n    expires: 1h\n",
        root.display()
    ));
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");
    // Relative to the config directory.
    write(
        "routes:\n  - name: f\n    match: { path_prefix: / }\n    static: { root: www }\n".into(),
    );
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");

    write(format!(
        "routes:\n  - name: f\n    match: {{ path_prefix: / }}\n    static: {{ root: \"{}/moved\" }}\n",
        root.display()
    ));
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("routes[0].static.root"), "{text}");
    assert!(text.contains("does not exist"), "{text}");

    write(format!(
        "routes:\n  - name: f\n    match: {{ path_prefix: / }}\n    static: {{ root: \"{}\", try_files: [\"$uri\", \"@gone\"] }}\n",
        root.display()
    ));
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("@gone"), "{text}");

    // Captures need a regex to come from.
    write(format!(
        "routes:\n  - name: f\n    match: {{ path_prefix: / }}\n    static: {{ root: \"{}\", try_files: [\"/x/$1\", \"=404\"] }}\n",
        root.display()
    ));
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("captures of match.path_regex"), "{text}");

    // An internal route is reached by name only: a match on it is refused.
    write(
        "routes:\n  - name: f\n    internal: true\n    match: { path_prefix: /x }\n    respond: { status: 200 }\n".into(),
    );
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("routes[0].match"), "{text}");
    assert!(text.contains("takes no match"), "{text}");

    write("routes:\n  - name: f\n    match: { path_prefix: / }\n    respond: { status: 200 }\n    expires: soon\n".into());
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("routes[0].expires"), "{text}");
}
