//! Bottleneck detection from a route's live figures: the last ten seconds against the minute before them.
//! Each detector needs enough parts to speak, so a quiet or healthy route reports nothing.

use serde::Serialize;

use super::window::Summary;

/// Parts in the last ten seconds below which no detector speaks.
const MIN_RECENT: u64 = 20;
/// Parts in the baseline minute below which comparisons with it are not made.
const MIN_BASELINE: u64 = 20;

/// A bottleneck found, and what to do about it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Bottleneck {
    pub kind: &'static str,
    pub detail: String,
    pub recommendation: String,
}

/// What the detectors look at for one route.
#[derive(Debug)]
pub(crate) struct Figures<'a> {
    pub route: &'a str,
    /// The last ten seconds.
    pub recent: Summary,
    /// The minute before them.
    pub baseline: Summary,
    pub adaptive: bool,
    /// `limits.max_inflight`.
    pub max_inflight: usize,
}

/// The most pressing bottleneck of a route, if any.
pub(crate) fn detect(f: &Figures<'_>) -> Option<Bottleneck> {
    let (recent, baseline, route) = (&f.recent, &f.baseline, f.route);
    if recent.parts < MIN_RECENT {
        return None;
    }
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    if recent.saturated_share >= 0.5 {
        return Some(Bottleneck {
            kind: "global_inflight_saturated",
            detail: format!(
                "route {route}: {} of parts found the gateway-wide in-flight limit ({}) reached over the last 10 s",
                pct(recent.saturated_share),
                f.max_inflight
            ),
            recommendation:
                "raise limits.max_inflight (if the upstreams can take it), or add gateway instances"
                    .to_owned(),
        });
    }
    let growing =
        baseline.parts < MIN_BASELINE || recent.queued_share > baseline.queued_share * 1.2;
    if recent.queued_share >= 0.25 && growing {
        let recommendation = if f.adaptive {
            "raise adaptive_concurrency.max for this route, or limits.concurrency (per batch)"
                .to_owned()
        } else {
            "raise concurrency or enable adaptive_concurrency".to_owned()
        };
        return Some(Bottleneck {
            kind: "queueing",
            detail: format!(
                "route {route}: parts waited for a permit {} of their time over the last 10 s",
                pct(recent.queued_share)
            ),
            recommendation,
        });
    }
    if baseline.parts >= MIN_BASELINE
        && recent.error_rate >= 0.1
        && recent.error_rate >= 3.0 * baseline.error_rate
    {
        return Some(Bottleneck {
            kind: "error_spike",
            detail: format!(
                "route {route}: {} of parts failed over the last 10 s, against {} in the minute before",
                pct(recent.error_rate),
                pct(baseline.error_rate)
            ),
            recommendation:
                "look at the upstream's health and logs (GET /readyz shows ejected upstreams); \
                             retries can hide transient failures of idempotent parts"
                    .to_owned(),
        });
    }
    if let (Some(now), Some(before)) = (recent.p99_ms, baseline.p99_ms)
        && baseline.parts >= MIN_BASELINE
        && now >= 3.0 * before
        && now >= 20.0
    {
        return Some(Bottleneck {
            kind: "latency_spike",
            detail: format!(
                "route {route}: p99 latency {now:.0} ms over the last 10 s, against {before:.0} ms in the minute before"
            ),
            recommendation:
                "the upstream is slowing down: check its load; adaptive_concurrency lowers the \
                             limit while latency grows"
                    .to_owned(),
        });
    }
    if baseline.parts >= 6 * MIN_BASELINE && recent.rate < 0.5 * baseline.rate {
        return Some(Bottleneck {
            kind: "throughput_drop",
            detail: format!(
                "route {route}: {:.1} parts/s over the last 10 s, against {:.1} in the minute before",
                recent.rate, baseline.rate
            ),
            recommendation:
                "fewer parts are coming in or getting through: check clients, and the upstream's \
                             latency and errors"
                    .to_owned(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(parts: u64, secs: f64) -> Summary {
        Summary {
            parts,
            rate: parts as f64 / secs,
            p50_ms: Some(10.0),
            p95_ms: Some(12.0),
            p99_ms: Some(15.0),
            ..Summary::default()
        }
    }

    fn figures(recent: Summary, baseline: Summary) -> Figures<'static> {
        Figures {
            route: "/mail/",
            recent,
            baseline,
            adaptive: false,
            max_inflight: 1024,
        }
    }

    #[test]
    fn a_healthy_route_has_no_bottleneck() {
        assert_eq!(
            detect(&figures(summary(500, 10.0), summary(3000, 60.0))),
            None
        );
        // Too few parts to say anything.
        let quiet = Summary {
            error_rate: 1.0,
            ..summary(5, 10.0)
        };
        assert_eq!(detect(&figures(quiet, summary(3000, 60.0))), None);
    }

    #[test]
    fn each_detector_fires_on_its_own_symptom() {
        let base = summary(3000, 60.0);
        let kind = |recent: Summary| detect(&figures(recent, base)).map(|b| b.kind);
        let saturated = Summary {
            saturated_share: 0.8,
            ..summary(500, 10.0)
        };
        assert_eq!(kind(saturated), Some("global_inflight_saturated"));
        let queueing = Summary {
            queued_share: 0.4,
            ..summary(500, 10.0)
        };
        let found = detect(&figures(queueing, base)).unwrap();
        assert_eq!(found.kind, "queueing");
        assert!(
            found.detail.contains("40% of their time"),
            "{}",
            found.detail
        );
        assert!(found.recommendation.contains("adaptive_concurrency"));
        let errors = Summary {
            error_rate: 0.3,
            ..summary(500, 10.0)
        };
        assert_eq!(kind(errors), Some("error_spike"));
        let slow = Summary {
            p99_ms: Some(200.0),
            ..summary(500, 10.0)
        };
        assert_eq!(kind(slow), Some("latency_spike"));
        assert_eq!(kind(summary(40, 10.0)), Some("throughput_drop"));
    }
}
