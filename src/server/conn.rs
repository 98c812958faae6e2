//! Client connections: how long one may stay without a request in progress, and which one makes room when
//! the gateway is full.
//!
//! A connection that has not yet sent a complete request head (nothing at all, part of a head, or only the
//! HTTP/2 preface) is closed after `limits.header_read_timeout`; one that has served requests and sits idle,
//! after `limits.idle_timeout`.
//!
//! When all `limits.max_connections` are taken, the quiet connection idle the longest is closed to make room,
//! so silent sockets can never lock other clients out. Quiet means: no request in progress, no write blocked
//! (a reply whose body is done may still wait in the write buffer for a slow client), and not a byte of a
//! request read since it opened or since its last request ended and a read found nothing more. The choice is
//! made against the reads themselves ([`Watch`]): once a connection is chosen it reads no more, so the gateway
//! never closes one to make room after reading a byte of a request, and a client whose connection closes
//! before any byte of an answer knows that nothing it sent ran. (A pipelining client that sent part of its
//! next head with the previous request, and the rest later, is the one case a read cannot see.) With no quiet
//! connection, the new one is answered 503 ([`refuse`]) instead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER};
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::io::Watch;
use super::live::Served;
use crate::response::{BoxError, Chunk, ReplyBody, json_error};

/// Every open client connection.
#[derive(Debug, Default)]
pub(super) struct Registry {
    connections: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

/// What a connection has read of its next request: [`Conn::next`].
const QUIET: u8 = 0;
/// A read is being tried on a quiet connection: it cannot be chosen until the read says what it brought.
const READING: u8 = 1;
/// Bytes of a request were read: a request is in progress, or its head is on its way.
const HEARD: u8 = 2;
/// Its last request ended; quiet once a read finds nothing more (a pipelined head may already be buffered).
const ENDED: u8 = 3;
/// Chosen to make room: reads end the stream, and the connection closes.
const EVICTED: u8 = 4;

impl Registry {
    pub(super) fn open(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
            writing: AtomicBool::new(false),
            next: AtomicU8::new(QUIET),
            changed: Notify::new(),
            evict: Notify::new(),
        });
        self.lock().insert(id, conn.clone());
        Registered {
            registry: self.clone(),
            id,
            conn,
        }
    }

    /// The house is full: closes the quiet connection idle the longest. `false` when none is quiet.
    pub(super) fn make_room(&self) -> bool {
        let mut quiet: Vec<(Instant, Arc<Conn>)> = self
            .lock()
            .values()
            .filter(|conn| conn.next.load(Ordering::Acquire) == QUIET)
            .filter_map(|conn| Some((conn.idle_since()?, conn.clone())))
            .collect();
        quiet.sort_unstable_by_key(|(since, _)| *since);
        // One that began a read since it was looked at is passed over for the next.
        let chosen = quiet.into_iter().find(|(_, conn)| {
            conn.next
                .compare_exchange(QUIET, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        match chosen {
            Some((_, conn)) => {
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's state.
#[derive(Debug)]
pub(super) struct Conn {
    /// Requests in progress, from the head read until the response body is done or dropped.
    active: AtomicUsize,
    /// Requests begun so far.
    served: AtomicU64,
    /// When the connection last went idle (opened, its last request ended, or its last blocked write went
    /// out); `None` while it has a request in progress.
    idle_since: Mutex<Option<Instant>>,
    /// A write is blocked: what was written has not all gone out to the client yet.
    writing: AtomicBool,
    /// What it has read of its next request (`QUIET`, `READING`, `HEARD`, `ENDED`, `EVICTED`): only a quiet
    /// connection may be closed to make room.
    next: AtomicU8,
    changed: Notify,
    evict: Notify,
}

impl Conn {
    /// Since when the connection has been idle; `None` while a request is in progress or a write is blocked.
    fn idle_since(&self) -> Option<Instant> {
        if self.writing.load(Ordering::Acquire) {
            return None;
        }
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a request begun; the guard ends it when dropped.
    pub(super) fn begin(self: &Arc<Self>) -> Active {
        self.served.fetch_add(1, Ordering::Relaxed);
        // Heard until it ends, although its head may have come with the one before (pipelined) and been read
        // then: the buffer it came from may hold yet another.
        let _ = self
            .next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state != EVICTED).then_some(HEARD)
            });
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            // Not woken: its idle timer, when it fires, finds the connection busy (or idle since later) and waits
            // again, and the request's end wakes it. A wake-up here would poll the whole connection once more
            // for nothing, on every request.
            *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Active(self.clone())
    }
}

impl Watch for Conn {
    fn before_read(&self) -> bool {
        match self
            .next
            .compare_exchange(QUIET, READING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state != EVICTED,
        }
    }

    fn after_read(&self, bytes: bool, pending: bool) {
        let state = self.next.load(Ordering::Acquire);
        if bytes {
            self.next.store(HEARD, Ordering::Release);
        } else if state == READING || (state == ENDED && pending) {
            self.next.store(QUIET, Ordering::Release);
        }
    }

    fn blocked(&self, blocked: bool) {
        if self.writing.swap(blocked, Ordering::AcqRel) && !blocked {
            // All out: without a request in progress, the connection is idle from now.
            if let Some(since) = self
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                *since = Instant::now();
            }
            self.changed.notify_one();
        }
    }
}

/// A request in progress on its connection.
#[derive(Debug)]
pub(super) struct Active(Arc<Conn>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Not quiet yet: what was read with this request may hold the next one's head.
            let _ = self
                .0
                .next
                .compare_exchange(HEARD, ENDED, Ordering::AcqRel, Ordering::Acquire);
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.0.changed.notify_one();
        }
    }
}

/// A connection's entry in the registry, removed when dropped.
#[derive(Debug)]
pub(super) struct Registered {
    registry: Arc<Registry>,
    id: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// How long connections may stay without a request in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Idle {
    /// Before the first request head is complete.
    pub first_request: Duration,
    /// Between requests.
    pub between_requests: Duration,
}

impl Registered {
    /// Resolves when the connection should be closed for idling, or to make room for another client.
    pub(super) async fn expired(&self, idle: Idle) {
        let conn = &self.conn;
        loop {
            let changed = conn.changed.notified();
            let evicted = conn.evict.notified();
            if conn.next.load(Ordering::Acquire) == EVICTED {
                return;
            }
            let Some(since) = conn.idle_since() else {
                tokio::select! {
                    () = changed => continue,
                    () = evicted => continue,
                }
            };
            let limit = if conn.served.load(Ordering::Relaxed) == 0 {
                idle.first_request
            } else {
                idle.between_requests
            };
            tokio::select! {
                () = tokio::time::sleep_until(since + limit) => {
                    if conn.idle_since() == Some(since) {
                        return;
                    }
                }
                () = changed => {}
                () = evicted => {}
            }
        }
    }
}

/// Answers a connection that found every slot taken and none quiet: 503 with `Retry-After` and a JSON error to
/// its first request (HTTP/1.1), rather than a reset the client could not tell from a lost request. Then it
/// closes so that the client can read that answer: its write side first, then what the client still sends is
/// read and dropped (closing with unread bytes would reset the connection, and the answer with it). All of it
/// by `until`.
pub(super) async fn refuse<S>(io: S, max_connections: usize, until: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |_request| async move {
        let message = format!(
            "the gateway is serving its limit of {max_connections} connections (limits.max_connections), \
             each of them busy; retry shortly"
        );
        let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, &message);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        Ok::<_, std::convert::Infallible>(response)
    });
    let refused = async {
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service)
            .without_shutdown();
        let Ok(parts) = connection.await else {
            return;
        };
        let mut io = parts.io.into_inner();
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout_at(until, refused).await;
}

/// A response body that keeps its request counted as in progress until it is done or dropped, and keeps the
/// gateway that serves it (a reload swaps in another one for new requests only).
pub(super) struct Tracked {
    inner: ReplyBody,
    _active: Active,
    _served: Arc<Served>,
}

impl Tracked {
    pub(super) fn new(inner: ReplyBody, active: Active, served: Arc<Served>) -> Tracked {
        Tracked {
            inner,
            _active: active,
            _served: served,
        }
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracked")
    }
}

impl Body for Tracked {
    type Data = Chunk;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
