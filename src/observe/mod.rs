//! What the gateway knows about its own recent behaviour, for operators: per-route windows of the last two
//! minutes ([`window`]), the bottlenecks they show ([`detect`]), the concurrency limit's changes, and the last
//! batches with a timeline per part ([`timeline`]), each upstream address's passive health ([`health`]).
//! `/admin/stats` and `/admin/dashboard` read it.

pub(crate) mod detect;
pub(crate) mod health;
pub(crate) mod timeline;
pub(crate) mod trace;
pub(crate) mod window;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::CacheStats;
use health::AddressHealth;
use timeline::{BatchTimeline, BatchView};
use window::{Point, RouteWindow, Sample, Summary};

/// Recent batches kept for `/admin/stats`.
const RECENT_BATCHES: usize = 50;
/// Limit changes kept.
const TUNING_HISTORY: usize = 200;

/// One per process: a reload keeps what was observed.
#[derive(Debug)]
pub(crate) struct Observer {
    start: Instant,
    routes: Mutex<HashMap<String, Arc<RouteWindow>>>,
    batches: Mutex<VecDeque<Arc<BatchTimeline>>>,
    tuning: Mutex<VecDeque<TuningEvent>>,
    next_batch: AtomicU64,
    /// `[jobs]`, once its workers run: what they last counted, and the jobs with partitions running here
    /// (with how many), which tuning events name.
    jobs: Mutex<Option<JobsView>>,
    running_jobs: Mutex<HashMap<String, usize>>,
    /// The largest answer of the last batch to finish (bytes, rendered; 0 before any): the next batch's guess
    /// of what each of its first parts brings, against `limits.window_bytes`.
    largest_answer: AtomicUsize,
}

/// What the jobs are doing, for `/admin/stats` and the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct JobsView {
    /// Jobs in the store by status, as the workers last read them.
    pub queued: i64,
    pub running: i64,
    pub paused: i64,
    /// Parts and partitions this instance has finished since it started (a rate is their change per second).
    pub parts_done: u64,
    pub partitions_done: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            start: Instant::now(),
            routes: Mutex::default(),
            batches: Mutex::default(),
            tuning: Mutex::default(),
            next_batch: AtomicU64::new(1),
            jobs: Mutex::default(),
            running_jobs: Mutex::default(),
            largest_answer: AtomicUsize::new(0),
        }
    }
}

/// A change of a route's concurrency limit.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TuningEvent {
    /// Unix time in milliseconds.
    pub at: u64,
    pub route: String,
    pub from: usize,
    pub to: usize,
    pub reason: String,
    /// The jobs with partitions running on this instance when the limit changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
}

/// One route in `/admin/stats`.
#[derive(Debug, Serialize)]
pub(crate) struct RouteStats {
    pub route: String,
    /// The last 60 seconds.
    pub requests: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub error_rate: f64,
    /// The last 10 seconds.
    pub recent: Summary,
    pub concurrency_limit: usize,
    pub in_flight: usize,
    pub bottleneck: Option<detect::Bottleneck>,
    /// The last 120 seconds, oldest first.
    pub series: Vec<Point>,
    /// Each address of the route's upstreams: in rotation or ejected, and why.
    pub upstreams: Vec<AddressHealth>,
    /// On routes with `cache = true`: lookups and the hit ratio since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
}

/// What a route is, for its stats.
#[derive(Debug)]
pub(crate) struct RouteState {
    pub route: String,
    pub in_flight: usize,
    pub adaptive: bool,
    pub upstreams: Vec<AddressHealth>,
    pub cache: Option<CacheStats>,
}

/// The whole of `/admin/stats`.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    pub routes: Vec<RouteStats>,
    pub in_flight: usize,
    pub max_inflight: usize,
    pub batches_in_flight: usize,
    pub tuning: Vec<TuningEvent>,
    pub batches: Vec<BatchView>,
    /// With `[jobs]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<JobsView>,
}

impl Observer {
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// `route`'s window: a batch looks it up once per route and records each part in it ([`Observer::record_in`]).
    pub(crate) fn window(&self, route: &str) -> Arc<RouteWindow> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = routes.get(route) {
            return window.clone();
        }
        routes.entry(route.to_owned()).or_default().clone()
    }

    /// The largest answer of the last batch to finish, if one has.
    pub(crate) fn largest_answer(&self) -> Option<usize> {
        match self.largest_answer.load(Ordering::Relaxed) {
            0 => None,
            largest => Some(largest),
        }
    }

    /// A batch finished; `largest` was its largest answer.
    pub(crate) fn set_largest_answer(&self, largest: usize) {
        self.largest_answer.store(largest, Ordering::Relaxed);
    }

    /// Counts a finished part of `route`.
    pub(crate) fn record(&self, route: &str, sample: Sample) {
        if !route.is_empty() {
            self.record_in(&self.window(route), sample);
        }
    }

    /// Counts a finished part in its route's window.
    pub(crate) fn record_in(&self, window: &RouteWindow, sample: Sample) {
        window.record(self.now(), sample);
    }

    /// Notes a route's concurrency limit now (at build, and when it is tuned).
    pub(crate) fn set_limit(&self, route: &str, limit: usize) {
        self.window(route).set_limit(limit);
    }

    /// A new batch's timeline, kept among the recent ones with its first `keep_parts` parts'.
    pub(crate) fn batch(
        &self,
        peer: IpAddr,
        arrival: Instant,
        keep_parts: usize,
    ) -> Arc<BatchTimeline> {
        let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let batch = Arc::new(BatchTimeline::new(id, arrival, peer, keep_parts));
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        if batches.len() == RECENT_BATCHES {
            batches.pop_front();
        }
        batches.push_back(batch.clone());
        batch
    }

    /// Notes a change of a route's concurrency limit.
    pub(crate) fn tuned(&self, route: &str, from: usize, to: usize, reason: String) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut tuning = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        if tuning.len() == TUNING_HISTORY {
            tuning.pop_front();
        }
        let mut jobs: Vec<String> = self
            .running_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        jobs.sort();
        tuning.push_back(TuningEvent {
            at,
            route: route.to_owned(),
            from,
            to,
            reason,
            jobs,
        });
    }

    /// Changes what the jobs view says (creating it when the jobs start).
    pub(crate) fn jobs(&self, change: impl FnOnce(&mut JobsView)) {
        let mut view = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        change(view.get_or_insert_with(JobsView::default));
    }

    /// A partition of `job` starts (`true`) or stops running here.
    pub(crate) fn job_running(&self, job: &str, running: bool) {
        let mut jobs = self.running_jobs.lock().unwrap_or_else(|e| e.into_inner());
        let count = jobs.entry(job.to_owned()).or_default();
        if running {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                jobs.remove(job);
            }
        }
    }

    /// The stats of these routes now.
    pub(crate) fn stats(
        &self,
        routes: &[RouteState],
        in_flight: usize,
        max_inflight: usize,
        batches_in_flight: usize,
    ) -> Stats {
        let now = self.now();
        let routes = routes
            .iter()
            .map(|state| {
                let window = self.window(&state.route);
                let minute = window.summary(now, 0, 60);
                let recent = window.summary(now, 0, 10);
                let baseline = window.summary(now, 10, 70);
                let bottleneck = detect::detect(&detect::Figures {
                    route: &state.route,
                    recent,
                    baseline,
                    adaptive: state.adaptive,
                    max_inflight,
                });
                RouteStats {
                    route: state.route.clone(),
                    requests: minute.parts,
                    p50_ms: minute.p50_ms,
                    p95_ms: minute.p95_ms,
                    p99_ms: minute.p99_ms,
                    error_rate: minute.error_rate,
                    recent,
                    concurrency_limit: window.limit(),
                    in_flight: state.in_flight,
                    bottleneck,
                    series: window.series(now, window::SECONDS as u64),
                    upstreams: state.upstreams.clone(),
                    cache: state.cache,
                }
            })
            .collect();
        Stats {
            routes,
            in_flight,
            max_inflight,
            batches_in_flight,
            tuning: self
                .tuning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
            batches: self
                .batches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .map(|b| b.view())
                .collect(),
            jobs: self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}
