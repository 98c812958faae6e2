//! Fan-out: each part starts as soon as it is parsed; the reply takes them back in request order.
//!
//! A batch holds at most `window` parts that have started but are not yet written to the client. Within
//! that, at most `concurrency` talk to upstreams at once (and at most `max_inflight` across all batches, and
//! `max_inflight_per_upstream` per route). A slow first part therefore stalls new starts instead of letting
//! finished parts pile up: a batch's memory is bounded by the window, not by its size.
//!
//! A batch's parts are futures driven by the batch itself (first while its body is read, then by its reply
//! stream), all on the client connection's task: no task spawn, join or cross-thread wake-up per part.
//! Dropping the reply (the client went away) drops the futures, which drops their upstream requests.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compress::Encoder;
use crate::error::PartError;
use crate::gateway::Gateway;
use crate::headers::BatchHeaders;
use crate::route::Destination;
use crate::upstream::ExchangeError;
use crate::wire::{ContentId, EmbeddedRequest, PendingPart, write_close};

/// What every part of one batch shares.
#[derive(Debug)]
pub struct BatchCtx {
    pub gateway: Arc<Gateway>,
    /// Outer headers every part starts from, and the forwarding headers set on each.
    pub headers: BatchHeaders,
    pub peer: IpAddr,
    /// Sub-requests of this batch in flight.
    concurrency: Arc<Semaphore>,
    /// Response bytes this batch may still receive from upstreams.
    response_budget: AtomicU64,
    pub deadline: tokio::time::Instant,
    /// Holds one of `max_batches` until the last byte of the reply is out.
    _batch_permit: OwnedSemaphorePermit,
}

impl BatchCtx {
    pub fn new(
        gateway: Arc<Gateway>,
        headers: BatchHeaders,
        peer: IpAddr,
        batch_permit: OwnedSemaphorePermit,
    ) -> BatchCtx {
        let limits = &gateway.config.limits;
        BatchCtx {
            headers,
            peer,
            concurrency: Arc::new(Semaphore::new(limits.concurrency)),
            response_budget: AtomicU64::new(limits.max_batch_response_bytes),
            deadline: tokio::time::Instant::now() + limits.batch_timeout,
            _batch_permit: batch_permit,
            gateway,
        }
    }

    /// Renders a failed part as a reply part with a JSON body.
    pub fn error_part(&self, content_id: Option<&ContentId>, error: &PartError) -> PendingPart {
        self.gateway.metrics.part(error.kind());
        match error.fault() {
            crate::error::Fault::Client => tracing::debug!(kind = error.kind(), "{error}"),
            _ => tracing::warn!(
                kind = error.kind(),
                retryable = error.retryable(),
                "{error}"
            ),
        }
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        PendingPart::new(content_id, error.status(), &headers, [&error.body()[..]])
    }
}

/// One part, ready to run or already answered.
#[derive(Debug)]
pub enum Job {
    /// Answered without going upstream (a parse or routing error).
    Answered(PendingPart),
    Forward(Box<Forward>),
}

/// A part that goes upstream.
#[derive(Debug)]
pub struct Forward {
    pub index: usize,
    pub content_id: Option<ContentId>,
    pub request: EmbeddedRequest,
    pub destination: Destination,
}

/// A running part: resolves to its index and its rendered reply.
type PartFuture = Pin<Box<dyn Future<Output = (usize, PendingPart)> + Send>>;

/// The parts of one batch, in request order: started ones (at most `window`) and those waiting for room.
pub struct Fanout {
    ctx: Arc<BatchCtx>,
    /// Started parts from `next_out` on, in request order: `Some` once answered.
    started: VecDeque<Option<PendingPart>>,
    running: FuturesUnordered<PartFuture>,
    waiting: VecDeque<Job>,
    /// Index of the next part to write.
    next_out: usize,
    window: usize,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("started", &self.started.len())
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl Fanout {
    pub fn new(ctx: Arc<BatchCtx>) -> Fanout {
        let window = ctx.gateway.config.limits.window;
        Fanout {
            ctx,
            started: VecDeque::with_capacity(window),
            running: FuturesUnordered::new(),
            waiting: VecDeque::new(),
            next_out: 0,
            window,
        }
    }

    /// Adds the next part; it starts at once if the window has room.
    pub fn push(&mut self, job: Job) {
        if self.started.len() < self.window && self.waiting.is_empty() {
            self.start(job);
        } else {
            self.waiting.push_back(job);
        }
    }

    fn start(&mut self, job: Job) {
        match job {
            Job::Answered(part) => self.started.push_back(Some(part)),
            Job::Forward(forward) => {
                let index = self.next_out + self.started.len();
                self.started.push_back(None);
                let ctx = self.ctx.clone();
                self.running.push(Box::pin(
                    async move { (index, run_part(ctx, *forward).await) },
                ));
            }
        }
    }

    /// Whether any part is still talking to its upstream.
    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Waits until some running part is answered, and files its reply. Cancel-safe: a reply is filed as
    /// soon as its future completes.
    pub async fn progress(&mut self) {
        if let Some(done) = self.running.next().await {
            self.file(done);
        }
    }

    fn file(&mut self, (index, part): (usize, PendingPart)) {
        self.started[index - self.next_out] = Some(part);
    }

    /// The reply body, delimited by `boundary`: each part's bytes in request order, then the close
    /// delimiter, compressed as one stream if `encoder` is given.
    ///
    /// Parts that finish together go out together: when the next part is not ready, the stream waits up to
    /// `flush_delay` for it before handing what it has to the connection. Each hand-over is a write (and, on
    /// a slow link, packets counted against the congestion window), so one per part would cost a syscall
    /// per sub-request. Large uncompressed parts are passed on as they are, without a copy.
    pub fn into_stream(
        self,
        boundary: String,
        encoder: Option<Encoder>,
    ) -> impl Stream<Item = Bytes> + Send {
        let flush_delay = self.ctx.gateway.config.compression.flush_delay;
        let output = Output::new(encoder);
        futures_util::stream::unfold(Some((self, output)), move |state| {
            let boundary = boundary.clone();
            async move {
                let (mut fanout, mut output) = state?;
                loop {
                    let Some(part) = fanout.next_part().await else {
                        let mut close = BytesMut::new();
                        write_close(&mut close, &boundary);
                        return Some((output.finish(&close), None));
                    };
                    if let Some(large) = output.write(part.into_bytes(&boundary)) {
                        return Some((large, Some((fanout, output))));
                    }
                    let more = output.pending() < MAX_FRAME
                        && (fanout.next_is_ready() || fanout.wait_next(flush_delay).await);
                    if !more {
                        let frame = output.flush();
                        if !frame.is_empty() {
                            return Some((frame, Some((fanout, output))));
                        }
                    }
                }
            }
        })
    }

    /// The next part in request order, once answered; `None` after the last.
    async fn next_part(&mut self) -> Option<PendingPart> {
        loop {
            match self.started.front_mut() {
                None => return None,
                Some(slot) if slot.is_some() => {
                    let part = slot.take();
                    self.started.pop_front();
                    self.next_out += 1;
                    self.refill();
                    return part;
                }
                Some(_) => self.progress().await,
            }
        }
    }

    fn refill(&mut self) {
        while self.started.len() < self.window {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.start(job);
        }
    }

    /// Waits up to `delay` for the next part, so that parts finishing together are compressed and sent in one
    /// write: fewer, fuller TCP segments, which matters when the congestion window counts packets.
    async fn wait_next(&mut self, delay: Duration) -> bool {
        let wait = async {
            while !self.next_is_ready() {
                self.progress().await;
            }
        };
        tokio::time::timeout(delay, wait).await.is_ok()
    }

    /// Whether the next part (or the end of the reply) can be written without waiting. Files the replies of
    /// parts that are done but not yet collected.
    fn next_is_ready(&mut self) -> bool {
        while let Some(Some(done)) = self.running.next().now_or_never() {
            self.file(done);
        }
        self.started.front().is_none_or(Option::is_some)
    }
}

/// Input bytes gathered before a frame is sent regardless of what is ready.
const MAX_FRAME: usize = 64 * 1024;

/// An uncompressed part at least this large is sent as its own frame rather than copied into one.
const ZERO_COPY_PART: usize = 16 * 1024;

/// Where reply bytes gather until the next frame: plain, or through the compressor.
enum Output {
    Identity(BytesMut),
    Encoded { encoder: Encoder, written: usize },
}

impl Output {
    fn new(encoder: Option<Encoder>) -> Output {
        match encoder {
            Some(encoder) => Output::Encoded {
                encoder,
                written: 0,
            },
            None => Output::Identity(BytesMut::new()),
        }
    }

    /// Takes a part; returns it back as a frame of its own when it is large and nothing is gathered.
    fn write(&mut self, part: Bytes) -> Option<Bytes> {
        match self {
            Output::Identity(buf) if buf.is_empty() && part.len() >= ZERO_COPY_PART => Some(part),
            Output::Identity(buf) => {
                buf.extend_from_slice(&part);
                None
            }
            Output::Encoded { encoder, written } => {
                encoder.write(&part);
                *written += part.len();
                None
            }
        }
    }

    /// Input bytes gathered since the last frame.
    fn pending(&self) -> usize {
        match self {
            Output::Identity(buf) => buf.len(),
            Output::Encoded { written, .. } => *written,
        }
    }

    fn flush(&mut self) -> Bytes {
        match self {
            Output::Identity(buf) => buf.split().freeze(),
            Output::Encoded { encoder, written } => {
                *written = 0;
                encoder.flush()
            }
        }
    }

    fn finish(self, close: &[u8]) -> Bytes {
        match self {
            Output::Identity(mut buf) => {
                buf.extend_from_slice(close);
                buf.freeze()
            }
            Output::Encoded { mut encoder, .. } => {
                encoder.write(close);
                encoder.finish()
            }
        }
    }
}

/// Runs one part to its rendered reply bytes. Never fails: every failure is an error part.
async fn run_part(ctx: Arc<BatchCtx>, part: Forward) -> PendingPart {
    let Forward {
        index,
        content_id,
        request,
        destination,
    } = part;
    let exchange = forward(&ctx, index, content_id.as_ref(), request, destination);
    let result = match tokio::time::timeout_at(ctx.deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PartError::BatchDeadline {
            index,
            after: ctx.gateway.config.limits.batch_timeout,
        }),
    };
    match result {
        Ok(bytes) => bytes,
        Err(error) => ctx.error_part(content_id.as_ref(), &error),
    }
}

async fn forward(
    ctx: &BatchCtx,
    index: usize,
    content_id: Option<&ContentId>,
    request: EmbeddedRequest,
    destination: Destination,
) -> Result<PendingPart, PartError> {
    let gateway = &ctx.gateway;
    let route = destination.route;
    // Named in error messages only: not formatted on the path every part takes.
    let upstream = || route.authority.to_string();
    // Permits in a fixed order (batch, route, global) so batches cannot deadlock each other.
    let _batch = ctx
        .concurrency
        .acquire()
        .await
        .map_err(|e| internal(index, e))?;
    let _route = route
        .inflight
        .acquire()
        .await
        .map_err(|e| internal(index, e))?;
    let _global = gateway
        .inflight
        .acquire()
        .await
        .map_err(|e| internal(index, e))?;

    let limits = &gateway.config.limits;
    let budget = ctx.response_budget.load(Ordering::Relaxed);
    let limit = limits.max_response_bytes.min(budget);
    let headers = ctx.headers.for_part(request.headers, route.strip_cookies);
    let started = Instant::now();
    gateway.metrics.upstream_request();
    let exchange = gateway.upstreams.exchange(
        route.http2,
        request.method,
        destination.uri,
        headers,
        request.body,
        limit,
    );
    let reply = match tokio::time::timeout(route.timeout, exchange).await {
        Err(_) => {
            return Err(PartError::Timeout {
                index,
                upstream: upstream(),
                after: route.timeout,
            });
        }
        Ok(Err(ExchangeError::Connect(reason))) => {
            return Err(PartError::Connect {
                index,
                upstream: upstream(),
                reason,
            });
        }
        Ok(Err(ExchangeError::Broken(reason))) => {
            return Err(PartError::Upstream {
                index,
                upstream: upstream(),
                reason,
            });
        }
        Ok(Err(ExchangeError::TooLarge)) if limit < limits.max_response_bytes => {
            return Err(PartError::BatchResponseBudget {
                index,
                limit: limits.max_batch_response_bytes,
            });
        }
        Ok(Err(ExchangeError::TooLarge)) => {
            return Err(PartError::ResponseTooLarge {
                index,
                upstream: upstream(),
                limit: limits.max_response_bytes,
            });
        }
        Ok(Ok(reply)) => reply,
    };
    let within_budget = ctx
        .response_budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(reply.body_len)
        })
        .is_ok();
    if !within_budget {
        return Err(PartError::BatchResponseBudget {
            index,
            limit: limits.max_batch_response_bytes,
        });
    }
    tracing::trace!(part = index, status = reply.status.as_u16(), elapsed = ?started.elapsed(), "part done");
    gateway.metrics.part("ok");
    let body = reply.body.iter().map(|piece| &piece[..]);
    Ok(PendingPart::new(
        content_id,
        reply.status,
        &reply.headers,
        body,
    ))
}

fn internal(index: usize, e: impl std::fmt::Display) -> PartError {
    PartError::Internal {
        index,
        reason: e.to_string(),
    }
}
