//! What the traffic sample keeps of a request, tried as a user would send
//! it to a real `aegis run`: secrets in query parameters, token-like
//! headers, cookies and path segments are masked by default with
//! placeholders of the same length, cookie names are kept, the body length
//! and the arrival time are recorded, and the file is private (0600 in a
//! 0700 directory).

mod util;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use aegis_engine::sample::{SampleLimits, SampledRequest, TrafficSample};
use util::Proxy;

const ROUTES: &str = r#"
routes:
  - name: all
    match: { path_prefix: / }
    respond: { status: 200, body: "ok\n" }
"#;

/// Distinct, greppable secrets.
const QUERY_TOKEN: &str = "qTok3nZZ9sec";
const ACCESS_TOKEN: &str = "aCc3ssT0kenYY";
const AMZ_SIG: &str = "f00dfeedbeef1234";
const AUTH_TOKEN: &str = "xAuthT0kenQQ7";
const AMZ_SEC: &str = "FwoGZXIvYXdzEXAMPLE9";
const SESSION: &str = "s3ssi0nValueWW";
const BEARER: &str = "bearerS3cretVV";
const RESET: &str = "r3setSecretUU42";
const CAPABILITY: &str = "Xy7kPq2Lm9RtZ0wVb4Nc8DsT";

fn send(p: &Proxy, head: &str, body: &str) -> String {
    util::raw(
        p.http,
        format!("{head}Host: shop.test\r\nConnection: close\r\n\r\n{body}").as_bytes(),
        Duration::from_secs(5),
    )
}

fn sample_of(p: &Proxy, at_least: usize) -> (TrafficSample, String) {
    let path = p.state.path().join("sample.jsonl");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let (s, report) =
                TrafficSample::read(text.as_bytes(), SampleLimits::default()).unwrap();
            assert_eq!(report.invalid_lines, 0, "{report:?}");
            if s.requests.len() >= at_least {
                return (s, text);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no sample of {at_least} in {path:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn header<'a>(r: &'a SampledRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn secrets_are_masked_at_their_length_and_the_file_is_private() {
    let p = Proxy::start("sample: { flush_interval: 200ms }\n", ROUTES);
    let get = format!(
        "GET /api/items?page=2&token={QUERY_TOKEN}&access_token={ACCESS_TOKEN}&X-Amz-Signature={AMZ_SIG} HTTP/1.1\r\n\
         X-Auth-Token: {AUTH_TOKEN}\r\nX-Amz-Security-Token: {AMZ_SEC}\r\n\
         Cookie: session={SESSION}; theme=dark\r\nAuthorization: Bearer {BEARER}\r\nUser-Agent: t/1\r\n"
    );
    assert!(send(&p, &get, "").starts_with("HTTP/1.1 200"));
    let reset = format!("GET /reset-password/{RESET} HTTP/1.1\r\n");
    assert!(send(&p, &reset, "").starts_with("HTTP/1.1 200"));
    let cap = format!("GET /files/{CAPABILITY}/report.pdf HTTP/1.1\r\n");
    assert!(send(&p, &cap, "").starts_with("HTTP/1.1 200"));
    let body = "x".repeat(300);
    let post = "POST /upload HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 300\r\n";
    assert!(send(&p, post, &body).starts_with("HTTP/1.1 200"));

    let (s, text) = sample_of(&p, 4);
    for secret in [
        QUERY_TOKEN,
        ACCESS_TOKEN,
        AMZ_SIG,
        AUTH_TOKEN,
        AMZ_SEC,
        SESSION,
        BEARER,
        RESET,
        CAPABILITY,
    ] {
        assert!(!text.contains(secret), "{secret} is in the sample:\n{text}");
    }

    let r = s.requests.iter().find(|r| r.path == "/api/items").unwrap();
    let q = r.query.as_deref().unwrap();
    assert!(q.starts_with("page=2&token="), "{q}");
    let original =
        format!("page=2&token={QUERY_TOKEN}&access_token={ACCESS_TOKEN}&X-Amz-Signature={AMZ_SIG}");
    assert_eq!(q.len(), original.len(), "{q}");
    assert_eq!(header(r, "x-auth-token").unwrap().len(), AUTH_TOKEN.len());
    assert_eq!(
        header(r, "x-amz-security-token").unwrap().len(),
        AMZ_SEC.len()
    );
    assert_eq!(header(r, "user-agent"), Some("t/1"));
    // Cookie names kept, each value at its length.
    let cookie = header(r, "cookie").unwrap();
    assert!(
        cookie.starts_with("session=") && cookie.contains("; theme="),
        "{cookie}"
    );
    assert_eq!(cookie.len(), format!("session={SESSION}; theme=dark").len());
    let auth = header(r, "authorization").unwrap();
    assert!(auth.starts_with("Bearer "), "{auth}");
    assert_eq!(auth.len(), "Bearer ".len() + BEARER.len());
    assert!(
        r.redacted.iter().any(|w| w == "cookie:session"),
        "{:?}",
        r.redacted
    );
    assert!(r.at_ms > 0);

    let reset = s
        .requests
        .iter()
        .find(|r| r.path.starts_with("/reset-password/"))
        .unwrap();
    assert_eq!(reset.path.len(), "/reset-password/".len() + RESET.len());
    let cap = s
        .requests
        .iter()
        .find(|r| r.path.starts_with("/files/"))
        .unwrap();
    assert!(cap.path.ends_with("/report.pdf"), "{}", cap.path);
    assert_eq!(
        cap.path.len(),
        format!("/files/{CAPABILITY}/report.pdf").len()
    );

    let upload = s.requests.iter().find(|r| r.path == "/upload").unwrap();
    assert_eq!(upload.body_len, 300);

    // Private: the file 0600, its directory 0700, no temporary file left.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p.state.path().join("sample.jsonl")), 0o600);
    assert_eq!(mode(p.state.path()), 0o700);
    for e in std::fs::read_dir(p.state.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("sample") {
            assert_eq!(mode(&e.path()), 0o600, "{name}");
        }
    }
}

#[test]
fn configured_names_are_masked_and_path_masking_can_be_turned_off() {
    let p = Proxy::start(
        "sample: { flush_interval: 200ms, secret_headers: [x-tenant], secret_query_params: [ticket], redact_path_secrets: false }\n",
        ROUTES,
    );
    let head =
        format!("GET /files/{CAPABILITY}?ticket=T1ck3tVal&q=1 HTTP/1.1\r\nX-Tenant: acme-42\r\n");
    assert!(send(&p, &head, "").starts_with("HTTP/1.1 200"));
    let (s, text) = sample_of(&p, 1);
    assert!(
        !text.contains("T1ck3tVal") && !text.contains("acme-42"),
        "{text}"
    );
    let r = &s.requests[0];
    assert_eq!(r.path, format!("/files/{CAPABILITY}"));
    assert_eq!(
        r.query.as_deref().map(str::len),
        Some("ticket=T1ck3tVal&q=1".len())
    );
    assert_eq!(header(r, "x-tenant").map(str::len), Some("acme-42".len()));
}
