//! The HTTP cache behind routes with `cache = true`: what one stored answer is ([`Entry`]) and where entries
//! are kept ([`Store`], `store.rs`). RFC 9111's rules, the cache key, `Cache-Status` and coalescing are the
//! stack's cache layer (`crate::stack::cache`); this module only keeps entries.
//!
//! Backends are variants of the one [`Store`]: the memory store (`store.rs`), bounded by `cache.max_bytes`,
//! and Redis (`redis.rs`, with the entry's byte encoding), shared by every gateway that names it.

mod redis;
mod store;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_cache_semantics::CachePolicy;

use crate::config::CacheConfig;

pub(crate) use store::{Store, StoreError, StoreUsage};

/// One stored answer: what RFC 9111 decides with, and what a part served from it is answered with.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The request and response as the rules see them (shared-cache mode): freshness, `Vary`, revalidation.
    pub policy: CachePolicy,
    pub status: StatusCode,
    /// The upstream's headers, without hop-by-hop ones.
    pub headers: HeaderMap,
    /// The whole body, in one piece.
    pub body: Bytes,
}

impl Entry {
    /// What the entry costs a store bounded in bytes: its body and the names and values of its headers, each
    /// header with a little overhead (the policy keeps a copy of them).
    pub(crate) fn weight(&self) -> u64 {
        /// A header's bookkeeping besides its bytes, in the map and in the policy's copy.
        const PER_HEADER: u64 = 64;
        let headers: u64 = self
            .headers
            .iter()
            .map(|(name, value)| 2 * (name.as_str().len() + value.len()) as u64 + PER_HEADER)
            .sum();
        self.body.len() as u64 + headers
    }
}

/// The cache as the routes with `cache = true` share it: its store, its bound on entries, and its clock. One
/// per gateway, kept by a reload whose `[cache]` is unchanged.
#[derive(Debug, Clone)]
pub(crate) struct CacheHandle {
    pub store: Arc<Store>,
    /// Larger answers pass through uncached (`cache.max_entry_bytes`).
    pub max_entry_bytes: u64,
    pub clock: Clock,
    /// The section it was opened from, to tell whether a reload may keep it.
    pub config: CacheConfig,
}

impl CacheHandle {
    pub(crate) fn open(config: &CacheConfig) -> CacheHandle {
        CacheHandle {
            store: Arc::new(Store::open(config)),
            max_entry_bytes: config.max_entry_bytes,
            clock: Clock::new(),
            config: config.clone(),
        }
    }
}

/// Wall-clock time that moves with tokio's clock: the real time when it was made, plus tokio's elapsed time
/// since (so that tests on a paused clock can age entries).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: SystemTime,
    started: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            base: SystemTime::now(),
            started: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.base + self.started.elapsed()
    }
}
