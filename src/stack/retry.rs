//! Retries of idempotent parts: GET, HEAD, OPTIONS, PUT, DELETE, or any part carrying an `Idempotency-Key`.
//! A part is tried again when it could not connect, the connection broke before any response byte, its try
//! ran out of time, or the upstream answered 502, 503 or 504 (without `Retry-After`: an upstream asking to
//! wait gets its answer passed on). The next try goes to another upstream address when there is one, after a
//! jittered backoff, within the part's own deadline (the timeout layer above): each try gets an equal share
//! of the time left, so that one that hangs leaves room for the others. A budget per route, a fraction of its
//! recent requests plus a small floor, keeps a sick upstream from being stormed. A non-idempotent part is
//! never sent twice, and has all the part's time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::StatusCode;
use http::header::RETRY_AFTER;
use rand::Rng;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::balance::Tried;
use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;
use crate::metrics::Metrics;

/// How recent "recent requests" are.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct RetryLayer {
    retries: u32,
    backoff: Duration,
    budget: Arc<Budget>,
    /// Where retries are counted, under the route's label.
    counted: (Arc<Metrics>, Arc<str>),
}

impl RetryLayer {
    pub(crate) fn new(
        retries: u32,
        backoff: Duration,
        budget: Budget,
        counted: (Arc<Metrics>, Arc<str>),
    ) -> RetryLayer {
        RetryLayer {
            retries,
            backoff,
            budget: Arc::new(budget),
            counted,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            retries: self.retries,
            backoff: self.backoff,
            budget: self.budget.clone(),
            counted: self.counted.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Retry<S> {
    inner: S,
    retries: u32,
    backoff: Duration,
    budget: Arc<Budget>,
    counted: (Arc<Metrics>, Arc<str>),
}

impl<S> Service<PartRequest> for Retry<S>
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

    fn call(&mut self, mut request: PartRequest) -> Self::Future {
        let inner = self.inner.clone();
        if self.retries == 0 {
            return Box::pin(inner.oneshot(request));
        }
        self.budget.deposit();
        if !request.is_idempotent() {
            return Box::pin(inner.oneshot(request));
        }
        let (retries, backoff, budget) = (self.retries, self.backoff, self.budget.clone());
        let (metrics, route) = self.counted.clone();
        let tried = Arc::new(Tried::default());
        request.tried = Some(tried);
        Box::pin(async move {
            let mut wait = backoff;
            let part = request.deadline.clone();
            for attempt in 0.. {
                if let Some(part) = &part {
                    request.deadline = Some(part.share(retries + 1 - attempt));
                }
                let again = (attempt < retries).then(|| request.try_clone());
                let result = inner.clone().oneshot(request).await;
                let Some(next) = again else {
                    return result;
                };
                if !worth_retrying(&result) || !budget.withdraw() {
                    return result;
                }
                metrics.retry(&route);
                tracing::debug!(part = next.index, attempt, "retrying an idempotent part");
                // Full jitter: tries of many parts after one failure do not arrive together.
                let pause = rand::rng().random_range(Duration::ZERO..=wait);
                tokio::time::sleep(pause).await;
                wait = wait.saturating_mul(2);
                request = next;
            }
            unreachable!("the loop returns")
        })
    }
}

fn worth_retrying(result: &Result<UpstreamResponse, PartError>) -> bool {
    match result {
        Err(
            PartError::Connect { .. } | PartError::NoResponse { .. } | PartError::Timeout { .. },
        ) => true,
        Ok(response) => {
            matches!(
                response.status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ) && !response.headers.contains_key(RETRY_AFTER)
        }
        Err(_) => false,
    }
}

/// Retries a route may make: `ratio` of its requests in the last ten seconds, plus `min_per_second`.
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    floor: f64,
    /// Requests and retries per second of the window, oldest first.
    seconds: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl Budget {
    pub(crate) fn new(ratio: f64, min_per_second: u32) -> Budget {
        Budget {
            ratio,
            floor: f64::from(min_per_second) * WINDOW.as_secs_f64(),
            seconds: Mutex::new(VecDeque::new()),
        }
    }

    fn with_current<T>(&self, f: impl FnOnce(&mut (Instant, u64, u64), u64, u64) -> T) -> T {
        let mut seconds = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while seconds.front().is_some_and(|(at, ..)| now - *at >= WINDOW) {
            seconds.pop_front();
        }
        if seconds
            .back()
            .is_none_or(|(at, ..)| now - *at >= Duration::from_secs(1))
        {
            seconds.push_back((now, 0, 0));
        }
        let (requests, retries) = seconds
            .iter()
            .fold((0, 0), |(q, r), (_, dq, dr)| (q + dq, r + dr));
        f(seconds.back_mut().expect("pushed"), requests, retries)
    }

    fn deposit(&self) {
        self.with_current(|current, _, _| current.1 += 1);
    }

    /// Takes one retry from the budget, if there is one left.
    fn withdraw(&self) -> bool {
        self.with_current(|current, requests, retries| {
            let allowed = self.floor + self.ratio * requests as f64;
            let ok = (retries as f64) < allowed;
            if ok {
                current.2 += 1;
            }
            ok
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use tower::service_fn;

    use super::*;
    use crate::stack::tests::{answer, part_request};

    /// A retry layer (`retries`, `budget`) over an inner service that answers the `n`th call with
    /// `answers(n)`; the calls are counted in `calls`.
    fn retrying(
        retries: u32,
        budget: Budget,
        calls: Arc<AtomicUsize>,
        answers: fn(usize) -> Result<UpstreamResponse, PartError>,
    ) -> impl Service<PartRequest, Response = UpstreamResponse, Error = PartError> + Clone {
        let inner = service_fn(move |_: PartRequest| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { answers(n) }
        });
        let counted = (Arc::new(Metrics::default()), Arc::from("/r/"));
        RetryLayer::new(retries, Duration::from_millis(25), budget, counted).layer(inner)
    }

    fn request(method: Method) -> PartRequest {
        PartRequest {
            method,
            ..part_request(0)
        }
    }

    /// A GET answered 502, then unreachable, then 200 is retried twice and gets the 200.
    #[tokio::test(start_paused = true)]
    async fn an_idempotent_part_is_retried_until_it_succeeds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = retrying(2, Budget::new(0.2, 10), calls.clone(), |n| match n {
            0 => Ok(answer(StatusCode::BAD_GATEWAY, b"")),
            1 => Err(PartError::Connect {
                index: 0,
                upstream: "up".into(),
                reason: "refused".into(),
            }),
            _ => Ok(answer(StatusCode::OK, b"")),
        });
        let response = service.oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// Out of retries, the last try's answer is the part's.
    #[tokio::test(start_paused = true)]
    async fn the_last_tries_answer_is_passed_on() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = retrying(2, Budget::new(0.2, 10), calls.clone(), |_| {
            Ok(answer(StatusCode::SERVICE_UNAVAILABLE, b""))
        });
        let response = service.oneshot(request(Method::PUT)).await.unwrap();
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one try and two retries");
    }

    /// A POST is never sent twice; with an `Idempotency-Key` it may be.
    #[tokio::test(start_paused = true)]
    async fn a_post_is_not_retried_unless_it_has_an_idempotency_key() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = retrying(2, Budget::new(0.2, 10), calls.clone(), |_| {
            Ok(answer(StatusCode::BAD_GATEWAY, b""))
        });
        let response = service.clone().oneshot(request(Method::POST)).await;
        assert_eq!(response.unwrap().status, StatusCode::BAD_GATEWAY);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let mut keyed = request(Method::POST);
        keyed
            .headers
            .insert("idempotency-key", "k1".parse().unwrap());
        service.oneshot(keyed).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "one try and two retries");
    }

    /// An answer that is not worth another try is passed on at once: a 4xx, a 503 asking to wait, an error
    /// after the upstream answered.
    #[tokio::test(start_paused = true)]
    async fn only_failures_that_another_try_may_fix_are_retried() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = retrying(2, Budget::new(0.2, 10), calls.clone(), |n| match n {
            0 => Ok(answer(StatusCode::NOT_FOUND, b"")),
            1 => {
                let mut wait = answer(StatusCode::SERVICE_UNAVAILABLE, b"");
                wait.headers.insert(RETRY_AFTER, "1".parse().unwrap());
                Ok(wait)
            }
            _ => Err(PartError::ResponseTooLarge {
                index: 0,
                upstream: "up".into(),
                limit: 1,
            }),
        });
        for expected in 1..=3 {
            let _ = service.clone().oneshot(request(Method::GET)).await;
            assert_eq!(calls.load(Ordering::SeqCst), expected);
        }
    }

    /// With no ratio, the budget is its floor: ten retries a second over ten seconds (100). The 101st
    /// failing part is not retried; ten seconds later the window has moved on and it is again.
    #[tokio::test(start_paused = true)]
    async fn the_budget_runs_out_and_refills_as_the_window_moves() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = retrying(1, Budget::new(0.0, 10), calls.clone(), |_| {
            Ok(answer(StatusCode::BAD_GATEWAY, b""))
        });
        for _ in 0..100 {
            service.clone().oneshot(request(Method::GET)).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 200, "each part retried once");
        service.clone().oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 201, "the budget is spent");

        tokio::time::advance(WINDOW).await;
        service.oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 203, "retried again");
    }
}
