//! The HTTP server: accepts connections, bounds them, serves the gateway's endpoints, shuts down gracefully.
//!
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and stop it at will.

mod conn;
mod endpoints;
pub mod io;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::gateway::Gateway;
use conn::{Idle, Registry, Tracked};
use io::WriteDeadline;

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight batches finish for up to
/// `limits.shutdown_grace`.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let limits = gateway.config.limits.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::default());
    let draining = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    let idle = Idle {
        first_request: limits.header_read_timeout,
        between_requests: limits.idle_timeout,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper restarts this timer for every head, the ones after the first included: between requests it
        // is an idle timer, and `limits.idle_timeout` must decide. The registry (`Idle`) times the first head
        // and the idle time between requests; hyper's timer is only a backstop that must not cut in first.
        .header_read_timeout(limits.header_read_timeout.max(limits.idle_timeout))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(u32::try_from(limits.http2_max_streams).unwrap_or(u32::MAX));
    tokio::pin!(shutdown);
    loop {
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
        // A slot is sought once a client is there, not before: making room ahead of time would close the
        // connection just accepted (idle only because its request head is still on its way) with no one
        // waiting for its slot.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Full: close the connection idle the longest rather than leave the new client waiting
                // behind sockets that send nothing.
                registry.make_room();
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                    () = &mut shutdown => break,
                };
                registry.relieved();
                slot
            }
        };
        let _ = stream.set_nodelay(true);
        let registered = registry.open();
        let service = {
            let gateway = gateway.clone();
            let draining = draining.clone();
            let conn = registered.conn.clone();
            service_fn(move |request| {
                let active = conn.begin();
                let gateway = gateway.clone();
                let draining = draining.clone();
                async move {
                    let response = endpoints::dispatch(&gateway, request, peer, &draining).await;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active)))
                }
            })
        };
        let io = TokioIo::new(
            WriteDeadline::new(stream, limits.write_timeout).watched(registered.conn.clone()),
        );
        let connection = graceful.watch(builder.serve_connection(io, service).into_owned());
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(%peer, "connection ended: {e}");
                },
                () = registered.expired(idle) => tracing::debug!(%peer, "idle connection closed"),
            }
            drop(registered);
            drop(slot);
        });
    }
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(listener);
    tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections; finishing in-flight batches");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}
