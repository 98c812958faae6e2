//! Where entries are kept: one [`Store`] whatever the backend, so the cache layer never asks which.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::Entry;
use super::redis::{RedisFailure, RedisStore};
use crate::config::{Backend, CacheConfig};

/// Why a store could not answer. The memory store always answers; a backend outside the process adds its
/// failures here, and logs them itself (throttled). The cache layer counts every one and treats it as a miss,
/// never as a failed part.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisFailure),
}

/// The cache's entries, by key, in one of the backends `[cache] backend` names.
#[derive(Debug)]
pub(crate) enum Store {
    /// In this process, bounded by `cache.max_bytes`.
    Memory(MemoryStore),
    /// In Redis, shared by every gateway that names it (`cache.redis_url`).
    Redis(Arc<RedisStore>),
}

impl Store {
    /// The store `config` describes. A Redis that does not answer is a warning logged once running, not a
    /// refusal.
    pub(crate) fn open(config: &CacheConfig) -> Store {
        match &config.backend {
            Backend::Memory => Store::Memory(MemoryStore::new(config.max_bytes)),
            Backend::Redis { url, timeout } => {
                let client = redis::Client::open(url.as_str())
                    .expect("cache.redis_url is checked by CacheConfig::validate");
                Store::Redis(RedisStore::open(client, *timeout, config.max_entry_bytes))
            }
        }
    }

    /// The entry stored under `key`, if there is one and it has not outlived its time to live.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, StoreError> {
        match self {
            Store::Memory(memory) => Ok(memory.cache.get(key).await.map(|stored| stored.entry)),
            Store::Redis(redis) => Ok(redis.get(key).await?),
        }
    }

    /// Stores `entry` under `key` for `ttl` (its freshness plus the time it may be kept stale for
    /// revalidation), replacing what was there.
    pub(crate) async fn put(
        &self,
        key: &str,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(memory) => {
                let stored = Stored { entry, ttl };
                memory.usage.entries.fetch_add(1, Ordering::Relaxed);
                memory
                    .usage
                    .bytes
                    .fetch_add(weight(key, &stored), Ordering::Relaxed);
                memory.cache.insert(key.to_owned(), stored).await;
                Ok(())
            }
            Store::Redis(redis) => Ok(redis.put(key, &entry, ttl).await?),
        }
    }

    /// Drops the entry under `key`, if any.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(memory) => {
                memory.cache.invalidate(key).await;
                Ok(())
            }
            Store::Redis(redis) => Ok(redis.remove(key).await?),
        }
    }

    /// How many entries the store holds and their weight, where the store can tell at no cost.
    pub(crate) fn usage(&self) -> Option<StoreUsage> {
        match self {
            Store::Memory(memory) => Some(StoreUsage {
                entries: memory.usage.entries.load(Ordering::Relaxed),
                bytes: memory.usage.bytes.load(Ordering::Relaxed),
            }),
            // Redis would need a round trip (and counts every program's keys): its own INFO tells.
            Store::Redis(_) => None,
        }
    }

    /// Drops every entry whose key starts with `prefix`; how many there were.
    pub(crate) async fn purge(&self, prefix: &str) -> Result<u64, StoreError> {
        match self {
            Store::Memory(memory) => {
                let keys: Vec<Arc<String>> = memory
                    .cache
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix))
                    .map(|(key, _)| key)
                    .collect();
                let mut purged = 0;
                for key in keys {
                    if memory.cache.remove(key.as_str()).await.is_some() {
                        purged += 1;
                    }
                }
                Ok(purged)
            }
            Store::Redis(redis) => Ok(redis.purge(prefix).await?),
        }
    }
}

/// What a store holds now, for the `/metrics` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreUsage {
    pub entries: u64,
    /// The entries' weight: keys, headers and bodies.
    pub bytes: u64,
}

/// The memory backend: a concurrent map bounded by the entries' weight in bytes, least recently and least
/// frequently used entries going first, each entry dropped when its time to live is over.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    cache: Cache<String, Stored>,
    /// Entries held and their weight: counted up by `put`, down by the store's eviction listener (replaced,
    /// removed, expired or evicted), so the gauges need not wait for the store's housekeeping.
    usage: Arc<Usage>,
}

#[derive(Debug, Default)]
struct Usage {
    entries: AtomicU64,
    bytes: AtomicU64,
}

/// What an entry weighs in the memory store: its key and [`Entry::weight`].
fn weight(key: &str, stored: &Stored) -> u64 {
    key.len() as u64 + stored.entry.weight()
}

/// An entry as the memory store holds it: with its time to live, which the store's expiry reads.
#[derive(Debug, Clone)]
struct Stored {
    entry: Arc<Entry>,
    ttl: Duration,
}

/// Each entry lives for the time to live it was put with.
struct ByTtl;

impl Expiry<String, Stored> for ByTtl {
    fn expire_after_create(&self, _: &String, stored: &Stored, _: Instant) -> Option<Duration> {
        Some(stored.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        stored: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(stored.ttl)
    }
}

impl MemoryStore {
    fn new(max_bytes: u64) -> MemoryStore {
        let usage = Arc::new(Usage::default());
        let gone = usage.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, stored: &Stored| {
                u32::try_from(weight(key, stored)).unwrap_or(u32::MAX)
            })
            .expire_after(ByTtl)
            .eviction_listener(move |key: Arc<String>, stored: Stored, _| {
                gone.entries.fetch_sub(1, Ordering::Relaxed);
                gone.bytes
                    .fetch_sub(weight(&key, &stored), Ordering::Relaxed);
            })
            .build();
        MemoryStore { cache, usage }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use http_cache_semantics::CachePolicy;

    use super::Store;
    use crate::cache::Entry;
    use crate::config::CacheConfig;

    fn entry(body: &'static [u8]) -> Arc<Entry> {
        let request = http::Request::get("/a").body(()).unwrap();
        let response = http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(())
            .unwrap();
        Arc::new(Entry {
            policy: CachePolicy::new(&request, &response),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
        })
    }

    #[tokio::test]
    async fn entries_are_kept_replaced_removed_and_purged_by_prefix() {
        let store = Store::open(&CacheConfig::default());
        let ttl = Duration::from_secs(60);
        assert!(store.get("/a/1").await.unwrap().is_none());
        store.put("/a/1", entry(b"one"), ttl).await.unwrap();
        store.put("/a/1", entry(b"uno"), ttl).await.unwrap();
        store.put("/a/2", entry(b"two"), ttl).await.unwrap();
        store.put("/b/1", entry(b"three"), ttl).await.unwrap();
        assert_eq!(&store.get("/a/1").await.unwrap().unwrap().body[..], b"uno");
        let usage = store.usage().unwrap();
        assert_eq!(usage.entries, 3, "a replaced entry no longer counts");
        assert_eq!(usage.bytes, 3 * 4 + 3 + 3 + 5);
        store.remove("/a/2").await.unwrap();
        assert!(store.get("/a/2").await.unwrap().is_none());
        assert_eq!(store.purge("/a/").await.unwrap(), 1);
        assert!(store.get("/a/1").await.unwrap().is_none());
        assert!(store.get("/b/1").await.unwrap().is_some());
        assert_eq!(store.usage().unwrap().entries, 1);
        assert!(entry(b"x").policy.time_to_live(SystemTime::now()) > Duration::ZERO);
    }
}
