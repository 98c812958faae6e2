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
pub(crate) struct Capacity {
    permits: Arc<Semaphore>,
    size: Mutex<usize>,
}

impl Capacity {
    pub(crate) fn new(size: usize) -> Capacity {
        Capacity {
            permits: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
        }
    }

    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    pub(crate) fn size(&self) -> usize {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Permits held, as counted against the size: while a smaller size waits for permits to come back, it
    /// reads as full.
    pub(crate) fn in_use(&self) -> usize {
        self.size().saturating_sub(self.permits.available_permits())
    }

    /// Grows at once. Shrinks by forgetting free permits and, for those still held, by a task that queues for
    /// them and forgets them as they come back. The semaphore serves in arrival order, so parts already
    /// waiting when it shrinks still start; nobody who comes after starts until fewer than `size` are held.
    /// Needs a Tokio runtime (a reload runs in one).
    pub(crate) fn resize(&self, size: usize) {
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
pub(crate) struct InflightLayer {
    permits: Arc<Semaphore>,
}

impl InflightLayer {
    pub(crate) fn new(permits: Arc<Semaphore>) -> InflightLayer {
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
pub(crate) struct Inflight<S> {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use tokio::sync::Notify;
    use tower::service_fn;
    use tower::util::BoxCloneSyncService;

    use super::*;
    use crate::stack::tests::part_request;

    /// An in-flight layer over `permits` whose inner calls each wait for `release`; `entered` counts the
    /// calls that got past the layer.
    fn held(
        permits: &Arc<Semaphore>,
        release: &Arc<Notify>,
        entered: &Arc<AtomicUsize>,
    ) -> BoxCloneSyncService<PartRequest, UpstreamResponse, PartError> {
        let (release, entered) = (release.clone(), entered.clone());
        let inner = service_fn(move |_: PartRequest| {
            let release = release.clone();
            entered.fetch_add(1, Ordering::SeqCst);
            async move {
                release.notified().await;
                Ok::<_, PartError>(crate::stack::tests::answer(StatusCode::OK, b""))
            }
        });
        BoxCloneSyncService::new(InflightLayer::new(permits.clone()).layer(inner))
    }

    /// A part holds a permit while its call runs and gives it back once answered; the next waits for it.
    #[tokio::test]
    async fn a_part_holds_its_permit_until_answered_and_the_next_waits_for_it() {
        let permits = Arc::new(Semaphore::new(1));
        let (release, entered) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let service = held(&permits, &release, &entered);
        let first = tokio::spawn(service.clone().oneshot(part_request(0)));
        let second = tokio::spawn(service.oneshot(part_request(1)));
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(entered.load(Ordering::SeqCst), 1, "the second waits");
        assert_eq!(permits.available_permits(), 0);

        release.notify_one();
        while entered.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        assert_eq!(permits.available_permits(), 1, "every permit came back");
    }

    /// A part cancelled while it runs, or while it waits, leaves no permit behind.
    #[tokio::test]
    async fn a_cancelled_part_gives_its_permit_back() {
        let permits = Arc::new(Semaphore::new(1));
        let (release, entered) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let service = held(&permits, &release, &entered);
        let running = tokio::spawn(service.clone().oneshot(part_request(0)));
        let waiting = tokio::spawn(service.oneshot(part_request(1)));
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(entered.load(Ordering::SeqCst), 1);
        assert_eq!(permits.available_permits(), 1);
    }

    /// A closed semaphore is an internal error naming the part, not a hang.
    #[tokio::test]
    async fn a_closed_limit_is_an_error() {
        let permits = Arc::new(Semaphore::new(0));
        permits.close();
        let (release, entered) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let error = held(&permits, &release, &entered)
            .oneshot(part_request(4))
            .await
            .unwrap_err();
        assert!(
            matches!(error, PartError::Internal { index: 4, .. }),
            "{error:?}"
        );
        assert_eq!(entered.load(Ordering::SeqCst), 0);
    }

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
