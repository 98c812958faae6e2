//! The gateway's endpoints: the batch endpoint, `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::batch;
use crate::error::{BatchError, Fault};
use crate::gateway::Gateway;
use crate::response::{ReplyBody, error_response, full};

pub async fn dispatch(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    peer: SocketAddr,
    draining: &AtomicBool,
) -> Response<ReplyBody> {
    let path = request.uri().path();
    if path == gateway.config.batch_path {
        if request.method() != Method::POST {
            return refuse(
                gateway,
                BatchError::MethodNotAllowed(request.method().clone()),
                peer,
            );
        }
        let started = std::time::Instant::now();
        return match batch::serve(gateway, request, peer.ip(), false).await {
            Ok(response) => {
                gateway.metrics.batch_served();
                tracing::debug!(%peer, elapsed = ?started.elapsed(), "batch streaming");
                response
            }
            Err(e) => refuse(gateway, e, peer),
        };
    }
    if path == "/metrics" && request.method() == Method::GET {
        let mut response = Response::new(full(gateway.metrics.render(&gateway.gauges())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return response;
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
    let error = BatchError::NotFound(path.to_owned(), gateway.config.batch_path.clone());
    refuse(gateway, error, peer)
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
