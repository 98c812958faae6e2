//! The route's time limit on one sub-request: from sending it until its whole answer is in.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
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
    S::Future: Send + 'static,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = BoxFuture<'static, Result<UpstreamResponse, PartError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let index = request.index;
        let after = self.after;
        let upstream = self.upstream.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            tokio::time::timeout(after, call).await.unwrap_or_else(|_| {
                Err(PartError::Timeout {
                    index,
                    upstream: upstream.to_string(),
                    after,
                })
            })
        })
    }
}
