//! The respond stage: the reply body. It takes the scheduler's answers in request order and writes them out,
//! compressed as one stream when the client accepts it.
//!
//! Parts that finish together go out together: when the next part is not ready, the body waits up to
//! `compression.flush_delay` for it before handing what it has to the connection. Each hand-over is a write
//! (and, on a slow link, packets counted against the congestion window), so one per part would cost a syscall
//! per sub-request. Large uncompressed bodies are passed on as their upstreams sent them, without a copy.
//! Compression runs on the blocking pool, so a large part at a high level never stalls other batches on the
//! runtime.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::OwnedSemaphorePermit;

use std::sync::Arc;

use super::run::{Answers, Running};
use crate::codec::{Format, Rendered, ReplyWriter};
use crate::compress::Encoder;
use crate::config::{Coding, CompressionConfig};
use crate::observe::timeline::{BatchTimeline, Mark};
use crate::response::{BoxError, Chunk, ReplyBody};

/// Input bytes gathered before a frame is sent regardless of what is ready.
const MAX_FRAME: usize = 64 * 1024;

/// An uncompressed piece at least this large (a part, or a piece of a large body as its upstream sent it)
/// goes into its frame as it is, one more buffer of a vectored write, rather than copied.
const ZERO_COPY_PIECE: usize = 4 * 1024;

/// What the reply is made of.
#[derive(Debug)]
pub(crate) struct Reply {
    pub writer: ReplyWriter,
    /// Answers in request order, from the scheduler.
    pub parts: Answers,
    /// The first answer, if it was taken off `parts` before the head went out.
    pub first: Option<Rendered>,
    /// A 1-part batch's scheduler, driven by the reply until the answer ([`Running::poll_recv`]).
    pub scheduler: Option<Running>,
    /// How many answers make the whole reply: fewer means the scheduler failed, and the reply is cut off
    /// rather than closed as if complete.
    pub total: usize,
    pub coding: Option<Coding>,
    /// Holds one of `limits.max_batches` until the last byte is out or the client is gone.
    pub permit: OwnedSemaphorePermit,
    /// Where each part's `written` mark goes.
    pub timeline: Arc<BatchTimeline>,
    pub access: Access,
}

/// What the access log line of a served batch says, besides its timeline.
#[derive(Debug)]
pub(crate) struct Access {
    pub span: tracing::Span,
    pub peer: std::net::IpAddr,
    pub bytes_in: u64,
    /// The request's batch format.
    pub format: Format,
}

/// The `200` response streaming the reply.
pub(crate) fn respond(reply: Reply, compression: &CompressionConfig) -> Response<ReplyBody> {
    let mut response = Response::builder().header(CONTENT_TYPE, reply.writer.content_type());
    if compression.enabled {
        response = response.header(VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(coding) = reply.coding {
        response = response.header(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
    }
    let mut output = match reply.coding {
        Some(coding) => Output::Encoded {
            encoder: Some(compression.encoder(coding)),
            input: Vec::new(),
            pending: 0,
        },
        None => Output::Identity(Gathered::default()),
    };
    if let Some(open) = reply.writer.open() {
        output.write(Rendered::Whole(open));
    }
    let body = Body {
        close: reply.writer.close(),
        reply_format: reply.writer.format(),
        parts: reply.parts,
        scheduler: reply.scheduler,
        received: 0,
        total: reply.total,
        carried: reply.first,
        output: Some(output),
        flush_delay: compression.flush_delay,
        _permit: reply.permit,
        timeline: reply.timeline,
        access: reply.access,
        bytes_out: 0,
    };
    let frames = futures_util::stream::unfold(body, |mut body| async move {
        let frame = body.next_frame().await?;
        if let Ok(chunk) = &frame {
            body.bytes_out += chunk.remaining() as u64;
        }
        if body.output.is_none() {
            body.log_access(frame.is_ok());
        }
        Some((frame.map(Frame::data), body))
    });
    response
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .expect("valid reply head")
}

struct Body {
    close: Bytes,
    reply_format: Format,
    parts: Answers,
    scheduler: Option<Running>,
    received: usize,
    total: usize,
    /// A part taken off the channel while gathering, not yet written.
    carried: Option<Rendered>,
    /// `None` once the reply has ended.
    output: Option<Output>,
    flush_delay: Duration,
    _permit: OwnedSemaphorePermit,
    timeline: Arc<BatchTimeline>,
    access: Access,
    bytes_out: u64,
}

impl Drop for Body {
    /// A reply dropped before its end (the client went away, or stopped reading) is logged too.
    fn drop(&mut self) {
        if self.output.is_some() {
            self.log_access(false);
        }
    }
}

impl Body {
    /// One line per served batch, at info: who, how many parts and with what statuses, bytes, time.
    fn log_access(&self, complete: bool) {
        self.access.span.in_scope(|| {
            tracing::info!(
                target: "batchgate::access",
                id = self.timeline.id,
                peer = %self.access.peer,
                format = self.access.format.as_str(),
                reply_format = self.reply_format.as_str(),
                parts = self.total,
                // Not the timeline's whole view: the line needs two figures, not every part's marks. Counted
                // only if the line is written.
                statuses = %self.timeline.status_counts(),
                bytes_in = self.access.bytes_in,
                bytes_out = self.bytes_out,
                duration_ms = self.timeline.duration_ms().unwrap_or_default(),
                complete,
                "batch"
            )
        });
    }

    async fn next_frame(&mut self) -> Option<Result<Chunk, BoxError>> {
        loop {
            let output = self.output.as_mut()?;
            let part = match self.carried.take() {
                Some(part) => Some(part),
                None => recv(&mut self.parts, &mut self.scheduler).await,
            };
            let Some(part) = part else {
                let output = self.output.take()?;
                if self.received < self.total {
                    return Some(Err(format!(
                        "the reply broke off after {} of {} parts",
                        self.received, self.total
                    )
                    .into()));
                }
                let last = output.finish(self.close.clone()).await;
                self.timeline.finish(200);
                return Some(last);
            };
            self.timeline.mark(self.received, Mark::Written);
            self.received += 1;
            output.write(part);
            if self.received == self.total {
                // The last answer: nothing more to wait for, and it goes out with the reply's end, once the
                // scheduler has ended (its channel closes).
                continue;
            }
            if output.pending() < MAX_FRAME {
                self.carried = match self.parts.try_recv() {
                    Some(next) => Some(next),
                    None if self.flush_delay.is_zero() => None,
                    None => tokio::time::timeout(
                        self.flush_delay,
                        recv(&mut self.parts, &mut self.scheduler),
                    )
                    .await
                    .ok()
                    .flatten(),
                };
                if self.carried.is_some() {
                    continue;
                }
            }
            let frame = output.flush().await;
            match frame {
                Ok(frame) if !frame.has_remaining() => continue,
                frame => return Some(frame),
            }
        }
    }
}

/// The next answer, driving the batch's scheduler meanwhile if the reply holds it.
pub(crate) async fn recv(parts: &mut Answers, scheduler: &mut Option<Running>) -> Option<Rendered> {
    match scheduler {
        Some(scheduler) => std::future::poll_fn(|cx| scheduler.poll_recv(parts, cx)).await,
        None => parts.recv().await,
    }
}

/// Where reply bytes gather until the next frame: plain, or on their way to the compressor.
enum Output {
    Identity(Gathered),
    Encoded {
        /// Lent to the blocking pool while it compresses.
        encoder: Option<Encoder>,
        input: Vec<Bytes>,
        pending: usize,
    },
}

impl Output {
    fn write(&mut self, part: Rendered) {
        match (self, part) {
            (Output::Identity(gathered), Rendered::Whole(part)) => gathered.push(part),
            (Output::Identity(gathered), Rendered::Pieces(pieces)) => {
                pieces.into_iter().for_each(|piece| gathered.push(piece));
            }
            (Output::Encoded { input, pending, .. }, Rendered::Whole(part)) => {
                *pending += part.len();
                input.push(part);
            }
            (Output::Encoded { input, pending, .. }, Rendered::Pieces(pieces)) => {
                *pending += pieces.iter().map(Bytes::len).sum::<usize>();
                input.extend(pieces);
            }
        }
    }

    /// Input bytes gathered since the last frame.
    fn pending(&self) -> usize {
        match self {
            Output::Identity(gathered) => gathered.len,
            Output::Encoded { pending, .. } => *pending,
        }
    }

    async fn flush(&mut self) -> Result<Chunk, BoxError> {
        match self {
            Output::Identity(gathered) => Ok(gathered.take()),
            Output::Encoded {
                encoder,
                input,
                pending,
            } => {
                *pending = 0;
                let mut lent = encoder.take().ok_or("the compressor was lost")?;
                let input = std::mem::take(input);
                let (lent, frame) = tokio::task::spawn_blocking(move || {
                    for piece in &input {
                        lent.write(piece);
                    }
                    let frame = lent.flush();
                    (lent, frame)
                })
                .await?;
                *encoder = Some(lent);
                Ok(Chunk::One(frame))
            }
        }
    }

    async fn finish(self, close: Bytes) -> Result<Chunk, BoxError> {
        match self {
            Output::Identity(mut gathered) => {
                gathered.push(close);
                Ok(gathered.take())
            }
            Output::Encoded { encoder, input, .. } => {
                let mut encoder = encoder.ok_or("the compressor was lost")?;
                Ok(Chunk::One(
                    tokio::task::spawn_blocking(move || {
                        for piece in &input {
                            encoder.write(piece);
                        }
                        encoder.write(&close);
                        encoder.finish()
                    })
                    .await?,
                ))
            }
        }
    }
}

/// Uncompressed reply bytes gathered for the next frame: small pieces copied together, large ones (a large
/// part, or a piece of a large body as its upstream sent it) kept as they are.
#[derive(Default)]
struct Gathered {
    pieces: VecDeque<Bytes>,
    /// Small pieces since the last large one.
    buf: BytesMut,
    len: usize,
}

impl Gathered {
    fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        if piece.len() < ZERO_COPY_PIECE {
            self.buf.extend_from_slice(&piece);
            return;
        }
        if !self.buf.is_empty() {
            self.pieces.push_back(self.buf.split().freeze());
        }
        self.pieces.push_back(piece);
    }

    /// What was gathered, as one frame.
    fn take(&mut self) -> Chunk {
        self.len = 0;
        if self.pieces.is_empty() {
            return Chunk::One(self.buf.split().freeze());
        }
        if !self.buf.is_empty() {
            self.pieces.push_back(self.buf.split().freeze());
        }
        Chunk::many(std::mem::take(&mut self.pieces))
    }
}
