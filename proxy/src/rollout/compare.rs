//! Is a promoted version worse than what it replaced? Two comparisons of
//! live traffic windows: the canary worker against the control workers over
//! the same seconds, and every worker in the bake window against the window
//! before the promotion. Pure arithmetic on counters, so the thresholds are
//! tested here without processes.

use std::time::Duration;

use aegis_engine::config::settings::Regression;

use super::SlotTraffic;
use crate::pipeline::traffic::TrafficTotals;

/// What some workers did over some seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub traffic: TrafficTotals,
    /// Worker processes that died (and were replaced) within the window.
    pub deaths: u64,
}

impl Window {
    /// The traffic of the slots `take` keeps, between two readings of the
    /// fleet. A slot whose process changed counts from zero (its new
    /// process's counters) and its restarts count as deaths.
    pub fn between(
        earlier: &[SlotTraffic],
        later: &[SlotTraffic],
        take: impl Fn(usize) -> bool,
    ) -> Window {
        let mut w = Window::default();
        for now in later.iter().filter(|s| take(s.slot)) {
            let then = earlier.iter().find(|e| e.slot == now.slot);
            let traffic = match then {
                Some(t) if t.pid == now.pid => now.totals.since(&t.totals),
                _ => now.totals,
            };
            let deaths = then.map_or(0, |t| now.restarts.saturating_sub(t.restarts));
            w.traffic = w.traffic.plus(&traffic);
            w.deaths = w.deaths.saturating_add(deaths);
        }
        w
    }

    pub fn describe(&self) -> String {
        format!(
            "{} requests, {:.1}% 5xx, p99 {}",
            self.traffic.requests,
            self.traffic.share_5xx() * 100.0,
            self.traffic
                .p99()
                .map_or_else(|| "-".to_string(), |d| format!("≤{d:?}")),
        )
    }
}

/// A regression: the reason code (`aegis_config_rollbacks_total{reason}`,
/// `rolled_back:<code>` in the verdict) and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub why: String,
}

/// The thresholds, with nonsense (NaN, negative) replaced by the defaults.
fn sane(r: &Regression) -> Regression {
    let d = Regression::default();
    let share = |v: f64, d: f64| if v.is_finite() && v >= 0.0 { v } else { d };
    Regression {
        max_5xx_increase: share(r.max_5xx_increase, d.max_5xx_increase),
        max_4xx_increase: share(r.max_4xx_increase, d.max_4xx_increase),
        max_3xx_increase: share(r.max_3xx_increase, d.max_3xx_increase),
        min_requests: r.min_requests.max(1),
        max_p99_ratio: if r.max_p99_ratio.is_finite() && r.max_p99_ratio >= 1.0 {
            r.max_p99_ratio
        } else {
            d.max_p99_ratio
        },
        p99_slack: r.p99_slack,
        max_worker_deaths: r.max_worker_deaths.max(1),
    }
}

/// `subject` against `reference`: 5xx share, then (with `classes`) the 4xx
/// and 3xx shares, then p99. The 4xx and 3xx shares are compared only when
/// both sides have `min_requests`: a share of a handful of requests is noise.
///
/// Only the canary compares 4xx and 3xx: canary and control serve the same
/// seconds and, with connections spread by the kernel over the workers'
/// sockets, the same mix of clients. The bake compares a window with an
/// earlier one, whose mix of 404-hunting scanners and redirected clients
/// may differ for reasons that are not the version.
fn traffic_regression(
    subject: &TrafficTotals,
    reference: &TrafficTotals,
    r: &Regression,
    classes: bool,
    subject_name: &str,
    reference_name: &str,
) -> Option<(&'static str, String)> {
    if subject.requests < r.min_requests {
        return None;
    }
    let (s, c) = (subject.share_5xx(), reference.share_5xx());
    if s - c > r.max_5xx_increase {
        return Some((
            "5xx",
            format!(
                "{subject_name} answered 5xx to {:.1}% of {} live requests, {reference_name} to {:.1}% of {} (allowed: {:.1} points more)",
                s * 100.0,
                subject.requests,
                c * 100.0,
                reference.requests,
                r.max_5xx_increase * 100.0
            ),
        ));
    }
    if reference.requests < r.min_requests {
        return None;
    }
    let compared = if classes { 2 } else { 0 };
    for (kind, what, s, c, allowed) in [
        (
            "4xx",
            "4xx",
            subject.share_4xx(),
            reference.share_4xx(),
            r.max_4xx_increase,
        ),
        (
            "redirects",
            "a redirect (3xx)",
            subject.share_3xx(),
            reference.share_3xx(),
            r.max_3xx_increase,
        ),
    ]
    .into_iter()
    .take(compared)
    {
        if s - c > allowed {
            return Some((
                kind,
                format!(
                    "{subject_name} answered {what} to {:.1}% of {} live requests, {reference_name} to {:.1}% of {} (allowed: {:.1} points more)",
                    s * 100.0,
                    subject.requests,
                    c * 100.0,
                    reference.requests,
                    allowed * 100.0
                ),
            ));
        }
    }
    let (Some(sp), Some(cp)) = (subject.p99(), reference.p99()) else {
        return None;
    };
    let limit = cp.mul_f64(r.max_p99_ratio);
    if sp > limit && sp.saturating_sub(cp) > r.p99_slack.0 {
        return Some((
            "latency",
            format!(
                "{subject_name}'s p99 to response head is ≤{} over {} requests, {reference_name}'s ≤{} (allowed: {}× and {} more)",
                ms(sp),
                subject.requests,
                ms(cp),
                r.max_p99_ratio,
                ms(r.p99_slack.0)
            ),
        ));
    }
    None
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// The canary worker against the control workers over the same seconds.
pub fn judge_canary(canary: &Window, control: &Window, r: &Regression) -> Option<Finding> {
    let r = sane(r);
    if canary.deaths > 0 {
        return Some(Finding {
            code: "canary_health",
            why: format!(
                "the canary worker died {} time(s) while it served the new version",
                canary.deaths
            ),
        });
    }
    traffic_regression(
        &canary.traffic,
        &control.traffic,
        &r,
        true,
        "the canary worker",
        "the control workers",
    )
    .map(|(kind, why)| Finding {
        code: match kind {
            "5xx" => "canary_5xx",
            "4xx" => "canary_4xx",
            "redirects" => "canary_redirects",
            _ => "canary_latency",
        },
        why,
    })
}

/// Every worker since the full promotion against the window before it.
pub fn judge_bake(bake: &Window, before: &Window, r: &Regression) -> Option<Finding> {
    let r = sane(r);
    let extra = bake.deaths.saturating_sub(before.deaths);
    if extra >= r.max_worker_deaths {
        return Some(Finding {
            code: "bake_health",
            why: format!(
                "{} worker deaths in the bake window, {} in the window before",
                bake.deaths, before.deaths
            ),
        });
    }
    traffic_regression(
        &bake.traffic,
        &before.traffic,
        &r,
        false,
        "since the promotion the proxy",
        "before it",
    )
    .map(|(kind, why)| Finding {
        code: match kind {
            "5xx" => "bake_5xx",
            _ => "bake_latency",
        },
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::traffic::TrafficCounters;

    fn window(ok: u64, failed: u64, each: Duration) -> Window {
        let c = TrafficCounters::default();
        for _ in 0..ok {
            c.record(200, each);
        }
        for _ in 0..failed {
            c.record(503, each);
        }
        Window {
            traffic: c.totals(),
            deaths: 0,
        }
    }

    const FAST: Duration = Duration::from_micros(300);

    #[test]
    fn a_canary_failing_where_the_control_does_not_is_caught() {
        let r = Regression::default();
        let f = judge_canary(&window(10, 30, FAST), &window(40, 0, FAST), &r).unwrap();
        assert_eq!(f.code, "canary_5xx");
        assert!(f.why.contains("75.0% of 40"), "{}", f.why);
    }

    #[test]
    fn too_few_requests_or_a_shared_failure_is_not_a_regression() {
        let r = Regression::default();
        assert_eq!(
            judge_canary(&window(1, 5, FAST), &window(40, 0, FAST), &r),
            None
        );
        // The upstream fails everyone alike: not the new version's doing.
        assert_eq!(
            judge_canary(&window(20, 20, FAST), &window(21, 19, FAST), &r),
            None
        );
        // Within the allowed increase.
        assert_eq!(
            judge_canary(&window(97, 3, FAST), &window(100, 0, FAST), &r),
            None
        );
    }

    #[test]
    fn slower_beyond_ratio_and_slack_is_a_latency_regression() {
        let r = Regression::default();
        let slow = window(50, 0, Duration::from_millis(200));
        let f = judge_canary(&slow, &window(50, 0, FAST), &r).unwrap();
        assert_eq!(f.code, "canary_latency");
        // 3× slower but by less than the slack: noise at these scales.
        let a_bit = window(50, 0, Duration::from_millis(2));
        assert_eq!(judge_canary(&a_bit, &window(50, 0, FAST), &r), None);
    }

    fn statuses(ok: u64, other: u64, status: u16) -> Window {
        let c = TrafficCounters::default();
        for _ in 0..ok {
            c.record(200, FAST);
        }
        for _ in 0..other {
            c.record(status, FAST);
        }
        Window {
            traffic: c.totals(),
            deaths: 0,
        }
    }

    #[test]
    fn a_canary_answering_404_or_redirecting_where_the_control_does_not_is_caught() {
        let r = Regression::default();
        // Host removed: the upstream answers 404, no 5xx anywhere.
        let f = judge_canary(&statuses(30, 20, 404), &statuses(48, 2, 404), &r).unwrap();
        assert_eq!(f.code, "canary_4xx");
        assert!(f.why.contains("40.0% of 50"), "{}", f.why);
        // A redirect loop: every answer a 301.
        let f = judge_canary(&statuses(0, 50, 301), &statuses(50, 0, 301), &r).unwrap();
        assert_eq!(f.code, "canary_redirects");
        // The same 4xx share on both sides: the clients', not the version's.
        assert_eq!(
            judge_canary(&statuses(30, 20, 404), &statuses(31, 19, 404), &r),
            None
        );
        // Too few control requests to compare a share with.
        assert_eq!(
            judge_canary(&statuses(30, 20, 404), &statuses(5, 0, 404), &r),
            None
        );
        // The bake does not judge 4xx against an earlier window.
        assert_eq!(
            judge_bake(&statuses(30, 20, 404), &statuses(50, 0, 404), &r),
            None
        );
    }

    #[test]
    fn a_dying_canary_is_a_regression_at_once() {
        let mut w = window(0, 0, FAST);
        w.deaths = 1;
        let f = judge_canary(&w, &window(50, 0, FAST), &Regression::default()).unwrap();
        assert_eq!(f.code, "canary_health");
    }

    #[test]
    fn bake_compares_with_the_window_before() {
        let r = Regression::default();
        let f = judge_bake(&window(50, 50, FAST), &window(100, 1, FAST), &r).unwrap();
        assert_eq!(f.code, "bake_5xx");
        assert_eq!(
            judge_bake(&window(95, 5, FAST), &window(95, 5, FAST), &r),
            None
        );
        let mut deaths = window(100, 0, FAST);
        deaths.deaths = 1;
        assert_eq!(judge_bake(&deaths, &window(100, 0, FAST), &r), None);
        deaths.deaths = 2;
        assert_eq!(
            judge_bake(&deaths, &window(100, 0, FAST), &r).unwrap().code,
            "bake_health"
        );
    }

    #[test]
    fn nonsense_thresholds_fall_back_to_the_defaults() {
        let r = Regression {
            max_5xx_increase: f64::NAN,
            max_p99_ratio: -1.0,
            min_requests: 0,
            ..Regression::default()
        };
        assert_eq!(
            judge_canary(&window(10, 30, FAST), &window(40, 0, FAST), &r)
                .unwrap()
                .code,
            "canary_5xx"
        );
    }

    #[test]
    fn a_restarted_slot_counts_from_zero_and_as_a_death() {
        let slot = |pid, restarts, requests| SlotTraffic {
            slot: 0,
            pid,
            restarts,
            totals: TrafficTotals {
                requests,
                ..TrafficTotals::default()
            },
        };
        let w = Window::between(&[slot(10, 0, 500)], &[slot(11, 1, 7)], |_| true);
        assert_eq!((w.traffic.requests, w.deaths), (7, 1));
        let w = Window::between(&[slot(10, 0, 500)], &[slot(10, 0, 520)], |_| true);
        assert_eq!((w.traffic.requests, w.deaths), (20, 0));
        let w = Window::between(&[slot(10, 0, 500)], &[slot(10, 0, 520)], |s| s != 0);
        assert_eq!(w.traffic.requests, 0);
    }
}
