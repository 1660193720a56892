//! nginx `map` variables in header values and redirect targets, over real
//! sockets: the origin sees a request header that varies with the client's
//! request, the client gets response headers rendered from its request, and
//! a redirect's target follows a map.

mod util;

use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_in_request_headers_response_headers_and_redirects() {
    let app = Backend::start("app").await;
    let routes = format!(
        r#"
maps:
  # Discourse's idiom: the scheme a proxy in front says, else our own.
  - name: thescheme
    source: "$http_x_forwarded_proto"
    exact: {{ https: https }}
    default: "$scheme"
  # Nextcloud's: assets with a version parameter are immutable.
  - name: asset_immutable
    source: "$arg_v"
    exact: {{ "": "" }}
    default: ", immutable"
  - name: lang_dir
    source: "$http_accept_language"
    regex: [{{ regex: "^de", value: "/de" }}]
    default: "/en"
upstreams:
  - name: app
    endpoints: ["{app}"]
routes:
  - name: go
    match: {{ path_prefix: /go/ }}
    redirect: {{ status: 301, location: "$thescheme://$host$lang_dir$uri$is_args$args" }}
  - name: local
    match: {{ path: /local }}
    respond: {{ status: 200, body: "local" }}
    response_headers:
      set: {{ x-local: "scheme=$thescheme" }}
  - name: site
    match: {{ path_prefix: / }}
    upstream: app
    request_headers:
      set: {{ x-forwarded-proto: "$thescheme", x-request-id: "$request_id", x-seen: "$thescheme $request_method $arg_v" }}
    response_headers:
      set: {{ cache-control: "public, max-age=15778463$asset_immutable", x-request-id: "$request_id" }}
      add: {{ x-answer-scheme: "$thescheme" }}
"#,
        app = app.addr,
    );
    let p = Proxy::start("", &routes);
    let c = client();

    // Request headers: the map's default (`$scheme`, rendered after the
    // choice), then the value the client's header chooses.
    let got = send(&c, request(&p, "GET", "a.test", "/css/a.css", &[])).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let echo = got.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "http", "{echo}");
    // (The empty `$arg_v` leaves a trailing space, which HTTP trims.)
    assert_eq!(echo["headers"]["x-seen"][0], "http GET", "{echo}");
    assert_eq!(
        got.header("cache-control").as_deref(),
        Some("public, max-age=15778463")
    );
    assert_eq!(got.header("x-answer-scheme").as_deref(), Some("http"));
    // One `$request_id` per request, the same in both directions.
    let rid = got.header("x-request-id").unwrap();
    assert_eq!(rid.len(), 32, "{rid}");
    assert_eq!(echo["headers"]["x-request-id"][0], rid.as_str(), "{echo}");

    let got = send(
        &c,
        request(
            &p,
            "POST",
            "a.test",
            "/css/a.css?v=3",
            &[("x-forwarded-proto", "HTTPS")],
        ),
    )
    .await;
    let echo = got.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https", "{echo}");
    assert_eq!(echo["headers"]["x-seen"][0], "https POST 3", "{echo}");
    // Response headers, rendered from the request: the query's `v` makes
    // the asset immutable.
    assert_eq!(
        got.header("cache-control").as_deref(),
        Some("public, max-age=15778463, immutable")
    );
    assert_eq!(got.header("x-answer-scheme").as_deref(), Some("https"));
    assert_ne!(got.header("x-request-id").unwrap(), rid);

    // A local answer's response headers see the request too.
    let got = send(
        &c,
        request(
            &p,
            "GET",
            "a.test",
            "/local",
            &[("x-forwarded-proto", "https")],
        ),
    )
    .await;
    assert_eq!(got.text(), "local");
    assert_eq!(got.header("x-local").as_deref(), Some("scheme=https"));

    // Redirect targets: two maps, chosen by two headers.
    let got = send(&c, request(&p, "GET", "a.test", "/go/x?q=1", &[])).await;
    assert_eq!(got.status, 301);
    assert_eq!(
        got.header("location").as_deref(),
        Some("http://a.test/en/go/x?q=1")
    );
    let got = send(
        &c,
        request(
            &p,
            "GET",
            "a.test",
            "/go/x",
            &[("x-forwarded-proto", "https"), ("accept-language", "de-CH")],
        ),
    )
    .await;
    assert_eq!(got.status, 301);
    assert_eq!(
        got.header("location").as_deref(),
        Some("https://a.test/de/go/x")
    );
    // The redirects never reached the origin; the two forwarded requests did.
    assert_eq!(app.hits(), 2);
}
