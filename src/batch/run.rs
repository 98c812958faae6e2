//! The run stage: a batch's scheduler. It starts parts, within the batch's window and concurrency, and hands
//! their rendered answers to the reply in request order.
//!
//! It runs as a task of its own, apart from the reply writer, so parts make progress (and give their
//! upstream permits back) whether or not the client is reading. The window is the capacity of the channel to
//! the writer: a part takes a seat when it starts, in request order, and gives it back when the writer has
//! taken its answer. A slow first part therefore stalls new starts instead of letting answers pile up, and a
//! client that stops reading holds at most its own window, until `limits.write_timeout` cuts it off.
//!
//! Parts with side effects wait for [`Feed::commit`]: a batch refused as a whole (truncated, too large, a
//! duplicate Content-ID...) has run only safe methods (GET, HEAD, OPTIONS).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::codec::ReplyWriter;
use crate::config::Limits;
use crate::error::{Fault, PartError};
use crate::metrics::Metrics;
use crate::stack::{PartRequest, PartService};
use crate::wire::ContentId;

/// One part, as the read stage hands it over.
#[derive(Debug)]
pub struct Job {
    pub index: usize,
    pub content_id: Option<ContentId>,
    pub work: Work,
}

/// What a part needs done.
#[derive(Debug)]
pub enum Work {
    /// Refused before going anywhere (parsing, routing): answered with this error.
    Refused(PartError),
    /// Sent upstream through its route's stack.
    Forward {
        request: Box<PartRequest>,
        service: PartService,
    },
}

/// A batch's scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Parts started but not yet taken by the writer.
    pub window: usize,
    /// Parts of this batch talking to upstreams at once.
    pub concurrency: usize,
    /// When the batch's parts must all be answered.
    pub deadline: Instant,
    pub batch_timeout: Duration,
}

impl Settings {
    pub fn new(limits: &Limits, arrival: Instant) -> Settings {
        Settings {
            window: limits.window,
            concurrency: limits.concurrency,
            deadline: arrival + limits.batch_timeout,
            batch_timeout: limits.batch_timeout,
        }
    }
}

enum Input {
    Part(Job),
    /// The whole batch is in and accepted: parts with side effects may run.
    Commit,
}

/// The read stage's end of a running batch.
#[derive(Debug)]
pub struct Feed {
    input: mpsc::UnboundedSender<Input>,
}

impl Feed {
    /// Hands over the next part, in request order. The channel needs no bound of its own: the read stage
    /// stops at `limits.max_parts`.
    pub fn push(&self, job: Job) {
        let _ = self.input.send(Input::Part(job));
    }

    /// Accepts the batch. Dropping the feed without committing refuses it: the scheduler stops, cancelling
    /// what it started.
    pub fn commit(self) {
        let _ = self.input.send(Input::Commit);
    }
}

/// Starts a batch's scheduler. Its answers, rendered by `writer`, come out of the receiver in request order.
pub fn start(
    settings: Settings,
    writer: ReplyWriter,
    metrics: Arc<Metrics>,
) -> (Feed, mpsc::Receiver<Bytes>) {
    let (input, input_rx) = mpsc::unbounded_channel();
    let (out, out_rx) = mpsc::channel(settings.window);
    let scheduler = Scheduler {
        input: input_rx,
        out,
        slots: VecDeque::with_capacity(settings.window),
        waiting: VecDeque::new(),
        running: FuturesUnordered::new(),
        sent: 0,
        concurrency: Arc::new(Semaphore::new(settings.concurrency)),
        committed: false,
        input_open: true,
        shared: Arc::new(Shared {
            writer,
            metrics,
            settings,
        }),
    };
    tokio::spawn(scheduler.run());
    (Feed { input }, out_rx)
}

/// What every part future of the batch needs.
struct Shared {
    writer: ReplyWriter,
    metrics: Arc<Metrics>,
    settings: Settings,
}

type PartFuture = Pin<Box<dyn Future<Output = (usize, Bytes)> + Send>>;

/// A seat in the window, in request order.
struct Slot {
    seat: mpsc::OwnedPermit<Bytes>,
    state: SlotState,
}

enum SlotState {
    /// Has side effects; waits for the commit.
    Held(Box<Job>),
    Running,
    Done(Bytes),
}

struct Scheduler {
    input: mpsc::UnboundedReceiver<Input>,
    out: mpsc::Sender<Bytes>,
    /// Seated parts from the next one to send on.
    slots: VecDeque<Slot>,
    /// Parts handed over but not yet seated.
    waiting: VecDeque<Job>,
    running: FuturesUnordered<PartFuture>,
    /// Parts sent to the writer so far: the index of `slots[0]`.
    sent: usize,
    concurrency: Arc<Semaphore>,
    committed: bool,
    input_open: bool,
    shared: Arc<Shared>,
}

impl Scheduler {
    async fn run(mut self) {
        let gone = self.out.clone();
        loop {
            self.seat_waiting();
            if !self.input_open && self.waiting.is_empty() && self.slots.is_empty() {
                return;
            }
            let want_seat = !self.waiting.is_empty();
            tokio::select! {
                biased;
                () = gone.closed() => return,
                Some((index, bytes)) = self.running.next(), if !self.running.is_empty() => {
                    self.done(index, bytes);
                }
                input = self.input.recv(), if self.input_open => match input {
                    Some(Input::Part(job)) => self.waiting.push_back(job),
                    Some(Input::Commit) => self.commit(),
                    // Refused: dropping the scheduler cancels every part it started.
                    None if !self.committed => return,
                    None => self.input_open = false,
                },
                seat = self.out.clone().reserve_owned(), if want_seat => match seat {
                    Ok(seat) => {
                        let job = self.waiting.pop_front().expect("a part waits");
                        self.seat(seat, job);
                    }
                    Err(_) => return,
                },
            }
        }
    }

    /// Seats waiting parts while the window has room.
    fn seat_waiting(&mut self) {
        while !self.waiting.is_empty() {
            match self.out.clone().try_reserve_owned() {
                Ok(seat) => {
                    let job = self.waiting.pop_front().expect("a part waits");
                    self.seat(seat, job);
                }
                Err(_) => return,
            }
        }
    }

    fn seat(&mut self, seat: mpsc::OwnedPermit<Bytes>, job: Job) {
        let state = match job.work {
            Work::Refused(error) => {
                SlotState::Done(answer(&self.shared, job.content_id.as_ref(), Err(error)))
            }
            Work::Forward { ref request, .. } if !self.committed && !request.is_safe() => {
                SlotState::Held(Box::new(job))
            }
            Work::Forward { request, service } => {
                self.start(job.index, job.content_id, request, service);
                SlotState::Running
            }
        };
        self.slots.push_back(Slot { seat, state });
        self.send_ready();
    }

    fn commit(&mut self) {
        self.committed = true;
        let held: Vec<Box<Job>> = self
            .slots
            .iter_mut()
            .filter_map(
                |slot| match std::mem::replace(&mut slot.state, SlotState::Running) {
                    SlotState::Held(job) => Some(job),
                    other => {
                        slot.state = other;
                        None
                    }
                },
            )
            .collect();
        for job in held {
            let Job {
                index,
                content_id,
                work,
            } = *job;
            if let Work::Forward { request, service } = work {
                self.start(index, content_id, request, service);
            }
        }
    }

    fn start(
        &mut self,
        index: usize,
        content_id: Option<ContentId>,
        request: Box<PartRequest>,
        service: PartService,
    ) {
        let shared = self.shared.clone();
        let concurrency = self.concurrency.clone();
        self.running.push(Box::pin(async move {
            let settings = &shared.settings;
            let call = async {
                let _permit: OwnedSemaphorePermit =
                    concurrency
                        .acquire_owned()
                        .await
                        .map_err(|e| PartError::Internal {
                            index,
                            reason: e.to_string(),
                        })?;
                service.oneshot(*request).await
            };
            let result = tokio::time::timeout_at(settings.deadline, call)
                .await
                .unwrap_or(Err(PartError::BatchDeadline {
                    index,
                    after: settings.batch_timeout,
                }));
            (index, answer(&shared, content_id.as_ref(), result))
        }));
    }

    fn done(&mut self, index: usize, bytes: Bytes) {
        self.slots[index - self.sent].state = SlotState::Done(bytes);
        self.send_ready();
    }

    /// Hands the writer every answered part at the front of the window.
    fn send_ready(&mut self) {
        while let Some(Slot {
            state: SlotState::Done(_),
            ..
        }) = self.slots.front()
        {
            let slot = self.slots.pop_front().expect("a front slot");
            let SlotState::Done(bytes) = slot.state else {
                unreachable!("checked above")
            };
            slot.seat.send(bytes);
            self.sent += 1;
        }
    }
}

impl Drop for Scheduler {
    /// Parts never answered (the batch was refused, or its client went away) are counted as cancelled.
    fn drop(&mut self) {
        let unanswered = self
            .slots
            .iter()
            .filter(|slot| !matches!(slot.state, SlotState::Done(_)))
            .count();
        self.shared
            .metrics
            .parts_cancelled(unanswered + self.waiting.len());
    }
}

/// Renders a part's outcome, counting and logging it.
fn answer(
    shared: &Shared,
    content_id: Option<&ContentId>,
    result: Result<crate::stack::UpstreamResponse, PartError>,
) -> Bytes {
    match result {
        Ok(response) => {
            shared.metrics.part_answered(response.status);
            shared.writer.response(content_id, &response)
        }
        Err(error) => {
            shared.metrics.part(error.kind());
            match error.fault() {
                Fault::Client => tracing::debug!(kind = error.kind(), "{error}"),
                _ => tracing::warn!(
                    kind = error.kind(),
                    retryable = error.retryable(),
                    "{error}"
                ),
            }
            shared.writer.error(content_id, &error)
        }
    }
}
