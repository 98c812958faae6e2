//! Counters for operators, served at `GET /metrics` in the Prometheus text format. Plain atomics: counting
//! must cost nothing next to a sub-request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

/// How a part ended: the class of the upstream's own status, a `PartError::kind`, or `cancelled` (its batch
/// was refused or its client went away before it was answered).
const PART_OUTCOMES: [&str; 19] = [
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "cancelled",
    "reset",
    "informational",
    "decode",
    "bad_request",
    "no_route",
    "refused_target",
    "nested_batch",
    "connect",
    "upstream",
    "timeout",
    "response_too_large",
    "batch_response_budget",
    "batch_deadline",
    "internal",
];

/// Statuses a whole batch can be refused with.
const REFUSALS: [u16; 8] = [400, 404, 405, 408, 413, 415, 503, 500];

#[derive(Debug, Default)]
pub struct Metrics {
    batches_served: AtomicU64,
    batches_refused: [AtomicU64; REFUSALS.len()],
    parts: [AtomicU64; PART_OUTCOMES.len()],
    upstream_requests: AtomicU64,
    /// Connections the pools opened; with `upstream_requests`, how well keep-alive connections are reused.
    upstream_connects: AtomicU64,
}

impl Metrics {
    pub fn batch_served(&self) {
        self.batches_served.fetch_add(1, Ordering::Relaxed);
    }

    pub fn batch_refused(&self, status: StatusCode) {
        let i = REFUSALS
            .iter()
            .position(|&s| s == status.as_u16())
            .unwrap_or(REFUSALS.len() - 1);
        self.batches_refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a part its upstream answered, by the class of the upstream's status.
    pub fn part_answered(&self, status: StatusCode) {
        let class = match status.as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.part(class);
    }

    /// Counts parts that ended without an answer: their batch was refused or their client went away.
    pub fn parts_cancelled(&self, n: usize) {
        if n > 0 {
            let i = PART_OUTCOMES
                .iter()
                .position(|&o| o == "cancelled")
                .expect("listed");
            self.parts[i].fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts a finished part by its outcome (a `PartError::kind`, or a status class).
    pub fn part(&self, outcome: &str) {
        let i = PART_OUTCOMES
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(PART_OUTCOMES.len() - 1);
        self.parts[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_request(&self) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_connect(&self) {
        self.upstream_connects.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `gauges` are (name, help, value) read at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, usize)]) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "batchgate_batches_served_total",
            "Batches answered with a multipart reply.",
            get(&self.batches_served),
        );
        header(
            &mut out,
            "batchgate_batches_refused_total",
            "counter",
            "Batches refused as a whole, by status.",
        );
        for (status, n) in REFUSALS.iter().zip(&self.batches_refused) {
            let _ = writeln!(
                out,
                "batchgate_batches_refused_total{{status=\"{status}\"}} {}",
                get(n)
            );
        }
        header(
            &mut out,
            "batchgate_parts_total",
            "counter",
            "Parts by outcome: the upstream's status class (2xx..5xx), a gateway error kind, or cancelled.",
        );
        for (outcome, n) in PART_OUTCOMES.iter().zip(&self.parts) {
            let _ = writeln!(
                out,
                "batchgate_parts_total{{outcome=\"{outcome}\"}} {}",
                get(n)
            );
        }
        counter(
            &mut out,
            "batchgate_upstream_requests_total",
            "Sub-requests sent to upstreams.",
            get(&self.upstream_requests),
        );
        counter(
            &mut out,
            "batchgate_upstream_connects_total",
            "Upstream connections opened; requests per connect is the keep-alive reuse.",
            get(&self.upstream_connects),
        );
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}
