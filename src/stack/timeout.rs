//! The route's time limit on one sub-request: from sending it until its whole answer is in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;

#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    after: Duration,
    upstream: Arc<str>,
}

impl TimeoutLayer {
    pub fn new(after: Duration, upstream: Arc<str>) -> TimeoutLayer {
        TimeoutLayer { after, upstream }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
            upstream: self.upstream.clone(),
        }
    }
}

/// Turns an answer slower than `after` into [`PartError::Timeout`]; dropping the call cancels the request.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
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

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let index = request.index;
        TimeoutFuture {
            call: tokio::time::timeout(self.after, self.inner.call(request)),
            index,
            after: self.after,
            upstream: self.upstream.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, or [`PartError::Timeout`] once `after` has passed. Not boxed: the stack boxes once.
    pub struct TimeoutFuture<F> {
        #[pin]
        call: tokio::time::Timeout<F>,
        index: usize,
        after: Duration,
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
            Err(PartError::Timeout {
                index: *this.index,
                upstream: this.upstream.to_string(),
                after: *this.after,
            })
        }))
    }
}
