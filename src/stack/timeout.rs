//! The route's time limit on one part, all its tries included: from entering this layer until its whole answer
//! is in. The limit goes down the stack with the part as its [`Deadline`]: the retry layer gives each try a
//! share of it, and the balancer ends a try at its own deadline, so that a try that runs out of time counts
//! against the address that did not answer (passive health) and can be tried again elsewhere.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;

/// When a try's time is up, and whose time it is, for the 504's message.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    pub at: Instant,
    /// The time this try was given.
    pub after: Duration,
    /// The key that set the part's time: `routes[2].timeout` or `limits.part_timeout`.
    pub key: Arc<str>,
    /// The tries the part's time left was shared among when this try began (1: it has it all).
    pub shared_by: u32,
}

impl Deadline {
    /// This deadline shared among `tries` tries from now: the next one's deadline, an equal share of what is
    /// left. With one try left, all of it.
    pub(crate) fn share(&self, tries: u32) -> Deadline {
        if tries <= 1 {
            return Deadline {
                shared_by: 1,
                ..self.clone()
            };
        }
        let now = Instant::now();
        let after = self.at.saturating_duration_since(now) / tries;
        Deadline {
            at: now + after,
            after,
            key: self.key.clone(),
            shared_by: tries,
        }
    }

    /// The part's error when its try ran out of this time.
    pub(crate) fn elapsed(&self, index: usize, upstream: String) -> PartError {
        let key = if self.shared_by > 1 {
            format!("1/{} of what was left of {}", self.shared_by, self.key)
        } else {
            self.key.to_string()
        };
        PartError::Timeout {
            index,
            upstream,
            after: self.after,
            key,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TimeoutLayer {
    after: Duration,
    /// Named in the 504: which key set `after`.
    key: Arc<str>,
    upstream: Arc<str>,
    timer: bool,
}

impl TimeoutLayer {
    /// `waits_above_balancer`: whether a layer between this one and the balancer may make a part wait (retries'
    /// backoff, a tuned limit's permit). Without one, the balancer's timer, which ends each try at the part's
    /// deadline, is the part's only one: a second timer firing at the same instant would only cost one per part.
    pub(crate) fn new(
        after: Duration,
        key: Arc<str>,
        upstream: Arc<str>,
        waits_above_balancer: bool,
    ) -> TimeoutLayer {
        TimeoutLayer {
            after,
            key,
            upstream,
            timer: waits_above_balancer,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
            key: self.key.clone(),
            upstream: self.upstream.clone(),
            timer: self.timer,
        }
    }
}

/// Turns an answer slower than `after` into [`PartError::Timeout`]; dropping the call cancels the request.
/// The balancer below ends the try at the same deadline and reports it itself, naming the address; this
/// one covers the part's whole time where a layer between them may make it wait (permits, backoffs between
/// tries), and keeps no timer where none may.
#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    after: Duration,
    key: Arc<str>,
    upstream: Arc<str>,
    /// Whether this layer keeps a timer of its own (see [`TimeoutLayer::new`]).
    timer: bool,
}

impl<S> Service<PartRequest> for Timeout<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: PartRequest) -> Self::Future {
        let index = request.index;
        let deadline = Deadline {
            at: Instant::now() + self.after,
            after: self.after,
            key: self.key.clone(),
            shared_by: 1,
        };
        request.deadline = Some(deadline.clone());
        let call = self.inner.call(request);
        TimeoutFuture {
            call: if self.timer {
                Call::Timed {
                    call: tokio::time::timeout_at(deadline.at, call),
                }
            } else {
                Call::Untimed { call }
            },
            index,
            deadline,
            upstream: self.upstream.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, or [`PartError::Timeout`] once the deadline has passed. Not boxed: the stack boxes once.
    pub(crate) struct TimeoutFuture<F> {
        #[pin]
        call: Call<F>,
        index: usize,
        deadline: Deadline,
        upstream: Arc<str>,
    }
}

pin_project_lite::pin_project! {
    /// The inner call under this layer's timer, or under the balancer's only.
    #[project = CallProj]
    enum Call<F> {
        Timed { #[pin] call: tokio::time::Timeout<F> },
        Untimed { #[pin] call: F },
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<UpstreamResponse, PartError>>,
{
    type Output = Result<UpstreamResponse, PartError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.call.project() {
            CallProj::Untimed { call } => call.poll(cx),
            CallProj::Timed { call } => Poll::Ready(ready!(call.poll(cx)).unwrap_or_else(|_| {
                Err(this
                    .deadline
                    .elapsed(*this.index, this.upstream.to_string()))
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::stack::tests::part_request;

    /// A timeout of `after` from `routes[1].timeout` over an inner service that answers 200 after `delay`,
    /// having recorded the deadline it was given.
    async fn call_taking(
        delay: Duration,
        after: Duration,
    ) -> (Result<UpstreamResponse, PartError>, Option<Deadline>) {
        call_taking_with(delay, after, true).await
    }

    /// [`call_taking`], the layer keeping a timer of its own or not.
    async fn call_taking_with(
        delay: Duration,
        after: Duration,
        timer: bool,
    ) -> (Result<UpstreamResponse, PartError>, Option<Deadline>) {
        let given = Arc::new(std::sync::Mutex::new(None));
        let seen = given.clone();
        let inner = service_fn(move |request: PartRequest| {
            *seen.lock().unwrap() = request.deadline.clone();
            async move {
                tokio::time::sleep(delay).await;
                Ok::<_, PartError>(crate::stack::tests::answer(StatusCode::OK, b""))
            }
        });
        let layer = TimeoutLayer::new(
            after,
            Arc::from("routes[1].timeout"),
            Arc::from("up:80"),
            timer,
        );
        let result = layer.layer(inner).oneshot(part_request(7)).await;
        let deadline = given.lock().unwrap().clone();
        (result, deadline)
    }

    /// An answer within the limit passes unchanged; the part carries its deadline down the stack.
    /// Where nothing between this layer and the balancer can make a part wait, the deadline goes down with the
    /// part and this layer keeps no timer: the balancer's ends the try (and names the address).
    #[tokio::test(start_paused = true)]
    async fn without_waits_below_the_deadline_is_left_to_the_balancer() {
        let start = Instant::now();
        let (result, deadline) =
            call_taking_with(Duration::from_secs(2), Duration::from_secs(1), false).await;
        assert_eq!(result.unwrap().status, StatusCode::OK);
        assert_eq!(deadline.unwrap().at, start + Duration::from_secs(1));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_answer_passes_with_the_deadline_set() {
        let start = Instant::now();
        let (result, deadline) =
            call_taking(Duration::from_millis(999), Duration::from_secs(1)).await;
        assert_eq!(result.unwrap().status, StatusCode::OK);
        let deadline = deadline.expect("the part carries its deadline");
        assert_eq!(deadline.at, start + Duration::from_secs(1));
        assert_eq!(
            (&*deadline.key, deadline.shared_by),
            ("routes[1].timeout", 1)
        );
    }

    /// An answer slower than the limit is a timeout at the limit, naming the part, the upstream and the key.
    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_becomes_a_timeout_naming_its_key() {
        let start = Instant::now();
        let (result, _) = call_taking(Duration::from_secs(60), Duration::from_secs(1)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "ended at the limit"
        );
        let error = result.unwrap_err();
        assert!(
            matches!(&error, PartError::Timeout { index: 7, key, .. } if key == "routes[1].timeout"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "part 7: upstream up:80 did not answer within 1s (routes[1].timeout)"
        );
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    /// Each try gets an equal share of what is left; the last one all of it; the message says which.
    #[tokio::test(start_paused = true)]
    async fn tries_share_what_is_left_of_the_deadline() {
        let part = Deadline {
            at: Instant::now() + Duration::from_secs(9),
            after: Duration::from_secs(9),
            key: Arc::from("routes[0].timeout"),
            shared_by: 1,
        };
        let first = part.share(3);
        assert_eq!(first.after, Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(3)).await;
        let second = part.share(2);
        assert_eq!(second.after, Duration::from_secs(3));
        assert_eq!(second.at, first.at + Duration::from_secs(3));
        let last = part.share(1);
        assert_eq!((last.at, last.after), (part.at, part.after));
        assert_eq!(
            second.elapsed(4, "u".into()).to_string(),
            "part 4: upstream u did not answer within 3s (1/2 of what was left of routes[0].timeout)"
        );
        assert_eq!(
            last.elapsed(4, "u".into()).to_string(),
            "part 4: upstream u did not answer within 9s (routes[0].timeout)"
        );
    }
}
