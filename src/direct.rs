//! Direct mode: a plain request (anything but a `POST` to the batch path) under a route with
//! `direct = true`, proxied through that route's stack and answered as an ordinary HTTP response, so that
//! one origin serves both single calls and batches.
//!
//! It is a part without the batch: its target is routed and normalised as a part's; its headers are its own
//! (nothing to inherit), with the gateway's forwarding headers; its body is read within a part's limits; it
//! takes the route's and the gateway's permits as the scheduler takes them for a part; a failure is the part
//! error's status and JSON body (`"part":0`). The answer goes out as the pieces the stack collected it in:
//! streaming it through as it arrives is a change of the stack's answer type, not of this module.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::batch::read::next_data;
use crate::config::Limits;
use crate::error::{BatchError, Fault, PartError};
use crate::gateway::Gateway;
use crate::observe::trace::TraceContext;
use crate::observe::window::Sample;
use crate::response::{Chunk, ReplyBody, error_response};
use crate::route::{Destination, RouteError};
use crate::stack::{BatchScope, PartRequest, ResponseBudget, UpstreamResponse};
use batchgate_wire::{Framing, FramingError, RequestError};

/// Paths that stay the gateway's own whatever the routes say (the batch path is matched before this).
const RESERVED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Where a plain request to `uri` goes when a `direct` route takes it; `None` when none does (the caller
/// answers 404, as without direct mode). A target no route could take (it escapes its prefix, say) is
/// refused as a part's would be, once any route is direct.
pub(crate) fn route(gateway: &Gateway, uri: &Uri) -> Option<Result<Destination, PartError>> {
    if !gateway.router.has_direct() || RESERVED.contains(&uri.path()) {
        return None;
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match gateway.router.route(target, None) {
        Ok(destination) if destination.route.direct => Some(Ok(destination)),
        Ok(_) | Err(RouteError::NoRoute(_)) => None,
        Err(source) => Some(Err(PartError::Route { index: 0, source })),
    }
}

/// Proxies one plain request to `destination` and answers it. `tls` says whether the client's connection is
/// HTTPS.
pub(crate) async fn serve<B>(
    gateway: &Gateway,
    destination: Result<Destination, PartError>,
    request: Request<B>,
    peer: IpAddr,
    tls: bool,
) -> Response<ReplyBody>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let arrival = Instant::now();
    let (head, body) = request.into_parts();
    let destination = match destination {
        Ok(destination) => destination,
        Err(error) => return failed(gateway, "", error, arrival),
    };
    let route = destination.route.name.clone();
    gateway.metrics.direct_request(&route);
    // CONNECT and TRACE are refused as in a part: a tunnel or an echo of the request's credentials.
    if matches!(head.method, Method::CONNECT | Method::TRACE) {
        let source = RequestError::MethodNotAllowed(head.method);
        return failed(
            gateway,
            &route,
            PartError::Request { index: 0, source },
            arrival,
        );
    }
    let limits = &gateway.config.limits;
    let body = match read_body(limits, &head.headers, body, arrival).await {
        Ok(body) => body,
        Err(error) => {
            tracing::info!(%peer, status = error.status().as_u16(), "direct request refused: {error}");
            return error_response(&error);
        }
    };
    let scope = Arc::new(BatchScope {
        headers: gateway.headers.direct(&head.headers, peer, tls),
        budget: ResponseBudget::new(limits.max_batch_response_bytes),
        client: gateway.client_key(&head.headers, peer),
        trace: TraceContext::from_headers(&head.headers),
        job: None,
    });
    let request = PartRequest::new(0, head.method, destination.path, head.headers, body, scope);
    let service = gateway.service(&destination.route);
    let permits = gateway.permits(&destination.route);
    let global = gateway.global_inflight();
    let internal = |e: tokio::sync::AcquireError| PartError::Internal {
        index: 0,
        reason: e.to_string(),
    };
    let result = async {
        let _held = permits.acquire(&global).await.map_err(internal)?;
        service.oneshot(request).await
    }
    .await;
    match result {
        Ok(response) => answered(gateway, &route, response, arrival),
        Err(error) => failed(gateway, &route, error, arrival),
    }
}

/// The request body, whole: within `limits.max_part_bytes`, `body_read_timeout` and `upload_timeout`, as
/// a part's.
async fn read_body<B>(
    limits: &Limits,
    headers: &http::HeaderMap,
    mut body: B,
    arrival: Instant,
) -> Result<Bytes, BatchError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        BatchError::Framing(FramingError::PartTooLarge {
            part: 0,
            limit: limits.max_part_bytes,
        })
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_part_bytes) {
        return Err(too_large());
    }
    let upload_deadline = arrival + limits.upload_timeout;
    let mut out = BytesMut::new();
    while let Some(data) = next_data(&mut body, limits, upload_deadline).await? {
        if (out.len() + data.len()) as u64 > limits.max_part_bytes {
            return Err(too_large());
        }
        out.extend_from_slice(&data);
    }
    Ok(out.freeze())
}

/// The upstream's answer as the response: its status, headers (hop-by-hop ones are gone already) and body.
fn answered(
    gateway: &Gateway,
    route: &str,
    upstream: UpstreamResponse,
    arrival: Instant,
) -> Response<ReplyBody> {
    let elapsed = arrival.elapsed();
    record(gateway, route, upstream.status.is_server_error(), elapsed);
    gateway
        .metrics
        .part_answered(route, upstream.status, elapsed);
    let mut headers = upstream.headers;
    // An exact length is the body's, which hyper states; `AsIs` (HEAD, 304, 204) keeps the upstream's.
    if upstream.framing == Framing::Exact {
        headers.remove(CONTENT_LENGTH);
    }
    let body = Chunk::many(upstream.body);
    let mut response = Response::new(BodyExt::boxed_unsync(
        http_body_util::Full::new(body).map_err(|never| match never {}),
    ));
    *response.status_mut() = upstream.status;
    *response.headers_mut() = headers;
    response
}

/// A part error as the response: its status, `Retry-After` when known, and its JSON body.
fn failed(
    gateway: &Gateway,
    route: &str,
    error: PartError,
    arrival: Instant,
) -> Response<ReplyBody> {
    let elapsed = arrival.elapsed();
    record(gateway, route, error.fault() != Fault::Client, elapsed);
    gateway.metrics.part_failed(route, &error, elapsed);
    match error.fault() {
        Fault::Client => tracing::debug!(kind = error.kind(), route, "direct: {error}"),
        _ => tracing::warn!(kind = error.kind(), route, "direct: {error}"),
    }
    let mut response = Response::new(crate::response::full(error.body()));
    *response.status_mut() = error.status();
    *response.headers_mut() = error.headers();
    response
}

/// The route's window for `/admin/stats` counts a direct request as a part.
fn record(gateway: &Gateway, route: &str, error: bool, elapsed: std::time::Duration) {
    gateway.observer.record(
        route,
        Sample {
            elapsed_us: elapsed.as_micros() as u64,
            queued_us: 0,
            error,
            saturated: gateway.global_inflight().available_permits() == 0,
        },
    );
}
