//! The pipeline in-process, without sockets, with a stub connector: how the
//! sandbox runs it.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

#[derive(Clone, Default)]
struct Stub {
    seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
    fail: Option<u16>,
}

impl Connector for Stub {
    async fn forward(
        &self,
        ctx: ForwardCtx,
        req: Request<ProxyBody>,
    ) -> Result<Forwarded, UpstreamError> {
        self.seen
            .lock()
            .unwrap()
            .push((req.uri().to_string(), req.headers().clone()));
        let name = ctx.config.upstreams[ctx.upstream].name.to_string();
        match self.fail {
            Some(503) => Err(UpstreamError::NoHealthyEndpoint { upstream: name }),
            Some(504) => Err(UpstreamError::Timeout {
                endpoint: "stub".into(),
                timeout: Duration::from_secs(1),
            }),
            Some(_) => Err(UpstreamError::Connect {
                endpoint: "stub".into(),
                source: "refused".into(),
            }),
            None => {
                let mut r = Response::new(full(format!("from {name}")));
                r.headers_mut()
                    .insert("connection", "x-internal".parse().unwrap());
                r.headers_mut().insert("x-internal", "1".parse().unwrap());
                Ok(Forwarded {
                    response: r,
                    endpoint: Arc::from("stub"),
                })
            }
        }
    }
}

fn config() -> CompiledConfig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        r#"
upstreams:
  - name: api
    endpoints: ["10.0.0.1:80"]
routes:
  - name: api
    match: { path_prefix: "/api/" }
    upstream: api
    strip_prefix: /api
  - name: hello
    match: { path: "/hello" }
    respond: { status: 200, body: "hi" }
"#,
    )
    .unwrap();
    aegis_engine::load_dir(dir.path()).unwrap().1
}

fn req(path: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
    let mut r = Request::get(path)
        .header("host", "shop.test")
        .body(http_body_util::Empty::new())
        .unwrap();
    r.extensions_mut().insert(ClientInfo {
        addr: "192.0.2.7:5555".parse().unwrap(),
        tls: true,
        local_port: 443,
    });
    r
}

#[tokio::test]
async fn forwards_with_rewrites_and_reports_the_outcome() {
    let stub = Stub::default();
    let p = Pipeline::builder(ConfigHandle::new(config()), stub.clone()).build();
    let resp = p.clone().oneshot(req("/api/items?q=1")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-internal").is_none());
    let outcome = resp.extensions().get::<RequestOutcome>().unwrap().clone();
    assert_eq!(outcome.route.as_deref(), Some("api"));
    assert_eq!(outcome.summary.action, "forward");
    assert_eq!(outcome.summary.upstream_path.as_deref(), Some("/items"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"from api");
    let seen = stub.seen.lock().unwrap();
    let (uri, headers) = &seen[0];
    assert_eq!(uri, "/items?q=1");
    assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["host"], "shop.test");
}

#[tokio::test]
async fn answers_locally_and_maps_errors_in_one_place() {
    let p = Pipeline::builder(ConfigHandle::new(config()), Stub::default()).build();
    let r = p.clone().oneshot(req("/hello")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = p.clone().oneshot(req("/nowhere")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.extensions()
            .get::<RequestOutcome>()
            .unwrap()
            .summary
            .action,
        "no_route"
    );
    for (fail, status) in [(502, 502), (503, 503), (504, 504)] {
        let stub = Stub {
            fail: Some(fail),
            ..Stub::default()
        };
        let p = Pipeline::builder(ConfigHandle::new(config()), stub).build();
        let r = p.oneshot(req("/api/x")).await.unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
}

#[tokio::test]
async fn a_swap_does_not_touch_a_request_in_flight() {
    let handle = ConfigHandle::new(config());
    let before = handle.load();
    let p = Pipeline::builder(handle.clone(), Stub::default()).build();
    handle.store(Arc::new(config()));
    // The old snapshot stays alive while held.
    assert_eq!(before.routes.len(), 2);
    let r = p.oneshot(req("/hello")).await.unwrap();
    assert_eq!(r.status(), 200);
}
