//! Per-client-IP token buckets for the routes' `rate_limit`. Buckets are keyed
//! by the limit's name, not its index, so they survive a config swap. State is
//! bounded: a shard that grows past its cap drops the buckets that have
//! refilled (they hold no information).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aegis_engine::compiled::RateLimitSpec;

const SHARDS: usize = 16;
/// Buckets per shard before refilled ones are evicted.
const SHARD_CAP: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The rate limiter of one process (shared by all its connections).
#[derive(Debug)]
pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<(String, IpAddr), Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

/// Request extension set by the sandbox replay only: when the request
/// arrived live, on the replay's own clock (the recorded `at_ms`), so a rate
/// limit sees the recorded pace and not the replay's back-to-back burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivedAt(pub Instant);

impl RateLimiter {
    /// Takes a token for `client` under `spec`: `Ok(())` or `Err(retry_after)`.
    pub fn check(&self, spec: &RateLimitSpec, client: IpAddr) -> Result<(), Duration> {
        self.check_at(spec, client, Instant::now())
    }

    /// [`Self::check`] at the request's [`ArrivedAt`] time when it has one.
    pub fn check_arrived(
        &self,
        spec: &RateLimitSpec,
        client: IpAddr,
        arrived: Option<ArrivedAt>,
    ) -> Result<(), Duration> {
        self.check_at(spec, client, arrived.map_or_else(Instant::now, |a| a.0))
    }

    fn check_at(&self, spec: &RateLimitSpec, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = spec.requests_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return Ok(());
        }
        let capacity = f64::from(spec.burst.max(1));
        let mut h = self.hasher.build_hasher();
        spec.name.hash(&mut h);
        client.hash(&mut h);
        let idx = usize::try_from(h.finish()).unwrap_or(0) % SHARDS;
        let Some(shard) = self.shards.get(idx) else {
            return Ok(());
        };
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SHARD_CAP {
            map.retain(|(name, _), b| {
                let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
                !(name == &spec.name && b.tokens + refill >= capacity)
            });
            if map.len() >= SHARD_CAP {
                // Still full of active clients: let this one through rather
                // than grow without bound.
                return Ok(());
            }
        }
        let bucket = map.entry((spec.name.clone(), client)).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Err(Duration::from_secs_f64(wait.clamp(0.0, 86_400.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_then_refills() {
        let rl = RateLimiter::default();
        let spec = RateLimitSpec {
            name: "x".into(),
            requests_per_second: 2.0,
            burst: 3,
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at(&spec, ip, t0).is_ok());
        }
        let wait = rl.check_at(&spec, ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500));
        assert!(rl.check_at(&spec, "10.0.0.2".parse().unwrap(), t0).is_ok());
        assert!(
            rl.check_at(&spec, ip, t0 + Duration::from_millis(600))
                .is_ok()
        );
    }
}
