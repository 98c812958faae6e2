//! The HTTP server: accepts connections, bounds them, serves the gateway's endpoints, shuts down gracefully.
//!
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and stop it at will;
//! `serve` does the same with a [`Live`] handle, through which a reload swaps the gateway while it runs.
//! With `[tls]` set the listener speaks HTTPS (ALPN `h2` and `http/1.1`); the TLS handshake happens in the
//! connection's own task and counts against `limits.header_read_timeout`, like a silent plain socket.
//! [`admin`] is the operators' listener (`[admin]`): metrics, stats, the dashboard and reload, apart from it.

mod accept;
pub mod admin;
mod conn;
pub(crate) mod cors;
mod endpoints;
pub(crate) mod io;
mod live;
mod sniff;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_rustls::TlsAcceptor;

use crate::batch::respond::ClientSocket;
use crate::config::Limits;
use crate::gateway::Gateway;
pub use crate::runtime::Workers;
use accept::Acceptor;
use conn::{Conn, Idle, Registry, Tracked};
use io::WriteDeadline;
pub use live::{Live, ReloadError, Replaced, Served};
use tokio::net::TcpStream;

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight batches finish for up to
/// `limits.shutdown_grace`. For a gateway that is never reloaded (tests, examples); see [`serve`].
///
/// # Panics
/// When `[tls]` is set and its certificate or key cannot be read or used: build the [`Live`] handle with
/// [`Live::new`] and call [`serve`] to handle that error.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let live = Live::new(gateway).unwrap_or_else(|e| panic!("server::run: {e}"));
    serve(listener, live, shutdown).await;
}

/// The connection settings of one gateway's config, rebuilt when a reload brings another gateway.
struct ConnSettings {
    gateway: Arc<Gateway>,
    builder: Arc<Builders>,
    idle: Idle,
    write_timeout: std::time::Duration,
}

impl ConnSettings {
    fn new(gateway: Arc<Gateway>) -> ConnSettings {
        let limits = &gateway.config.limits;
        ConnSettings {
            builder: Arc::new(Builders::new(builder(limits))),
            idle: Idle {
                first_request: limits.header_read_timeout,
                between_requests: limits.idle_timeout,
            },
            write_timeout: limits.write_timeout,
            gateway,
        }
    }
}

/// The connection builders of one config: `any` tells HTTP/1 from HTTP/2 itself (TLS connections, whose
/// first bytes are the handshake's), `http1` serves a cleartext connection that [`sniff`] found is HTTP/1.
struct Builders {
    any: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(any: auto::Builder<TokioExecutor>) -> Builders {
        Builders {
            http1: any.clone().http1_only(),
            any,
        }
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
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
    builder
}

/// Serves the gateway `live` holds on `listener` until `shutdown` resolves, then lets in-flight batches
/// finish for up to `limits.shutdown_grace`. Each request is served by the gateway current when it arrives;
/// each connection gets the connection limits current when it is accepted.
pub async fn serve(listener: TcpListener, live: Arc<Live>, shutdown: impl Future<Output = ()>) {
    accept(listener, live, shutdown, None).await;
}

/// [`serve`], with each client connection served from accept to close on one of `workers` (the one with the
/// fewest connections), its upstream connections made and kept there too; the accept loop, the shutdown
/// and the jobs stay on the runtime this runs on. How the binary serves (`--threads`); see
/// [`Workers`].
pub async fn serve_on(
    workers: &Workers,
    listener: TcpListener,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()>,
) {
    accept(listener, live, shutdown, Some(workers)).await;
}

/// The accept loop of [`serve`] and [`serve_on`]: connections are served on this runtime without `workers`.
async fn accept(
    listener: TcpListener,
    live: Arc<Live>,
    shutdown: impl Future<Output = ()>,
    workers: Option<&Workers>,
) {
    if let Err(e) = live.start_jobs().await {
        tracing::error!("not serving: {e}");
        return;
    }
    let max_connections = live.gateway().config.limits.max_connections;
    let mut acceptor = Acceptor::new(listener, shutdown, max_connections, "");
    let registry = Arc::new(Registry::default());
    let draining = Arc::new(AtomicBool::new(false));
    let graceful = GracefulShutdown::new();
    // Tells connections still in their TLS handshake (not yet watched by `graceful`) to give up.
    let (stopping, stop) = watch::channel(false);
    let mut settings = ConnSettings::new(live.gateway());
    while let Some((stream, peer)) = acceptor.next().await {
        // A slot is sought once a client is there, not before: making room ahead of time would close the
        // connection just accepted (idle only because its request head is still on its way) with no one
        // waiting for its slot.
        let slot = match acceptor.try_slot() {
            Some(slot) => slot,
            // Full: close the quiet connection idle the longest (it closes at once, freeing its slot) rather
            // than leave the new client waiting behind sockets that send nothing.
            None if registry.make_room() => match acceptor.slot().await {
                Some(slot) => slot,
                None => break,
            },
            // None is quiet: the new client hears so rather than wait behind busy connections.
            None => {
                if let Some(permit) = acceptor.refusal() {
                    let deadline = settings.idle.first_request;
                    refuse(stream, &live, permit, max_connections, deadline);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let socket = ClientSocket::Tcp(stream.as_raw_fd());
        let served = live.current();
        if !Arc::ptr_eq(&settings.gateway, &served.gateway) {
            settings = ConnSettings::new(served.gateway.clone());
        }
        let tls = served.tls.clone();
        drop(served);
        let registered = registry.open();
        let handler = Handler {
            live: live.clone(),
            draining: draining.clone(),
            conn: registered.conn.clone(),
            peer,
            socket,
        };
        let connection = Connection {
            handler,
            builder: settings.builder.clone(),
            watcher: graceful.watcher(),
            stop: stop.clone(),
            idle: settings.idle,
            write_timeout: settings.write_timeout,
            tls,
            registered,
            slot,
        };
        match workers {
            None => {
                tokio::spawn(connection.serve(stream));
            }
            Some(workers) => workers.spawn(stream, move |stream| connection.serve(stream)),
        }
    }
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stopping.send(true);
    drop(acceptor);
    let limits = live.gateway().config.limits.clone();
    tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections; finishing in-flight batches");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// Answers `stream` 503 in a task of its own, within `deadline` ([`conn::refuse`]), holding `permit` (one of
/// the refusals the acceptor allows at once) meanwhile.
fn refuse(
    stream: TcpStream,
    live: &Live,
    permit: OwnedSemaphorePermit,
    max_connections: usize,
    deadline: std::time::Duration,
) {
    let tls = live.current().tls.clone();
    let until = tokio::time::Instant::now() + deadline;
    tokio::spawn(async move {
        let _permit = permit;
        match tls {
            None => conn::refuse(stream, max_connections, until).await,
            Some(config) => {
                let accepted =
                    tokio::time::timeout_at(until, TlsAcceptor::from(config).accept(stream)).await;
                if let Ok(Ok(stream)) = accepted {
                    conn::refuse(stream, max_connections, until).await;
                }
            }
        }
    });
}

/// One accepted connection and what it is served with, until it is handed its socket ([`Connection::serve`]).
struct Connection {
    handler: Handler,
    builder: Arc<Builders>,
    /// Keeps the shutdown waiting for this connection from accept on, before it is served.
    watcher: hyper_util::server::graceful::Watcher,
    /// Tells it to give up its TLS handshake, or the wait for its first bytes.
    stop: watch::Receiver<bool>,
    idle: Idle,
    write_timeout: std::time::Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    registered: conn::Registered,
    /// Its place in `limits.max_connections`.
    slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves the connection on `stream` until it ends, idles out or is chosen to make room.
    async fn serve(self, stream: TcpStream) {
        let Connection {
            handler,
            builder,
            watcher,
            mut stop,
            idle,
            write_timeout,
            tls,
            registered,
            slot,
        } = self;
        let peer = handler.peer;
        let io = WriteDeadline::new(stream, write_timeout).watched(registered.conn.clone());
        let connection = async move {
            match tls {
                None => {
                    // Its first bytes tell which HTTP it speaks (sniff.rs says why it is not left to
                    // `auto`); a silent one is closed at shutdown, as `auto` would close it.
                    let (speaks, io) = tokio::select! {
                        sniffed = sniff::sniff(io) => sniffed?,
                        _ = stop.wait_for(|stopping| *stopping) => return Ok(()),
                    };
                    let service = handler.service(false);
                    let builder = match speaks {
                        sniff::Speaks::Http1 => &builder.http1,
                        sniff::Speaks::Http2 => &builder.any,
                    };
                    let connection = builder.serve_connection(TokioIo::new(io), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(config) => {
                    // Inside the connection's task, under its first-request deadline (`expired` below): a
                    // slow or silent handshake holds no one else up.
                    let stream = tokio::select! {
                        stream = TlsAcceptor::from(config).accept(io) => stream
                            .map_err(|e| format!("TLS handshake failed: {e}"))?,
                        _ = stop.wait_for(|stopping| *stopping) => return Ok(()),
                    };
                    let service = handler.service(true);
                    let connection = builder.any.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            }
        };
        tokio::select! {
            ended = connection => if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            },
            () = registered.expired(idle) => tracing::debug!(%peer, "idle connection closed"),
        }
        drop(registered);
        drop(slot);
    }
}

/// What a connection's requests are served with.
struct Handler {
    live: Arc<Live>,
    draining: Arc<AtomicBool>,
    conn: Arc<Conn>,
    peer: SocketAddr,
    socket: ClientSocket,
}

impl Handler {
    /// The connection's service; `tls` says whether it came over HTTPS. Each request is served by the gateway
    /// current when it arrives, and keeps it until its reply is done.
    fn service(
        self,
        tls: bool,
    ) -> impl hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<Tracked>,
        Error = Infallible,
        Future = impl Future<Output = Result<hyper::Response<Tracked>, Infallible>> + Send,
    > + Clone
    + Send {
        let Handler {
            live,
            draining,
            conn,
            peer,
            socket,
        } = self;
        service_fn(move |request| {
            let active = conn.begin();
            let served = live.current();
            let draining = draining.clone();
            let jobs = live.jobs().cloned();
            async move {
                let jobs = jobs.as_ref();
                let response =
                    endpoints::dispatch(&served, jobs, request, peer, tls, socket, &draining).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active, served)))
            }
        })
    }
}
