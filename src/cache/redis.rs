//! The Redis backend (`[cache] backend = "redis"`): one cache shared by every gateway that names the same
//! Redis. Entries are kept under `batchgate:cache:` + the cache key, in the byte encoding below, with a
//! time to live (Redis's `PX`) of their freshness plus the time they may be kept stale for revalidation.
//!
//! Redis is a cache here, never a dependency: every operation is bounded by `cache.redis_timeout`; a
//! failure (refused, reset, timed out) or an entry that does not decode is a [`RedisFailure`], logged here
//! (at most one line per [`LOG_EVERY`]); the cache layer counts it (`batchgate_cache_total{outcome="error"}`)
//! and goes on to the upstream as for a miss. An unreachable Redis at startup is a warning: the connection
//! is made on first use and made again after each failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};
use tokio::time::Instant;

use super::Entry;

/// What every key of the cache starts with, so that the gateway's keys never meet another program's.
const NAMESPACE: &str = "batchgate:cache:";
/// The first bytes of an encoded entry: a tag, then the encoding's version.
const MAGIC: [u8; 4] = *b"bgc\x01";
/// Keys one `SCAN` step asks for while purging, and so the most one `UNLINK` drops.
const PURGE_BATCH: usize = 500;
/// At most one log line per this long about Redis failing; the rest are counted in it.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Most headers a decoded entry may have: far above any upstream's answer, far below the 32768 a `HeaderMap`
/// holds before it panics.
const MAX_HEADERS: usize = 4096;
/// What an encoded entry may take besides its body: its headers, and the policy's copy of the request's and
/// the response's headers.
const MAX_FRAMING_BYTES: u64 = 1 << 20;

/// Why Redis could not answer, or answered what is not an entry. Logged where it happens; the cache layer
/// counts it and treats it as a miss.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisFailure {
    #[error("Redis {op} had no answer within cache.redis_timeout ({after:?})")]
    Timeout { op: &'static str, after: Duration },
    #[error("Redis {op} failed: {source}")]
    Command {
        op: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("the entry under {key:?} in Redis does not decode ({corrupt})")]
    Corrupt { key: String, corrupt: Corrupt },
    #[error("an entry of {bytes} bytes under {key:?} is more than an entry may take ({max} bytes)")]
    TooLarge { key: String, bytes: u64, max: u64 },
}

/// The store: a client for `cache.redis_url`, its one reconnecting connection made on first use.
pub(crate) struct RedisStore {
    client: Client,
    connection: OnceLock<ConnectionManager>,
    timeout: Duration,
    /// The most bytes an encoded entry may take: `cache.max_entry_bytes` plus [`MAX_FRAMING_BYTES`]. Larger
    /// values under our keys are never read whole.
    max_value_bytes: u64,
    log: Throttle,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "addr",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `client`; when called on a runtime, checks in the background that Redis answers and warns
    /// when it does not (the gateway starts and serves either way).
    pub(crate) fn open(client: Client, timeout: Duration, max_entry_bytes: u64) -> Arc<RedisStore> {
        let store = Arc::new(RedisStore {
            client,
            connection: OnceLock::new(),
            timeout,
            max_value_bytes: max_entry_bytes.saturating_add(MAX_FRAMING_BYTES),
            log: Throttle::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let checked = store.clone();
            tokio::spawn(async move {
                let addr = checked.client.get_connection_info().addr().to_string();
                match checked.run::<()>("PING", redis::cmd("PING")).await {
                    Ok(()) => tracing::info!(%addr, "cache: Redis answers"),
                    Err(failure) => tracing::warn!(
                        %addr,
                        "cache: Redis is unreachable at startup ({failure}); every cacheable part is a miss \
                         until it answers"
                    ),
                }
            });
        }
        store
    }

    /// The connection, made lazily: no reconnection retries of its own, each operation's timeout is the bound.
    fn connection(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let made = self.client.get_connection_manager_lazy(config)?;
        Ok(self.connection.get_or_init(|| made).clone())
    }

    /// Runs `command`, bounded by the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: redis::Cmd,
    ) -> Result<T, RedisFailure> {
        let command = async {
            let mut connection = self.connection()?;
            command.query_async(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) if source.is_timeout() => Err(RedisFailure::Timeout {
                op,
                after: self.timeout,
            }),
            Ok(Err(source)) => Err(RedisFailure::Command { op, source }),
            Err(_) => Err(RedisFailure::Timeout {
                op,
                after: self.timeout,
            }),
        }
    }

    /// Logs a failure (throttled), and hands it on.
    fn failed(&self, failure: RedisFailure) -> RedisFailure {
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(
                suppressed,
                "cache: {failure}; answered as a miss (failures within {LOG_EVERY:?} of a logged one are \
                 only counted, in batchgate_cache_total{{outcome=\"error\"}})"
            );
        }
        failure
    }

    /// The entry under `key`, if there is one. At most one byte more than an entry may take is read
    /// (`GETRANGE`): a larger value is refused without being fetched whole.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, RedisFailure> {
        let mut command = redis::cmd("GETRANGE");
        command
            .arg(namespaced(key))
            .arg(0)
            .arg(self.max_value_bytes);
        let bytes: Vec<u8> = self
            .run("GETRANGE", command)
            .await
            .map_err(|f| self.failed(f))?;
        // No key reads as empty; an entry never is.
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() as u64 > self.max_value_bytes {
            return Err(self.failed(RedisFailure::TooLarge {
                key: key.to_owned(),
                bytes: bytes.len() as u64,
                max: self.max_value_bytes,
            }));
        }
        match decode(Bytes::from(bytes)) {
            Ok(entry) => Ok(Some(Arc::new(entry))),
            Err(corrupt) => Err(self.failed(RedisFailure::Corrupt {
                key: key.to_owned(),
                corrupt,
            })),
        }
    }

    /// Stores `entry` under `key` for `ttl` (at least a millisecond: Redis refuses 0).
    pub(crate) async fn put(
        &self,
        key: &str,
        entry: &Entry,
        ttl: Duration,
    ) -> Result<(), RedisFailure> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let value = encode(entry);
        if value.len() as u64 > self.max_value_bytes {
            // It could never be read back.
            return Err(self.failed(RedisFailure::TooLarge {
                key: key.to_owned(),
                bytes: value.len() as u64,
                max: self.max_value_bytes,
            }));
        }
        let mut command = redis::cmd("SET");
        command
            .arg(namespaced(key))
            .arg(&value[..])
            .arg("PX")
            .arg(millis);
        self.run::<()>("SET", command)
            .await
            .map_err(|f| self.failed(f))?;
        Ok(())
    }

    /// Drops the entry under `key`, if any.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), RedisFailure> {
        let mut command = redis::cmd("UNLINK");
        command.arg(namespaced(key));
        self.run::<()>("UNLINK", command)
            .await
            .map_err(|f| self.failed(f))?;
        Ok(())
    }

    /// Drops every entry whose key starts with `prefix`: `SCAN MATCH` a batch of keys at a time, each batch
    /// `UNLINK`ed (Redis frees them in the background), every step bounded by the timeout. How many were
    /// dropped.
    pub(crate) async fn purge(&self, prefix: &str) -> Result<u64, RedisFailure> {
        let pattern = format!("{}*", glob_escape(&namespaced(prefix)));
        let mut cursor = 0u64;
        let mut purged = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(PURGE_BATCH);
            let (next, keys): (u64, Vec<Vec<u8>>) =
                self.run("SCAN", scan).await.map_err(|f| self.failed(f))?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(keys);
                purged += self
                    .run::<u64>("UNLINK", unlink)
                    .await
                    .map_err(|f| self.failed(f))?;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }
}

/// The Redis key of a cache key.
fn namespaced(key: &str) -> String {
    format!("{NAMESPACE}{key}")
}

/// `text` matched literally by a `SCAN MATCH` glob.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// At most one log line per [`LOG_EVERY`].
#[derive(Default)]
struct Throttle {
    /// When the last line was logged.
    last: Mutex<Option<Instant>>,
    /// Failures not logged since.
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(failures not logged since the last line)` when this one may be logged.
    fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Why stored bytes are not an entry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Corrupt {
    #[error("not an entry of this version")]
    Version,
    #[error("cut short in its {0}")]
    Short(&'static str),
    #[error("its {0} is invalid")]
    Invalid(&'static str),
}

/// An entry as bytes, version 1: [`MAGIC`], the status (u16), the policy (u32 length + its JSON), the
/// headers (u32 count, then per header u32 length + name, u32 length + value), then the body to the end.
/// Lengths are big-endian.
pub(crate) fn encode(entry: &Entry) -> Bytes {
    let policy = serde_json::to_vec(&entry.policy).expect("a CachePolicy serialises to JSON");
    let headers: usize = entry
        .headers
        .iter()
        .map(|(name, value)| 8 + name.as_str().len() + value.len())
        .sum();
    let mut out = BytesMut::with_capacity(
        MAGIC.len() + 2 + 4 + policy.len() + 4 + headers + entry.body.len(),
    );
    out.put_slice(&MAGIC);
    out.put_u16(entry.status.as_u16());
    put_bytes(&mut out, &policy);
    out.put_u32(u32::try_from(entry.headers.len()).expect("fewer than 2^32 headers"));
    for (name, value) in &entry.headers {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    out.put_slice(&entry.body);
    out.freeze()
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).expect("a header or policy under 4 GiB"));
    out.put_slice(bytes);
}

/// The entry `bytes` encode. Every length is checked against what is left before anything is allocated
/// for it, so corrupt or hostile bytes cost at most their own size.
pub(crate) fn decode(mut bytes: Bytes) -> Result<Entry, Corrupt> {
    if !bytes.starts_with(&MAGIC) {
        return Err(Corrupt::Version);
    }
    bytes.advance(MAGIC.len());
    if bytes.len() < 2 {
        return Err(Corrupt::Short("status"));
    }
    let status = StatusCode::from_u16(bytes.get_u16()).map_err(|_| Corrupt::Invalid("status"))?;
    let policy = take(&mut bytes, "policy")?;
    let policy: CachePolicy =
        serde_json::from_slice(&policy).map_err(|_| Corrupt::Invalid("policy"))?;
    if bytes.len() < 4 {
        return Err(Corrupt::Short("header count"));
    }
    let count = bytes.get_u32() as usize;
    if count > MAX_HEADERS {
        return Err(Corrupt::Invalid("header count"));
    }
    // Each header takes at least its two lengths: a count beyond that is a lie, refused before reserving.
    if count > bytes.len() / 8 {
        return Err(Corrupt::Short("headers"));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut bytes, "header name")?;
        let value = take(&mut bytes, "header value")?;
        headers.append(
            HeaderName::from_bytes(&name).map_err(|_| Corrupt::Invalid("header name"))?,
            HeaderValue::from_maybe_shared(value).map_err(|_| Corrupt::Invalid("header value"))?,
        );
    }
    Ok(Entry {
        policy,
        status,
        headers,
        body: bytes,
    })
}

/// A u32 length and that many bytes.
fn take(bytes: &mut Bytes, what: &'static str) -> Result<Bytes, Corrupt> {
    if bytes.len() < 4 {
        return Err(Corrupt::Short(what));
    }
    let len = bytes.get_u32() as usize;
    if len > bytes.len() {
        return Err(Corrupt::Short(what));
    }
    Ok(bytes.split_to(len))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::{BufMut, Bytes, BytesMut};
    use http::{HeaderMap, StatusCode};
    use http_cache_semantics::CachePolicy;

    use super::{Corrupt, Entry, LOG_EVERY, MAGIC, Throttle, decode, encode, glob_escape};
    use crate::config::Config;

    fn entry() -> Entry {
        let request = http::Request::get("/mail/1").body(()).unwrap();
        let response = http::Response::builder()
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .body(())
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("set-cookie", "a=1".parse().unwrap());
        headers.append("set-cookie", "b=2".parse().unwrap());
        Entry {
            policy: CachePolicy::new(&request, &response),
            status: StatusCode::NON_AUTHORITATIVE_INFORMATION,
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
        }
    }

    #[test]
    fn an_entry_decodes_to_what_was_encoded() {
        let original = entry();
        let decoded = decode(encode(&original)).unwrap();
        assert_eq!(decoded.status, original.status);
        assert_eq!(decoded.headers, original.headers);
        assert_eq!(decoded.body, original.body);
        let now = SystemTime::now();
        let ttl = decoded.policy.time_to_live(now);
        assert!(
            ttl > Duration::from_secs(50) && ttl <= Duration::from_secs(60),
            "{ttl:?}"
        );
        let empty = Entry {
            headers: HeaderMap::new(),
            body: Bytes::new(),
            ..entry()
        };
        let decoded = decode(encode(&empty)).unwrap();
        assert!(decoded.headers.is_empty() && decoded.body.is_empty());
    }

    #[test]
    fn corrupt_bytes_are_refused_not_trusted() {
        let good = encode(&entry());
        assert_eq!(decode(Bytes::new()).err(), Some(Corrupt::Version));
        assert_eq!(
            decode(Bytes::from_static(b"bgc\x02rest")).err(),
            Some(Corrupt::Version)
        );
        // Every cut inside the framing is refused; a cut in the body is a shorter body, which the policy's
        // own headers do not contradict (Content-Length is the layer's to recompute).
        let body_at = good.len() - entry().body.len();
        for cut in 0..body_at {
            assert!(decode(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        // A header count far beyond what is left is refused before anything is reserved for it.
        let mut lying = BytesMut::new();
        lying.put_slice(&MAGIC);
        lying.put_u16(200);
        let policy = serde_json::to_vec(&entry().policy).unwrap();
        lying.put_u32(policy.len() as u32);
        lying.put_slice(&policy);
        let before_count = lying.clone();
        lying.put_u32(100);
        assert_eq!(
            decode(lying.freeze()).err(),
            Some(Corrupt::Short("headers"))
        );
        // More headers than a map holds, each well formed: refused, not a panic.
        let mut many = before_count;
        many.put_u32(40_000);
        for _ in 0..40_000 {
            many.put_u32(1);
            many.put_slice(b"a");
            many.put_u32(1);
            many.put_slice(b"b");
        }
        assert_eq!(
            decode(many.freeze()).err(),
            Some(Corrupt::Invalid("header count"))
        );
        let mut bad_status = good.to_vec();
        bad_status[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(bad_status)).err(),
            Some(Corrupt::Invalid("status"))
        );
        let mut bad_policy = good.to_vec();
        bad_policy[10] = b'!';
        assert_eq!(
            decode(Bytes::from(bad_policy)).err(),
            Some(Corrupt::Invalid("policy"))
        );
    }

    #[test]
    fn a_redis_url_the_client_cannot_use_is_refused_at_load() {
        let redis = |url: &str| format!("[cache]\nbackend = \"redis\"\nredis_url = \"{url}\"");
        assert!(Config::from_toml(&redis("redis://127.0.0.1:6380/2")).is_ok());
        for (url, says) in [
            ("rediss://u:s3cret@h/0", "TLS"),
            ("redis://h:99999/0", "redis://"),
        ] {
            let error = Config::from_toml(&redis(url)).unwrap_err().to_string();
            assert!(
                error.contains("cache.redis_url") && error.contains(says),
                "{url}: {error}"
            );
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    /// One log line per LOG_EVERY, saying how many failures were not logged since the last.
    #[tokio::test(start_paused = true)]
    async fn failures_are_logged_once_per_interval_with_the_count_not_logged() {
        let throttle = Throttle::default();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(LOG_EVERY - Duration::from_millis(1)).await;
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.allow(), Some(3));
        assert_eq!(throttle.allow(), None);
    }

    #[test]
    fn purge_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("/a/*?[x]\\"), "/a/\\*\\?\\[x\\]\\\\");
        assert_eq!(glob_escape("/mail/"), "/mail/");
    }
}
