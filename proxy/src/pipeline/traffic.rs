//! Live traffic counters of one serving process: requests, 3xx, 4xx and
//! 5xx answers and a histogram of the time to response head. The progressive rollout
//! compares them between a canary worker and its control group, and between
//! the bake window and the window before a promotion; Prometheus has the
//! same figures per route, but the rollout needs them per process, cheaply
//! and without parsing text.
//!
//! Cumulative and monotonic for the life of the process (a restarted worker
//! starts again at zero, which the comparison detects by its pid).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in microseconds: 128 µs growing by
/// √2 per bucket up to about 4.2 s; the last bucket takes everything
/// slower. Two buckets per doubling so the canary's p99 comparison reads a
/// ratio to within 41 %, not within 2× (power-of-two buckets turned a
/// 1.5× difference of noise into a 4× one). 32 buckets: what serde and
/// `Default` implement for arrays, so the totals stay a plain `Copy` value.
pub const BUCKET_BOUNDS_US: [u64; LATENCY_BUCKETS - 1] = [
    128, 181, 256, 362, 512, 724, 1_024, 1_448, 2_048, 2_896, 4_096, 5_793, 8_192, 11_585, 16_384,
    23_170, 32_768, 46_341, 65_536, 92_682, 131_072, 185_364, 262_144, 370_728, 524_288, 741_455,
    1_048_576, 1_482_910, 2_097_152, 2_965_821, 4_194_304,
];
pub const LATENCY_BUCKETS: usize = 32;

/// The counters, shared by every connection of the process.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    answers_4xx: AtomicU64,
    redirects_3xx: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl TrafficCounters {
    /// Counts one answered request: its status and time to response head.
    pub fn record(&self, status: u16, head_after: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match status {
            500..=599 => self.errors_5xx.fetch_add(1, Ordering::Relaxed),
            400..=499 => self.answers_4xx.fetch_add(1, Ordering::Relaxed),
            300..=399 => self.redirects_3xx.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let us = u64::try_from(head_after.as_micros()).unwrap_or(u64::MAX);
        // The first bound at or above `us` (a binary search over the 31
        // sorted bounds: five comparisons); past the last, the last bucket.
        let i = BUCKET_BOUNDS_US.partition_point(|b| *b < us);
        if let Some(b) = self.latency.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A copy of the counters now.
    pub fn totals(&self) -> TrafficTotals {
        TrafficTotals {
            requests: self.requests.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
            answers_4xx: self.answers_4xx.load(Ordering::Relaxed),
            redirects_3xx: self.redirects_3xx.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| {
                self.latency.get(i).map_or(0, |b| b.load(Ordering::Relaxed))
            }),
        }
    }
}

/// A copy of [`TrafficCounters`], sent from a worker to its supervisor with
/// every health probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTotals {
    pub requests: u64,
    pub errors_5xx: u64,
    /// 4xx answers: a version that sends requests where they are not found
    /// (Host removed, a prefix stripped too far) shows here, not in 5xx.
    #[serde(default)]
    pub answers_4xx: u64,
    /// 3xx answers: a redirect loop or a new redirect shows here.
    #[serde(default)]
    pub redirects_3xx: u64,
    /// Requests per latency bucket ([`BUCKET_BOUNDS_US`]).
    pub latency: [u64; LATENCY_BUCKETS],
}

impl TrafficTotals {
    /// What happened between `earlier` and `self` (counters of the same
    /// process; a counter that went down saturates at zero).
    pub fn since(&self, earlier: &TrafficTotals) -> TrafficTotals {
        TrafficTotals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors_5xx: self.errors_5xx.saturating_sub(earlier.errors_5xx),
            answers_4xx: self.answers_4xx.saturating_sub(earlier.answers_4xx),
            redirects_3xx: self.redirects_3xx.saturating_sub(earlier.redirects_3xx),
            latency: std::array::from_fn(|i| {
                let now = self.latency.get(i).copied().unwrap_or(0);
                let then = earlier.latency.get(i).copied().unwrap_or(0);
                now.saturating_sub(then)
            }),
        }
    }

    /// Sums two windows.
    pub fn plus(&self, other: &TrafficTotals) -> TrafficTotals {
        TrafficTotals {
            requests: self.requests.saturating_add(other.requests),
            errors_5xx: self.errors_5xx.saturating_add(other.errors_5xx),
            answers_4xx: self.answers_4xx.saturating_add(other.answers_4xx),
            redirects_3xx: self.redirects_3xx.saturating_add(other.redirects_3xx),
            latency: std::array::from_fn(|i| {
                let a = self.latency.get(i).copied().unwrap_or(0);
                let b = other.latency.get(i).copied().unwrap_or(0);
                a.saturating_add(b)
            }),
        }
    }

    /// Share of requests answered 5xx (0 when there were none).
    pub fn share_5xx(&self) -> f64 {
        self.share(self.errors_5xx)
    }

    /// Share of requests answered 4xx.
    pub fn share_4xx(&self) -> f64 {
        self.share(self.answers_4xx)
    }

    /// Share of requests answered 3xx.
    pub fn share_3xx(&self) -> f64 {
        self.share(self.redirects_3xx)
    }

    fn share(&self, n: u64) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            n as f64 / self.requests as f64
        }
    }

    /// The upper bound of the bucket holding the 99th percentile (the last
    /// bucket reads as twice the largest bound); `None` without requests.
    pub fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the 99th percentile, rounded up: ceil(total * 0.99).
        let rank = total.saturating_mul(99).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                let us = BUCKET_BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(BUCKET_BOUNDS_US[LATENCY_BUCKETS - 2].saturating_mul(2));
                return Some(Duration::from_micros(us));
            }
        }
        None
    }
}

impl TrafficTotals {
    /// Requests certainly slower than `limit`: those in buckets whose lower
    /// bound (the bound before theirs) is at or above it. Rounds down, so
    /// the canary's latency check counts only what it can be sure of.
    pub fn slower_than(&self, limit: Duration) -> u64 {
        let limit_us = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
        // Bucket i holds (BUCKET_BOUNDS_US[i-1], BUCKET_BOUNDS_US[i]].
        let first = BUCKET_BOUNDS_US
            .partition_point(|b| *b < limit_us)
            .saturating_add(1);
        self.latency
            .iter()
            .skip(first)
            .fold(0u64, |n, b| n.saturating_add(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_statuses_and_buckets() {
        let c = TrafficCounters::default();
        c.record(200, Duration::from_micros(100));
        c.record(502, Duration::from_millis(3));
        c.record(404, Duration::from_secs(60));
        let t = c.totals();
        assert_eq!((t.requests, t.errors_5xx), (3, 1));
        assert_eq!(t.latency[0], 1);
        assert_eq!(t.latency[10], 1, "3 ms is in the 4 096 µs bucket");
        assert_eq!(t.latency[LATENCY_BUCKETS - 1], 1);
    }

    #[test]
    fn p99_and_share_of_a_window() {
        let c = TrafficCounters::default();
        let before = c.totals();
        for _ in 0..99 {
            c.record(200, Duration::from_micros(200));
        }
        c.record(500, Duration::from_millis(100));
        let w = c.totals().since(&before);
        assert_eq!(w.p99(), Some(Duration::from_micros(256)));
        assert!((w.share_5xx() - 0.01).abs() < 1e-9);
        c.record(500, Duration::from_millis(100));
        let w = c.totals().since(&before);
        assert_eq!(w.p99(), Some(Duration::from_micros(131_072)));
        assert_eq!(TrafficTotals::default().p99(), None);
        assert_eq!(w.plus(&w).requests, 202);
    }

    #[test]
    fn slower_than_counts_only_buckets_wholly_above_the_limit() {
        let c = TrafficCounters::default();
        for _ in 0..10 {
            c.record(200, Duration::from_micros(200));
        }
        for _ in 0..3 {
            c.record(200, Duration::from_millis(100));
        }
        c.record(200, Duration::from_secs(60));
        let t = c.totals();
        assert_eq!(t.slower_than(Duration::from_millis(50)), 4);
        // 100 ms is in (92.7 ms, 131 ms]: not certainly slower than 95 ms.
        assert_eq!(t.slower_than(Duration::from_millis(95)), 1);
        // Past the last bound nothing is certain: the last bucket is open.
        assert_eq!(t.slower_than(Duration::from_secs(10)), 0);
        assert_eq!(t.slower_than(Duration::ZERO), 14);
    }
}
