//! The per-client rate limit: every part takes a token from its client's bucket, whichever batch it came in,
//! so a batch is never a way around the limit. A part over it is a 429 part with `Retry-After`; the batch's
//! other parts go on. One limiter serves every route's stack.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
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
pub enum ClientKey {
    Ip(IpAddr),
    /// A keyed hash of the `Authorization` header: the header itself is never kept.
    Credentials(u64),
}

/// The buckets of every client.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    key: RateLimitKey,
    max_clients: usize,
    hasher: RandomState,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            rate: config.parts_per_second,
            burst: f64::from(config.burst),
            key: config.key,
            max_clients: config.max_clients,
            hasher: RandomState::new(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a batch from `client` (the peer, or the client a trusted proxy forwards) with these outer
    /// headers.
    pub fn key(&self, client: IpAddr, headers: &HeaderMap) -> ClientKey {
        match (self.key, headers.get(AUTHORIZATION)) {
            (RateLimitKey::Authorization, Some(value)) => {
                ClientKey::Credentials(self.hasher.hash_one(value.as_bytes()))
            }
            _ => ClientKey::Ip(client),
        }
    }

    /// Takes a token for `client`; otherwise, how long until one is there.
    pub fn take(&self, client: ClientKey) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.max_clients && !buckets.contains_key(&client) {
            // Buckets that have filled up again are the same as new ones: forget them first.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + rate * (now - b.at).as_secs_f64() < burst);
            if buckets.len() >= self.max_clients
                && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + self.rate * (now - bucket.at).as_secs_f64()).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<RateLimiter>) -> RateLimitLayer {
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
pub struct RateLimit<S> {
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
        match self.limiter.take(request.batch.client) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(wait) => {
                let index = request.index;
                Box::pin(async move {
                    Err(PartError::RateLimited {
                        index,
                        retry_after: wait,
                    })
                })
            }
        }
    }
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
    fn the_authorization_key_hashes_the_header_and_falls_back_to_the_address() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            key: RateLimitKey::Authorization,
            ..RateLimitConfig::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(limiter.key(ip, &headers), ClientKey::Ip(ip));
        headers.insert(AUTHORIZATION, "Bearer a".parse().unwrap());
        let a = limiter.key(ip, &headers);
        headers.insert(AUTHORIZATION, "Bearer b".parse().unwrap());
        assert!(matches!(a, ClientKey::Credentials(_)));
        assert_ne!(a, limiter.key(ip, &headers));
    }
}
