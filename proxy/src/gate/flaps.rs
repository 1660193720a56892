//! Flapping: when the candidates in the config directory keep alternating
//! between accepted and rejected versions (a generator oscillating, two
//! deploy pipelines fighting, a person trying fixes in production), the
//! stream is not converging, and promoting whatever passes next is a bet.
//! After `gate.freeze_after_flips` alternations within `gate.flap_window`,
//! promotion freezes until a person confirms (`POST /admin/confirm`);
//! verdicts and rollbacks go on meanwhile.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Why promotion is frozen, for `/admin/config`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Frozen {
    pub since_ms: u64,
    pub why: String,
}

/// The accepted/rejected sequence of the directory's successive contents.
#[derive(Debug, Default)]
pub struct FlapGuard {
    /// (when, accepted) per distinct directory content in a row.
    outcomes: VecDeque<(Instant, bool)>,
    last_seen: Option<String>,
    frozen: Option<Frozen>,
}

impl FlapGuard {
    /// The directory's content `id` was looked at and found `accepted` (or
    /// not). The same content twice in a row is one outcome. Returns the
    /// freeze when this outcome started one.
    pub fn saw(
        &mut self,
        id: &str,
        accepted: bool,
        now: Instant,
        limit: u32,
        window: Duration,
        at_ms: u64,
    ) -> Option<Frozen> {
        if self.last_seen.as_deref() == Some(id) {
            return None;
        }
        self.last_seen = Some(id.to_string());
        self.push(now, accepted, window);
        self.check(limit, at_ms)
    }

    /// The active version was rolled back: a rejection in the stream.
    pub fn rolled_back(
        &mut self,
        now: Instant,
        limit: u32,
        window: Duration,
        at_ms: u64,
    ) -> Option<Frozen> {
        self.push(now, false, window);
        self.check(limit, at_ms)
    }

    fn push(&mut self, now: Instant, accepted: bool, window: Duration) {
        self.outcomes.push_back((now, accepted));
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
            || self.outcomes.len() > 256
        {
            self.outcomes.pop_front();
        }
    }

    /// Alternations within the window.
    pub fn flips(&self) -> u32 {
        let n = self
            .outcomes
            .iter()
            .zip(self.outcomes.iter().skip(1))
            .filter(|(a, b)| a.1 != b.1)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn check(&mut self, limit: u32, at_ms: u64) -> Option<Frozen> {
        if limit == 0 || self.frozen.is_some() || self.flips() < limit {
            return None;
        }
        let f = Frozen {
            since_ms: at_ms,
            why: format!(
                "candidates alternated between accepted and rejected {} times within gate.flap_window; promotion is frozen until a person confirms with POST /admin/confirm",
                self.flips()
            ),
        };
        self.frozen = Some(f.clone());
        Some(f)
    }

    pub fn frozen(&self) -> Option<&Frozen> {
        self.frozen.as_ref()
    }

    /// A person confirmed: unfreeze and start counting afresh.
    pub fn confirm(&mut self) -> Option<Frozen> {
        self.outcomes.clear();
        self.last_seen = None;
        self.frozen.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(600);

    #[test]
    fn alternating_freezes_and_confirm_thaws() {
        let t = Instant::now();
        let mut g = FlapGuard::default();
        assert!(g.saw("a", true, t, 4, W, 0).is_none());
        assert!(g.saw("b", false, t, 4, W, 0).is_none());
        assert!(
            g.saw("b", false, t, 4, W, 0).is_none(),
            "same content: one outcome"
        );
        assert!(g.saw("a", true, t, 4, W, 0).is_none());
        assert!(g.saw("c", false, t, 4, W, 0).is_none());
        let f = g.saw("d", true, t, 4, W, 7).unwrap();
        assert_eq!(f.since_ms, 7);
        assert!(g.frozen().is_some());
        assert!(g.confirm().is_some());
        assert!(g.frozen().is_none());
        assert_eq!(g.flips(), 0);
    }

    #[test]
    fn steady_streams_and_old_flips_do_not_freeze() {
        let t = Instant::now();
        let mut g = FlapGuard::default();
        for (i, id) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            assert!(g.saw(id, i < 3, t, 4, W, 0).is_none());
        }
        assert_eq!(g.flips(), 1);
        let mut g = FlapGuard::default();
        for i in 0..4u64 {
            let at = t + Duration::from_secs(400 * i);
            assert!(g.saw(&i.to_string(), i % 2 == 0, at, 4, W, 0).is_none());
        }
        assert!(g.saw("x", true, t, 0, W, 0).is_none(), "0 never freezes");
    }
}
