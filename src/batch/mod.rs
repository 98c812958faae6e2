//! One batch, in four stages:
//!
//! ```text
//! admit ──> read (codec) ──> run (scheduler, per-route stacks) ──> respond (ordered, compressed)
//! ```
//! - [`admit`]: may this batch be served at all (capacity, type, size), and with which codec;
//! - [`read`]: the body, part by part as it streams in, each parsed, routed and handed to the scheduler;
//! - [`run`]: the scheduler, on the connection's task while the body is read (a 1-part batch's until its
//!   answer, driven by the reply), then on a task of its own: window, permits, order, side effects only once
//!   committed, identical safe parts sharing one call ([`dedup`]);
//! - [`respond`]: the reply body, in request order, coalesced and compressed.
//!
//! The reply's `200` is committed only once the whole body is in, so a truncated, oversized or over-long batch
//! still gets its 400/408/413. Safe parts run meanwhile; the rest wait for the commit.

pub(crate) mod admit;
pub(crate) mod dedup;
pub(crate) mod read;
pub(crate) mod respond;
pub(crate) mod run;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::AccessLog;
use crate::error::BatchError;
use crate::gateway::Gateway;
use crate::headers::IpText;
use crate::observe::trace::TraceContext;
use crate::response::ReplyBody;

/// Serves one `POST` to the batch endpoint. `tls` says whether the client's connection is HTTPS; `socket` is its
/// TCP socket.
pub(crate) async fn serve<B>(
    gateway: &Arc<Gateway>,
    request: Request<B>,
    peer: IpAddr,
    tls: bool,
    socket: respond::ClientSocket,
) -> Result<Response<ReplyBody>, BatchError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let arrival = Instant::now();
    let (head, body) = request.into_parts();
    let timeline = gateway
        .observer
        .batch(peer, arrival, gateway.config.stats_parts_per_batch());
    #[allow(unused_mut)]
    let mut trace = TraceContext::from_headers(&head.headers);
    macro_rules! batch_span {
        ($trace_id:expr, $span_id:expr) => {
            tracing::info_span!(
                "batch",
                id = timeline.id,
                peer = %IpText(peer),
                trace_id = $trace_id,
                span_id = $span_id,
                parts = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        };
    }
    // The trace ids go in as the span is made (formatted only for a span someone records): recorded later, each
    // was one more trip through the subscriber. With `otel` they are the exported span's, known once it exists.
    #[cfg(not(feature = "otel"))]
    let span = batch_span!(trace.trace_id_hex().as_str(), trace.span_id_hex().as_str());
    #[cfg(feature = "otel")]
    let span = {
        let span = batch_span!(tracing::field::Empty, tracing::field::Empty);
        crate::otel::adopt(&mut trace, &span);
        if !span.is_disabled() {
            span.record("trace_id", trace.trace_id_hex().as_str());
            span.record("span_id", trace.span_id_hex().as_str());
        }
        span
    };
    let admitted = admit::admit(gateway, &head, peer, tls, trace).inspect_err(|error| {
        timeline.finish(error.status().as_u16());
        span.record("outcome", error.status().as_u16());
    })?;
    let limits = &gateway.config.limits;
    let format = admitted.reader.format();
    timeline.set_format(format);
    let telemetry = run::Telemetry {
        metrics: gateway.metrics.clone(),
        observer: gateway.observer.clone(),
        batch: timeline.clone(),
        global: gateway.global_inflight(),
        span: span.clone(),
        access_parts: gateway.config.access_log == AccessLog::Parts,
    };
    let (feed, mut answers, mut running) = run::start(
        run::Settings::new(limits, arrival, admitted.reader.has_dependencies()),
        admitted.writer.clone(),
        telemetry,
    );
    let read = read::Read {
        gateway,
        scope: &admitted.scope,
        gateway_host: admitted.gateway_host.as_deref(),
        feed: &feed,
    };
    let (parts, bytes_in) = match running
        .alongside(
            read.body(admitted.reader, body, arrival)
                .instrument(span.clone()),
        )
        .await
    {
        Ok(read) => read,
        Err(error) => {
            timeline.finish(error.status().as_u16());
            span.record("outcome", error.status().as_u16());
            return Err(error);
        }
    };
    feed.commit();
    gateway
        .metrics
        .batch_format(format, admitted.writer.format());
    span.record("parts", parts);
    span.in_scope(|| tracing::debug!(parts, "batch accepted"));
    let mut scheduler = running.finish(parts);
    // A batch of one part (its scheduler still here) holds its reply's head back for up to `flush_delay` while
    // its answer comes, so that head and answer leave in one write, as parts that finish together do.
    let flush_delay = gateway.config.compression.flush_delay;
    let first = if scheduler.is_some() && !flush_delay.is_zero() {
        tokio::time::timeout(flush_delay, respond::recv(&mut answers, &mut scheduler))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let reply = respond::Reply {
        writer: admitted.writer,
        parts: answers,
        first,
        scheduler,
        total: parts,
        coding: admitted.coding,
        permit: admitted.permit,
        timeline,
        access: respond::Access {
            span,
            peer,
            bytes_in,
            format,
        },
    };
    Ok(respond::respond(reply, &gateway.config.compression, socket).await)
}
