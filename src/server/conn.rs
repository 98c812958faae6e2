//! Client connections: how long one may stay without a request in progress, and which one makes room when
//! the gateway is full.
//!
//! A connection that has not yet sent a complete request head (nothing at all, part of a head, or only the
//! HTTP/2 preface) is closed after `limits.header_read_timeout`; one that has served requests and sits idle,
//! after `limits.idle_timeout`. When all `limits.max_connections` are taken, the connection idle the longest
//! is closed to make room, so silent sockets can never lock other clients out.
//!
//! A connection is idle when no request is in progress and no write is blocked: a reply whose body is done
//! may still wait in the connection's write buffer for a slow client, and closing the connection then would
//! cut the reply short.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::io::WriteWatch;
use super::live::Served;
use crate::response::{BoxError, Chunk, ReplyBody};

/// Every open client connection.
#[derive(Debug, Default)]
pub struct Registry {
    connections: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Set while a new client waits for a connection slot: the next connection to go idle closes at once.
    pressure: AtomicBool,
}

impl Registry {
    pub fn open(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
            writing: AtomicBool::new(false),
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

    /// The house is full: closes the connection idle the longest, if any, and has the next one to go idle
    /// close too, until `relieved`.
    pub fn make_room(&self) {
        self.pressure.store(true, Ordering::Relaxed);
        let oldest = self
            .lock()
            .values()
            .filter_map(|conn| Some((conn.idle_since()?, conn.clone())))
            .min_by_key(|(since, _)| *since);
        if let Some((_, conn)) = oldest {
            conn.evict.notify_one();
        }
    }

    pub fn relieved(&self) {
        self.pressure.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's state.
#[derive(Debug)]
pub struct Conn {
    /// Requests in progress, from the head read until the response body is done or dropped.
    active: AtomicUsize,
    /// Requests begun so far.
    served: AtomicU64,
    /// When the connection last went idle (opened, its last request ended, or its last blocked write went
    /// out); `None` while it has a request in progress.
    idle_since: Mutex<Option<Instant>>,
    /// A write is blocked: what was written has not all gone out to the client yet.
    writing: AtomicBool,
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
    pub fn begin(self: &Arc<Self>) -> Active {
        self.served.fetch_add(1, Ordering::Relaxed);
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.changed.notify_one();
        }
        Active(self.clone())
    }
}

impl WriteWatch for Conn {
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
pub struct Active(Arc<Conn>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.0.changed.notify_one();
        }
    }
}

/// A connection's entry in the registry, removed when dropped.
#[derive(Debug)]
pub struct Registered {
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
pub struct Idle {
    /// Before the first request head is complete.
    pub first_request: Duration,
    /// Between requests.
    pub between_requests: Duration,
}

impl Registered {
    /// Resolves when the connection should be closed for idling, or to make room for another client.
    pub async fn expired(&self, idle: Idle) {
        let conn = &self.conn;
        loop {
            let changed = conn.changed.notified();
            let evicted = conn.evict.notified();
            let Some(since) = conn.idle_since() else {
                tokio::select! {
                    () = changed => continue,
                    () = evicted => {
                        // Only idle connections make room; this one got busy in between.
                        continue;
                    }
                }
            };
            // Under pressure, a connection that goes idle after a request closes at once. One that has served
            // none has not gone idle: it is new, its request head may be on its way, and closing it would only
            // trade one new client for another.
            if conn.served.load(Ordering::Relaxed) > 0
                && self.registry.pressure.load(Ordering::Relaxed)
            {
                return;
            }
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
                () = evicted => {
                    if conn.idle_since().is_some() {
                        return;
                    }
                }
            }
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done or dropped, and keeps the
/// gateway that serves it (a reload swaps in another one for new requests only).
pub struct Tracked {
    inner: ReplyBody,
    _active: Active,
    _served: Arc<Served>,
}

impl Tracked {
    pub fn new(inner: ReplyBody, active: Active, served: Arc<Served>) -> Tracked {
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
