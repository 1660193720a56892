//! Endpoint selection: the pool's balance policy over the endpoints that are
//! available (healthy and not ejected), backups only when no primary is.
//! When none is available, the endpoints that only passive ejection keeps
//! out are tried anyway (nginx semantics); an endpoint the active checks
//! call down is never picked.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use aegis_engine::compiled::UpstreamPool;
use aegis_engine::config::raw::{Balance, HashKey};
use http::Request;

use super::PoolRuntime;

/// A fixed hasher, so that consistent hashing picks the same endpoint in
/// every worker process.
fn stable_hash<T: Hash + ?Sized>(a: &T, b: &str) -> u64 {
    // FNV-1a over the Debug-free bytes of both parts.
    let mut h = std::hash::BuildHasherDefault::<Fnv>::default().build_hasher();
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // A final avalanche (splitmix64), so close keys spread.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The hashing key of a request under a `hash` policy.
pub fn hash_key<B>(
    pool: &UpstreamPool,
    client: IpAddr,
    req: Option<&Request<B>>,
) -> Option<String> {
    match pool.hash_key()? {
        HashKey::ClientIp => Some(client.to_string()),
        HashKey::Header(_) => {
            let name = pool.hash_header.as_ref()?;
            req?.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        }
    }
}

/// Picks an endpoint index, skipping `tried`. `None` when nothing is available.
pub fn pick(
    spec: &UpstreamPool,
    pool: &PoolRuntime,
    tried: &[usize],
    hash_key: Option<String>,
) -> Option<usize> {
    // One endpoint (the most common pool): every policy picks it when it
    // can be tried, so no candidate list is built.
    if let [only] = pool.members.as_slice()
        && !tried.contains(&0)
        && only.endpoint.is_available(spec)
    {
        return Some(0);
    }
    let usable = |backup: bool| -> Vec<usize> {
        pool.members
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.backup == backup && !tried.contains(i) && m.endpoint.is_available(spec)
            })
            .map(|(i, _)| i)
            .collect()
    };
    let mut candidates = usable(false);
    if candidates.is_empty() {
        candidates = usable(true);
    }
    if candidates.is_empty() {
        // Every endpoint is passively ejected (or failed this request):
        // try the ones the active checks do not call down anyway, as nginx
        // does when all servers are marked failed, rather than answer 503
        // until a `fail_timeout` runs out.
        candidates = pool
            .members
            .iter()
            .enumerate()
            .filter(|(i, m)| !tried.contains(i) && m.endpoint.passes_checks(spec))
            .map(|(i, _)| i)
            .collect();
        let primaries: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| pool.members.get(*i).is_some_and(|m| !m.backup))
            .collect();
        if !primaries.is_empty() {
            candidates = primaries;
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let weight = |i: &usize| pool.members.get(*i).map_or(1, |m| u64::from(m.weight));
    let n = pool.rr.fetch_add(1, Ordering::Relaxed);
    match &spec.balance {
        Balance::RoundRobin => weighted_at(&candidates, weight, u64::try_from(n).unwrap_or(0)),
        Balance::Random => {
            let r = std::collections::hash_map::RandomState::new().hash_one(n);
            weighted_at(&candidates, weight, r)
        }
        Balance::LeastConn => {
            // Fewest in flight per unit of weight; ties go round robin.
            let len = candidates.len();
            let start = n % len.max(1);
            let mut best: Option<(usize, u64)> = None;
            for k in 0..len {
                let Some(i) = candidates.get((start + k) % len).copied() else {
                    continue;
                };
                let active = pool.members.get(i).map_or(0, |m| {
                    u64::try_from(m.endpoint.active()).unwrap_or(u64::MAX)
                });
                // Compare active/weight without division: scale by the
                // product of weights would overflow; use active * 1000 / w.
                let load = active.saturating_mul(1000) / weight(&i).max(1);
                if best.is_none_or(|(_, b)| load < b) {
                    best = Some((i, load));
                }
            }
            best.map(|(i, _)| i)
        }
        Balance::Hash(_) => match hash_key {
            // Rendezvous hashing: the endpoint with the highest score for the
            // key wins, so removing one endpoint moves only its keys.
            Some(key) => candidates.iter().copied().max_by_key(|i| {
                let addr = pool.members.get(*i).map_or("", |m| &*m.endpoint.address);
                stable_hash(key.as_str(), addr)
            }),
            None => weighted_at(&candidates, weight, u64::try_from(n).unwrap_or(0)),
        },
    }
}

fn weighted_at(candidates: &[usize], weight: impl Fn(&usize) -> u64, n: u64) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .map(&weight)
        .fold(0u64, u64::saturating_add);
    if total == 0 {
        return candidates.first().copied();
    }
    let mut pos = n % total;
    for i in candidates {
        let w = weight(i);
        if pos < w {
            return Some(*i);
        }
        pos -= w;
    }
    candidates.last().copied()
}
