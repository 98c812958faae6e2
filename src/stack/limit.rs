//! An in-flight limit as a layer: a part waits for a permit before it goes further and gives it back as soon
//! as its answer is in, whether or not the client is reading the reply. On routes with a tuned limit it holds
//! the gateway-wide permits below the adaptive layer; elsewhere the scheduler takes the route's and the
//! gateway's permits itself, in that order (cheaper than a layer each, and the same order for every part).
//!
//! The fixed limits are [`Capacity`]s: a reload resizes them instead of starting new ones, so batches still
//! running on the old config count against the new limits.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;

/// A fixed limit (`limits.max_inflight`, `max_batches`, a route's `max_inflight_per_upstream`) that a reload
/// resizes in place: every gateway built since shares its semaphore.
#[derive(Debug)]
pub struct Capacity {
    permits: Arc<Semaphore>,
    size: Mutex<usize>,
}

impl Capacity {
    pub fn new(size: usize) -> Capacity {
        Capacity {
            permits: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
        }
    }

    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    pub fn size(&self) -> usize {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Permits held, as counted against the size: while a smaller size waits for permits to come back, it
    /// reads as full.
    pub fn in_use(&self) -> usize {
        self.size().saturating_sub(self.permits.available_permits())
    }

    /// Grows at once. Shrinks by forgetting free permits and, for those still held, by a task that waits
    /// first in line for them and forgets them as they come back: nobody new starts until fewer than `size`
    /// are held. Needs a Tokio runtime (a reload runs in one).
    pub fn resize(&self, size: usize) {
        let mut current = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if size > *current {
            self.permits.add_permits(size - *current);
        } else if size < *current {
            let excess = *current - size;
            let owed = excess - self.permits.forget_permits(excess);
            if owed > 0 {
                let permits = self.permits.clone();
                let owed = u32::try_from(owed).expect("sizes are at most MAX_PERMITS");
                tokio::spawn(async move {
                    // The semaphore is never closed.
                    if let Ok(taken) = permits.acquire_many_owned(owed).await {
                        taken.forget();
                    }
                });
            }
        }
        *current = size;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_capacity_grows_at_once_and_shrinks_as_permits_come_back() {
        let capacity = Capacity::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| capacity.permits().clone().try_acquire_owned().unwrap())
            .collect();
        capacity.resize(1);
        assert_eq!((capacity.size(), capacity.in_use()), (1, 1));
        tokio::task::yield_now().await;
        let mut held = held.into_iter();
        drop(held.next());
        tokio::task::yield_now().await;
        assert!(
            capacity.permits().try_acquire().is_err(),
            "two are still held, one more than the new size"
        );
        drop(held.next());
        tokio::task::yield_now().await;
        assert!(
            capacity.permits().try_acquire().is_err(),
            "one is held: full"
        );
        drop(held.next());
        tokio::task::yield_now().await;
        let one = capacity.permits().try_acquire().unwrap();
        assert!(capacity.permits().try_acquire().is_err(), "the size is 1");
        drop(one);

        capacity.resize(4);
        let four: Vec<_> = (0..4)
            .map(|_| capacity.permits().try_acquire().unwrap())
            .collect();
        assert!(capacity.permits().try_acquire().is_err());
        assert_eq!(capacity.in_use(), 4);
        drop(four);
        assert_eq!(capacity.in_use(), 0);
    }
}
