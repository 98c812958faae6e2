//! An in-flight limit as a layer: a part waits for a permit before it goes further and gives it back as soon
//! as its answer is in, whether or not the client is reading the reply. On routes with a tuned limit it holds
//! the gateway-wide permits below the adaptive layer; elsewhere the scheduler takes the route's and the
//! gateway's permits itself, in that order (cheaper than a layer each, and the same order for every part).
//!
//! The fixed limits are [`Capacity`]s: a reload resizes them instead of starting new ones, so batches still
//! running on the old config count against the new limits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, oneshot};
use tower::{Layer, Service, ServiceExt};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;
use crate::runtime;

/// A fixed limit (`limits.max_inflight`, `max_batches`, a route's `max_inflight_per_upstream`) that a reload
/// resizes in place: every gateway built since shares its semaphore.
///
/// A route's permits taken through [`Capacity::acquire`] are handed over on the same worker first: a permit
/// released on a worker goes straight to a part waiting on that worker, instead of to the semaphore's
/// FIFO-first waiter, which is often on another worker (a cross-runtime wake: an eventfd write, and the
/// permit idle until that worker's next turn). The unfairness is bounded: a worker hands a permit over
/// locally only while it holds fewer than its share (`size / workers`); past that, its releases go to the
/// semaphore, where every waiter (each waits there too) is served in arrival order. So a worker with demand
/// always gets back to its share, and a waiter on another worker is never starved: it waits at most for the
/// waiters that queued before it. While a shrink waits for permits, nothing is handed over (the semaphore's
/// order alone, as before). Off the workers (index 0: tests, the control thread) nothing changes.
#[derive(Debug)]
pub(crate) struct Capacity {
    permits: Arc<Semaphore>,
    size: Mutex<usize>,
    /// Per worker index (0, off the workers, unused): its waiters and the permits it holds.
    local: Box<[Local]>,
    /// The workers the size is shared among.
    workers: usize,
    /// `size / workers`, kept with the size: what a worker may hold and still keep a permit local.
    share: AtomicUsize,
    /// Permits a shrink still waits for: no local handover meanwhile.
    owed: Arc<AtomicUsize>,
}

/// One worker's side of a [`Capacity`].
#[derive(Debug, Default)]
struct Local {
    /// Route permits held on this worker through [`Capacity::acquire`].
    held: AtomicUsize,
    /// Parts waiting on this worker, oldest first; a cancelled one's sender is closed and skipped. Only
    /// its own worker touches it, so the lock is never contended.
    waiters: Mutex<VecDeque<oneshot::Sender<OwnedSemaphorePermit>>>,
}

/// A route permit taken through [`Capacity::acquire`]; dropping it hands it to a part waiting on the same
/// worker, when its worker's share allows, or gives it back to the semaphore.
#[derive(Debug)]
pub(crate) struct RoutePermit {
    permit: Option<OwnedSemaphorePermit>,
    capacity: Arc<Capacity>,
    /// The worker index it is counted on, 0 for none.
    worker: usize,
}

impl Capacity {
    pub(crate) fn new(size: usize) -> Capacity {
        Capacity::shared(size, runtime::worker_indexes().saturating_sub(1))
    }

    /// Shared among `workers` (started before it is made: it keeps a list per worker index).
    fn shared(size: usize, workers: usize) -> Capacity {
        let workers = workers.max(1);
        Capacity {
            permits: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
            local: (0..runtime::worker_indexes())
                .map(|_| Local::default())
                .collect(),
            workers,
            share: AtomicUsize::new(size / workers),
            owed: Arc::new(AtomicUsize::new(0)),
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

    /// Grows at once. Shrinks by forgetting free permits and, for those still held, by a task that waits
    /// first in line for them and forgets them as they come back: nobody new starts until fewer than `size`
    /// are held. Needs a Tokio runtime (a reload runs in one).
    pub(crate) fn resize(&self, size: usize) {
        let mut current = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if size > *current {
            self.permits.add_permits(size - *current);
        } else if size < *current {
            let excess = *current - size;
            let owed = excess - self.permits.forget_permits(excess);
            if owed > 0 {
                let permits = self.permits.clone();
                let pending = self.owed.clone();
                pending.fetch_add(owed, Ordering::SeqCst);
                let owed = u32::try_from(owed).expect("sizes are at most MAX_PERMITS");
                tokio::spawn(async move {
                    // The semaphore is never closed.
                    if let Ok(taken) = permits.acquire_many_owned(owed).await {
                        taken.forget();
                    }
                    pending.fetch_sub(owed as usize, Ordering::SeqCst);
                });
            }
        }
        *current = size;
        self.share.store(size / self.workers, Ordering::Relaxed);
    }

    /// Takes a permit: at once if one is free, else from whichever comes first, a permit released on this
    /// worker (handed over) or the semaphore's queue. Cancel-safe: a permit handed to a part that is gone
    /// stays in the dropped channel, which gives it back to the semaphore.
    pub(crate) async fn acquire(self: Arc<Self>) -> Result<RoutePermit, AcquireError> {
        let worker = runtime::worker_index();
        let Some(local) = self.local.get(worker).filter(|_| worker != 0) else {
            let permit = self.permits.clone().acquire_owned().await?;
            return Ok(RoutePermit {
                permit: Some(permit),
                capacity: self,
                worker: 0,
            });
        };
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let (tx, mut rx) = oneshot::channel();
                {
                    let mut waiters = local.waiters.lock().unwrap_or_else(|e| e.into_inner());
                    if waiters.len() == waiters.capacity() {
                        // Bounded by the parts waiting now: the cancelled ones go before it grows.
                        waiters.retain(|w| !w.is_closed());
                    }
                    waiters.push_back(tx);
                }
                let queued = self.permits.clone().acquire_owned();
                tokio::select! {
                    biased;
                    Ok(permit) = &mut rx => permit,
                    permit = queued => permit?,
                }
            }
        };
        local.held.fetch_add(1, Ordering::Relaxed);
        Ok(RoutePermit {
            permit: Some(permit),
            capacity: self,
            worker,
        })
    }
}

impl Drop for RoutePermit {
    fn drop(&mut self) {
        let Some(mut permit) = self.permit.take() else {
            return;
        };
        if self.worker == 0 {
            return;
        }
        let capacity = &self.capacity;
        let local = &capacity.local[self.worker];
        let held = local.held.fetch_sub(1, Ordering::Relaxed) - 1;
        if runtime::worker_index() != self.worker
            || held >= capacity.share.load(Ordering::Relaxed)
            || capacity.owed.load(Ordering::SeqCst) > 0
        {
            return;
        }
        let mut waiters = local.waiters.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(waiter) = waiters.pop_front() {
            match waiter.send(permit) {
                Ok(()) => return,
                Err(back) => permit = back,
            }
        }
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

    /// Handing over on the same worker: a capacity shared by two workers, and parts on them that hold its
    /// permits or wait for one, each in a task on its worker.
    mod handover {
        use std::future::Future;
        use std::pin::pin;

        use tokio::sync::{mpsc, oneshot};

        use super::*;
        use crate::runtime::Workers;

        /// A part on `worker` that takes a permit at once and holds it until told to drop it, there.
        async fn holding(
            workers: &Workers,
            worker: usize,
            capacity: &Arc<Capacity>,
        ) -> oneshot::Sender<()> {
            let (release, released) = oneshot::channel::<()>();
            let capacity = capacity.clone();
            workers
                .handle(worker)
                .spawn(async move {
                    let mut acquire = pin!(capacity.acquire());
                    let permit =
                        std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
                    let Poll::Ready(Ok(permit)) = permit else {
                        panic!("a permit is free")
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = released.await;
                    });
                })
                .await
                .unwrap();
            release
        }

        /// A part on `worker` that waits for a permit (queued once this returns), reports `name` on
        /// `got` when it has one, and holds it until told to drop it.
        async fn waiting(
            workers: &Workers,
            worker: usize,
            capacity: &Arc<Capacity>,
            name: &'static str,
            got: &mpsc::UnboundedSender<&'static str>,
        ) -> oneshot::Sender<()> {
            let (release, released) = oneshot::channel::<()>();
            let (queued, is_queued) = oneshot::channel::<()>();
            let (capacity, got) = (capacity.clone(), got.clone());
            workers.handle(worker).spawn(async move {
                let mut acquire = pin!(capacity.acquire());
                let pending =
                    std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx).is_pending()))
                        .await;
                assert!(pending, "{name} finds no permit free");
                queued.send(()).unwrap();
                let _permit = acquire.await.unwrap();
                got.send(name).unwrap();
                let _ = released.await;
            });
            is_queued.await.unwrap();
            release
        }

        /// Everything given back: nothing held, on any worker.
        async fn all_back(capacity: &Capacity, size: usize) {
            while capacity.permits().available_permits() != size
                || capacity.owed.load(Ordering::SeqCst) != 0
            {
                tokio::task::yield_now().await;
            }
            assert_eq!(capacity.in_use(), 0);
            assert!(
                capacity
                    .local
                    .iter()
                    .all(|l| l.held.load(Ordering::Relaxed) == 0)
            );
        }

        /// A permit released on worker A goes to the part waiting on A, though a part on B queued first.
        #[tokio::test]
        async fn a_released_permit_goes_to_a_part_waiting_on_the_same_worker() {
            let workers = Workers::start(2).unwrap();
            let capacity = Arc::new(Capacity::shared(2, 2));
            let a = holding(&workers, 0, &capacity).await;
            let b = holding(&workers, 1, &capacity).await;
            let (got, mut order) = mpsc::unbounded_channel();
            let on_b = waiting(&workers, 1, &capacity, "B", &got).await;
            let on_a = waiting(&workers, 0, &capacity, "A", &got).await;

            a.send(()).unwrap();
            assert_eq!(order.recv().await, Some("A"), "handed over on A");
            assert_eq!(capacity.in_use(), 2);
            b.send(()).unwrap();
            assert_eq!(order.recv().await, Some("B"));
            for release in [on_a, on_b] {
                release.send(()).unwrap();
            }
            all_back(&capacity, 2).await;
        }

        /// A worker holding its share or more gives a released permit to the semaphore's first waiter, here
        /// on the other worker: a part waiting on B is not starved by a busy A.
        #[tokio::test]
        async fn a_worker_past_its_share_gives_a_released_permit_to_the_other_worker() {
            let workers = Workers::start(2).unwrap();
            let capacity = Arc::new(Capacity::shared(2, 2));
            let a1 = holding(&workers, 0, &capacity).await;
            let a2 = holding(&workers, 0, &capacity).await;
            let (got, mut order) = mpsc::unbounded_channel();
            let on_b = waiting(&workers, 1, &capacity, "B", &got).await;
            let on_a = waiting(&workers, 0, &capacity, "A", &got).await;

            // A holds both, its share is one: the first back goes to B, queued first.
            a1.send(()).unwrap();
            assert_eq!(order.recv().await, Some("B"), "B is not starved");
            a2.send(()).unwrap();
            assert_eq!(order.recv().await, Some("A"));
            for release in [on_a, on_b] {
                release.send(()).unwrap();
            }
            all_back(&capacity, 2).await;
        }

        /// While a shrink waits for permits, nothing is handed over: the semaphore's order alone, as before.
        #[tokio::test]
        async fn a_shrink_waiting_for_permits_stops_the_handover() {
            let workers = Workers::start(2).unwrap();
            let capacity = Arc::new(Capacity::shared(4, 2));
            let a = holding(&workers, 0, &capacity).await;
            let mut b = Vec::new();
            for _ in 0..3 {
                b.push(holding(&workers, 1, &capacity).await);
            }
            let (got, mut order) = mpsc::unbounded_channel();
            let on_b = waiting(&workers, 1, &capacity, "B", &got).await;
            let on_a = waiting(&workers, 0, &capacity, "A", &got).await;

            // Size 3 with 4 held: one is owed. A holds none once it releases, under its share of one.
            capacity.resize(3);
            assert_eq!(capacity.owed.load(Ordering::SeqCst), 1);
            a.send(()).unwrap();
            assert_eq!(
                order.recv().await,
                Some("B"),
                "the semaphore's first, not A"
            );
            assert_eq!(capacity.owed.load(Ordering::SeqCst), 1, "still owed");
            for release in b.into_iter().chain([on_a, on_b]) {
                release.send(()).unwrap();
            }
            all_back(&capacity, 3).await;
        }

        /// A part dropped after a permit was handed to it, before it took it, gives it back.
        #[tokio::test]
        async fn a_part_dropped_as_a_permit_is_handed_to_it_gives_it_back() {
            let workers = Workers::start(2).unwrap();
            let capacity = Arc::new(Capacity::shared(2, 2));
            let b = holding(&workers, 1, &capacity).await;
            let on_a = capacity.clone();
            workers
                .handle(0)
                .spawn(async move {
                    let held = on_a.clone().acquire().await.unwrap();
                    let mut acquire = Box::pin(on_a.clone().acquire());
                    let pending = std::future::poll_fn(|cx| {
                        Poll::Ready(acquire.as_mut().poll(cx).is_pending())
                    })
                    .await;
                    assert!(pending);
                    drop(held);
                    let handed = on_a.local[crate::runtime::worker_index()]
                        .waiters
                        .lock()
                        .unwrap()
                        .is_empty();
                    assert!(handed, "the permit went to the waiting part's channel");
                    assert_eq!(on_a.permits().available_permits(), 0);
                    drop(acquire);
                    assert_eq!(on_a.permits().available_permits(), 1, "given back");
                })
                .await
                .unwrap();
            assert_eq!(capacity.in_use(), 1);
            b.send(()).unwrap();
            all_back(&capacity, 2).await;
        }
    }
}
