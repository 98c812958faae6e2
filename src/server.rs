//! The HTTP server: accepts connections, routes the gateway's own endpoints, shuts down gracefully.
//!
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and stop it at will.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::BatchError;
use crate::gateway::{Gateway, ReplyBody, error_response, full};
use crate::io::WriteDeadline;

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight batches finish for up to
/// `limits.shutdown_grace`.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let limits = gateway.config.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let draining = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        // Wait for room before accepting, so excess connections queue in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let draining = draining.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            let draining = draining.clone();
            async move { Ok::<_, Infallible>(dispatch(&gateway, request, peer, &draining).await) }
        });
        let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }
    draining.store(true, Ordering::Relaxed);
    drop(listener);
    tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections; finishing in-flight batches");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

async fn dispatch(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    peer: SocketAddr,
    draining: &AtomicBool,
) -> Response<ReplyBody> {
    let path = request.uri().path();
    if path == gateway.config.batch_path {
        if request.method() != Method::POST {
            gateway
                .metrics
                .batch_refused(StatusCode::METHOD_NOT_ALLOWED);
            return refuse(BatchError::MethodNotAllowed(request.method().clone()), peer);
        }
        let started = std::time::Instant::now();
        return match gateway.batch(request, peer.ip()).await {
            Ok(response) => {
                gateway.metrics.batch_served();
                tracing::debug!(%peer, elapsed = ?started.elapsed(), "batch streaming");
                response
            }
            Err(e) => {
                gateway.metrics.batch_refused(e.status());
                refuse(e, peer)
            }
        };
    }
    if path == "/metrics" && request.method() == Method::GET {
        let gauges = [
            (
                "batchgate_batches_in_flight",
                "Batches being served.",
                gateway.batches_in_flight(),
            ),
            (
                "batchgate_sub_requests_in_flight",
                "Sub-requests talking to upstreams.",
                gateway.sub_requests_in_flight(),
            ),
        ];
        let mut response = Response::new(full(gateway.metrics.render(&gauges)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
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
    refuse(
        BatchError::NotFound(path.to_owned(), gateway.config.batch_path.clone()),
        peer,
    )
}

fn refuse(error: BatchError, peer: SocketAddr) -> Response<ReplyBody> {
    match error.fault() {
        crate::error::Fault::Client => {
            tracing::info!(%peer, status = error.status().as_u16(), "batch refused: {error}")
        }
        _ => tracing::warn!(%peer, status = error.status().as_u16(), "batch refused: {error}"),
    }
    error_response(&error)
}
