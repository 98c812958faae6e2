//! The header policy layer: the upstream sees the batch's inherited headers overridden by the part's own,
//! the gateway's forwarding headers, no cookies where the route strips them, and a `traceparent` naming the
//! part's own span in the batch's trace.

use std::task::{Context, Poll};

use http::header::ACCEPT_ENCODING;
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;
use crate::observe::trace::{TRACEPARENT, TRACESTATE, hex};

/// Applies the batch's [`BatchHeaders`](crate::headers::BatchHeaders) to each part.
#[derive(Debug, Clone)]
pub struct PolicyLayer {
    strip_cookies: bool,
}

impl PolicyLayer {
    pub fn new(strip_cookies: bool) -> PolicyLayer {
        PolicyLayer { strip_cookies }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Policy<S> {
        Policy {
            inner,
            strip_cookies: self.strip_cookies,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy<S> {
    inner: S,
    strip_cookies: bool,
}

impl<S> Service<PartRequest> for Policy<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: PartRequest) -> S::Future {
        // Taken before the merge drops it: it says what the client can decode, not what to ask for.
        request.accepts = request.headers.get(ACCEPT_ENCODING).cloned();
        let own = std::mem::take(&mut request.headers);
        request.headers = request.batch.headers.for_part(own, self.strip_cookies);
        // The part is a span of the batch's trace: its upstream's spans hang under it.
        let trace = &request.batch.trace;
        let part = (!request.span.is_disabled()).then_some(&request.span);
        #[cfg(feature = "otel")]
        let (span, traceparent) = match part.and_then(crate::otel::span_id) {
            Some(id) => (id, trace.traceparent(id)),
            None => trace.child(),
        };
        #[cfg(not(feature = "otel"))]
        let (span, traceparent) = trace.child();
        if let Some(part) = part {
            part.record("span_id", hex(&span));
        }
        request.headers.insert(TRACEPARENT, traceparent);
        match &trace.state {
            Some(state) => request.headers.insert(TRACESTATE, state.clone()),
            None => request.headers.remove(TRACESTATE),
        };
        self.inner.call(request)
    }
}
