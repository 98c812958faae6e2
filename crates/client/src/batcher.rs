//! The micro-batcher: concurrent single calls in, batches out.
//!
//! One collector task owns the queue (as in fillmore-labs/microbatch): callers hand it their request and a
//! oneshot for the answer through a bounded channel; it cuts a batch when `max_size` calls wait or `max_wait`
//! has passed since the first, takes one of `max_in_flight` slots, and spawns a task that sends the batch and
//! hands each reply part to its caller as soon as it arrives (matched by the part's index).
//!
//! Memory stays bounded: the collector holds at most `max_size` calls, the channel `queue` more, and a caller
//! beyond those waits in `call` until there is room. While every slot is taken, the pending batch can still
//! fill up to `max_size`, then the collector stops taking calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::{BatchBuilder, BatchClient, CallError};

type Answer = Result<Response<Bytes>, CallError>;

/// Batches concurrent calls: `batcher.call(request).await` gives that request's response, as a direct call
/// would, while the requests of many callers travel in one batch.
///
/// - A batch is sent when `max_size` calls wait, or `max_wait` after the first of them arrived, whichever
///   comes first; at most `max_in_flight` batches are in flight, and callers beyond that wait (backpressure).
/// - A caller that drops its `call` future before its batch is sent is left out of that batch.
/// - A part's own failure (a 404, a gateway's 502 or 504 part) is that caller's `Ok(Response)` with that
///   status; only a failure of the whole batch (connect, refused, broken off) is an `Err`, for each caller of
///   that batch still waiting.
/// - [`shutdown`](Self::shutdown) sends what is pending and waits for the batches in flight.
///
/// Clones share the collector. It stops when [`shutdown`](Self::shutdown) is called or every clone is dropped
/// (pending calls are sent either way). Needs a Tokio runtime: [`BatcherBuilder::build`] spawns the collector.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Message>,
    stats: Arc<Stats>,
}

/// Settings of a [`Batcher`].
#[derive(Debug)]
pub struct BatcherBuilder {
    client: BatchClient,
    max_size: usize,
    max_wait: Duration,
    max_in_flight: usize,
    queue: Option<usize>,
}

/// What a batcher has done so far and what it holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatcherStats {
    /// Batches sent.
    pub batches: u64,
    /// Calls sent in those batches.
    pub calls: u64,
    /// Calls left out because their caller had gone when their batch was cut.
    pub cancelled: u64,
    /// Calls the collector holds for the next batch.
    pub pending: usize,
    /// Batches in flight.
    pub in_flight: usize,
    /// True while a batch is ready but every one of the `max_in_flight` slots is taken.
    pub waiting_for_slot: bool,
}

#[derive(Debug, Default)]
struct Stats {
    batches: AtomicU64,
    calls: AtomicU64,
    cancelled: AtomicU64,
    pending: AtomicUsize,
    in_flight: AtomicUsize,
    waiting_for_slot: AtomicBool,
}

/// Nearly every message is a call: boxing it would cost an allocation per call to save space on the rare
/// shutdown.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Message {
    Call(Job),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Job {
    request: Request<Bytes>,
    answer: oneshot::Sender<Answer>,
}

impl BatcherBuilder {
    /// Most calls in one batch (100 by default; batchgate's `max_parts` is 100 by default, Google's 1000).
    pub fn max_size(mut self, calls: usize) -> Self {
        self.max_size = calls.max(1);
        self
    }

    /// Longest a call waits for others before its batch is sent (5 ms by default).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Most batches in flight at once (4 by default).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches.max(1);
        self
    }

    /// Calls that can wait in the channel to the collector beyond the pending batch (`max_size` by default).
    pub fn queue(mut self, calls: usize) -> Self {
        self.queue = Some(calls.max(1));
        self
    }

    /// Starts the collector task on the current Tokio runtime.
    pub fn build(self) -> Batcher {
        let (queue, inbox) = mpsc::channel(self.queue.unwrap_or(self.max_size));
        let stats = Arc::new(Stats::default());
        let collector = Collector {
            client: self.client,
            max_size: self.max_size,
            max_wait: self.max_wait,
            max_in_flight: self.max_in_flight,
            slots: Arc::new(Semaphore::new(self.max_in_flight)),
            stats: stats.clone(),
        };
        tokio::spawn(collector.run(inbox));
        Batcher { queue, stats }
    }
}

impl Batcher {
    /// A batcher with the default settings (see [`BatcherBuilder`]).
    pub fn new(client: BatchClient) -> Batcher {
        Batcher::builder(client).build()
    }

    /// Settings for a batcher sending through `client`.
    pub fn builder(client: BatchClient) -> BatcherBuilder {
        BatcherBuilder {
            client,
            max_size: 100,
            max_wait: Duration::from_millis(5),
            max_in_flight: 4,
            queue: None,
        }
    }

    /// Sends `request` in the next batch and returns its response. The URI is the part's target (a path, or
    /// an absolute URL). Waits while the batcher is full.
    pub async fn call(&self, request: Request<Bytes>) -> Result<Response<Bytes>, CallError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Message::Call(Job { request, answer }))
            .await
            .map_err(|_| CallError::Shutdown)?;
        answered.await.unwrap_or(Err(CallError::NoAnswer))
    }

    /// Sends every call already made (pending or queued), waits until every batch in flight has finished,
    /// then stops the collector: later calls get [`CallError::Shutdown`]. Returns at once if the batcher is
    /// already shut down.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.queue.send(Message::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// A snapshot of the counters, for tests and metrics.
    pub fn stats(&self) -> BatcherStats {
        let s = &self.stats;
        BatcherStats {
            batches: s.batches.load(Ordering::SeqCst),
            calls: s.calls.load(Ordering::SeqCst),
            cancelled: s.cancelled.load(Ordering::SeqCst),
            pending: s.pending.load(Ordering::SeqCst),
            in_flight: s.in_flight.load(Ordering::SeqCst),
            waiting_for_slot: s.waiting_for_slot.load(Ordering::SeqCst),
        }
    }
}

struct Collector {
    client: BatchClient,
    max_size: usize,
    max_wait: Duration,
    max_in_flight: usize,
    slots: Arc<Semaphore>,
    stats: Arc<Stats>,
}

impl Collector {
    async fn run(self, mut inbox: mpsc::Receiver<Message>) {
        let mut pending: Vec<Job> = Vec::with_capacity(self.max_size);
        // When the first pending call arrived plus max_wait.
        let mut deadline: Option<Instant> = None;
        let mut due = false;
        let mut open = true;
        let mut shutdowns = Vec::new();
        loop {
            if !open && pending.is_empty() {
                break;
            }
            let full = pending.len() >= self.max_size;
            let ready = !pending.is_empty() && (full || due || !open);
            self.stats.waiting_for_slot.store(
                ready && self.slots.available_permits() == 0,
                Ordering::SeqCst,
            );
            let wake = deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                permit = self.slots.clone().acquire_owned(), if ready => {
                    // The semaphore is never closed.
                    let Ok(permit) = permit else { break };
                    self.flush(&mut pending, permit);
                    deadline = None;
                    due = false;
                }
                message = inbox.recv(), if open && !full => match message {
                    Some(Message::Call(job)) => {
                        if pending.is_empty() {
                            deadline = Some(Instant::now() + self.max_wait);
                        }
                        pending.push(job);
                        self.stats.pending.store(pending.len(), Ordering::SeqCst);
                    }
                    Some(Message::Shutdown(done)) => {
                        shutdowns.push(done);
                        // Calls already queued are still received and sent; new ones are refused.
                        inbox.close();
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(wake), if deadline.is_some() && !due => due = true,
            }
        }
        self.stats.waiting_for_slot.store(false, Ordering::SeqCst);
        if !shutdowns.is_empty() {
            // Every slot back means every batch has finished.
            let _all = self.slots.acquire_many(self.max_in_flight as u32).await;
            for done in shutdowns {
                let _ = done.send(());
            }
        }
    }

    /// Sends the pending calls whose callers are still there as one batch, on the slot `permit`.
    fn flush(&self, pending: &mut Vec<Job>, permit: OwnedSemaphorePermit) {
        let before = pending.len();
        let jobs: Vec<Job> = pending
            .drain(..)
            .filter(|j| !j.answer.is_closed())
            .collect();
        self.stats.pending.store(0, Ordering::SeqCst);
        self.stats
            .cancelled
            .fetch_add((before - jobs.len()) as u64, Ordering::SeqCst);
        if jobs.is_empty() {
            return;
        }
        self.stats.batches.fetch_add(1, Ordering::SeqCst);
        self.stats
            .calls
            .fetch_add(jobs.len() as u64, Ordering::SeqCst);
        self.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(send_batch(
            self.client.clone(),
            jobs,
            InFlight {
                _permit: permit,
                stats: self.stats.clone(),
            },
        ));
    }
}

/// A batch's slot: given back, and the gauge lowered, when its task ends however it ends.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    stats: Arc<Stats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends one batch and answers each caller as its part arrives.
async fn send_batch(client: BatchClient, jobs: Vec<Job>, _slot: InFlight) {
    let mut batch = BatchBuilder::new();
    let mut waiting = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        let id = i.to_string();
        let request = super::batch::embedded(job.request);
        // Ids `0`, `1`, ... are unique and valid: this cannot fail.
        let _ = batch.push_embedded(Some(&id), request);
        waiting.push(Some(job.answer));
    }
    let mut replies = client.send_stream(batch);
    while let Some(reply) = replies.next().await {
        match reply {
            Ok(part) => {
                if let Some(answer) = waiting.get_mut(part.index).and_then(Option::take) {
                    let _ = answer.send(Ok(part.into_response()));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for answer in waiting.iter_mut().filter_map(Option::take) {
                    let _ = answer.send(Err(CallError::Batch(error.clone())));
                }
            }
        }
    }
    for answer in waiting.into_iter().flatten() {
        let _ = answer.send(Err(CallError::NoAnswer));
    }
}
