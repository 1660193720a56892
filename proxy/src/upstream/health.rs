//! Active health checks: `GET path` on a fresh connection to each endpoint of
//! every pool with a `health_check`, every `interval`. An endpoint goes down
//! after `fall` failures in a row and comes back after `rise` successes.
//! 2xx and 3xx answers within `timeout` are successes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_engine::compiled::HealthCheckSpec;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, PooledConnector, resolve};
use crate::pipeline::ConfigHandle;

/// How often the scheduler looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub(crate) struct CheckState {
    successes: u32,
    failures: u32,
    last: Option<Instant>,
    running: bool,
}

pub(crate) fn spawn(
    connector: PooledConnector,
    config: ConfigHandle,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_prune = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cfg = config.load();
            let pools = connector.pools_for(&cfg, prune_due(&mut last_prune));
            for (spec, pool) in cfg.upstreams.iter().zip(pools.iter()) {
                let Some(hc) = &spec.health_check else {
                    // No checks in this version (the balancer ignores their
                    // verdicts): forget the last ones, so that checks added
                    // back start from up, as for a new endpoint.
                    for m in &pool.members {
                        if !m.endpoint.is_healthy() {
                            *m.endpoint.check.lock().unwrap_or_else(|e| e.into_inner()) =
                                CheckState::default();
                            m.endpoint.set_healthy(true);
                        }
                    }
                    continue;
                };
                for m in &pool.members {
                    let ep = &m.endpoint;
                    let due = {
                        let mut st = ep.check.lock().unwrap_or_else(|e| e.into_inner());
                        let due = !st.running && st.last.is_none_or(|l| l.elapsed() >= hc.interval);
                        if due {
                            st.running = true;
                            st.last = Some(Instant::now());
                        }
                        due
                    };
                    if due {
                        let ep = ep.clone();
                        let hc = hc.clone();
                        tokio::spawn(async move {
                            let ok = probe(&ep, &hc).await;
                            record(&ep, &hc, ok);
                        });
                    }
                }
            }
        }
    })
}

/// Prunes endpoint state every few seconds rather than every tick (a prune
/// rebuilds the pool set).
fn prune_due(last: &mut Instant) -> bool {
    if last.elapsed() >= Duration::from_secs(5) {
        *last = Instant::now();
        true
    } else {
        false
    }
}

fn record(ep: &Arc<Endpoint>, hc: &HealthCheckSpec, ok: bool) {
    let mut st = ep.check.lock().unwrap_or_else(|e| e.into_inner());
    st.running = false;
    if ok {
        st.failures = 0;
        st.successes = st.successes.saturating_add(1);
        if !ep.is_healthy() && st.successes >= hc.rise {
            ep.set_healthy(true);
        }
    } else {
        st.successes = 0;
        st.failures = st.failures.saturating_add(1);
        if ep.is_healthy() && st.failures >= hc.fall {
            ep.set_healthy(false);
        }
    }
}

async fn probe(ep: &Endpoint, hc: &HealthCheckSpec) -> bool {
    let attempt = async {
        let addr = resolve(&ep.address).await.ok()?;
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(hc.path.as_str())
            .header(header::HOST, &*ep.address)
            .header(header::USER_AGENT, "aegis-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Some(status.is_success() || status.is_redirection())
    };
    matches!(
        tokio::time::timeout(hc.timeout, attempt).await,
        Ok(Some(true))
    )
}
