//! The per-client rate limit: every part takes a token from its client's bucket, whichever batch it came in,
//! so a batch is never a way around the limit. A part over it is a 429 part with `Retry-After`; the batch's
//! other parts go on. One limiter serves every route's stack, and outlives reloads that keep its idea of who
//! a client is (`key`, `ipv6_prefix`): a client at its limit stays there.
//!
//! The layer sits below the header policy, so that with `key = "authorization"` a part is keyed by the
//! credential it is actually sent upstream with (its own or the batch's), not by the batch's outer header.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::config::{RateLimitConfig, RateLimitKey};
use crate::error::PartError;

/// Who a client is, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// An IPv4 address, or an IPv6 network of `ipv6_prefix` bits.
    Ip(IpAddr),
    /// A keyed hash of the `Authorization` header: the header itself is never kept.
    Credentials(u64),
}

/// The buckets of every client.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    key: RateLimitKey,
    ipv6_prefix: u8,
    hasher: RandomState,
    state: Mutex<State>,
}

/// What a reload may change while the buckets stay.
#[derive(Debug)]
struct State {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: HashMap<ClientKey, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl State {
    /// The bucket's tokens now.
    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        bucket.tokens =
            (bucket.tokens + self.rate * (now - bucket.at).as_secs_f64()).min(self.burst);
        bucket.at = now;
    }
}

impl RateLimiter {
    pub(crate) fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            key: config.key,
            ipv6_prefix: config.ipv6_prefix,
            hasher: RandomState::new(),
            state: Mutex::new(State {
                rate: config.parts_per_second,
                burst: f64::from(config.burst),
                max_clients: config.max_clients,
                buckets: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a reload to `config` may keep these buckets: it names clients the same way.
    pub(crate) fn keys_like(&self, config: &RateLimitConfig) -> bool {
        self.key == config.key && self.ipv6_prefix == config.ipv6_prefix
    }

    /// Takes `config`'s rate, burst and client count (see [`RateLimiter::keys_like`]): each bucket keeps
    /// what it had earned by now, up to the new burst.
    pub(crate) fn reconfigure(&self, config: &RateLimitConfig) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut buckets = std::mem::take(&mut state.buckets);
        for bucket in buckets.values_mut() {
            state.refill(bucket, now);
        }
        state.rate = config.parts_per_second;
        state.burst = f64::from(config.burst);
        state.max_clients = config.max_clients;
        for bucket in buckets.values_mut() {
            bucket.tokens = bucket.tokens.min(state.burst);
        }
        if buckets.len() > state.max_clients {
            // All refilled just now: the emptiest are the most recently busy, and they are kept.
            let mut by_tokens: Vec<(ClientKey, Bucket)> = buckets.into_iter().collect();
            by_tokens.sort_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens));
            by_tokens.truncate(state.max_clients);
            buckets = by_tokens.into_iter().collect();
        }
        state.buckets = buckets;
    }

    /// The key of a client at `address` (the peer, or the client a trusted proxy forwards): IPv6 addresses
    /// are cut to their network.
    pub(crate) fn address_key(&self, address: IpAddr) -> ClientKey {
        match address.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                ClientKey::Ip(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
            v4 => ClientKey::Ip(v4),
        }
    }

    /// The key of a part sent upstream with these headers, from a client whose address key is `address`.
    pub(crate) fn key(&self, address: ClientKey, sent: &HeaderMap) -> ClientKey {
        let mut credentials = sent.get_all(AUTHORIZATION).iter().peekable();
        match self.key {
            RateLimitKey::Authorization if credentials.peek().is_some() => ClientKey::Credentials(
                self.hasher
                    .hash_one(credentials.map(|v| v.as_bytes()).collect::<Vec<_>>()),
            ),
            _ => address,
        }
    }

    /// Takes a token for `client`; otherwise, how long until one is there.
    pub(crate) fn take(&self, client: ClientKey) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        if state.buckets.len() >= state.max_clients && !state.buckets.contains_key(&client) {
            // Buckets that have filled up again are the same as new ones: forget them first.
            let (rate, burst) = (state.rate, state.burst);
            state
                .buckets
                .retain(|_, b| b.tokens + rate * (now - b.at).as_secs_f64() < burst);
            if state.buckets.len() >= state.max_clients
                && let Some(oldest) = state
                    .buckets
                    .iter()
                    .min_by_key(|(_, b)| b.at)
                    .map(|(k, _)| *k)
            {
                state.buckets.remove(&oldest);
            }
        }
        let mut bucket = state.buckets.get(&client).copied().unwrap_or(Bucket {
            tokens: state.burst,
            at: now,
        });
        state.refill(&mut bucket, now);
        let result = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / state.rate))
        };
        state.buckets.insert(client, bucket);
        result
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    pub(crate) fn new(limiter: Arc<RateLimiter>) -> RateLimitLayer {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S> Service<PartRequest> for RateLimit<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
    S::Future: Send + 'static,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = BoxFuture<'static, Result<UpstreamResponse, PartError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let client = self.limiter.key(request.batch.client, &request.headers);
        match self.limiter.take(client) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(wait) => {
                let index = request.index;
                Box::pin(async move {
                    Err(PartError::RateLimited {
                        index,
                        retry_after: whole_seconds(wait),
                    })
                })
            }
        }
    }
}

/// `Retry-After` counts whole seconds: the wait is rounded up to one, so that the part's message and its
/// header say the same.
fn whole_seconds(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            parts_per_second: 10.0,
            burst: 5,
            ..RateLimitConfig::default()
        });
        let client = ClientKey::Ip("10.0.0.1".parse().unwrap());
        let other = ClientKey::Ip("10.0.0.2".parse().unwrap());
        for _ in 0..5 {
            assert!(limiter.take(client).is_ok());
        }
        let wait = limiter.take(client).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(
            limiter.take(other).is_ok(),
            "each client has its own bucket"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.take(client).is_ok());
        assert!(limiter.take(client).is_err());
    }

    #[test]
    fn the_authorization_key_hashes_the_header_sent_and_falls_back_to_the_address() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            key: RateLimitKey::Authorization,
            ..RateLimitConfig::default()
        });
        let ip = limiter.address_key("10.0.0.1".parse().unwrap());
        let mut headers = HeaderMap::new();
        assert_eq!(limiter.key(ip, &headers), ip);
        headers.insert(AUTHORIZATION, "Bearer a".parse().unwrap());
        let a = limiter.key(ip, &headers);
        assert!(matches!(a, ClientKey::Credentials(_)));
        let elsewhere = limiter.address_key("10.0.0.2".parse().unwrap());
        assert_eq!(
            a,
            limiter.key(elsewhere, &headers),
            "one credential, one key"
        );
        headers.insert(AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_ne!(a, limiter.key(ip, &headers));
        // Keyed by address, the header is not looked at.
        let by_address = RateLimiter::new(&RateLimitConfig::default());
        assert_eq!(by_address.key(ip, &headers), ip);
    }

    #[test]
    fn ipv6_clients_are_their_network() {
        let key = |prefix: u8, address: &str| {
            RateLimiter::new(&RateLimitConfig {
                ipv6_prefix: prefix,
                ..RateLimitConfig::default()
            })
            .address_key(address.parse().unwrap())
        };
        let ip = |a: &str| ClientKey::Ip(a.parse().unwrap());
        assert_eq!(key(64, "2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2::"));
        assert_eq!(key(64, "2001:db8:1:2:ffff:1:2:3"), ip("2001:db8:1:2::"));
        assert_eq!(key(64, "2001:db8:1:3::1"), ip("2001:db8:1:3::"));
        assert_eq!(key(48, "2001:db8:1:3::1"), ip("2001:db8:1::"));
        assert_eq!(key(128, "2001:db8::1"), ip("2001:db8::1"));
        // IPv4, however the socket spelled it, is its own address.
        assert_eq!(key(32, "::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_eq!(key(64, "192.0.2.7"), ip("192.0.2.7"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconfigured_limiter_keeps_its_buckets_within_the_new_burst() {
        let config = RateLimitConfig {
            parts_per_second: 1.0,
            burst: 4,
            ..RateLimitConfig::default()
        };
        let limiter = RateLimiter::new(&config);
        let busy = ClientKey::Ip("10.0.0.1".parse().unwrap());
        for _ in 0..4 {
            limiter.take(busy).unwrap();
        }
        let faster = RateLimitConfig {
            parts_per_second: 2.0,
            burst: 2,
            ..config.clone()
        };
        assert!(limiter.keys_like(&faster));
        limiter.reconfigure(&faster);
        assert_eq!(
            limiter.take(busy).unwrap_err(),
            Duration::from_millis(500),
            "an empty bucket stays empty; it refills at the new rate"
        );
        let fresh = ClientKey::Ip("10.0.0.2".parse().unwrap());
        assert!(limiter.take(fresh).is_ok() && limiter.take(fresh).is_ok());
        assert!(
            limiter.take(fresh).is_err(),
            "new buckets hold the new burst"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        limiter.reconfigure(&faster);
        assert!(limiter.take(busy).is_ok() && limiter.take(busy).is_ok());
        assert!(limiter.take(busy).is_err(), "refilled up to the new burst");

        for other in [
            RateLimitConfig {
                key: RateLimitKey::Authorization,
                ..config.clone()
            },
            RateLimitConfig {
                ipv6_prefix: 56,
                ..config
            },
        ] {
            assert!(!limiter.keys_like(&other));
        }
    }

    #[test]
    fn the_wait_is_whole_seconds_as_in_retry_after() {
        assert_eq!(
            whole_seconds(Duration::from_millis(90)),
            Duration::from_secs(1)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(2001)),
            Duration::from_secs(3)
        );
    }
}
