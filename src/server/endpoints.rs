//! The gateway's endpoints: the batch endpoint (with CORS when `[cors]` is set), `/healthz` (liveness),
//! `/readyz` (readiness) and `/metrics` (also served by the admin listener, [`super::admin`]; with `[admin]`,
//! only there unless `admin.public_metrics`); with `--demo`, the inbox page at `/` and `/batchgate.js`; then
//! plain requests under a `direct` route ([`crate::direct`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::cors::Cors;
use super::live::Served;
use crate::batch::respond::ClientSocket;
use crate::error::{BatchError, Fault};
use crate::gateway::Gateway;
use crate::jobs::{self, Jobs};
use crate::response::{ReplyBody, error_response, full};
use crate::{batch, direct};

/// Answers one request; `tls` says whether it came over HTTPS, `socket` is the client's TCP socket.
pub(super) async fn dispatch(
    served: &Served,
    jobs: Option<&Arc<Jobs>>,
    request: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    socket: ClientSocket,
    draining: &AtomicBool,
) -> Response<ReplyBody> {
    let gateway = &served.gateway;
    let path = request.uri().path();
    if let Some(jobs) = jobs {
        let respond_async = path == gateway.config.batch_path
            && request.method() == Method::POST
            && jobs::api::prefers_async(request.headers());
        if respond_async {
            // A browser may submit a job this way: the batch endpoint's CORS applies.
            let origin = request.headers().get(http::header::ORIGIN).cloned();
            // Boxed, as below: the jobs' future is the largest of all the endpoints' (about 6 KiB), and hyper
            // keeps room for this function's future in every connection, so inlined it would make every
            // connection pay for it.
            let mut response = Box::pin(jobs::api::serve(
                jobs,
                gateway,
                request,
                peer.ip(),
                tls,
                true,
            ))
            .await;
            if let Some(cors) = &served.cors {
                cors.decorate(origin.as_ref(), response.headers_mut());
            }
            return response;
        }
        if jobs::api::is_jobs_path(path) {
            return Box::pin(jobs::api::serve(
                jobs,
                gateway,
                request,
                peer.ip(),
                tls,
                false,
            ))
            .await;
        }
    }
    if path == gateway.config.batch_path {
        let Some(cors) = &served.cors else {
            return batch_endpoint(gateway, request, peer, tls, socket).await;
        };
        if Cors::is_preflight(&request) {
            return cors.preflight(request.headers());
        }
        let origin = request.headers().get(http::header::ORIGIN).cloned();
        let mut response = batch_endpoint(gateway, request, peer, tls, socket).await;
        cors.decorate(origin.as_ref(), response.headers_mut());
        return response;
    }
    // With `[admin]`, metrics are the operators' (the admin listener's) unless `admin.public_metrics`: they
    // name routes and show traffic. Otherwise a 404, as for any path the gateway does not serve.
    if path == "/metrics" && request.method() == Method::GET && gateway.config.public_metrics() {
        return metrics(gateway);
    }
    if path == "/healthz" && matches!(*request.method(), Method::GET | Method::HEAD) {
        let (status, text) = if draining.load(Ordering::Relaxed) {
            (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"draining\"}")
        } else {
            (StatusCode::OK, "{\"status\":\"ok\"}")
        };
        let mut response = Response::new(full(text));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return response;
    }
    if path == "/readyz" && matches!(*request.method(), Method::GET | Method::HEAD) {
        return readiness(gateway, draining);
    }
    #[cfg(feature = "demo")]
    if let Some(site) = &served.demo_site
        && let Some(page) = site.answer(request.method(), path)
    {
        return page.map(full);
    }
    if let Some(destination) = direct::route(gateway, request.uri()) {
        let origin = request.headers().get(http::header::ORIGIN).cloned();
        let mut response = direct::serve(gateway, destination, request, peer.ip(), tls).await;
        if let Some(cors) = &served.cors {
            cors.decorate(origin.as_ref(), response.headers_mut());
        }
        return response;
    }
    let error = BatchError::NotFound(path.to_owned(), gateway.config.batch_path.clone());
    refuse(gateway, error, peer)
}

/// `GET /metrics`, on the main listener and on the admin one: the OpenMetrics text of the counters and gauges.
pub(super) fn metrics(gateway: &Gateway) -> Response<ReplyBody> {
    let mut response = Response::new(full(gateway.metrics_text()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `POST` to the batch endpoint: the batch's reply, or the error that refused it.
async fn batch_endpoint(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    socket: ClientSocket,
) -> Response<ReplyBody> {
    if request.method() != Method::POST {
        return refuse(
            gateway,
            BatchError::MethodNotAllowed(request.method().clone()),
            peer,
        );
    }
    let started = std::time::Instant::now();
    match batch::serve(gateway, request, peer.ip(), tls, socket).await {
        Ok(response) => {
            gateway.metrics.batch_served();
            tracing::debug!(%peer, elapsed = ?started.elapsed(), "batch streaming");
            response
        }
        Err(e) => refuse(gateway, e, peer),
    }
}

/// `/readyz`: 200 while every route has an upstream that can take parts (not ejected), else 503 naming the
/// routes that have none; 503 too while draining for shutdown.
fn readiness(gateway: &Gateway, draining: &AtomicBool) -> Response<ReplyBody> {
    let (status, body) = if draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "draining" }),
        )
    } else {
        let unready = gateway.unready_routes();
        if unready.is_empty() {
            (StatusCode::OK, serde_json::json!({ "status": "ready" }))
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "status": "unready", "routes": unready }),
            )
        }
    };
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn refuse(gateway: &Gateway, error: BatchError, peer: SocketAddr) -> Response<ReplyBody> {
    gateway.metrics.batch_refused(error.status());
    match error.fault() {
        Fault::Client => {
            tracing::info!(%peer, status = error.status().as_u16(), "batch refused: {error}")
        }
        _ => tracing::warn!(%peer, status = error.status().as_u16(), "batch refused: {error}"),
    }
    error_response(&error)
}
