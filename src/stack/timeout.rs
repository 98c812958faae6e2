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
}

impl TimeoutLayer {
    pub(crate) fn new(after: Duration, key: Arc<str>, upstream: Arc<str>) -> TimeoutLayer {
        TimeoutLayer {
            after,
            key,
            upstream,
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
        }
    }
}

/// Turns an answer slower than `after` into [`PartError::Timeout`]; dropping the call cancels the request.
/// The balancer below ends the try at the same deadline and reports it itself, naming the address; this
/// one covers the part's whole time (waits for a permit, backoffs between tries).
#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    after: Duration,
    key: Arc<str>,
    upstream: Arc<str>,
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
        TimeoutFuture {
            call: tokio::time::timeout_at(deadline.at, self.inner.call(request)),
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
        call: tokio::time::Timeout<F>,
        index: usize,
        deadline: Deadline,
        upstream: Arc<str>,
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<UpstreamResponse, PartError>>,
{
    type Output = Result<UpstreamResponse, PartError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(ready!(this.call.poll(cx)).unwrap_or_else(|_| {
            Err(this
                .deadline
                .elapsed(*this.index, this.upstream.to_string()))
        }))
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
        let given = Arc::new(std::sync::Mutex::new(None));
        let seen = given.clone();
        let inner = service_fn(move |request: PartRequest| {
            *seen.lock().unwrap() = request.deadline.clone();
            async move {
                tokio::time::sleep(delay).await;
                Ok::<_, PartError>(crate::stack::tests::answer(StatusCode::OK, b""))
            }
        });
        let layer = TimeoutLayer::new(after, Arc::from("routes[1].timeout"), Arc::from("up:80"));
        let result = layer.layer(inner).oneshot(part_request(7)).await;
        let deadline = given.lock().unwrap().clone();
        (result, deadline)
    }

    /// An answer within the limit passes unchanged; the part carries its deadline down the stack.
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
