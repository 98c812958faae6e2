//! A route's last two minutes, second by second: parts, errors, a latency histogram, time spent queueing,
//! and the concurrency limit in force. Percentiles and rates over any span of it are computed on demand.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

/// Seconds kept.
pub(crate) const SECONDS: usize = 120;
/// Latency buckets: bucket `i` holds latencies below 2^(i+1) microseconds (the last: everything above).
const LATENCY_BUCKETS: usize = 26;

#[derive(Debug, Clone, Copy, Default)]
struct Second {
    /// Which second since the observer's start this slot holds.
    at: u64,
    parts: u64,
    errors: u64,
    latency: [u32; LATENCY_BUCKETS],
    /// Microseconds parts spent waiting for permits, and in all.
    queued_us: u64,
    total_us: u64,
    /// Parts that found the gateway-wide in-flight limit reached when they finished.
    saturated: u64,
    limit: usize,
}

/// One route's window.
#[derive(Debug)]
pub(crate) struct RouteWindow {
    seconds: Mutex<Vec<Second>>,
    /// The route's concurrency limit now; each second records the one in force.
    limit: AtomicUsize,
}

impl Default for RouteWindow {
    fn default() -> Self {
        RouteWindow {
            seconds: Mutex::new(vec![Second::default(); SECONDS]),
            limit: AtomicUsize::new(0),
        }
    }
}

/// One finished part, as the window counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub elapsed_us: u64,
    pub queued_us: u64,
    pub error: bool,
    /// The gateway-wide in-flight limit was reached.
    pub saturated: bool,
}

/// Figures over a span of seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    pub parts: u64,
    /// Parts per second over the span.
    pub rate: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The share of parts' time spent waiting for a permit.
    pub queued_share: f64,
    /// The share of parts that found the gateway-wide in-flight limit reached.
    pub saturated_share: f64,
}

/// One second of the series the dashboard draws.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Point {
    /// Seconds before now (0 is the current second).
    pub ago: u64,
    pub parts: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
    pub limit: usize,
}

impl RouteWindow {
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, now: u64, sample: Sample) {
        let mut seconds = self.lock();
        let slot = &mut seconds[(now % SECONDS as u64) as usize];
        if slot.at != now || slot.parts == 0 {
            *slot = Second {
                at: now,
                ..Second::default()
            };
        }
        slot.parts += 1;
        slot.errors += u64::from(sample.error);
        slot.saturated += u64::from(sample.saturated);
        slot.latency[bucket(sample.elapsed_us)] += 1;
        slot.queued_us += sample.queued_us;
        slot.total_us += sample.elapsed_us;
        slot.limit = self.limit();
    }

    /// Figures over the seconds `from_ago..to_ago` before `now` (0 is the current second; `to_ago` excluded).
    pub(crate) fn summary(&self, now: u64, from_ago: u64, to_ago: u64) -> Summary {
        let seconds = self.lock();
        let mut total = Second::default();
        for ago in from_ago..to_ago {
            let Some(at) = now.checked_sub(ago) else {
                break;
            };
            let slot = &seconds[(at % SECONDS as u64) as usize];
            if slot.at != at || slot.parts == 0 {
                continue;
            }
            total.parts += slot.parts;
            total.errors += slot.errors;
            total.saturated += slot.saturated;
            total.queued_us += slot.queued_us;
            total.total_us += slot.total_us;
            for (t, s) in total.latency.iter_mut().zip(slot.latency) {
                *t += s;
            }
        }
        let span = (to_ago - from_ago).max(1) as f64;
        let share = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        Summary {
            parts: total.parts,
            rate: total.parts as f64 / span,
            error_rate: share(total.errors, total.parts),
            p50_ms: percentile(&total.latency, 0.50),
            p95_ms: percentile(&total.latency, 0.95),
            p99_ms: percentile(&total.latency, 0.99),
            queued_share: share(total.queued_us, total.total_us),
            saturated_share: share(total.saturated, total.parts),
        }
    }

    /// The last `n` seconds, oldest first.
    pub(crate) fn series(&self, now: u64, n: u64) -> Vec<Point> {
        let current_limit = self.limit();
        let seconds = self.lock();
        (0..n.min(SECONDS as u64))
            .rev()
            .map(|ago| {
                let at = now.checked_sub(ago);
                let slot = at
                    .map(|at| seconds[(at % SECONDS as u64) as usize])
                    .filter(|s| Some(s.at) == at && s.parts > 0);
                match slot {
                    Some(s) => Point {
                        ago,
                        parts: s.parts,
                        errors: s.errors,
                        p99_ms: percentile(&s.latency, 0.99),
                        limit: s.limit,
                    },
                    None => Point {
                        ago,
                        parts: 0,
                        errors: 0,
                        p99_ms: None,
                        limit: current_limit,
                    },
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Second>> {
        self.seconds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bucket(micros: u64) -> usize {
    let bits = 64 - micros.max(1).leading_zeros() as usize;
    (bits - 1).min(LATENCY_BUCKETS - 1)
}

/// The `q` quantile, as the geometric middle of the bucket it falls in.
fn percentile(latency: &[u32; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let count: u64 = latency.iter().map(|&n| u64::from(n)).sum();
    if count == 0 {
        return None;
    }
    let rank = (q * count as f64).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, &n) in latency.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            let low = (1u64 << i) as f64;
            return Some(low * std::f64::consts::SQRT_2 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, error: bool) -> Sample {
        Sample {
            elapsed_us: ms * 1000,
            queued_us: 0,
            error,
            saturated: false,
        }
    }

    #[test]
    fn percentiles_rates_and_errors_over_a_span() {
        let w = RouteWindow::default();
        for i in 0..100 {
            w.record(10, sample(if i < 95 { 10 } else { 500 }, i % 10 == 0));
        }
        let s = w.summary(10, 0, 10);
        assert_eq!(s.parts, 100);
        assert!((s.rate - 10.0).abs() < 1e-9);
        assert!((s.error_rate - 0.1).abs() < 1e-9);
        let p50 = s.p50_ms.unwrap();
        let p99 = s.p99_ms.unwrap();
        assert!((5.0..20.0).contains(&p50), "{p50}");
        assert!((250.0..1000.0).contains(&p99), "{p99}");
        // Two minutes later the slot is reused, not added to.
        w.record(10 + SECONDS as u64, sample(1, false));
        assert_eq!(w.summary(10 + SECONDS as u64, 0, 1).parts, 1);
        assert_eq!(w.summary(10 + SECONDS as u64, 1, 60).parts, 0);
    }
}
