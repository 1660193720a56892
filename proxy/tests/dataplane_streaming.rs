//! Bodies are streamed both ways: 100 MiB up and 100 MiB down through the
//! proxy while its resident memory stays flat.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use util::*;

const SIZE: u64 = 100 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_upload_and_download_in_flat_memory() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
    max_request_body: 1GiB
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &p.url("/warm"), None).await.status, 200);
    }
    let baseline = p.rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), p.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Upload.
    let req = Request::post(p.url("/upload"))
        .body(Zeros::new(SIZE).boxed_unsync())
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), SIZE.to_string());

    // Download, read frame by frame.
    let resp = c
        .request(
            Request::get(p.url(&format!("/bytes/{SIZE}")))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            total += d.len() as u64;
        }
    }
    assert_eq!(total, SIZE);

    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::SeqCst).saturating_sub(baseline);
    eprintln!("proxy RSS baseline {baseline} KiB, peak growth {grew} KiB");
    assert!(
        grew < 24 * 1024,
        "proxy RSS grew by {grew} KiB while streaming 2 x 100 MiB"
    );
}
