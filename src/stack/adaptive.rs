//! Adaptive concurrency: a route's in-flight limit tuned from its latency, a gradient limiter in the spirit
//! of Envoy's adaptive concurrency filter. Every sample window (at least `SAMPLE_MIN` parts and
//! `SAMPLE_INTERVAL`), the window's median latency is compared with the route's minimum latency:
//!
//! ```text
//! gradient  = clamp(min_rtt * (1 + BUFFER) / sample_rtt, 0.5, 2.0)
//! new limit = clamp(gradient * limit + sqrt(limit), min, max)
//! ```
//!
//! so the limit rises while latency holds and falls when it grows. The minimum latency is measured again
//! every `MIN_RTT_INTERVAL` (jittered by up to a quarter, so routes do not re-measure together), at the
//! configured `min` limit, where the upstream is least loaded. Parts beyond the limit wait (within their
//! deadline, which the layers above enforce); they are not refused. Every change is noted in the
//! observer's tuning history, and, when a job's part made it, in that job's (`crate::jobs::tuning`).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::{PartRequest, UpstreamResponse};
use crate::config::AdaptiveConcurrency;
use crate::error::PartError;
use crate::jobs::tuning::JobTag;
use crate::observe::Observer;

/// Shortest sample window.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Fewest parts in a sample window.
const SAMPLE_MIN: usize = 16;
/// Latency above the minimum that still counts as the minimum (queueing the upstream absorbs).
const BUFFER: f64 = 0.1;
/// How often the minimum latency is measured again.
const MIN_RTT_INTERVAL: Duration = Duration::from_secs(30);

/// One route's limit and the parts it lets through.
#[derive(Debug)]
pub(crate) struct AdaptiveLimiter {
    route: Arc<str>,
    state: Mutex<State>,
    room: Notify,
    observer: Arc<Observer>,
}

#[derive(Debug)]
struct State {
    /// The route's `adaptive_concurrency`, which a reload may change.
    bounds: AdaptiveConcurrency,
    limit: usize,
    in_flight: usize,
    samples: Vec<Duration>,
    window_start: Instant,
    min_rtt: Option<Duration>,
    /// When the minimum latency is measured again.
    remeasure_at: Instant,
    /// While measuring it: the limit to go back to.
    measuring: Option<usize>,
}

impl AdaptiveLimiter {
    pub(crate) fn new(
        route: Arc<str>,
        bounds: AdaptiveConcurrency,
        observer: Arc<Observer>,
    ) -> AdaptiveLimiter {
        let now = Instant::now();
        observer.set_limit(&route, bounds.min);
        AdaptiveLimiter {
            route,
            state: Mutex::new(State {
                bounds,
                // Start where the minimum latency is measured: at the bottom.
                limit: bounds.min,
                in_flight: 0,
                samples: Vec::with_capacity(SAMPLE_MIN * 4),
                window_start: now,
                min_rtt: None,
                remeasure_at: now,
                measuring: Some(bounds.min),
            }),
            room: Notify::new(),
            observer,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a reloaded route's bounds: the limit (and the one to go back to after measuring) is moved
    /// inside them; parts in flight stay counted.
    pub(crate) fn set_bounds(&self, bounds: AdaptiveConcurrency) {
        let mut state = self.lock();
        state.bounds = bounds;
        let from = state.limit;
        state.limit = from.clamp(bounds.min, bounds.max);
        state.measuring = state.measuring.map(|l| l.clamp(bounds.min, bounds.max));
        let to = state.limit;
        drop(state);
        if to != from {
            self.observer.set_limit(&self.route, to);
            self.observer.tuned(
                &self.route,
                from,
                to,
                format!("reloaded with min = {}, max = {}", bounds.min, bounds.max),
            );
            if to > from {
                self.room.notify_waiters();
            }
        }
    }

    /// Waits for room under the limit.
    async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            let room = self.room.notified();
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    return Slot(self.clone());
                }
            }
            room.await;
        }
    }

    /// Counts a finished part's latency, and tunes the limit when a sample window is complete; a change that
    /// a job's part made goes to the job's history too, queued under the lock so that the job's changes are
    /// kept in the order they were made.
    fn sample(&self, rtt: Duration, job: Option<&JobTag>) {
        let mut state = self.lock();
        state.samples.push(rtt);
        let now = Instant::now();
        if state.samples.len() < SAMPLE_MIN || now - state.window_start < SAMPLE_INTERVAL {
            return;
        }
        let mut samples = std::mem::take(&mut state.samples);
        state.window_start = now;
        samples.sort_unstable();
        let sample_rtt = samples[samples.len() / 2];
        let from = state.limit;
        let (to, reason) = if let Some(restore) = state.measuring.take() {
            state.min_rtt = Some(sample_rtt);
            let jitter = rand::rng().random_range(0.0..0.25);
            state.remeasure_at = now + MIN_RTT_INTERVAL.mul_f64(1.0 - jitter);
            let to = if state.min_rtt.is_some() && restore > state.bounds.min {
                restore
            } else {
                state.bounds.min
            };
            (to, format!("minimum latency measured: {sample_rtt:?}"))
        } else if now >= state.remeasure_at {
            state.measuring = Some(state.limit);
            (
                state.bounds.min,
                "measuring the minimum latency again, at the lowest limit".to_owned(),
            )
        } else {
            let min_rtt = state.min_rtt.unwrap_or(sample_rtt);
            let gradient = (min_rtt.as_secs_f64() * (1.0 + BUFFER)
                / sample_rtt.as_secs_f64().max(1e-9))
            .clamp(0.5, 2.0);
            let limit = from as f64;
            let next = (gradient * limit + limit.sqrt()).round() as usize;
            (
                next.clamp(state.bounds.min, state.bounds.max),
                format!(
                    "median latency {sample_rtt:?} against a minimum of {min_rtt:?} (gradient {gradient:.2})"
                ),
            )
        };
        if to != from {
            state.limit = to;
            if let Some(job) = job {
                job.tuned(&self.route, from, to, &reason);
            }
            drop(state);
            self.observer.set_limit(&self.route, to);
            self.observer.tuned(&self.route, from, to, reason);
            if to > from {
                self.room.notify_waiters();
            }
        }
    }
}

/// A part in flight under the limit.
#[derive(Debug)]
struct Slot(Arc<AdaptiveLimiter>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.room.notify_one();
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AdaptiveLayer {
    limiter: Arc<AdaptiveLimiter>,
}

impl AdaptiveLayer {
    pub(crate) fn new(limiter: Arc<AdaptiveLimiter>) -> AdaptiveLayer {
        AdaptiveLayer { limiter }
    }
}

impl<S> Layer<S> for AdaptiveLayer {
    type Service = Adaptive<S>;

    fn layer(&self, inner: S) -> Adaptive<S> {
        Adaptive {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Adaptive<S> {
    inner: S,
    limiter: Arc<AdaptiveLimiter>,
}

impl<S> Service<PartRequest> for Adaptive<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = BoxFuture<'static, Result<UpstreamResponse, PartError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let limiter = self.limiter.clone();
        let inner = self.inner.clone();
        // Only a job's part carries a tag: a batch's clones nothing here.
        let job = request.batch.job.clone();
        Box::pin(async move {
            let waiting = Instant::now();
            let slot = limiter.acquire().await;
            if let Some(t) = &request.timeline {
                t.waited(waiting.elapsed());
            }
            let started = Instant::now();
            let result = inner.oneshot(request).await;
            // Failures say nothing about how loaded the upstream is; answers do.
            if result.is_ok() {
                limiter.sample(started.elapsed(), job.as_deref());
            }
            drop(slot);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use tower::util::BoxCloneSyncService;

    use super::*;
    use crate::stack::PartService;

    /// An upstream that takes 10 ms while at most `knee` parts are in flight, and proportionally longer
    /// beyond: latency climbs with concurrency past the knee.
    fn upstream(knee: Arc<AtomicUsize>, in_flight: Arc<AtomicUsize>) -> PartService {
        BoxCloneSyncService::new(tower::service_fn(move |_request: PartRequest| {
            let (knee, in_flight) = (knee.clone(), in_flight.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                let knee = knee.load(Ordering::SeqCst);
                let factor = (now as f64 / knee as f64).max(1.0);
                tokio::time::sleep(Duration::from_millis(10).mul_f64(factor)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(crate::stack::tests::answer(StatusCode::OK, b""))
            }
        }))
    }

    fn request() -> PartRequest {
        crate::stack::tests::part_request(0)
    }

    /// Drives `callers` parts at a time through the layer for `for_`, each caller sending again as soon as
    /// it has its answer.
    async fn load(service: &Adaptive<PartService>, callers: usize, for_: Duration) {
        let until = Instant::now() + for_;
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let mut service = service.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    service.call(request()).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_settles_below_the_knee_and_grows_back_when_the_upstream_speeds_up() {
        let observer = Arc::new(Observer::default());
        let knee = Arc::new(AtomicUsize::new(8));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let limiter = Arc::new(AdaptiveLimiter::new(
            Arc::from("/mail/"),
            AdaptiveConcurrency { min: 2, max: 200 },
            observer.clone(),
        ));
        let service = AdaptiveLayer::new(limiter.clone()).layer(upstream(knee.clone(), in_flight));

        load(&service, 100, Duration::from_secs(20)).await;
        let settled = limiter.limit();
        assert!(
            (4..=16).contains(&settled),
            "with latency climbing past 8 in flight, the limit settled at {settled}"
        );

        knee.store(64, Ordering::SeqCst);
        load(&service, 100, Duration::from_secs(20)).await;
        let grown = limiter.limit();
        assert!(
            grown >= 40 && grown > settled * 2,
            "the upstream sped up, yet the limit only went from {settled} to {grown}"
        );
        let history = observer.stats(&[], 0, 0, 0).tuning;
        assert!(history.len() >= 4, "{history:?}");
        assert!(
            history
                .iter()
                .all(|e| e.route == "/mail/" && e.from != e.to)
        );
        assert!(history.iter().any(|e| e.to < e.from) && history.iter().any(|e| e.to > e.from));
    }

    #[tokio::test]
    async fn reloaded_bounds_move_the_limit_and_keep_the_parts_in_flight() {
        let observer = Arc::new(Observer::default());
        let limiter = Arc::new(AdaptiveLimiter::new(
            Arc::from("/mail/"),
            AdaptiveConcurrency { min: 2, max: 200 },
            observer.clone(),
        ));
        let held = (limiter.acquire().await, limiter.acquire().await);
        limiter.set_bounds(AdaptiveConcurrency { min: 5, max: 10 });
        assert_eq!((limiter.limit(), limiter.in_flight()), (5, 2));
        limiter.set_bounds(AdaptiveConcurrency { min: 1, max: 3 });
        assert_eq!((limiter.limit(), limiter.in_flight()), (3, 2));
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
        let history = observer.stats(&[], 0, 0, 0).tuning;
        assert_eq!(
            history.iter().map(|e| (e.from, e.to)).collect::<Vec<_>>(),
            [(2, 5), (5, 3)]
        );
    }
}
