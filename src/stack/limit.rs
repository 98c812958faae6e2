//! An in-flight limit as a layer: a part waits for a permit before it goes further and gives it back as soon
//! as its answer is in, whether or not the client is reading the reply. On routes with a tuned limit it holds
//! the gateway-wide permits below the adaptive layer; elsewhere the scheduler takes the route's and the
//! gateway's permits itself, in that order (cheaper than a layer each, and the same order for every part).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;

#[derive(Debug, Clone)]
pub struct InflightLayer {
    permits: Arc<Semaphore>,
}

impl InflightLayer {
    pub fn new(permits: Arc<Semaphore>) -> InflightLayer {
        InflightLayer { permits }
    }
}

impl<S> Layer<S> for InflightLayer {
    type Service = Inflight<S>;

    fn layer(&self, inner: S) -> Inflight<S> {
        Inflight {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// Holds one of `permits` for the duration of the inner call.
#[derive(Debug, Clone)]
pub struct Inflight<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Service<PartRequest> for Inflight<S>
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
        // Readiness is the permit, awaited per call: a part waits in its own future, not in the service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let permits = self.permits.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let index = request.index;
            let waiting = tokio::time::Instant::now();
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|e| PartError::Internal {
                    index,
                    reason: e.to_string(),
                })?;
            if let Some(t) = &request.timeline {
                t.waited(waiting.elapsed());
            }
            inner.oneshot(request).await
        })
    }
}
