//! A strict origin for the upstream check: it answers only the virtual
//! host and path prefixes it serves (404 otherwise, as a real vhost does),
//! waits 50 ms on `/slow/`, and counts every request it gets, and those
//! marked as the gate's check (`x-aegis-check`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::full;

pub struct StrictOrigin {
    pub addr: SocketAddr,
    /// Every request received.
    pub hits: Arc<AtomicUsize>,
    /// Requests carrying `x-aegis-check` (the gate's upstream check).
    pub checks: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for StrictOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StrictOrigin {
    /// Serves `host` (the Host header, without a port) and paths under
    /// `prefixes`; anything else is a 404.
    pub async fn start(host: &'static str, prefixes: &'static [&'static str]) -> StrictOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let o = StrictOrigin {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            checks: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (hits, checks, stop) = (o.hits.clone(), o.checks.clone(), o.stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (hits, checks, stop) = (hits.clone(), checks.clone(), stop.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (hits, checks) = (hits.clone(), checks.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            if req.headers().contains_key("x-aegis-check") {
                                checks.fetch_add(1, Ordering::SeqCst);
                            }
                            let path = req.uri().path().to_string();
                            if path.starts_with("/slow/") {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            let got_host = req
                                .headers()
                                .get("host")
                                .and_then(|v| v.to_str().ok())
                                .map(|h| h.split(':').next().unwrap_or("").to_string());
                            let ok = got_host.as_deref() == Some(host)
                                && prefixes.iter().any(|p| path.starts_with(p));
                            let mut r = if ok {
                                Response::new(full(format!("page {path}\n")))
                            } else {
                                let mut r = Response::new(full("no such page\n"));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            };
                            r.headers_mut()
                                .insert("content-type", "text/plain".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        o
    }

    pub fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
