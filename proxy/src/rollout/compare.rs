//! Is a promoted version worse than what it replaced? Two comparisons of
//! live traffic windows: the canary worker against the control workers over
//! the same seconds, and every worker in the bake window against the window
//! before the promotion. Pure arithmetic on counters, so the thresholds are
//! tested here without processes.

use std::collections::BTreeMap;
use std::time::Duration;

use aegis_engine::config::settings::Regression;

use super::SlotTraffic;
use super::routes::{self, C3XX, C4XX, C5XX, Classes};
use crate::pipeline::traffic::TrafficTotals;

/// Canary windows at most, while a side has too few requests to compare
/// (`gate.canary_seconds` each): the canary is held this long before
/// [`judge_inconclusive`] decides.
pub const MAX_CANARY_WINDOWS: u32 = 3;

/// The p99 comparison needs at least this many of the subject's requests
/// certainly slower than its limit: over 50–150 requests the p99 is the
/// slowest one or two, and one scheduling hiccup (a compile, another
/// process on the core) must not roll a good version back. A version that
/// is really slower is slower for most of its requests.
pub const MIN_SLOW_REQUESTS: u64 = 5;

/// Standard errors a per-route share must worsen by, on top of its
/// allowed increase: a route with 20 requests a side moves by 5 points
/// with one answer, and dozens of routes are compared at once.
pub const ROUTE_MARGIN_SE: f64 = 4.0;

/// What some workers did over some seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub traffic: TrafficTotals,
    /// Worker processes that died (and were replaced) within the window.
    pub deaths: u64,
    /// Answers per route name and class (the workers that reported them).
    pub routes: BTreeMap<String, Classes>,
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
            let Some(later) = now.routes.as_deref() else {
                continue;
            };
            // The same process on the same version: its counters moved on.
            // Otherwise (a new process, or the version the canary just
            // loaded) they count from zero.
            let earlier = then
                .filter(|t| t.pid == now.pid)
                .and_then(|t| t.routes.as_deref())
                .filter(|e| e.version == later.version);
            for (name, n) in &later.routes {
                let d = match earlier.and_then(|e| e.routes.get(name)) {
                    Some(e) => routes::sub(n, e),
                    None => *n,
                };
                routes::add(w.routes.entry(name.clone()).or_default(), &d);
            }
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
    let limit = cp
        .mul_f64(r.max_p99_ratio)
        .max(cp.saturating_add(r.p99_slack.0));
    let slow = subject.slower_than(limit);
    if sp > limit && slow >= MIN_SLOW_REQUESTS {
        return Some((
            "latency",
            format!(
                "{subject_name}'s p99 to response head is ≤{} over {} requests ({slow} slower than {}), {reference_name}'s ≤{} (allowed: {}× and {} more)",
                ms(sp),
                subject.requests,
                ms(limit),
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
    let global = traffic_regression(
        &canary.traffic,
        &control.traffic,
        &r,
        true,
        "the canary worker",
        "the control workers",
    );
    match global {
        // A share of the whole traffic is the broader finding.
        Some((kind, why)) if kind != "latency" => Some(Finding {
            code: match kind {
                "5xx" => "canary_5xx",
                "4xx" => "canary_4xx",
                _ => "canary_redirects",
            },
            why,
        }),
        // A broken route says more than a slower p99.
        latency => judge_routes(canary, control, &r).or(latency.map(|(_, why)| Finding {
            code: "canary_latency",
            why,
        })),
    }
}

/// Per route (by name, on both sides) and per class (5xx, 4xx, 3xx): a
/// route with `min_requests` on each side whose share of a class grows by
/// more than that class's allowed increase *and* by more than
/// [`ROUTE_MARGIN_SE`] standard errors of the difference
/// (`√(p(1-p)(1/n₁+1/n₂))`, `p` the pooled share) is a regression,
/// `canary_route`, however small its share of all traffic. The worst one
/// (most points past its threshold) is reported.
fn judge_routes(canary: &Window, control: &Window, r: &Regression) -> Option<Finding> {
    let mut worst: Option<(f64, Finding)> = None;
    for (name, c) in &canary.routes {
        let Some(k) = control.routes.get(name) else {
            continue;
        };
        let (nc, nk) = (total(c), total(k));
        if nc < r.min_requests || nk < r.min_requests {
            continue;
        }
        for (class, what, allowed) in [
            (C5XX, "5xx", r.max_5xx_increase),
            (C4XX, "4xx", r.max_4xx_increase),
            (C3XX, "a redirect (3xx)", r.max_3xx_increase),
        ] {
            let (xc, xk) = (
                c.get(class).copied().unwrap_or(0),
                k.get(class).copied().unwrap_or(0),
            );
            let (sc, sk) = (xc as f64 / nc as f64, xk as f64 / nk as f64);
            let pooled = (xc.saturating_add(xk)) as f64 / nc.saturating_add(nk) as f64;
            let se = (pooled * (1.0 - pooled) * (1.0 / nc as f64 + 1.0 / nk as f64)).sqrt();
            let threshold = allowed.max(ROUTE_MARGIN_SE * se);
            let excess = sc - sk - threshold;
            if excess <= 0.0 || worst.as_ref().is_some_and(|(e, _)| *e >= excess) {
                continue;
            }
            let shown = if name == crate::telemetry::NO_ROUTE {
                "(no route)".to_string()
            } else {
                name.clone()
            };
            worst = Some((
                excess,
                Finding {
                    code: "canary_route",
                    why: format!(
                        "route {shown}: the canary worker answered {what} to {:.1}% of its {nc} requests, the control workers to {:.1}% of {nk} (allowed: {:.1} points more at these counts)",
                        sc * 100.0,
                        sk * 100.0,
                        threshold * 100.0
                    ),
                },
            ));
        }
    }
    worst.map(|(_, f)| f)
}

fn total(c: &Classes) -> u64 {
    c.iter().fold(0u64, |n, x| n.saturating_add(*x))
}

/// Why the canary window cannot be judged yet: a side (canary or control)
/// with fewer than `min_requests`. `None` when both have enough.
pub fn too_few(canary: &Window, control: &Window, r: &Regression) -> Option<String> {
    let r = sane(r);
    let short: Vec<String> = [("canary", canary), ("control", control)]
        .into_iter()
        .filter(|(_, w)| w.traffic.requests < r.min_requests)
        .map(|(side, w)| format!("{side} {} of {}", w.traffic.requests, r.min_requests))
        .collect();
    (!short.is_empty()).then(|| {
        format!(
            "too few requests to compare ({}, gate.regression.min_requests)",
            short.join(", ")
        )
    })
}

/// The canary was held [`MAX_CANARY_WINDOWS`] windows and a side still has
/// too few requests. What an operator of a production edge expects: a
/// quiet node must still take changes (the sandbox judged the version, and
/// the bake watches it next), but a version cannot pass on a comparison
/// that never happened while it fails requests. So it is rolled back,
/// `canary_inconclusive`, when
///
/// - the canary's own 5xx share exceeds `max_5xx_increase` measured
///   against none (any 5xx among a handful of requests; more than 5 % of
///   many), or
/// - the canary served nothing while the control group served
///   `min_requests` or more (the canary's share of the traffic cannot be
///   shown to work: connections did not reach it);
///
/// otherwise it is promoted, and the event says the canary was
/// inconclusive. `None`: promote.
pub fn judge_inconclusive(canary: &Window, control: &Window, r: &Regression) -> Option<Finding> {
    let r = sane(r);
    let c = &canary.traffic;
    if c.requests > 0 && c.share_5xx() > r.max_5xx_increase {
        return Some(Finding {
            code: "canary_inconclusive",
            why: format!(
                "after {MAX_CANARY_WINDOWS} canary windows there were still too few requests to compare (canary {}, control {}, gate.regression.min_requests {}), and the canary answered 5xx to {} of its {} ({:.1}%, allowed {:.1}% with nothing to compare against)",
                c.requests,
                control.traffic.requests,
                r.min_requests,
                c.errors_5xx,
                c.requests,
                c.share_5xx() * 100.0,
                r.max_5xx_increase * 100.0
            ),
        });
    }
    if c.requests == 0 && control.traffic.requests >= r.min_requests {
        return Some(Finding {
            code: "canary_inconclusive",
            why: format!(
                "after {MAX_CANARY_WINDOWS} canary windows the canary worker had served no request while the control workers served {}: the new version was never seen serving",
                control.traffic.requests
            ),
        });
    }
    None
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
            ..Window::default()
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
    fn a_failing_canary_beside_a_quiet_control_is_caught_at_once() {
        let r = Regression::default();
        // The control group had too few requests to compare: the canary's
        // own many failures decide, without waiting for more windows.
        let f = judge_canary(&window(5, 35, FAST), &window(3, 0, FAST), &r).unwrap();
        assert_eq!(f.code, "canary_5xx");
        // Healthy, or too few on the canary as well: no finding yet.
        assert_eq!(
            judge_canary(&window(40, 0, FAST), &window(3, 0, FAST), &r),
            None
        );
        assert_eq!(
            judge_canary(&window(1, 5, FAST), &window(3, 0, FAST), &r),
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
            ..Window::default()
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
            routes: None,
        };
        let w = Window::between(&[slot(10, 0, 500)], &[slot(11, 1, 7)], |_| true);
        assert_eq!((w.traffic.requests, w.deaths), (7, 1));
        let w = Window::between(&[slot(10, 0, 500)], &[slot(10, 0, 520)], |_| true);
        assert_eq!((w.traffic.requests, w.deaths), (20, 0));
        let w = Window::between(&[slot(10, 0, 500)], &[slot(10, 0, 520)], |s| s != 0);
        assert_eq!(w.traffic.requests, 0);
    }

    fn with_routes(mut w: Window, routes: &[(&str, [u64; 5])]) -> Window {
        w.routes = routes.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        w
    }

    #[test]
    fn a_small_route_broken_on_the_canary_is_caught_by_name() {
        let r = Regression::default();
        // 1000 requests a side; route "webhook" is 3 % of them and fails on
        // the canary: 3 points of 5xx overall, under the global 5 points.
        let canary = with_routes(
            statuses(970, 30, 502),
            &[("home", [0, 970, 0, 0, 0]), ("webhook", [0, 0, 0, 0, 30])],
        );
        let control = with_routes(
            statuses(1000, 0, 502),
            &[("home", [0, 970, 0, 0, 0]), ("webhook", [0, 30, 0, 0, 0])],
        );
        let f = judge_canary(&canary, &control, &r).unwrap();
        assert_eq!(f.code, "canary_route");
        assert!(f.why.starts_with("route webhook: "), "{}", f.why);
        assert!(f.why.contains("100.0% of its 30 requests"), "{}", f.why);
        // Without the per-route counts the same traffic passes.
        let (mut c2, mut k2) = (canary.clone(), control.clone());
        c2.routes.clear();
        k2.routes.clear();
        assert_eq!(judge_canary(&c2, &k2, &r), None);
        // The no-route bucket is named as such.
        let canary = with_routes(statuses(970, 30, 404), &[("-", [0, 0, 0, 30, 0])]);
        let control = with_routes(statuses(1000, 0, 404), &[("-", [0, 30, 0, 0, 0])]);
        let f = judge_canary(&canary, &control, &r).unwrap();
        assert!(f.why.starts_with("route (no route): "), "{}", f.why);
    }

    #[test]
    fn per_route_noise_and_small_routes_are_not_regressions() {
        let r = Regression::default();
        let quiet = |routes: &[(&str, [u64; 5])]| with_routes(statuses(500, 0, 404), routes);
        // A route a scanner hits with 404s on both sides, unevenly: 12 of
        // 25 against 8 of 25 is 16 points, within four standard errors.
        assert_eq!(
            judge_canary(
                &quiet(&[("legacy", [0, 13, 0, 12, 0])]),
                &quiet(&[("legacy", [0, 17, 0, 8, 0])]),
                &r
            ),
            None
        );
        // One 5xx among 20: 5 points, one answer.
        assert_eq!(
            judge_canary(
                &quiet(&[("api", [0, 19, 0, 0, 1])]),
                &quiet(&[("api", [0, 20, 0, 0, 0])]),
                &r
            ),
            None
        );
        // A route below min_requests on a side is not judged on its own.
        assert_eq!(
            judge_canary(
                &quiet(&[("tiny", [0, 0, 0, 0, 19])]),
                &quiet(&[("tiny", [0, 40, 0, 0, 0])]),
                &r
            ),
            None
        );
        // A route only one side has (renamed) is not compared.
        assert_eq!(
            judge_canary(
                &quiet(&[("new", [0, 0, 0, 0, 50])]),
                &quiet(&[("old", [0, 50, 0, 0, 0])]),
                &r
            ),
            None
        );
    }

    fn with_slow(fast: u64, slow: u64) -> Window {
        let c = TrafficCounters::default();
        for i in 0..fast {
            // 0.3-1.5 ms: what loopback requests take on a loaded machine.
            c.record(200, Duration::from_micros(300 + (i % 5) * 300));
        }
        for _ in 0..slow {
            c.record(200, Duration::from_millis(200));
        }
        Window {
            traffic: c.totals(),
            ..Window::default()
        }
    }

    #[test]
    fn a_few_slow_requests_among_fifty_to_150_do_not_roll_back() {
        let r = Regression::default();
        // A hiccup: one to four requests of the canary stalled 200 ms. Over
        // 50-150 requests that is its p99 (before: canary_latency).
        for (n, slow) in [(50, 1), (100, 2), (150, 4)] {
            assert_eq!(
                judge_canary(&with_slow(n, slow), &with_slow(n, 0), &r),
                None,
                "{n} requests, {slow} slow"
            );
        }
        // A version really slower for some of its requests is still caught.
        let f = judge_canary(&with_slow(100, 10), &with_slow(100, 0), &r).unwrap();
        assert_eq!(f.code, "canary_latency");
        assert!(f.why.contains("10 slower than"), "{}", f.why);
    }

    #[test]
    fn too_few_names_the_short_side() {
        let r = Regression::default();
        assert_eq!(
            too_few(&window(40, 0, FAST), &window(40, 0, FAST), &r),
            None
        );
        let why = too_few(&window(400, 0, FAST), &window(5, 0, FAST), &r).unwrap();
        assert!(why.contains("control 5 of 20"), "{why}");
        assert!(!why.contains("canary"), "{why}");
    }

    #[test]
    fn an_inconclusive_canary_at_its_last_window() {
        let r = Regression::default();
        // Quiet but clean: promoted.
        assert_eq!(
            judge_inconclusive(&window(6, 0, FAST), &window(3, 0, FAST), &r),
            None
        );
        // Many requests on the canary, a control that got almost none
        // (connections not spread), an upstream flake within 5 %: promoted.
        assert_eq!(
            judge_inconclusive(&window(990, 10, FAST), &window(4, 0, FAST), &r),
            None
        );
        // Failing requests with nothing to compare against: rolled back.
        let f = judge_inconclusive(&window(4, 2, FAST), &window(3, 0, FAST), &r).unwrap();
        assert_eq!(f.code, "canary_inconclusive");
        assert!(f.why.contains("5xx to 2 of its 6"), "{}", f.why);
        // The canary never served while the control did: rolled back.
        let f = judge_inconclusive(&window(0, 0, FAST), &window(500, 0, FAST), &r).unwrap();
        assert_eq!(f.code, "canary_inconclusive");
        assert!(f.why.contains("served no request"), "{}", f.why);
    }
}
