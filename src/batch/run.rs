//! The run stage: a batch's scheduler. It starts parts, within the batch's window and concurrency, and hands
//! their rendered answers to the reply in request order.
//!
//! It runs on the connection's task while the body is read (a 1-part batch's also after, driven by its reply
//! until the answer, at the cost of no task), then as a task of its own, apart from the reply writer, so
//! parts make progress (and give their upstream permits back) whether or not the client is reading
//! ([`Running`]). The window is the capacity of the channel to the writer: a part takes a seat when it
//! starts, in request order, and gives it back when the writer has taken its answer. A slow first part
//! therefore stalls new starts instead of letting answers pile up, and a client that stops reading holds at
//! most its own window, until `limits.write_timeout` cuts it off.
//!
//! The batch's deadline (`limits.batch_timeout`) is one timer here, not one per part: when it passes, the
//! parts still running are cancelled and every part not answered yet is answered with a 504.
//!
//! Parts with side effects wait for [`Feed::commit`]: a batch refused as a whole (truncated, too large, a
//! duplicate Content-ID...) has run only safe methods (GET, HEAD, OPTIONS).
//!
//! A part that depends on earlier ones (JSON `dependsOn`) waits in its seat until they have answered, then
//! is sent if they all succeeded (2xx) or answered `424 Failed Dependency` without being sent. Only a batch
//! whose format has dependencies keeps the statuses this needs ([`Settings::dependencies`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::dedup::{Dedup, Digest, Role, Sharing};
use crate::codec::{Rendered, ReplyWriter};
use crate::config::Limits;
use crate::error::{Fault, PartError};
use crate::metrics::{Metrics, RouteSeries};
use crate::observe::Observer;
use crate::observe::timeline::{BatchTimeline, Mark, PartTimeline};
use crate::observe::window::{RouteWindow, Sample};
use crate::stack::{PartRequest, PartService, Permits, UpstreamResponse};
use batchgate_wire::ContentId;

/// One part, as the read stage hands it over.
#[derive(Debug)]
pub(crate) struct Job {
    pub index: usize,
    pub content_id: Option<ContentId>,
    /// The route's prefix, labelling its metrics; empty for a part never routed.
    pub route: Arc<str>,
    pub work: Work,
    /// Earlier parts (by index) that must succeed before this one is sent; empty for most.
    pub depends_on: Box<[usize]>,
}

/// What a part needs done.
#[derive(Debug)]
pub(crate) enum Work {
    /// Refused before going anywhere (parsing, routing): answered with this error.
    Refused(PartError),
    /// Sent upstream through its route's stack.
    Forward(Forward),
}

/// A routed part: its request, its route's stack, and the permits it takes first.
#[derive(Debug)]
pub(crate) struct Forward {
    pub request: Box<PartRequest>,
    /// Its route's stack, cloned for the call once the permits are taken: a part that waits holds no clone.
    pub service: Arc<PartService>,
    pub permits: Permits,
    /// The route shares one call among identical safe parts of the batch (`dedup`, see [`super::dedup`]).
    pub dedup: bool,
}

/// A batch's scheduling limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Parts started but not yet taken by the writer.
    pub window: usize,
    /// Bytes of answers held in the window (`limits.window_bytes`).
    pub window_bytes: usize,
    /// Parts of this batch talking to upstreams at once.
    pub concurrency: usize,
    /// When the batch arrived, and when its parts must all be answered.
    pub arrival: Instant,
    pub deadline: Instant,
    pub batch_timeout: Duration,
    /// The batch's parts may depend on earlier ones: their statuses are kept until the batch ends.
    pub dependencies: bool,
}

impl Settings {
    pub(crate) fn new(limits: &Limits, arrival: Instant, dependencies: bool) -> Settings {
        Settings {
            window: limits.window,
            window_bytes: usize::try_from(limits.window_bytes).unwrap_or(usize::MAX),
            concurrency: limits.concurrency,
            arrival,
            deadline: arrival + limits.batch_timeout,
            batch_timeout: limits.batch_timeout,
            dependencies,
        }
    }
}

enum Input {
    Part(Job),
    /// The whole batch is in and accepted: parts with side effects may run.
    Commit,
}

/// What the read stage has handed over and the scheduler has not taken yet. Not a channel: the scheduler runs
/// on the read stage's task while parts come ([`Running::alongside`] polls it right after each read), and moves
/// to a task of its own only once the whole batch is in, so a part needs no wake-up, and a small batch holds
/// no channel block sized for 32 parts.
#[derive(Default)]
struct Inbox {
    /// Bounded by the read stage, which stops at `limits.max_parts`.
    parts: VecDeque<Job>,
    /// Committed, and the scheduler has not seen it yet.
    commit: bool,
    /// The feed is gone: after its commit, nothing more comes; without one, the batch is refused.
    closed: bool,
    /// The scheduler's task, when it waits for the commit (or the refusal) elsewhere than on the read stage's.
    waker: Option<Waker>,
}

impl Inbox {
    /// The next thing handed over, as a channel's receiver would give it: parts, the commit, then `None` once
    /// the feed is gone.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Input>> {
        if let Some(job) = self.parts.pop_front() {
            if self.parts.is_empty() {
                // Emptied: its room goes back rather than stay for the batch's life.
                self.parts = VecDeque::new();
            }
            return Poll::Ready(Some(Input::Part(job)));
        }
        if std::mem::take(&mut self.commit) {
            return Poll::Ready(Some(Input::Commit));
        }
        if self.closed {
            return Poll::Ready(None);
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Shared by the read stage's [`Feed`] and the scheduler.
type SharedInbox = Arc<Mutex<Inbox>>;

fn lock(inbox: &SharedInbox) -> std::sync::MutexGuard<'_, Inbox> {
    inbox.lock().unwrap_or_else(|e| e.into_inner())
}

/// The read stage's end of a running batch.
pub(crate) struct Feed {
    inbox: SharedInbox,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

impl Feed {
    /// Hands over the next part, in request order. The scheduler seats it when next polled, which the read
    /// stage's task does right after the read ([`Running::alongside`]).
    pub(crate) fn push(&self, job: Job) {
        lock(&self.inbox).parts.push_back(job);
    }

    /// Accepts the batch. Dropping the feed without committing refuses it: the scheduler stops, cancelling
    /// what it started.
    pub(crate) fn commit(self) {
        lock(&self.inbox).commit = true;
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let waker = {
            let mut inbox = lock(&self.inbox);
            inbox.closed = true;
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Makes a batch's scheduler. Its answers, rendered by `writer`, come out of [`Answers`] in request order.
/// The scheduler runs only once driven ([`Running`]).
pub(crate) fn start(
    settings: Settings,
    writer: ReplyWriter,
    telemetry: Telemetry,
) -> (Feed, Answers, Running) {
    let inbox = SharedInbox::default();
    let (out, out_rx) = mpsc::channel(settings.window);
    let held = Arc::new(HeldBytes::default());
    let answers = Answers {
        rx: out_rx,
        held: held.clone(),
    };
    let span = telemetry.span.clone();
    let scheduler = Scheduler {
        inbox: inbox.clone(),
        out,
        // Grown as parts are seated: a small batch holds no room for a whole window of seats (208 bytes each).
        slots: VecDeque::new(),
        waiting: VecDeque::new(),
        dedup: None,
        routes: Vec::new(),
        statuses: settings.dependencies.then(Vec::new),
        running: FuturesUnordered::new(),
        sent: 0,
        concurrency: Arc::new(Semaphore::new(settings.concurrency)),
        bytes: WindowBytes {
            held,
            largest: 0,
            first_guess: telemetry.observer.largest_answer().unwrap_or(FIRST_GUESS),
            limit: settings.window_bytes,
        },
        committed: false,
        input_open: true,
        expired: false,
        writer,
        telemetry,
        settings,
    };
    let running = Running(Some(Box::pin(scheduler.run().instrument(span))));
    (Feed { inbox }, answers, running)
}

/// The bytes of a batch's answers held in its window: charged by the scheduler as each part is answered, given
/// back by the writer as it takes them ([`Answers`]).
#[derive(Debug, Default)]
struct HeldBytes {
    bytes: AtomicUsize,
    /// The writer took an answer: a scheduler stopped by `limits.window_bytes` looks again.
    taken: Notify,
}

/// The writer's end of a batch's window: its answers, in request order. Taking one gives its bytes back.
#[derive(Debug)]
pub(crate) struct Answers {
    rx: mpsc::Receiver<Rendered>,
    held: Arc<HeldBytes>,
}

impl Answers {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Rendered>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(answer)) = &polled {
            self.give_back(answer);
        }
        polled
    }

    pub(crate) async fn recv(&mut self) -> Option<Rendered> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next answer if it is there already.
    pub(crate) fn try_recv(&mut self) -> Option<Rendered> {
        let answer = self.rx.try_recv().ok()?;
        self.give_back(&answer);
        Some(answer)
    }

    fn give_back(&self, answer: &Rendered) {
        self.held.bytes.fetch_sub(answer.len(), Ordering::Relaxed);
        self.held.taken.notify_one();
    }
}

/// The scheduler's end of [`Answers`], for tests of the writer: each answer is charged as the scheduler would.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestAnswers {
    tx: mpsc::Sender<Rendered>,
    held: Arc<HeldBytes>,
}

#[cfg(test)]
impl TestAnswers {
    pub(crate) fn new(capacity: usize) -> (TestAnswers, Answers) {
        let (tx, rx) = mpsc::channel(capacity);
        let held = Arc::new(HeldBytes::default());
        let answers = Answers {
            rx,
            held: held.clone(),
        };
        (TestAnswers { tx, held }, answers)
    }

    pub(crate) async fn send(&self, answer: Rendered) {
        self.held.bytes.fetch_add(answer.len(), Ordering::Relaxed);
        self.tx.send(answer).await.expect("the writer is there");
    }
}

/// What a running part is expected to bring before the batch's first answer says more, when no batch has
/// finished yet (after that, the last one's largest answer is the guess): the default `window_bytes` (512 KiB)
/// starts 8 parts at once, and a batch of large answers does not start more than its bytes allow before the
/// first of them is in.
const FIRST_GUESS: usize = 64 * 1024;

/// The scheduler's side of `limits.window_bytes`.
struct WindowBytes {
    held: Arc<HeldBytes>,
    /// The largest answer of the batch so far: what each running part is expected to add.
    largest: usize,
    /// What each running part is expected to add until the batch's first answer.
    first_guess: usize,
    limit: usize,
}

impl WindowBytes {
    fn charge(&mut self, answer: &Rendered) {
        let len = answer.len();
        self.largest = self.largest.max(len);
        self.held.bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Whether one more part may start with `running` parts running: the answers held, and those the running
    /// parts and this one are expected to bring, stay within the limit; or the batch holds nothing at all (an
    /// answer larger than the limit goes through alone).
    fn room_for_one(&self, running: usize) -> bool {
        let held = self.held.bytes.load(Ordering::Relaxed);
        let each = match self.largest {
            0 => self.first_guess,
            largest => largest,
        };
        let expected = each.saturating_mul(running + 1);
        held.saturating_add(expected) <= self.limit || (held == 0 && running == 0)
    }
}

/// A batch's scheduler, driven from the connection's task while the body is read, then on a task of its own
/// ([`Running::finish`]), or, for a batch of one part, by its reply until the answer: that batch costs no
/// task.
pub(crate) struct Running(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

impl Running {
    /// Polls the scheduler once, if it has not ended.
    fn poll_step(&mut self, cx: &mut Context<'_>) {
        if let Some(scheduler) = &mut self.0
            && scheduler.as_mut().poll(cx).is_ready()
        {
            self.0 = None;
        }
    }

    /// Runs `read` with the scheduler alongside, so parts start as they are handed over.
    pub(crate) async fn alongside<T>(&mut self, read: impl Future<Output = T>) -> T {
        let mut read = std::pin::pin!(read);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(value) = read.as_mut().poll(cx) {
                return Poll::Ready(value);
            }
            // After the read: the parts it just handed over are seated, and started, in this same turn.
            self.poll_step(cx);
            Poll::Pending
        })
        .await
    }

    /// After the commit: a batch of at most [`INLINE_PARTS`] parts keeps its scheduler where it is, for the
    /// reply to drive while it waits for the answer ([`Running::poll_recv`]); a larger batch's goes on a task
    /// of its own, so that its parts make progress whether or not the client reads the reply. (Each wake-up of
    /// the connection's task also polls the connection, which costs more than a scheduler's task once a
    /// batch's parts wake it one by one.)
    pub(crate) fn finish(mut self, parts: usize) -> Option<Running> {
        if parts <= INLINE_PARTS {
            return Some(self);
        }
        if let Some(scheduler) = self.0.take() {
            tokio::spawn(scheduler);
        }
        None
    }

    /// The next answer, driving the scheduler meanwhile. Only a batch of one part is driven so: the reply's
    /// head is all that goes out before its answer, so the reply is polled (and its part makes progress)
    /// whether or not the client reads.
    pub(crate) fn poll_recv(
        &mut self,
        answers: &mut Answers,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Rendered>> {
        self.poll_step(cx);
        answers.poll_recv(cx)
    }
}

/// The most parts a batch may have to keep its scheduler on the connection's task after the commit. Measured
/// in the side-by-side bench (docs/performance.md, "A small batch's fixed cost"): 1-part batches cost less
/// CPU without a task, 20-part batches at 1000 clients more with their scheduler on the connection's task.
const INLINE_PARTS: usize = 1;

/// Where a batch's parts are counted and timed.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub observer: Arc<Observer>,
    pub batch: Arc<BatchTimeline>,
    /// The gateway-wide in-flight permits: a part that finds none left counts as saturated.
    pub global: Arc<Semaphore>,
    /// The batch's span: each part's is a child of it.
    pub span: tracing::Span,
    /// `access_log = "parts"`: an access line per part.
    pub access_parts: bool,
}

/// A running part: its index, and its route's answer.
type PartFuture =
    Pin<Box<dyn Future<Output = (usize, Result<UpstreamResponse, PartError>)> + Send>>;

/// A route's name, and where its parts are counted: looked up once per batch and route rather than per part
/// (a lock shared by every worker and a hash of the name each).
struct RouteCounts {
    name: Arc<str>,
    series: Arc<RouteSeries>,
    /// `None` for parts refused before they were routed (no route's figures count them).
    window: Option<Arc<RouteWindow>>,
}

/// A seat in the window, in request order, and what the part's answer is rendered with.
struct Slot {
    seat: mpsc::OwnedPermit<Rendered>,
    index: usize,
    route: Arc<RouteCounts>,
    content_id: Option<ContentId>,
    timeline: Arc<PartTimeline>,
    /// The part's span: disabled unless part spans are on (`batchgate=debug`).
    span: tracing::Span,
    state: SlotState,
    /// With `access_log = "parts"`: what the part's access line names besides its outcome. Boxed: a seat
    /// holds no room for it when the lines are off.
    access: Option<Box<PartAccess>>,
    /// A leader of identical parts: its answer is theirs too.
    digest: Option<Digest>,
}

/// A part's place and request (`None`: refused before its request was read), for its access line.
struct PartAccess {
    index: usize,
    request: Option<(http::Method, http::uri::PathAndQuery)>,
}

enum SlotState {
    /// Waits for the earlier parts it depends on (by index) to answer.
    Blocked(Forward, Box<[usize]>),
    /// Has side effects; waits for the commit.
    Held(Forward),
    /// Identical to a part still running: waits for its answer, and is sent on its own if that fails.
    Following(Forward),
    Running,
    Done(Rendered),
}

struct Scheduler {
    inbox: SharedInbox,
    out: mpsc::Sender<Rendered>,
    /// Seated parts from the next one to send on.
    slots: VecDeque<Slot>,
    /// Parts handed over but not yet seated, with their place among identical parts.
    waiting: VecDeque<(Job, Role)>,
    /// Identical safe parts sharing one call: made at the first part of a route with `dedup`.
    dedup: Option<Dedup>,
    /// The routes of the parts seated so far (a handful at most).
    routes: Vec<Arc<RouteCounts>>,
    /// With [`Settings::dependencies`]: the status of each part sent to the writer, by index.
    statuses: Option<Vec<u16>>,
    running: FuturesUnordered<PartFuture>,
    /// Parts sent to the writer so far: the index of `slots[0]`.
    sent: usize,
    concurrency: Arc<Semaphore>,
    /// Answers held in the window, against `limits.window_bytes`.
    bytes: WindowBytes,
    committed: bool,
    input_open: bool,
    /// `limits.batch_timeout` has passed: every part not answered yet is answered with that.
    expired: bool,
    writer: ReplyWriter,
    telemetry: Telemetry,
    settings: Settings,
}

impl Scheduler {
    async fn run(mut self) {
        // Both made once: a new `closed()` each turn would register with the channel each turn.
        let writer = self.out.clone();
        let gone = writer.closed();
        let held = self.bytes.held.clone();
        // One timer for the batch, rather than one per part.
        let deadline = tokio::time::sleep_until(self.settings.deadline);
        tokio::pin!(gone, deadline);
        loop {
            self.seat_waiting();
            if !self.input_open && self.waiting.is_empty() && self.slots.is_empty() {
                let elapsed = self.settings.arrival.elapsed();
                self.telemetry.metrics.batch_finished(self.sent, elapsed);
                if self.bytes.largest > 0 {
                    self.telemetry
                        .observer
                        .set_largest_answer(self.bytes.largest);
                }
                return;
            }
            // Over `window_bytes`, a waiting part gets no seat until the writer takes an answer or a running
            // part ends.
            let parts_wait = !self.waiting.is_empty();
            let room = self.has_room();
            let want_seat = parts_wait && room;
            tokio::select! {
                biased;
                () = &mut gone => return,
                () = &mut deadline, if !self.expired => self.expire(),
                () = held.taken.notified(), if parts_wait && !room => {}
                Some((index, result)) = self.running.next(), if !self.running.is_empty() => {
                    self.done(index, result);
                }
                input = std::future::poll_fn(|cx| lock(&self.inbox).poll_next(cx)), if self.input_open => match input {
                    Some(Input::Part(job)) => {
                        let role = self.role(&job);
                        self.waiting.push_back((job, role));
                    }
                    Some(Input::Commit) => self.commit(),
                    // Refused: dropping the scheduler cancels every part it started.
                    None if !self.committed => return,
                    None => self.input_open = false,
                },
                seat = self.out.clone().reserve_owned(), if want_seat => match seat {
                    Ok(seat) => {
                        let (job, role) = self.waiting.pop_front().expect("a part waits");
                        self.seat(seat, job, role);
                    }
                    Err(_) => return,
                },
            }
        }
    }

    /// Whether the window has room in bytes for one more part.
    fn has_room(&self) -> bool {
        self.bytes.room_for_one(self.running.len())
    }

    /// Seats waiting parts while the window has room.
    fn seat_waiting(&mut self) {
        while !self.waiting.is_empty() && self.has_room() {
            match self.out.clone().try_reserve_owned() {
                Ok(seat) => {
                    let (job, role) = self.waiting.pop_front().expect("a part waits");
                    self.seat(seat, job, role);
                }
                Err(_) => return,
            }
        }
    }

    /// A part's place among identical parts of the batch, as it is handed over.
    fn role(&mut self, job: &Job) -> Role {
        match &job.work {
            Work::Forward(forward) if forward.dedup && job.depends_on.is_empty() => self
                .dedup
                .get_or_insert_with(Dedup::default)
                .role(&job.route, &forward.request),
            _ => Role::Alone,
        }
    }

    fn seat(&mut self, seat: mpsc::OwnedPermit<Rendered>, job: Job, role: Role) {
        let Job {
            index,
            content_id,
            route,
            work,
            depends_on,
        } = job;
        let method = match &work {
            Work::Forward(forward) => Some(forward.request.method.clone()),
            Work::Refused(_) => None,
        };
        let access = self.telemetry.access_parts.then(|| {
            Box::new(PartAccess {
                index,
                request: match &work {
                    Work::Forward(forward) => {
                        Some((forward.request.method.clone(), forward.request.path.clone()))
                    }
                    Work::Refused(_) => None,
                },
            })
        });
        let timeline = self.telemetry.batch.part(route.clone(), method);
        let route = self.counts(route);
        let mut slot = Slot {
            seat,
            index,
            route,
            content_id,
            timeline,
            span: tracing::Span::none(),
            state: SlotState::Running,
            access,
            digest: None,
        };
        let mut run = None;
        let refused = match work {
            Work::Refused(error) => Some(error),
            Work::Forward(_) if self.expired => Some(self.past_deadline(index)),
            Work::Forward(forward) if !depends_on.is_empty() => {
                slot.state = SlotState::Blocked(forward, depends_on);
                None
            }
            Work::Forward(forward) if !self.committed && !forward.request.is_safe() => {
                slot.state = SlotState::Held(forward);
                None
            }
            Work::Forward(forward) => {
                run = Some(forward);
                None
            }
        };
        if let Some(error) = refused {
            settle(
                &self.telemetry,
                &self.writer,
                &mut self.bytes,
                &mut slot,
                Err(error),
            );
        }
        self.slots.push_back(slot);
        if let Some(forward) = run {
            let at = self.slots.len() - 1;
            match role {
                Role::Alone => self.start(at, forward),
                Role::Lead(digest) => {
                    self.slots[at].digest = Some(digest);
                    self.start(at, forward);
                }
                Role::Follow(digest) => self.follow(at, digest, forward),
            }
        }
        self.send_ready();
    }

    /// `route`'s counts, looked up at its first part in the batch.
    fn counts(&mut self, route: Arc<str>) -> Arc<RouteCounts> {
        if let Some(counts) = self.routes.iter().find(|c| c.name == route) {
            return counts.clone();
        }
        let telemetry = &self.telemetry;
        let counts = Arc::new(RouteCounts {
            series: telemetry.metrics.series(&route),
            window: (!route.is_empty()).then(|| telemetry.observer.window(&route)),
            name: route,
        });
        self.routes.push(counts.clone());
        counts
    }

    /// Seats a follower: answered from its leader's answer if there is one, else waiting for it (or sent on
    /// its own if the leader failed).
    fn follow(&mut self, at: usize, digest: Digest, forward: Forward) {
        let dedup = self
            .dedup
            .as_mut()
            .expect("a follower's batch de-duplicates");
        let leader = dedup.leaders.get_mut(&digest).expect("a follower's leader");
        match &leader.state {
            Sharing::Pending => {
                leader.waiting.push(self.sent + at);
                self.slots[at].state = SlotState::Following(forward);
            }
            Sharing::Answered(response) => {
                settle_shared(
                    &self.telemetry,
                    &self.writer,
                    &mut self.bytes,
                    &mut self.slots[at],
                    response,
                );
                leader.unanswered -= 1;
                if self.committed && leader.unanswered == 0 {
                    dedup.leaders.remove(&digest);
                }
            }
            Sharing::Failed => {
                leader.unanswered -= 1;
                self.start(at, forward);
            }
        }
    }

    fn commit(&mut self) {
        self.committed = true;
        // No part comes after the commit: an answer no follower still needs is let go.
        if let Some(dedup) = &mut self.dedup {
            dedup.leaders.retain(|_, leader| {
                !matches!(leader.state, Sharing::Answered(_)) || leader.unanswered > 0
            });
        }
        for at in 0..self.slots.len() {
            if let SlotState::Held(_) = self.slots[at].state
                && let SlotState::Held(forward) =
                    std::mem::replace(&mut self.slots[at].state, SlotState::Running)
            {
                self.start(at, forward);
            }
        }
    }

    /// Starts the part seated at `at` in the window.
    fn start(&mut self, at: usize, forward: Forward) {
        let slot = &mut self.slots[at];
        let call = launch(
            &self.concurrency,
            &self.telemetry,
            self.sent + at,
            slot,
            forward,
        );
        self.running.push(call);
    }

    /// `limits.batch_timeout` has passed: the parts running are cancelled, and every part not answered is
    /// answered with that.
    fn expire(&mut self) {
        self.expired = true;
        self.running = FuturesUnordered::new();
        for at in 0..self.slots.len() {
            if !matches!(self.slots[at].state, SlotState::Done(_)) {
                let error = self.past_deadline(self.sent + at);
                self.settle(at, Err(error));
            }
        }
        self.send_ready();
    }

    fn past_deadline(&self, index: usize) -> PartError {
        PartError::BatchDeadline {
            index,
            after: self.settings.batch_timeout,
        }
    }

    fn done(&mut self, index: usize, result: Result<UpstreamResponse, PartError>) {
        let at = index - self.sent;
        let digest = self.slots[at].digest;
        match result {
            Ok(response) => {
                self.settle(at, Ok(&response));
                if let Some(digest) = digest {
                    self.share(digest, response);
                }
            }
            Err(error) => {
                self.settle(at, Err(error));
                if let Some(digest) = digest {
                    self.unshare(digest);
                }
            }
        }
        self.send_ready();
    }

    /// A leader's answer: its waiting followers are answered with it, and it is kept while more may come.
    fn share(&mut self, digest: Digest, response: UpstreamResponse) {
        let Some(dedup) = &mut self.dedup else { return };
        let Some(leader) = dedup.leaders.get_mut(&digest) else {
            return;
        };
        for index in leader.waiting.drain(..) {
            let at = index - self.sent;
            settle_shared(
                &self.telemetry,
                &self.writer,
                &mut self.bytes,
                &mut self.slots[at],
                &response,
            );
            leader.unanswered -= 1;
        }
        if leader.unanswered > 0 || !self.committed {
            leader.state = Sharing::Answered(response);
        } else {
            dedup.leaders.remove(&digest);
        }
    }

    /// A leader failed: its waiting followers are sent on their own, and so will later ones be.
    fn unshare(&mut self, digest: Digest) {
        let Some(leader) = self.dedup.as_mut().and_then(|d| d.leaders.get_mut(&digest)) else {
            return;
        };
        leader.state = Sharing::Failed;
        leader.unanswered -= leader.waiting.len();
        for index in std::mem::take(&mut leader.waiting) {
            let at = index - self.sent;
            if let SlotState::Following(forward) =
                std::mem::replace(&mut self.slots[at].state, SlotState::Running)
            {
                self.start(at, forward);
            }
        }
    }

    /// Hands the writer every answered part at the front of the window, and settles the parts waiting for
    /// those.
    fn send_ready(&mut self) {
        loop {
            while let Some(Slot {
                state: SlotState::Done(_),
                ..
            }) = self.slots.front()
            {
                let slot = self.slots.pop_front().expect("a front slot");
                let SlotState::Done(bytes) = slot.state else {
                    unreachable!("checked above")
                };
                if let Some(statuses) = &mut self.statuses {
                    statuses.push(slot.timeline.status());
                }
                slot.seat.send(bytes);
                self.sent += 1;
            }
            if !self.unblock() {
                return;
            }
        }
    }

    /// Settles the parts whose dependencies have all answered: each is sent if they all succeeded, else
    /// answered 424 (which its own dependents then see, so failures propagate down a chain). True if any
    /// part was answered.
    fn unblock(&mut self) -> bool {
        if self.statuses.is_none() {
            return false;
        }
        let mut answered = false;
        for at in 0..self.slots.len() {
            let SlotState::Blocked(_, depends_on) = &self.slots[at].state else {
                continue;
            };
            let mut pending = false;
            let mut failed = None;
            for &dependency in depends_on.iter() {
                match self.status_of(dependency) {
                    None => pending = true,
                    Some(status) if !(200..300).contains(&status) => {
                        failed = Some((dependency, status));
                        break;
                    }
                    Some(_) => {}
                }
            }
            if pending && failed.is_none() {
                continue;
            }
            let SlotState::Blocked(forward, _) =
                std::mem::replace(&mut self.slots[at].state, SlotState::Running)
            else {
                unreachable!("checked above")
            };
            match failed {
                Some((dependency, status)) => {
                    let error = PartError::FailedDependency {
                        index: self.sent + at,
                        dependency,
                        status,
                    };
                    self.settle(at, Err(error));
                    answered = true;
                }
                None if !self.committed && !forward.request.is_safe() => {
                    self.slots[at].state = SlotState::Held(forward);
                }
                None => self.start(at, forward),
            }
        }
        answered
    }

    /// The status part `index` (an earlier one) answered, if it has.
    fn status_of(&self, index: usize) -> Option<u16> {
        if index < self.sent {
            return self.statuses.as_ref()?.get(index).copied();
        }
        let slot = self.slots.get(index - self.sent)?;
        matches!(slot.state, SlotState::Done(_)).then(|| slot.timeline.status())
    }

    /// Answers the seated part at `at` ([`settle`]).
    fn settle(&mut self, at: usize, result: Result<&UpstreamResponse, PartError>) {
        settle(
            &self.telemetry,
            &self.writer,
            &mut self.bytes,
            &mut self.slots[at],
            result,
        );
    }
}

/// Answers a part: its outcome rendered ([`answer`]), counted against the window's bytes until the writer takes
/// it, and the part done. The one way a part is done, so that every answer the writer gives back was charged.
fn settle(
    telemetry: &Telemetry,
    writer: &ReplyWriter,
    window: &mut WindowBytes,
    slot: &mut Slot,
    result: Result<&UpstreamResponse, PartError>,
) {
    let bytes = answer(telemetry, writer, slot, result);
    window.charge(&bytes);
    slot.state = SlotState::Done(bytes);
}

/// Answers a follower with its leader's upstream answer ([`settle`]), counted as shared.
fn settle_shared(
    telemetry: &Telemetry,
    writer: &ReplyWriter,
    window: &mut WindowBytes,
    slot: &mut Slot,
    response: &UpstreamResponse,
) {
    telemetry.metrics.part_shared(&slot.route.name);
    settle(telemetry, writer, window, slot, Ok(response));
}

/// Renders a part's outcome, counting, timing and logging it.
fn answer(
    telemetry: &Telemetry,
    writer: &ReplyWriter,
    slot: &Slot,
    result: Result<&UpstreamResponse, PartError>,
) -> Rendered {
    let Slot {
        index,
        route,
        content_id,
        timeline,
        span,
        access,
        ..
    } = slot;
    let content_id = content_id.as_ref();
    timeline.mark(Mark::Done);
    let elapsed = timeline.elapsed_since_queued();
    let (status, error) = match &result {
        Ok(response) => (response.status, response.status.is_server_error()),
        Err(error) => (error.status(), error.fault() != Fault::Client),
    };
    timeline.set_status(status.as_u16());
    if !span.is_disabled() {
        span.record("status", status.as_u16());
        span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
        if let Ok(response) = &result
            && let Some(peer) = response.peer
        {
            span.record("upstream", tracing::field::display(peer));
        }
    }
    if let Some(access) = access {
        let upstream = result.as_ref().ok().and_then(|r| r.peer);
        let (method, path) = match &access.request {
            Some((method, path)) => (method.as_str(), path.as_str()),
            None => ("-", "-"),
        };
        // `path`, not `target`: a JSON line's `target` is the log target's.
        tracing::info!(
            target: "batchgate::access",
            index = access.index,
            method,
            path,
            route = &*route.name,
            upstream = upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "part"
        );
    }
    if let Some(window) = &route.window {
        telemetry.observer.record_in(
            window,
            Sample {
                elapsed_us: elapsed.as_micros() as u64,
                queued_us: u64::from(timeline.waited_micros()),
                error,
                saturated: telemetry.global.available_permits() == 0,
            },
        );
    }
    let metrics = telemetry.metrics.of(&route.name, &route.series);
    if !route.name.is_empty() {
        let waited = Duration::from_micros(u64::from(timeline.waited_micros()));
        metrics.queue_wait(waited);
    }
    match result {
        Ok(response) => {
            metrics.part_answered(response.status, elapsed);
            writer.response(*index, content_id, response)
        }
        Err(error) => {
            metrics.part_failed(&error, elapsed);
            // Under the part's span when part spans are on; under the batch's otherwise.
            let _part = span.enter();
            match error.fault() {
                Fault::Client => tracing::debug!(kind = error.kind(), "{error}"),
                _ => tracing::warn!(
                    kind = error.kind(),
                    retryable = error.retryable(),
                    "{error}"
                ),
            }
            writer.error(*index, content_id, &error)
        }
    }
}

/// Sends a seated part up its route's stack, within the batch's concurrency and the route's and
/// gateway's limits.
fn launch(
    concurrency: &Arc<Semaphore>,
    telemetry: &Telemetry,
    index: usize,
    slot: &mut Slot,
    forward: Forward,
) -> PartFuture {
    let Forward {
        mut request,
        service,
        permits,
        ..
    } = forward;
    // At debug: a span per part costs more than the part's own work at info's volume.
    slot.span = tracing::debug_span!(
        parent: &telemetry.span,
        "part",
        index,
        route = %slot.route.name,
        method = %request.method,
        span_id = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        upstream = tracing::field::Empty,
    );
    request.span = slot.span.clone();
    request.timeline = Some(slot.timeline.clone());
    let timeline = slot.timeline.clone();
    let concurrency = concurrency.clone();
    let global = telemetry.global.clone();
    let span = slot.span.clone();
    Box::pin(
        async move {
            let started = Instant::now();
            timeline.mark(Mark::Queued);
            let internal = |e: tokio::sync::AcquireError| PartError::Internal {
                index,
                reason: e.to_string(),
            };
            let call = async {
                let _permit = concurrency.acquire_owned().await.map_err(internal)?;
                // Then the route's and the gateway's.
                let _held = permits.acquire(&global).await.map_err(internal)?;
                timeline.waited(started.elapsed());
                // Not `oneshot`: that holds the request in this future from the start, while the part
                // waits for its permits; the call moves it into the stack's own (boxed) future.
                let mut service = PartService::clone(&service);
                let call = service.ready().await?.call(*request);
                drop(service);
                call.await
            };
            (index, call.await)
        }
        .instrument(span),
    )
}

impl Drop for Scheduler {
    /// Parts never answered (the batch was refused, or its client went away) are counted as cancelled.
    fn drop(&mut self) {
        let unanswered = self
            .slots
            .iter()
            .filter(|slot| !matches!(slot.state, SlotState::Done(_)))
            .map(|slot| &slot.route.name)
            .chain(self.waiting.iter().map(|(job, _)| &job.route));
        let mut counts: Vec<(&Arc<str>, usize)> = Vec::new();
        for route in unanswered {
            match counts.iter_mut().find(|(r, _)| r == &route) {
                Some((_, n)) => *n += 1,
                None => counts.push((route, 1)),
            }
        }
        for (route, n) in counts {
            self.telemetry.metrics.parts_cancelled(route, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use bytes::Bytes;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderMap, Method, StatusCode};
    use tokio::sync::oneshot;
    use tower::util::BoxCloneSyncService;

    use super::*;
    use crate::Config;
    use crate::headers::HeaderRules;
    use crate::stack::{BatchScope, ResponseBudget, UpstreamResponse};
    use batchgate_wire::Framing;

    /// A call held until released: its path, and the sender that releases it.
    type Waiting = (String, oneshot::Sender<()>);

    /// An upstream stand-in: each call waits until the test releases its path, and counts itself in flight
    /// meanwhile.
    #[derive(Clone, Default)]
    struct Held {
        waiting: Arc<Mutex<Vec<Waiting>>>,
        started: Arc<Mutex<Vec<String>>>,
        in_flight: Arc<AtomicUsize>,
    }

    struct InFlight(Arc<AtomicUsize>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Held {
        fn service(&self) -> PartService {
            let held = self.clone();
            BoxCloneSyncService::new(tower::service_fn(move |request: PartRequest| {
                let held = held.clone();
                async move {
                    let path = request.path.path().to_owned();
                    held.in_flight.fetch_add(1, Ordering::SeqCst);
                    let _guard = InFlight(held.in_flight.clone());
                    let (release, released) = oneshot::channel();
                    held.started.lock().unwrap().push(path.clone());
                    held.waiting.lock().unwrap().push((path.clone(), release));
                    let _ = released.await;
                    Ok(UpstreamResponse {
                        status: StatusCode::OK,
                        headers: HeaderMap::new(),
                        body: vec![Bytes::from(path)],
                        body_len: 0,
                        framing: Framing::Exact,
                        peer: None,
                    })
                }
            }))
        }

        fn started(&self) -> Vec<String> {
            self.started.lock().unwrap().clone()
        }

        /// Lets the call for `path` answer.
        fn release(&self, path: &str) {
            let mut waiting = self.waiting.lock().unwrap();
            let at = waiting.iter().position(|(p, _)| p == path).expect(path);
            let _ = waiting.remove(at).1.send(());
        }

        async fn until_started(&self, n: usize) {
            spin_until("parts started", || self.started.lock().unwrap().len() >= n).await;
        }
    }

    /// Lets the scheduler's task run until `condition` holds; fails rather than hangs.
    async fn spin_until(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if condition() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    fn job(index: usize, method: Method, service: &PartService) -> Job {
        let scope = Arc::new(BatchScope {
            headers: HeaderRules::new(&Config::default()).batch(
                &HeaderMap::new(),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                false,
            ),
            budget: ResponseBudget::new(u64::MAX),
            client: crate::stack::ratelimit::ClientKey::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            trace: crate::observe::trace::TraceContext::from_headers(&HeaderMap::new()),
            job: None,
        });
        Job {
            index,
            content_id: None,
            depends_on: Box::default(),
            route: Arc::from("/p/"),
            work: Work::Forward(Forward {
                request: Box::new(PartRequest {
                    index,
                    method,
                    path: format!("/p{index}").parse().unwrap(),
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                    batch: scope,
                    accepts: None,
                    tried: None,
                    deadline: None,
                    timeline: None,
                    span: tracing::Span::none(),
                }),
                service: Arc::new(service.clone()),
                permits: Permits::InStack,
                dedup: false,
            }),
        }
    }

    /// A GET of `path` on a route with `dedup` on.
    fn shared_job(index: usize, path: &str, service: &PartService) -> Job {
        let mut job = job(index, Method::GET, service);
        if let Work::Forward(forward) = &mut job.work {
            forward.request.path = path.parse().unwrap();
            forward.dedup = true;
        }
        job
    }

    fn scheduler(window: usize, concurrency: usize) -> (Feed, Answers, Arc<Metrics>) {
        scheduler_within(window, concurrency, usize::MAX, Duration::from_secs(3600))
    }

    fn scheduler_within(
        window: usize,
        concurrency: usize,
        window_bytes: usize,
        batch_timeout: Duration,
    ) -> (Feed, Answers, Arc<Metrics>) {
        scheduler_observed(
            window,
            concurrency,
            window_bytes,
            batch_timeout,
            Arc::default(),
        )
    }

    fn scheduler_observed(
        window: usize,
        concurrency: usize,
        window_bytes: usize,
        batch_timeout: Duration,
        observer: Arc<Observer>,
    ) -> (Feed, Answers, Arc<Metrics>) {
        let global = Arc::new(Semaphore::new(16));
        scheduler_full(
            (window, concurrency, window_bytes),
            batch_timeout,
            observer,
            global,
        )
    }

    /// A batch whose parts take the gateway-wide permits from `global`.
    fn scheduler_global(
        window: usize,
        concurrency: usize,
        global: &Arc<Semaphore>,
    ) -> (Feed, Answers, Arc<Metrics>) {
        scheduler_full(
            (window, concurrency, usize::MAX),
            Duration::from_secs(3600),
            Arc::default(),
            global.clone(),
        )
    }

    fn scheduler_full(
        (window, concurrency, window_bytes): (usize, usize, usize),
        batch_timeout: Duration,
        observer: Arc<Observer>,
        global: Arc<Semaphore>,
    ) -> (Feed, Answers, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let settings = Settings {
            window,
            window_bytes,
            concurrency,
            arrival: Instant::now(),
            deadline: Instant::now() + batch_timeout,
            batch_timeout,
            dependencies: true,
        };
        let telemetry = Telemetry {
            metrics: metrics.clone(),
            observer,
            batch: Arc::new(BatchTimeline::new(
                1,
                Instant::now(),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                usize::MAX,
            )),
            global,
            span: tracing::Span::none(),
            access_parts: false,
        };
        let writer = ReplyWriter::Multipart(crate::codec::multipart::ReplyWriter::new());
        let (feed, out, running) = start(settings, writer, telemetry);
        // On a task of its own from the start, as after a batch's first answer.
        tokio::spawn(running.0.expect("a scheduler not yet run"));
        (feed, out, metrics)
    }

    fn rendered(metrics: &Metrics) -> String {
        metrics.render(&crate::metrics::Gauges::default())
    }

    fn text_of(part: &Rendered) -> String {
        let bytes: Vec<u8> = match part {
            Rendered::Whole(bytes) => bytes.to_vec(),
            Rendered::Pieces(pieces) => pieces.concat(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn body_of(part: &Rendered) -> String {
        let text = text_of(part);
        text.trim_end().rsplit("\r\n").next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn each_part_is_counted_in_its_own_routes_metrics_and_stats() {
        let upstream = Held::default();
        let service = upstream.service();
        let observer = Arc::new(Observer::default());
        let (feed, mut out, metrics) = scheduler_observed(
            8,
            8,
            usize::MAX,
            Duration::from_secs(3600),
            observer.clone(),
        );
        let mut on_q = job(1, Method::GET, &service);
        on_q.route = Arc::from("/q/");
        let mut refused = job(3, Method::GET, &service);
        refused.route = Arc::from("");
        refused.work = Work::Refused(PartError::NestedBody { index: 3 });
        for job in [
            job(0, Method::GET, &service),
            on_q,
            job(2, Method::GET, &service),
            refused,
        ] {
            feed.push(job);
        }
        feed.commit();
        upstream.until_started(3).await;
        for path in ["/p0", "/p1", "/p2"] {
            upstream.release(path);
        }
        while out.recv().await.is_some() {}
        let text = metrics.render(&crate::metrics::Gauges::default());
        let mut parts: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("batchgate_parts_total{")
                    || l.starts_with("batchgate_queue_wait_seconds_count")
            })
            .collect();
        parts.sort_unstable();
        assert_eq!(
            parts,
            [
                r#"batchgate_parts_total{route="",outcome="nested_batch"} 1"#,
                r#"batchgate_parts_total{route="/p/",outcome="2xx"} 2"#,
                r#"batchgate_parts_total{route="/q/",outcome="2xx"} 1"#,
                r#"batchgate_queue_wait_seconds_count{route="/p/"} 2"#,
                r#"batchgate_queue_wait_seconds_count{route="/q/"} 1"#,
            ]
        );
        let state = |route: &str| crate::observe::RouteState {
            route: route.to_owned(),
            in_flight: 0,
            adaptive: false,
            upstreams: Vec::new(),
            cache: None,
        };
        let stats = observer.stats(&[state("/p/"), state("/q/"), state("")], 0, 0, 0);
        let requests: Vec<u64> = stats.routes.iter().map(|r| r.requests).collect();
        assert_eq!(requests, [2, 1, 0], "a refused part is in no route's stats");
    }

    #[tokio::test]
    async fn answers_come_out_in_request_order_whatever_order_they_finish_in() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, mut out, _) = scheduler(8, 8);
        for i in 0..3 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(3).await;
        for path in ["/p2", "/p1", "/p0"] {
            upstream.release(path);
        }
        let order: Vec<String> = [
            out.recv().await.unwrap(),
            out.recv().await.unwrap(),
            out.recv().await.unwrap(),
        ]
        .iter()
        .map(body_of)
        .collect();
        assert_eq!(order, ["/p0", "/p1", "/p2"]);
        assert!(
            out.recv().await.is_none(),
            "the reply ends after the last part"
        );
    }

    #[tokio::test]
    async fn the_window_bounds_parts_started_but_not_taken_by_the_writer() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, mut out, _) = scheduler(2, 2);
        for i in 0..4 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(2).await;
        // Both seats are taken; answering them does not seat more until the writer takes one.
        upstream.release("/p0");
        upstream.release("/p1");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(upstream.started(), ["/p0", "/p1"]);
        assert_eq!(body_of(&out.recv().await.unwrap()), "/p0");
        upstream.until_started(3).await;
        assert_eq!(upstream.started(), ["/p0", "/p1", "/p2"]);
    }

    #[tokio::test]
    async fn window_bytes_stop_starts_until_the_writer_takes_the_answers_held() {
        let upstream = Held::default();
        let service = upstream.service();
        // A seat for every part, but room in bytes for no answer: a part starts only while the batch holds
        // nothing and runs nothing.
        let (feed, mut out, _) = scheduler_within(4, 4, 1, Duration::from_secs(3600));
        for i in 0..3 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(1).await;
        upstream.release("/p0");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // Answered, not yet taken by the writer: held, so nothing more starts.
        assert_eq!(upstream.started(), ["/p0"]);
        assert_eq!(body_of(&out.recv().await.unwrap()), "/p0");
        upstream.until_started(2).await;
        assert_eq!(upstream.started(), ["/p0", "/p1"]);
    }

    #[tokio::test]
    async fn before_the_first_answer_window_bytes_start_few_parts_and_small_answers_let_the_rest_go()
     {
        let upstream = Held::default();
        let service = upstream.service();
        // Room for four answers of the first guess's size.
        let (feed, _out, _) = scheduler_within(8, 8, 4 * FIRST_GUESS, Duration::from_secs(3600));
        for i in 0..8 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(4).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(upstream.started().len(), 4);
        // A small answer: the running parts are expected to bring as little, and the rest start.
        upstream.release("/p0");
        upstream.until_started(8).await;
    }

    #[tokio::test]
    async fn a_batch_expects_the_last_batchs_largest_answer_before_its_first() {
        let upstream = Held::default();
        let service = upstream.service();
        let observer = Arc::new(Observer::default());
        let batch = |observer: &Arc<Observer>| {
            scheduler_observed(
                8,
                8,
                4 * FIRST_GUESS,
                Duration::from_secs(3600),
                observer.clone(),
            )
        };
        // A first batch of one small answer, to its end.
        let (feed, mut out, _) = batch(&observer);
        feed.push(job(0, Method::GET, &service));
        feed.commit();
        upstream.until_started(1).await;
        upstream.release("/p0");
        out.recv().await.unwrap();
        assert!(out.recv().await.is_none());
        let largest = observer.largest_answer().expect("a batch has finished");
        assert!(largest < 1024, "{largest}");
        // The next batch expects answers that small, and starts all its parts at once.
        let (feed, _out, _) = batch(&observer);
        for i in 1..9 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(9).await;
    }

    #[tokio::test]
    async fn upstream_calls_finish_while_the_writer_is_not_reading() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, out, metrics) = scheduler(4, 4);
        for i in 0..4 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(4).await;
        assert_eq!(upstream.in_flight.load(Ordering::SeqCst), 4);
        for i in 0..4 {
            upstream.release(&format!("/p{i}"));
        }
        spin_until("no call in flight", || {
            upstream.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        drop(out);
        assert!(
            rendered(&metrics).contains("batchgate_parts_total{route=\"/p/\",outcome=\"2xx\"} 4")
        );
    }

    #[tokio::test]
    async fn a_writer_gone_cancels_the_running_parts() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, out, metrics) = scheduler(4, 4);
        for i in 0..3 {
            feed.push(job(i, Method::GET, &service));
        }
        feed.commit();
        upstream.until_started(3).await;
        drop(out);
        spin_until("no call in flight", || {
            upstream.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        spin_until("cancelled parts counted", || {
            rendered(&metrics)
                .contains("batchgate_parts_total{route=\"/p/\",outcome=\"cancelled\"} 3")
        })
        .await;
    }

    #[tokio::test]
    async fn parts_with_side_effects_wait_for_the_commit() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, mut out, _) = scheduler(4, 4);
        feed.push(job(0, Method::POST, &service));
        feed.push(job(1, Method::GET, &service));
        feed.push(job(2, Method::DELETE, &service));
        upstream.until_started(1).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(upstream.started(), ["/p1"], "only the safe part runs early");
        feed.commit();
        upstream.until_started(3).await;
        for i in 0..3 {
            upstream.release(&format!("/p{i}"));
        }
        assert_eq!(body_of(&out.recv().await.unwrap()), "/p0");
    }

    #[tokio::test]
    async fn a_batch_refused_before_its_commit_runs_nothing_more() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, _out, metrics) = scheduler(4, 4);
        feed.push(job(0, Method::GET, &service));
        feed.push(job(1, Method::PUT, &service));
        upstream.until_started(1).await;
        drop(feed);
        spin_until("no call in flight", || {
            upstream.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        spin_until("cancelled parts counted", || {
            rendered(&metrics)
                .contains("batchgate_parts_total{route=\"/p/\",outcome=\"cancelled\"} 2")
        })
        .await;
        assert_eq!(upstream.started(), ["/p0"], "the PUT never ran");
    }

    #[tokio::test(start_paused = true)]
    async fn parts_unanswered_at_the_batch_deadline_are_answered_with_it_and_cancelled() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, mut out, metrics) = scheduler_within(1, 1, usize::MAX, Duration::from_secs(10));
        feed.push(job(0, Method::GET, &service));
        feed.push(job(1, Method::GET, &service));
        feed.commit();
        upstream.until_started(1).await;
        // Nothing answers: the paused clock runs on to the deadline.
        let first = text_of(&out.recv().await.unwrap());
        assert!(first.contains("504"), "{first}");
        assert!(first.contains("limits.batch_timeout"), "{first}");
        assert_eq!(
            upstream.in_flight.load(Ordering::SeqCst),
            0,
            "the call was cancelled"
        );
        let second = text_of(&out.recv().await.unwrap());
        assert!(second.contains("limits.batch_timeout"), "{second}");
        assert_eq!(
            upstream.started(),
            ["/p0"],
            "a part seated after the deadline never starts"
        );
        assert!(out.recv().await.is_none());
        assert!(rendered(&metrics).contains("batch_deadline"));
    }

    #[tokio::test]
    async fn identical_safe_parts_wait_for_their_leader_and_share_its_answer() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, mut out, metrics) = scheduler(8, 8);
        for i in 0..3 {
            feed.push(shared_job(i, "/same", &service));
        }
        feed.push(shared_job(3, "/other", &service));
        feed.commit();
        upstream.until_started(2).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(upstream.started(), ["/same", "/other"]);
        upstream.release("/same");
        upstream.release("/other");
        let mut bodies = Vec::new();
        while let Some(part) = out.recv().await {
            bodies.push(body_of(&part));
        }
        assert_eq!(bodies, ["/same", "/same", "/same", "/other"]);
        assert!(rendered(&metrics).contains("batchgate_parts_shared_total{route=\"/p/\"} 2"));
    }

    #[tokio::test]
    async fn followers_of_a_failed_leader_are_sent_on_their_own() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let service: PartService =
            BoxCloneSyncService::new(tower::service_fn(move |request: PartRequest| {
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        return Err(PartError::Connect {
                            index: request.index,
                            upstream: "up".to_owned(),
                            reason: "refused".to_owned(),
                        });
                    }
                    Ok(crate::stack::tests::answer(StatusCode::OK, b"ok"))
                }
            }));
        let (feed, mut out, _) = scheduler(8, 8);
        for i in 0..3 {
            feed.push(shared_job(i, "/same", &service));
        }
        feed.commit();
        let mut statuses = Vec::new();
        while let Some(part) = out.recv().await {
            statuses.push(text_of(&part).contains("HTTP/1.1 200"));
        }
        assert_eq!(statuses, [false, true, true]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// A part of `job` that waits for the parts at `depends_on`.
    fn dependent(index: usize, depends_on: &[usize], service: &PartService) -> Job {
        let mut job = job(index, Method::GET, service);
        job.depends_on = depends_on.into();
        job
    }

    #[tokio::test]
    async fn a_part_is_sent_once_its_dependencies_have_answered() {
        let upstream = Held::default();
        let service = upstream.service();
        let (feed, mut out, _) = scheduler(8, 8);
        feed.push(job(0, Method::GET, &service));
        feed.push(dependent(1, &[0], &service));
        feed.push(job(2, Method::GET, &service));
        feed.commit();
        upstream.until_started(2).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(upstream.started(), ["/p0", "/p2"], "the dependent waits");
        upstream.release("/p0");
        upstream.until_started(3).await;
        upstream.release("/p1");
        upstream.release("/p2");
        let mut bodies = Vec::new();
        while let Some(part) = out.recv().await {
            bodies.push(body_of(&part));
        }
        assert_eq!(bodies, ["/p0", "/p1", "/p2"]);
    }

    #[tokio::test]
    async fn a_failed_dependency_answers_its_dependents_424_down_the_chain() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let service: PartService =
            BoxCloneSyncService::new(tower::service_fn(move |request: PartRequest| {
                seen.lock().unwrap().push(request.index);
                let status = if request.index == 0 {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                async move { Ok(crate::stack::tests::answer(status, b"x")) }
            }));
        let (feed, mut out, metrics) = scheduler(2, 8);
        feed.push(job(0, Method::GET, &service));
        feed.push(dependent(1, &[0], &service));
        feed.push(dependent(2, &[1], &service));
        feed.push(job(3, Method::GET, &service));
        feed.push(dependent(4, &[3, 2], &service));
        feed.commit();
        let mut statuses = Vec::new();
        while let Some(part) = out.recv().await {
            let text = text_of(&part);
            let status_line = text.split("HTTP/1.1 ").nth(1).unwrap();
            statuses.push(status_line[..3].to_owned());
        }
        assert_eq!(statuses, ["404", "424", "424", "200", "424"]);
        assert_eq!(*calls.lock().unwrap(), [0, 3], "no dependent was sent");
        assert!(rendered(&metrics).contains("outcome=\"failed_dependency\"} 3"));
    }

    /// A GET of `path` on a route whose fixed limit is `route`.
    fn routed(index: usize, path: &str, service: &PartService, route: &Arc<Semaphore>) -> Job {
        let mut job = job(index, Method::GET, service);
        if let Work::Forward(forward) = &mut job.work {
            forward.request.path = path.parse().unwrap();
            forward.permits = Permits::RouteAndGlobal(route.clone());
        }
        job
    }

    /// Gives the scheduler's task many turns, for tests that check that something did not happen.
    async fn settle_down() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn parts_waiting_for_a_route_start_in_request_order_and_answer_in_it() {
        let upstream = Held::default();
        let service = upstream.service();
        let route = Arc::new(Semaphore::new(2));
        let (feed, mut out, _) = scheduler(8, 8);
        for i in 0..6 {
            feed.push(routed(i, &format!("/p{i}"), &service, &route));
        }
        feed.commit();
        upstream.until_started(2).await;
        settle_down().await;
        assert_eq!(upstream.started(), ["/p0", "/p1"]);
        // Finished out of order: each permit given back goes to the batch's next part in request order.
        for (path, started) in [("/p1", 3), ("/p0", 4), ("/p3", 5), ("/p2", 6)] {
            upstream.release(path);
            upstream.until_started(started).await;
        }
        assert_eq!(
            upstream.started(),
            ["/p0", "/p1", "/p2", "/p3", "/p4", "/p5"]
        );
        upstream.release("/p4");
        upstream.release("/p5");
        let mut bodies = Vec::new();
        while let Some(part) = out.recv().await {
            bodies.push(body_of(&part));
        }
        assert_eq!(bodies, ["/p0", "/p1", "/p2", "/p3", "/p4", "/p5"]);
        assert_eq!(route.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn parts_of_batches_waiting_for_a_route_start_in_the_order_they_queued() {
        let upstream = Held::default();
        let service = upstream.service();
        let route = Arc::new(Semaphore::new(1));
        let ours = route.clone().try_acquire_owned().unwrap();
        let (first, _first_out, _) = scheduler(8, 8);
        let (second, _second_out, _) = scheduler(8, 8);
        for (feed, batch) in [(first, "a"), (second, "b")] {
            for i in 0..3 {
                feed.push(routed(i, &format!("/{batch}{i}"), &service, &route));
            }
            feed.commit();
            // The first batch's parts queue for the route before the second's.
            settle_down().await;
        }
        // Queued after both batches: served after all their parts.
        let theirs = tokio::spawn(route.clone().acquire_owned());
        settle_down().await;
        drop(ours);
        let order = ["/a0", "/a1", "/a2", "/b0", "/b1", "/b2"];
        for (n, path) in order.iter().enumerate() {
            upstream.until_started(n + 1).await;
            settle_down().await;
            assert_eq!(upstream.started(), order[..=n]);
            assert!(!theirs.is_finished());
            upstream.release(path);
        }
        spin_until("the later acquire served", || theirs.is_finished()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_gone_while_its_parts_wait_gives_every_permit_back() {
        let upstream = Held::default();
        let service = upstream.service();
        let route = Arc::new(Semaphore::new(3));
        let global = Arc::new(Semaphore::new(2));
        // One gateway-wide permit left: the first part runs, the second holds the route's permit and waits
        // for the gateway's, the third waits for the route's behind them.
        let ours = global.clone().try_acquire_owned().unwrap();
        let elsewhere = route.clone().try_acquire_many_owned(1).unwrap();
        let (feed, out, metrics) = scheduler_global(8, 8, &global);
        for i in 0..3 {
            feed.push(routed(i, &format!("/p{i}"), &service, &route));
        }
        feed.commit();
        upstream.until_started(1).await;
        settle_down().await;
        assert_eq!(route.available_permits(), 0);
        drop(out);
        spin_until("the running part cancelled", || {
            upstream.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        spin_until("the batch's permits back", || {
            route.available_permits() == 2 && global.available_permits() == 1
        })
        .await;
        drop((ours, elsewhere));
        assert_eq!(route.available_permits(), 3);
        assert_eq!(global.available_permits(), 2);
        assert_eq!(upstream.started(), ["/p0"]);
        spin_until("cancelled parts counted", || {
            rendered(&metrics)
                .contains("batchgate_parts_total{route=\"/p/\",outcome=\"cancelled\"} 3")
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_resized_while_parts_wait_for_it() {
        let upstream = Held::default();
        let service = upstream.service();
        let capacity = crate::stack::limit::Capacity::new(2);
        let route = capacity.permits().clone();
        let (feed, _out, _) = scheduler(8, 8);
        for i in 0..5 {
            feed.push(routed(i, &format!("/p{i}"), &service, &route));
        }
        feed.commit();
        upstream.until_started(2).await;
        // Grown: a waiting part takes the new permit at once.
        capacity.resize(3);
        upstream.until_started(3).await;
        // Shrunk to 1 with 3 held: the parts queued before the shrink still start, as permits come back; then
        // the shrink takes the next two.
        capacity.resize(1);
        settle_down().await;
        upstream.release("/p0");
        upstream.until_started(4).await;
        upstream.release("/p1");
        upstream.until_started(5).await;
        upstream.release("/p2");
        upstream.release("/p3");
        settle_down().await;
        assert_eq!(capacity.permits().available_permits(), 0);
        assert_eq!(capacity.in_use(), 1, "/p4 runs within the new size");
        upstream.release("/p4");
        spin_until("the one permit back", || {
            capacity.permits().available_permits() == 1
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_parts_wait_for_its_routes_permit_is_timed_and_its_batch_concurrency_kept() {
        let upstream = Held::default();
        let service = upstream.service();
        let route = Arc::new(Semaphore::new(8));
        let ours = route.clone().try_acquire_many_owned(8).unwrap();
        // A concurrency of 2: two parts queue for the route, the others wait for them.
        let (feed, mut out, metrics) = scheduler(8, 2);
        for i in 0..4 {
            feed.push(routed(i, &format!("/p{i}"), &service, &route));
        }
        feed.commit();
        settle_down().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(ours);
        upstream.until_started(2).await;
        settle_down().await;
        assert_eq!(
            upstream.started(),
            ["/p0", "/p1"],
            "the batch's concurrency"
        );
        for i in 0..4 {
            upstream.until_started(i + 1).await;
            upstream.release(&format!("/p{i}"));
        }
        while out.recv().await.is_some() {}
        let text = rendered(&metrics);
        let sum = text
            .lines()
            .find(|l| l.starts_with("batchgate_queue_wait_seconds_sum{route=\"/p/\"}"))
            .expect(&text);
        let sum: f64 = sum.rsplit(' ').next().unwrap().parse().unwrap();
        // Each part waited the 5 s the route was full, none of them more.
        assert!((20.0..20.01).contains(&sum), "{sum}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_whose_permits_fail_answers_its_waiting_parts_and_runs_the_rest() {
        let upstream = Held::default();
        let service = upstream.service();
        let route = Arc::new(Semaphore::new(0));
        let (feed, mut out, _) = scheduler(8, 8);
        feed.push(routed(0, "/p0", &service, &route));
        feed.push(routed(1, "/p1", &service, &route));
        feed.push(job(2, Method::GET, &service));
        feed.commit();
        upstream.until_started(1).await;
        route.close();
        upstream.release("/p2");
        let mut answers = Vec::new();
        while let Some(part) = out.recv().await {
            answers.push(text_of(&part));
        }
        assert!(answers[0].contains("HTTP/1.1 500"), "{}", answers[0]);
        assert!(answers[1].contains("HTTP/1.1 500"), "{}", answers[1]);
        assert!(answers[2].trim_end().ends_with("/p2"), "{}", answers[2]);
    }
}
