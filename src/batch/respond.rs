//! The respond stage: the reply body. It takes the scheduler's answers in request order and writes them out,
//! compressed as one stream when the client accepts it.
//!
//! Parts that finish together go out together: when the next part is not ready, the body waits up to
//! `compression.flush_delay` for it before handing what it has to the connection. Each hand-over is a write
//! (and, on a slow link, packets counted against the congestion window), so one per part would cost a syscall
//! per sub-request. Large uncompressed bodies are passed on as their upstreams sent them, without a copy.
//! Compression runs on the blocking pool, so a large part at a high level never stalls other batches on the
//! runtime.
//!
//! A compressed reply to a far client aims at TCP's first flight: until the client's first acknowledgement comes
//! back, a round trip later, the connection may send only its congestion window (10 segments on a fresh
//! connection). So its first write waits a little (`compression.first_flight_hold`, at most half the round trip)
//! to gather the answers, and goes with the head; a reply whole by then that misses the flight at the configured
//! level is compressed again at the highest, when that costs less than the round trip it saves. The kernel says
//! how far the client is and how much the flight carries (`TCP_INFO`); on a LAN nothing waits.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::Response;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use std::sync::Arc;

use super::run::{Answers, Running};
use crate::codec::{Format, Rendered, ReplyWriter};
use crate::compress::{Effort, Encoder};
use crate::config::{Coding, CompressionConfig};
use crate::headers::IpText;
use crate::observe::timeline::{BatchTimeline, Mark};
use crate::response::{BoxError, Chunk, ReplyBody};
use batchgate_tcpinfo::TcpInfo;

/// Input bytes gathered before a frame is sent regardless of what is ready.
const MAX_FRAME: usize = 64 * 1024;

/// An uncompressed piece at least this large (a part, or a piece of a large body as its upstream sent it)
/// goes into its frame as it is, one more buffer of a vectored write, rather than copied.
const ZERO_COPY_PIECE: usize = 4 * 1024;

/// What hyper adds to a reply's head (status line, `transfer-encoding`, `date`, the blank line) and the chunked
/// framing of a whole body: counted against the first flight beside the head's own fields.
const HEAD_AND_FRAMING: usize = 17 + 28 + 37 + 2 + 17;
/// Room in the first flight for what is added to the head later (CORS fields) and for TLS records' framing.
const FLIGHT_MARGIN: usize = 128;
/// How fast a reply is compressed again at the highest level, as a floor (zstd 15 and brotli 9 run at about 8
/// MB/s on this decade's cores): what a round trip must be worth for it.
const REFIT_BYTES_PER_MICROSECOND: u64 = 4;

/// The client's TCP socket, asked how far the client is and how much one flight carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClientSocket {
    /// Raw, not borrowed: the connection that owns it serves the batch, and outlives the one moment it is asked
    /// (before the reply's head goes back to the connection).
    Tcp(RawFd),
    /// What the kernel would say, for tests of a client that is not on loopback.
    #[cfg(test)]
    Known(TcpInfo),
}

impl ClientSocket {
    fn info(self) -> Option<TcpInfo> {
        match self {
            ClientSocket::Tcp(fd) => batchgate_tcpinfo::read(fd).ok(),
            #[cfg(test)]
            ClientSocket::Known(info) => Some(info),
        }
    }
}

/// What a compressed reply's first write may gather, for a client far enough that a round trip is worth waiting
/// for.
#[derive(Debug, Clone)]
struct FirstFlight {
    /// Until when answers are gathered.
    until: Instant,
    /// Compressed bytes the flight carries beside the head.
    budget: usize,
    rtt: Duration,
    coding: Coding,
    compression: CompressionConfig,
}

impl FirstFlight {
    /// `None` for a client so near that waiting would cost more than the flight saves, and where the kernel
    /// cannot say.
    fn plan(
        compression: &CompressionConfig,
        coding: Coding,
        socket: ClientSocket,
        head: &HeaderMap,
    ) -> Option<FirstFlight> {
        if compression.first_flight_hold.is_zero() {
            return None;
        }
        let info = socket.info()?;
        let hold = compression.first_flight_hold.min(info.rtt / 2);
        // Not longer than every finished part may wait anyway (`flush_delay`): a LAN, nothing to gain.
        if hold <= compression.flush_delay {
            return None;
        }
        let head: usize = head
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        Some(FirstFlight {
            until: Instant::now() + hold,
            budget: (info.sendable as usize)
                .saturating_sub(head + HEAD_AND_FRAMING + FLIGHT_MARGIN),
            rtt: info.rtt,
            coding,
            compression: compression.clone(),
        })
    }

    /// A whole reply as one compressed stream: at the configured level, or at the highest when only that fits
    /// the flight and its CPU time is well below the round trip it saves.
    fn compress(&self, input: &[u8]) -> Bytes {
        let out = self
            .compression
            .whole(self.coding, Effort::Configured, input);
        let refit_time = Duration::from_micros(input.len() as u64 / REFIT_BYTES_PER_MICROSECOND);
        let worth = input.len() as u64 <= self.compression.first_flight_max_input
            && refit_time < self.rtt / 2;
        if out.len() <= self.budget || !worth {
            return out;
        }
        let again = self.compression.whole(self.coding, Effort::Highest, input);
        if again.len() < out.len() { again } else { out }
    }
}

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

/// The `200` response streaming the reply. A compressed reply to a far client comes back with its first frame
/// ready ([`FirstFlight`]), so that hyper writes it with the head.
pub(crate) async fn respond(
    reply: Reply,
    compression: &CompressionConfig,
    socket: ClientSocket,
) -> Response<ReplyBody> {
    let mut head = HeaderMap::new();
    head.insert(CONTENT_TYPE, reply.writer.content_type());
    if compression.enabled {
        head.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(coding) = reply.coding {
        head.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
    }
    let flight = reply
        .coding
        .and_then(|coding| FirstFlight::plan(compression, coding, socket, &head));
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
    let mut body = Body {
        ready: None,
        fit: None,
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
    if let Some(flight) = flight {
        body.ready = body.first_flight(flight).await;
    }
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
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    *response.headers_mut() = head;
    response
}

struct Body {
    /// The first frame, made before the head went back to hyper ([`Body::first_flight`]).
    ready: Option<Result<Chunk, BoxError>>,
    /// Set when the whole reply is in its first flight: how to compress it.
    fit: Option<FirstFlight>,
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
                peer = %IpText(self.access.peer),
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

    /// The first frame of a compressed reply to a far client: the answers ready by `flight.until` (or until the
    /// reply is whole), `None` if none is.
    async fn first_flight(&mut self, flight: FirstFlight) -> Option<Result<Chunk, BoxError>> {
        let until = flight.until;
        let output = self.output.as_mut()?;
        while self.received < self.total {
            let part = match self.carried.take() {
                Some(part) => part,
                None => {
                    match tokio::time::timeout_at(until, recv(&mut self.parts, &mut self.scheduler))
                        .await
                    {
                        Ok(Some(part)) => part,
                        // The wait is over, or the scheduler ended early (the next frame says so).
                        _ => break,
                    }
                }
            };
            self.timeline.mark(self.received, Mark::Written);
            self.received += 1;
            output.write(part);
            // Larger is compressed as it comes: it is not compressed again to fit.
            if output.pending() as u64 > flight.compression.first_flight_max_input {
                break;
            }
        }
        if self.received == self.total {
            self.fit = Some(flight);
            return self.next_frame().await;
        }
        if self.received == 0 {
            return None;
        }
        Some(output.flush().await)
    }

    async fn next_frame(&mut self) -> Option<Result<Chunk, BoxError>> {
        if let Some(frame) = self.ready.take() {
            return Some(frame);
        }
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
                let last = output.finish(self.close.clone(), self.fit.take()).await;
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
            (Output::Encoded { input, pending, .. }, part) => {
                *pending += part.len();
                match part {
                    Rendered::Whole(part) => input.push(part),
                    Rendered::Pieces(pieces) => input.extend(pieces),
                }
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

    /// The last frame. `fit`: the whole reply is here, in its first frame, compressed in one piece to fit.
    async fn finish(self, close: Bytes, fit: Option<FirstFlight>) -> Result<Chunk, BoxError> {
        match (self, fit) {
            (Output::Identity(mut gathered), _) => {
                gathered.push(close);
                Ok(gathered.take())
            }
            (Output::Encoded { input, pending, .. }, Some(fit)) => {
                let mut whole = Vec::with_capacity(pending + close.len());
                input
                    .iter()
                    .chain([&close])
                    .for_each(|piece| whole.extend_from_slice(piece));
                Ok(Chunk::One(
                    tokio::task::spawn_blocking(move || fit.compress(&whole)).await?,
                ))
            }
            (Output::Encoded { encoder, input, .. }, None) => {
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::batch::run::TestAnswers;
    use crate::codec::multipart;

    /// A fresh connection 50 ms away: 10 segments of 1448 bytes, unless `sendable` says otherwise.
    fn far(sendable: u32) -> ClientSocket {
        ClientSocket::Known(TcpInfo {
            rtt: Duration::from_millis(50),
            mss: 1448,
            sendable,
        })
    }

    /// Text that compresses about as mail does: words from a small vocabulary, in a fixed pseudo-random order.
    fn parts(n: usize) -> Vec<Bytes> {
        let words = [
            "inbox", "thread", "label", "draft", "the", "a", "meeting", "tomorrow", "report",
            "quarter", "attached", "please", "review", "thanks", "regards", "budget", "launch",
            "team", "notes", "call",
        ];
        let mut seed = 0x2545_f491_u32;
        (0..n)
            .map(|i| {
                let mut text = format!("--b\r\nContent-ID: <response-{i}>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n{{\"id\":{i},\"snippet\":\"");
                for _ in 0..60 {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    text.push_str(words[(seed % 20) as usize]);
                    text.push(' ');
                }
                text.push_str("\"}\r\n");
                Bytes::from(text)
            })
            .collect()
    }

    /// A compressed (zstd) reply of `total` parts, and where its answers go in.
    fn zstd_reply(total: usize) -> (Reply, TestAnswers) {
        let (answers, parts) = TestAnswers::new(total.max(1));
        let reply = Reply {
            writer: ReplyWriter::Multipart(multipart::ReplyWriter::new()),
            parts,
            first: None,
            scheduler: None,
            total,
            coding: Some(Coding::Zstd),
            permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            timeline: Arc::new(BatchTimeline::new(
                1,
                Instant::now(),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                0,
            )),
            access: Access {
                span: tracing::Span::none(),
                peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
                bytes_in: 0,
                format: Format::Multipart,
            },
        };
        (reply, answers)
    }

    /// The reply's body, frame by frame.
    async fn read_frames(response: Response<ReplyBody>) -> Vec<Bytes> {
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let mut data = frame.unwrap().into_data().unwrap();
            frames.push(data.copy_to_bytes(data.remaining()));
        }
        frames
    }

    fn decode(frames: &[Bytes]) -> Vec<u8> {
        zstd::stream::decode_all(&frames.concat()[..]).unwrap()
    }

    #[tokio::test]
    async fn a_far_clients_whole_reply_is_one_first_frame_compressed_to_fit_the_flight() {
        let compression = CompressionConfig::default();
        let parts = parts(40);
        let (probe, _) = zstd_reply(0);
        let mut whole = parts.concat();
        whole.extend_from_slice(&probe.writer.close());
        let configured = compression.whole(Coding::Zstd, Effort::Configured, &whole);
        let highest = compression.whole(Coding::Zstd, Effort::Highest, &whole);
        assert!(
            highest.len() < configured.len(),
            "the data must reward the higher level"
        );
        let head = 128; // the head's own fields, with a margin
        let fits = |budget: usize| (budget + head + HEAD_AND_FRAMING + FLIGHT_MARGIN) as u32;

        // The flight carries the highest level's bytes, not the configured level's: compressed again.
        let (reply, answers) = zstd_reply(parts.len());
        let mut expected = parts.concat();
        expected.extend_from_slice(&reply.writer.close());
        for part in &parts {
            answers.send(Rendered::Whole(part.clone())).await;
        }
        drop(answers);
        let response = respond(reply, &compression, far(fits(highest.len()))).await;
        let frames = read_frames(response).await;
        assert_eq!(
            frames.len(),
            1,
            "head, whole reply and its end in one write"
        );
        assert!(
            decode(&frames) == expected,
            "the reply decodes to its parts"
        );
        // The boundary differs from `probe`'s, so the sizes do by a few bytes.
        assert!(
            frames[0].len() < configured.len() - 8,
            "{} >= {}",
            frames[0].len(),
            configured.len()
        );

        // A flight the configured level fits: that level, once.
        let (reply, answers) = zstd_reply(parts.len());
        for part in &parts {
            answers.send(Rendered::Whole(part.clone())).await;
        }
        drop(answers);
        let response = respond(reply, &compression, far(fits(configured.len() + 64))).await;
        let frames = read_frames(response).await;
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].len() > highest.len() + 8,
            "not compressed again when it fits"
        );
    }

    #[tokio::test]
    async fn compressing_again_must_cost_less_than_the_round_trip_it_saves() {
        let compression = CompressionConfig::default();
        let input = parts(40).concat();
        let flight = |rtt_ms: u64, max_input: u64| FirstFlight {
            until: Instant::now(),
            budget: 1,
            rtt: Duration::from_millis(rtt_ms),
            coding: Coding::Zstd,
            compression: CompressionConfig {
                first_flight_max_input: max_input,
                ..compression.clone()
            },
        };
        let configured = compression.whole(Coding::Zstd, Effort::Configured, &input);
        let highest = compression.whole(Coding::Zstd, Effort::Highest, &input);
        assert_eq!(flight(50, 1 << 20).compress(&input), highest);
        // About 4 ms of CPU (4 bytes per microsecond) is not worth a 2 ms round trip.
        assert!(input.len() > 4_000);
        assert_eq!(flight(2, 1 << 20).compress(&input), configured);
        assert_eq!(flight(50, 1024).compress(&input), configured);
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_slower_than_the_hold_leaves_the_first_frame_with_what_was_ready() {
        let compression = CompressionConfig::default();
        let parts = parts(3);
        let (reply, answers) = zstd_reply(parts.len());
        let close = reply.writer.close();
        answers.send(Rendered::Whole(parts[0].clone())).await;
        answers.send(Rendered::Whole(parts[1].clone())).await;
        let late = parts[2].clone();
        let hold = compression.first_flight_hold;
        let sender = tokio::spawn(async move {
            tokio::time::sleep(hold * 3).await;
            answers.send(Rendered::Whole(late)).await;
        });
        let start = Instant::now();
        let response = respond(reply, &compression, far(14_480)).await;
        assert_eq!(
            start.elapsed(),
            hold,
            "the head waited the whole hold, no longer"
        );
        let frames = read_frames(response).await;
        sender.await.unwrap();
        assert!(
            frames.len() >= 2,
            "the late part came in a frame of its own"
        );
        let mut whole = parts.concat();
        whole.extend_from_slice(&close);
        assert!(decode(&frames) == whole, "the reply decodes to its parts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_near_client_gets_the_head_at_once() {
        let compression = CompressionConfig::default();
        let (reply, answers) = zstd_reply(1);
        let near = ClientSocket::Known(TcpInfo {
            rtt: Duration::from_micros(100),
            mss: 65_483,
            sendable: 654_830,
        });
        let start = Instant::now();
        let response = respond(reply, &compression, near).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        answers.send(Rendered::Whole(parts(1)[0].clone())).await;
        drop(answers);
        assert!(!decode(&read_frames(response).await).is_empty());
    }
}
