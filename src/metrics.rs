//! What operators see at `GET /metrics`, in the OpenMetrics text format (prometheus-client, as
//! linkerd2-proxy uses): batches, parts by route and outcome, latencies, queueing, upstream errors, retries,
//! ejections, and gauges read at scrape time.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::StoreUsage;
use crate::codec::Format;
use crate::error::{Fault, PartError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// A served batch's format, and its reply's (`Accept` may choose the other one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormatLabels {
    format: &'static str,
    reply: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    route: String,
    outcome: String,
}

/// A job part's outcome (`succeeded`, `failed`), or a job's status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: String,
    kind: String,
}

/// Every metric of the gateway. One per process: a reload keeps counting into the same one.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    batches_served: Counter,
    batches_refused: Family<StatusLabel, Counter>,
    batch_formats: Family<FormatLabels, Counter>,
    batch_parts: Histogram,
    batch_duration: Histogram,
    parts: Family<OutcomeLabels, Counter>,
    part_duration: Family<DurationLabels, Histogram>,
    queue_wait: Family<RouteLabel, Histogram>,
    upstream_errors: Family<ErrorLabels, Counter>,
    retries: Family<RouteLabel, Counter>,
    direct_requests: Family<RouteLabel, Counter>,
    parts_shared: Family<RouteLabel, Counter>,
    cache: Family<OutcomeLabels, Counter>,
    cache_stored_bytes: Family<RouteLabel, Counter>,
    cache_stored_entries: Family<RouteLabel, Counter>,
    cache_entries: Gauge<i64, AtomicI64>,
    cache_bytes: Gauge<i64, AtomicI64>,
    ejections: Family<RouteLabel, Counter>,
    upstream_requests: Counter,
    /// Connections the pools opened; with `upstream_requests`, how well keep-alive connections are reused.
    upstream_connects: Counter,
    concurrency_limit: Family<RouteLabel, Gauge>,
    route_in_flight: Family<RouteLabel, Gauge>,
    batches_in_flight: Gauge<i64, AtomicI64>,
    sub_requests_in_flight: Gauge<i64, AtomicI64>,
    /// `[jobs]`: parts answered by outcome (their rate is parts per second), partitions done, and jobs by
    /// status (queued, running, paused) as the workers last read them from the store.
    job_parts: Family<JobLabel, Counter>,
    job_partitions_done: Counter,
    jobs: Family<JobLabel, Gauge>,
    /// Limit changes left out of a job's tuning history: the queue to the store was full.
    job_tuning_dropped: Counter,
    /// Serialises scrapes: the gauges are set, then encoded.
    scrape: Mutex<()>,
    /// Each route's series, resolved once: counting a part then allocates nothing.
    routes: RwLock<HashMap<String, Arc<RouteSeries>>>,
}

/// One route's counters and histograms, by outcome and by status class. The status classes are a fixed
/// set, so their series sit in arrays (by [`class_index`]): counting an answered part hashes nothing.
#[derive(Debug, Default)]
pub(crate) struct RouteSeries {
    /// Parts the upstream answered, by status class.
    answered: [OnceLock<Counter>; CLASSES.len()],
    /// Parts that failed, by error kind.
    failed: RwLock<HashMap<&'static str, Counter>>,
    durations: [OnceLock<Histogram>; CLASSES.len()],
    queue_wait: OnceLock<Histogram>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("batchgate");
        let m = Metrics {
            batches_served: Counter::default(),
            batches_refused: Family::default(),
            batch_formats: Family::default(),
            batch_parts: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batch_duration: latency_histogram(),
            parts: Family::default(),
            part_duration: Family::new_with_constructor(latency_histogram),
            queue_wait: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            retries: Family::default(),
            direct_requests: Family::default(),
            parts_shared: Family::default(),
            cache: Family::default(),
            cache_stored_bytes: Family::default(),
            cache_stored_entries: Family::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            ejections: Family::default(),
            upstream_requests: Counter::default(),
            upstream_connects: Counter::default(),
            concurrency_limit: Family::default(),
            route_in_flight: Family::default(),
            batches_in_flight: Gauge::default(),
            sub_requests_in_flight: Gauge::default(),
            job_parts: Family::default(),
            job_partitions_done: Counter::default(),
            jobs: Family::default(),
            job_tuning_dropped: Counter::default(),
            scrape: Mutex::new(()),
            routes: RwLock::default(),
            registry: Registry::default(),
        };
        registry.register(
            "batches_served",
            "Batches answered with a multipart reply",
            m.batches_served.clone(),
        );
        registry.register(
            "batches_refused",
            "Batches refused as a whole, by status",
            m.batches_refused.clone(),
        );
        registry.register(
            "batches_by_format",
            "Batches served, by their format and their reply's (multipart, json)",
            m.batch_formats.clone(),
        );
        registry.register(
            "batch_parts",
            "Parts per batch served",
            m.batch_parts.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "From a batch's arrival until its last part was answered",
            m.batch_duration.clone(),
        );
        registry.register(
            "parts",
            "Parts by route and outcome: the upstream's status class (2xx..5xx), a gateway error kind, or \
             cancelled (the batch was refused or its client went away); route is empty for parts never routed",
            m.parts.clone(),
        );
        registry.register(
            "part_duration_seconds",
            "From a part's start until its answer, by route and status class",
            m.part_duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time parts waited for a permit (batch concurrency, route and gateway in-flight limits), by route",
            m.queue_wait.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by route and kind: connect, tls, reset, timeout, 5xx, protocol",
            m.upstream_errors.clone(),
        );
        registry.register("retries", "Parts tried again, by route", m.retries.clone());
        registry.register(
            "direct_requests",
            "Plain (non-batch) requests proxied by direct routes, by route; also counted in parts",
            m.direct_requests.clone(),
        );
        registry.register(
            "parts_shared",
            "Parts answered with an identical part's answer: in the same batch (dedup), or in flight at the same \
             time (coalesce); by route; also counted in parts",
            m.parts_shared.clone(),
        );
        registry.register(
            "cache",
            "Cache lookups of GET and HEAD parts by route and outcome: hit, miss, stale (revalidated or \
             fetched again), revalidated (a 304 refreshed the entry), error (the store failed: served as a miss)",
            m.cache.clone(),
        );
        registry.register(
            "cache_stored_bytes",
            "Bytes put in the cache (keys, headers and bodies), by route",
            m.cache_stored_bytes.clone(),
        );
        registry.register(
            "cache_stored_entries",
            "Entries put in the cache, by route",
            m.cache_stored_entries.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries the memory cache holds now",
            m.cache_entries.clone(),
        );
        registry.register(
            "cache_bytes",
            "Weight of the memory cache's entries now (keys, headers and bodies), bounded by cache.max_bytes",
            m.cache_bytes.clone(),
        );
        registry.register(
            "ejections",
            "Upstream addresses ejected by passive health, by route",
            m.ejections.clone(),
        );
        registry.register(
            "upstream_requests",
            "Sub-requests sent to upstreams",
            m.upstream_requests.clone(),
        );
        registry.register(
            "upstream_connects",
            "Upstream connections opened; requests per connect is the keep-alive reuse",
            m.upstream_connects.clone(),
        );
        registry.register(
            "concurrency_limit",
            "Sub-requests a route may have in flight",
            m.concurrency_limit.clone(),
        );
        registry.register(
            "route_in_flight",
            "Sub-requests in flight to a route's upstreams",
            m.route_in_flight.clone(),
        );
        registry.register(
            "batches_in_flight",
            "Batches being served",
            m.batches_in_flight.clone(),
        );
        registry.register(
            "sub_requests_in_flight",
            "Sub-requests talking to upstreams, across routes",
            m.sub_requests_in_flight.clone(),
        );
        registry.register(
            "job_parts",
            "Parts of jobs answered, by outcome (job=\"succeeded\" or \"failed\")",
            m.job_parts.clone(),
        );
        registry.register(
            "job_partitions_done",
            "Partitions of jobs run to their end by this instance",
            m.job_partitions_done.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the store by status (job=\"queued\", \"running\", \"paused\")",
            m.jobs.clone(),
        );
        registry.register(
            "job_tuning_dropped",
            "Limit changes left out of a job's tuning history because the queue to the store was full",
            m.job_tuning_dropped.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// A route's cache lookups since the gateway started, as `/admin/stats` shows them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct CacheStats {
    /// GET and HEAD parts looked up.
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    /// Stale entries found (revalidated or fetched again).
    pub stale: u64,
    /// Stale entries a 304 refreshed.
    pub revalidated: u64,
    /// `hits / lookups`; none before the first lookup.
    pub hit_ratio: Option<f64>,
}

/// What a cache lookup came to (`batchgate_cache_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheEvent {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Error,
}

impl CacheEvent {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheEvent::Hit => "hit",
            CacheEvent::Miss => "miss",
            CacheEvent::Stale => "stale",
            CacheEvent::Revalidated => "revalidated",
            CacheEvent::Error => "error",
        }
    }
}

/// The status classes, as the `outcome` and `status` labels name them.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The class of a status, as an index into [`CLASSES`].
fn class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One route's series, for the counts of one part (see [`Metrics::of`]).
#[derive(Debug)]
pub(crate) struct RouteMetrics<'a> {
    metrics: &'a Metrics,
    route: &'a str,
    series: &'a RouteSeries,
}

impl RouteMetrics<'_> {
    /// A part its upstream answered: counted by the class of the upstream's status.
    pub(crate) fn part_answered(&self, status: StatusCode, elapsed: Duration) {
        let class = class_index(status);
        self.series.answered[class]
            .get_or_init(|| self.counter(CLASSES[class]))
            .inc();
        self.duration(class, elapsed);
        if status.is_server_error() {
            self.metrics.upstream_error(self.route, "5xx");
        }
    }

    /// A part that failed: counted by its kind; upstream faults also by error kind.
    pub(crate) fn part_failed(&self, error: &PartError, elapsed: Duration) {
        self.failed(error.kind(), 1);
        if self.route.is_empty() {
            return;
        }
        self.duration(class_index(error.status()), elapsed);
        if error.fault() == Fault::Upstream {
            let kind = match error {
                PartError::Connect { reason, .. }
                    if reason.contains("TLS") || reason.contains("certificate") =>
                {
                    "tls"
                }
                PartError::Connect { .. } => "connect",
                PartError::NoResponse { .. } | PartError::Upstream { .. } => "reset",
                PartError::Timeout { .. } => "timeout",
                _ => "protocol",
            };
            self.metrics.upstream_error(self.route, kind);
        }
    }

    /// Time a part waited for its permits.
    pub(crate) fn queue_wait(&self, waited: Duration) {
        let histogram = self.series.queue_wait.get_or_init(|| {
            self.metrics
                .queue_wait
                .get_or_create(&RouteLabel {
                    route: self.route.to_owned(),
                })
                .clone()
        });
        histogram.observe(waited.as_secs_f64());
    }

    /// `n` parts that ended with `outcome`, not an upstream's status.
    fn failed(&self, outcome: &'static str, n: u64) {
        let known = self
            .series
            .failed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(outcome)
            .cloned();
        let counter = known.unwrap_or_else(|| {
            let counter = self.counter(outcome);
            let mut failed = self
                .series
                .failed
                .write()
                .unwrap_or_else(|e| e.into_inner());
            failed.entry(outcome).or_insert(counter).clone()
        });
        counter.inc_by(n);
    }

    /// The route's part counter for `outcome`.
    fn counter(&self, outcome: &str) -> Counter {
        self.metrics
            .parts
            .get_or_create(&OutcomeLabels {
                route: self.route.to_owned(),
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    fn duration(&self, class: usize, elapsed: Duration) {
        let histogram = self.series.durations[class].get_or_init(|| {
            self.metrics
                .part_duration
                .get_or_create(&DurationLabels {
                    route: self.route.to_owned(),
                    status: CLASSES[class].to_owned(),
                })
                .clone()
        });
        histogram.observe(elapsed.as_secs_f64());
    }
}

impl Metrics {
    pub(crate) fn batch_served(&self) {
        self.batches_served.inc();
    }

    /// A batch accepted, in `format`, to be answered in `reply`.
    pub(crate) fn batch_format(&self, format: Format, reply: Format) {
        self.batch_formats
            .get_or_create(&FormatLabels {
                format: format.as_str(),
                reply: reply.as_str(),
            })
            .inc();
    }

    pub(crate) fn batch_refused(&self, status: StatusCode) {
        self.batches_refused
            .get_or_create(&StatusLabel {
                status: status.as_u16(),
            })
            .inc();
    }

    /// A served batch's last part was answered.
    pub(crate) fn batch_finished(&self, parts: usize, elapsed: Duration) {
        self.batch_parts.observe(parts as f64);
        self.batch_duration.observe(elapsed.as_secs_f64());
    }

    /// `route`'s series: a batch looks them up once per route and counts each of its parts with them
    /// ([`Metrics::of`]).
    pub(crate) fn series(&self, route: &str) -> Arc<RouteSeries> {
        if let Some(series) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return series.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.entry(route.to_owned()).or_default().clone()
    }

    /// What one part of `route` counts, in the route's `series`.
    pub(crate) fn of<'a>(&'a self, route: &'a str, series: &'a RouteSeries) -> RouteMetrics<'a> {
        RouteMetrics {
            metrics: self,
            route,
            series,
        }
    }

    /// A part its upstream answered: counted by the class of the upstream's status.
    pub(crate) fn part_answered(&self, route: &str, status: StatusCode, elapsed: Duration) {
        self.of(route, &self.series(route))
            .part_answered(status, elapsed);
    }

    /// A part that failed: counted by its kind; upstream faults also by error kind.
    pub(crate) fn part_failed(&self, route: &str, error: &PartError, elapsed: Duration) {
        self.of(route, &self.series(route))
            .part_failed(error, elapsed);
    }

    fn upstream_error(&self, route: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&ErrorLabels {
                route: route.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Parts that ended without an answer: their batch was refused or their client went away.
    pub(crate) fn parts_cancelled(&self, route: &str, n: usize) {
        if n > 0 {
            self.of(route, &self.series(route))
                .failed("cancelled", n as u64);
        }
    }

    /// A plain request a `direct` route took; its outcome is counted as a part's.
    pub(crate) fn direct_request(&self, route: &str) {
        self.direct_requests
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .inc();
    }

    /// A part answered with an identical part's upstream answer (`dedup`); its outcome is counted as a part's.
    pub(crate) fn part_shared(&self, route: &str) {
        self.parts_shared
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .inc();
    }

    pub(crate) fn cache_event(&self, route: &str, event: CacheEvent) {
        self.cache
            .get_or_create(&OutcomeLabels {
                route: route.to_owned(),
                outcome: event.as_str().to_owned(),
            })
            .inc();
    }

    /// `route`'s cache figures, read from its counters.
    pub(crate) fn cache_stats(&self, route: &str) -> CacheStats {
        let count = |event: CacheEvent| {
            self.cache
                .get_or_create(&OutcomeLabels {
                    route: route.to_owned(),
                    outcome: event.as_str().to_owned(),
                })
                .get()
        };
        let (hits, misses, stale) = (
            count(CacheEvent::Hit),
            count(CacheEvent::Miss),
            count(CacheEvent::Stale),
        );
        let lookups = hits + misses + stale;
        CacheStats {
            lookups,
            hits,
            misses,
            stale,
            revalidated: count(CacheEvent::Revalidated),
            hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        }
    }

    /// An entry of `bytes` put in the cache for `route`.
    pub(crate) fn cache_stored(&self, route: &str, bytes: u64) {
        let label = RouteLabel {
            route: route.to_owned(),
        };
        self.cache_stored_bytes.get_or_create(&label).inc_by(bytes);
        self.cache_stored_entries.get_or_create(&label).inc();
    }

    pub(crate) fn retry(&self, route: &str) {
        self.retries
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .inc();
    }

    pub(crate) fn ejection(&self, route: &str) {
        self.ejections
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .inc();
    }

    pub(crate) fn upstream_request(&self) {
        self.upstream_requests.inc();
    }

    pub(crate) fn upstream_connect(&self) {
        self.upstream_connects.inc();
    }

    /// A job's part was answered and its answer committed.
    pub(crate) fn job_part(&self, failed: bool) {
        let job = if failed { "failed" } else { "succeeded" };
        self.job_parts.get_or_create(&JobLabel { job }).inc();
    }

    pub(crate) fn job_partition_done(&self) {
        self.job_partitions_done.inc();
    }

    pub(crate) fn job_tuning_dropped(&self) {
        self.job_tuning_dropped.inc();
    }

    /// Jobs in the store in `status`, as last counted.
    pub(crate) fn jobs_in(&self, status: &'static str, count: i64) {
        self.jobs
            .get_or_create(&JobLabel { job: status })
            .set(count);
    }

    /// The exposition text, with the gauges read now.
    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.batches_in_flight.set(gauges.batches as i64);
        self.sub_requests_in_flight.set(gauges.sub_requests as i64);
        for (route, in_flight, limit) in &gauges.routes {
            let label = RouteLabel {
                route: route.clone(),
            };
            self.route_in_flight
                .get_or_create(&label)
                .set(*in_flight as i64);
            self.concurrency_limit
                .get_or_create(&label)
                .set(*limit as i64);
        }
        if let Some(usage) = gauges.cache {
            self.cache_entries
                .set(i64::try_from(usage.entries).unwrap_or(i64::MAX));
            self.cache_bytes
                .set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub batches: usize,
    pub sub_requests: usize,
    /// Per route: (prefix, sub-requests in flight, concurrency limit).
    pub routes: Vec<(String, usize, usize)>,
    /// What the cache's store holds, if there is one that can tell.
    pub cache: Option<StoreUsage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of the exposition that start with `prefix`.
    fn lines(metrics: &Metrics, prefix: &str) -> Vec<String> {
        metrics
            .render(&Gauges::default())
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_parts_counts_land_in_its_routes_series_by_class_and_by_kind() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis(1);
        metrics.part_answered("/a/", StatusCode::OK, ms);
        metrics.part_answered("/a/", StatusCode::NO_CONTENT, ms);
        metrics.part_answered("/b/", StatusCode::BAD_GATEWAY, ms);
        metrics.part_answered("/a/", StatusCode::CONTINUE, ms);
        metrics.of("/a/", &metrics.series("/a/")).queue_wait(ms);
        let timeout = PartError::Timeout {
            index: 0,
            upstream: "u".into(),
            after: ms,
            key: "limits.part_timeout".into(),
        };
        metrics.part_failed("/a/", &timeout, ms);
        metrics.part_failed("/a/", &timeout, ms);
        metrics.parts_cancelled("/b/", 3);
        let mut parts = lines(&metrics, "batchgate_parts_total");
        parts.sort();
        assert_eq!(
            parts,
            [
                r#"batchgate_parts_total{route="/a/",outcome="1xx"} 1"#,
                r#"batchgate_parts_total{route="/a/",outcome="2xx"} 2"#,
                r#"batchgate_parts_total{route="/a/",outcome="timeout"} 2"#,
                r#"batchgate_parts_total{route="/b/",outcome="5xx"} 1"#,
                r#"batchgate_parts_total{route="/b/",outcome="cancelled"} 3"#,
            ]
        );
        let mut counts = lines(&metrics, "batchgate_part_duration_seconds_count");
        counts.sort();
        assert_eq!(
            counts,
            [
                r#"batchgate_part_duration_seconds_count{route="/a/",status="1xx"} 1"#,
                r#"batchgate_part_duration_seconds_count{route="/a/",status="2xx"} 2"#,
                r#"batchgate_part_duration_seconds_count{route="/a/",status="5xx"} 2"#,
                r#"batchgate_part_duration_seconds_count{route="/b/",status="5xx"} 1"#,
            ]
        );
        assert_eq!(
            lines(&metrics, "batchgate_queue_wait_seconds_count"),
            [r#"batchgate_queue_wait_seconds_count{route="/a/"} 1"#]
        );
    }
}
