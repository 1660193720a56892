//! What is promoted is what serves: a promoted version's endpoint weights
//! and backup flags take effect at once for endpoints the running process
//! already knows (the endpoint state is kept by pool and address, and once
//! kept the first version's weight and backup flag with it), under load and
//! without a failed request.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use util::*;

fn routes(endpoints: &str) -> String {
    format!(
        r#"
upstreams:
  - name: pool
    endpoints:
{endpoints}
routes:
  - name: all
    match: {{ path_prefix: "/" }}
    upstream: pool
"#
    )
}

/// Keep-alive clients requesting until stopped, counting answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(p: &Arc<Proxy>, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (p, stop, ok, bad) = (p.clone(), stop.clone(), ok.clone(), bad.clone());
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::SeqCst) {
                        let req = Request::get(p.url("/x")).body(full("")).unwrap();
                        match c.request(req).await {
                            Ok(r) if r.status() == 200 => {
                                use http_body_util::BodyExt;
                                if r.into_body().collect().await.is_ok() {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    bad.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            _ => {
                                bad.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            bad,
            tasks,
        }
    }

    /// Backend hits over the next `n` answered requests, counted once the
    /// requests that began before the last promotion are done.
    async fn hits_over(&self, n: usize, backends: &[&Backend]) -> Vec<usize> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before: Vec<usize> = backends.iter().map(|b| b.hits()).collect();
        let start = self.ok.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(20), || async {
                self.ok.load(Ordering::SeqCst) >= start + n
            })
            .await,
            "the load stalled"
        );
        backends
            .iter()
            .zip(before)
            .map(|(b, h)| b.hits() - h)
            .collect()
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.bad.load(Ordering::SeqCst),
        )
    }
}

async fn promote(p: &Arc<Proxy>, endpoints: &str) -> String {
    p.write("routes.yaml", &routes(endpoints));
    let pp = p.clone();
    tokio::task::spawn_blocking(move || pp.reload())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_weights_and_backup_flags_take_effect_under_load() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (ea, eb) = (a.addr, b.addr);
    let p = Arc::new(Proxy::start(
        "",
        &routes(&format!("      - \"{ea}\"\n      - \"{eb}\"\n")),
    ));
    let load = Load::start(&p, 4);

    // Version 1: 1/1, both serve.
    let h = load.hits_over(300, &[&a, &b]).await;
    assert!(h[0] >= 100 && h[1] >= 100, "1/1 should spread: {h:?}");

    // Version 2: 100/1 on the same two addresses.
    let v1 = promote(
        &p,
        &format!(
            "      - {{ address: \"{ea}\", weight: 100 }}\n      - {{ address: \"{eb}\", weight: 1 }}\n"
        ),
    )
    .await;
    let h = load.hits_over(400, &[&a, &b]).await;
    let total = h[0] + h[1];
    assert!(
        h[1] * 20 <= total,
        "promoted weights 100/1 not in effect (version {v1}): a={} b={}",
        h[0],
        h[1]
    );

    // Version 3: b a backup, a up: b gets nothing.
    let v2 = promote(
        &p,
        &format!("      - \"{ea}\"\n      - {{ address: \"{eb}\", backup: true }}\n"),
    )
    .await;
    assert_ne!(v1, v2);
    let h = load.hits_over(300, &[&a, &b]).await;
    assert_eq!(
        h[1], 0,
        "promoted backup flag not in effect (version {v2}): a={} b={}",
        h[0], h[1]
    );

    // Version 4: a removed, b no longer a backup: only b serves.
    promote(&p, &format!("      - \"{eb}\"\n")).await;
    let h = load.hits_over(300, &[&a, &b]).await;
    assert_eq!(h[0], 0, "a removed endpoint still served: {h:?}");
    // Requests in flight at the first count may be counted as answered
    // without their hit.
    assert!(h[1] >= 290, "{h:?}");

    let (ok, bad) = load.stop().await;
    assert_eq!(bad, 0, "failed client requests during promotions ({ok} ok)");
}
