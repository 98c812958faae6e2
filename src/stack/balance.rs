//! Spreading a route's parts over its upstreams: every address every upstream name resolves to has a
//! [`Pool`]; names are resolved again periodically. A pool that fails `eject_after` times in a row is
//! ejected for a back-off period, then let back in by one probe (passive health); a try that runs out of time
//! (see [`super::timeout`]) is a failure like any other. Two kinds of part certainly did not run, and go
//! again whatever their method, without being a retry (no budget): one that cannot connect to an address goes
//! to another address of the same upstream, if it has one (what connecting to a name means); one whose
//! HTTP/2 stream the upstream refused unprocessed (GOAWAY, REFUSED_STREAM) goes again to the same address on
//! another connection, and the refusal counts neither way for health. A third kind may have run: a part whose
//! connection the upstream closed before answering (mostly a kept-alive one it closed for idleness as the part
//! arrived) goes again once to the same address if it is idempotent, and that first closing does not count
//! against the address either.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::StatusCode;
use rand::Rng;
use smallvec::SmallVec;
use tokio::time::Instant;
use tower::Service;

use super::connect::TlsTarget;
use super::pool::{Pool, PoolSettings, Resend, SendError};
use super::timeout::Deadline;
use super::{PartRequest, UpstreamResponse};
use crate::config::{Balance, Origin};
use crate::error::PartError;

/// One configured upstream: its origin and how to reach it over TLS.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub origin: Origin,
    pub tls: Option<TlsTarget>,
}

type Pools = Arc<[Arc<Pool>]>;

/// Times one part is sent again after HTTP/2 upstreams refused its stream unprocessed. Each refusal is one
/// connection closing with a GOAWAY, so this many let the parts of a large batch drain through an upstream
/// that takes only a few requests per connection, while one that refuses every stream is not sent a part
/// again and again until its deadline.
const REFUSALS: u32 = 32;

/// A route's pools and how to choose among them. Cloned into every part's call.
#[derive(Debug, Clone)]
pub(crate) struct Balancer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    upstreams: Vec<Upstream>,
    policy: Balance,
    settings: PoolSettings,
    pools: RwLock<Pools>,
    next: AtomicUsize,
}

impl Balancer {
    /// Resolves the upstreams (blocking, once, at build) and starts re-resolving host names every
    /// `upstream.resolve_every` while the balancer lives.
    pub(crate) fn new(
        upstreams: Vec<Upstream>,
        policy: Balance,
        settings: PoolSettings,
    ) -> Balancer {
        let mut addresses = Vec::new();
        for (i, upstream) in upstreams.iter().enumerate() {
            let origin = &upstream.origin;
            match std::net::ToSocketAddrs::to_socket_addrs(&(
                origin.authority.host().trim_matches(['[', ']']),
                origin.port(),
            )) {
                Ok(addrs) => addresses.extend(dedup(addrs).into_iter().map(|a| (i, a))),
                Err(e) => tracing::warn!(%origin, "cannot resolve the upstream yet: {e}"),
            }
        }
        Balancer::with_addresses(upstreams, policy, settings, &addresses)
    }

    /// A balancer over these addresses of its upstreams (`(index in upstreams, address)`), as resolved.
    fn with_addresses(
        upstreams: Vec<Upstream>,
        policy: Balance,
        settings: PoolSettings,
        addresses: &[(usize, SocketAddr)],
    ) -> Balancer {
        let pools: Vec<Arc<Pool>> = addresses
            .iter()
            .map(|&(i, addr)| {
                let upstream = &upstreams[i];
                Arc::new(Pool::new(
                    &upstream.origin,
                    addr,
                    upstream.tls.clone(),
                    &settings,
                ))
            })
            .collect();
        let shared = Arc::new(Shared {
            upstreams,
            policy,
            settings,
            pools: RwLock::new(pools.into()),
            next: AtomicUsize::new(0),
        });
        let names = shared
            .upstreams
            .iter()
            .any(|u| !is_ip(u.origin.authority.host()));
        if names && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(resolve_periodically(Arc::downgrade(&shared)));
        }
        Balancer { shared }
    }

    /// Takes over the passive health of `previous`'s pools at the same addresses of the same upstreams:
    /// a reload does not let an ejected address back in early.
    pub(crate) fn carry_health(&self, previous: &Balancer) {
        let before = previous.shared.pools();
        for pool in self.shared.pools().iter() {
            if let Some(old) = before
                .iter()
                .find(|e| e.origin == pool.origin && e.addr == pool.addr)
            {
                pool.carry_health(old);
            }
        }
    }

    /// Whether some pool can take parts now (not ejected).
    pub(crate) fn ready(&self) -> bool {
        let now = Instant::now();
        self.shared.pools().iter().any(|e| e.available(now))
    }

    /// Chooses the pool for a part that has already tried `tried`. With `origin`, only among that
    /// upstream's addresses not tried yet (an address failed to connect: the part takes another of them).
    fn pick(
        &self,
        all: &Pools,
        tried: &[SocketAddr],
        origin: Option<&Origin>,
    ) -> Option<Arc<Pool>> {
        // The common case, one address, healthy: no choice to make.
        if let [only] = &all[..]
            && tried.is_empty()
            && origin.is_none()
        {
            if only.is_clean() {
                return Some(only.clone());
            }
            let now = Instant::now();
            if only.available(now) && only.claim(now, self.shared.settings.upstream.eject_for) {
                return Some(only.clone());
            }
        }
        let all: Vec<&Arc<Pool>> = all
            .iter()
            .filter(|e| origin.is_none_or(|o| e.origin == *o))
            .collect();
        let now = Instant::now();
        let fresh = |e: &&&Arc<Pool>| !tried.contains(&e.addr);
        let mut lost: Vec<SocketAddr> = Vec::new();
        loop {
            let candidates: Vec<&Arc<Pool>> = all
                .iter()
                .filter(|e| e.available(now) && !lost.contains(&e.addr))
                .filter(fresh)
                .copied()
                .collect();
            if candidates.is_empty() {
                break;
            }
            let chosen = self.choose(&candidates);
            // A pool whose ejection is over takes one part, its probe; if another part took it
            // first, this one chooses again.
            if chosen.claim(now, self.shared.settings.upstream.eject_for) {
                return Some(chosen.clone());
            }
            lost.push(chosen.addr);
        }
        // Every untried one is ejected: an ejected pool is still better than none (fail open).
        let mut candidates: Vec<&Arc<Pool>> = all.iter().filter(fresh).copied().collect();
        if candidates.is_empty() && origin.is_none() {
            candidates = all;
        }
        (!candidates.is_empty()).then(|| self.choose(&candidates).clone())
    }

    /// One of `candidates` (not empty), as the policy says.
    fn choose<'a>(&self, candidates: &[&'a Arc<Pool>]) -> &'a Arc<Pool> {
        match (candidates.len(), self.shared.policy) {
            (1, _) => candidates[0],
            (n, Balance::RoundRobin) => {
                candidates[self.shared.next.fetch_add(1, Ordering::Relaxed) % n]
            }
            (n, Balance::LeastRequests) => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let load = |i: usize| candidates[i].in_flight.load(Ordering::Relaxed);
                candidates[if load(b) < load(a) { b } else { a }]
            }
        }
    }
}

impl Shared {
    fn pools(&self) -> Pools {
        self.pools.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Service<PartRequest> for Balancer {
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = BoxFuture<'static, Result<UpstreamResponse, PartError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // One snapshot for the part: a re-resolution meanwhile applies to the next parts.
            let all = this.shared.pools();
            // On the stack unless a retried part has been to more addresses than that.
            let mut tried: SmallVec<[SocketAddr; 4]> = request
                .tried
                .as_ref()
                .map(|t| SmallVec::from_vec(t.list()))
                .unwrap_or_default();
            let Some(mut pool) = this.pick(&all, &tried, None) else {
                let names: Vec<String> = this
                    .shared
                    .upstreams
                    .iter()
                    .map(|u| u.origin.to_string())
                    .collect();
                return Err(PartError::Connect {
                    index: request.index,
                    upstream: names.join(", "),
                    reason: "no address: the upstream names did not resolve".to_owned(),
                });
            };
            let mut refusals = 0;
            // May go again once if its connection is closed unanswered (see [`Resend::Closed`]).
            let mut may_resend_closed = request.is_idempotent();
            loop {
                if let Some(t) = &request.tried {
                    t.add(pool.addr);
                }
                tried.push(pool.addr);
                let (index, deadline) = (request.index, request.deadline.clone());
                // Its time already spent before it could be sent (waiting for a permit): that says nothing
                // about the address, which is not tried.
                if let Some(deadline) = &deadline
                    && deadline.at <= Instant::now()
                {
                    return Err(deadline.elapsed(index, pool.label.to_string()));
                }
                let attempt = Attempt::new(&this.shared, &pool, deadline.as_ref());
                // Lent to the pool: it may go again (see [`Resend`]), at another address of the same upstream
                // if this one does not connect, on another connection if an HTTP/2 upstream refuses the stream
                // or an idempotent part's connection is closed unanswered.
                let sent = pool.send(&request);
                let result = match &deadline {
                    None => sent.await,
                    Some(deadline) => match tokio::time::timeout_at(deadline.at, sent).await {
                        Ok(result) => result,
                        // Dropped after its deadline, the attempt counts as a failure.
                        Err(_) => return Err(deadline.elapsed(index, pool.label.to_string())),
                    },
                };
                let (failed, next) = match &result {
                    Err(SendError {
                        resend: Some(Resend::Refused),
                        ..
                    }) if refusals < REFUSALS => {
                        refusals += 1;
                        (None, Some(pool.clone()))
                    }
                    Err(SendError {
                        resend: Some(Resend::Closed),
                        ..
                    }) if may_resend_closed => {
                        may_resend_closed = false;
                        (None, Some(pool.clone()))
                    }
                    Err(SendError {
                        resend: Some(Resend::NoConnection),
                        ..
                    }) => (Some(true), this.pick(&all, &tried, Some(&pool.origin))),
                    Err(e) => (
                        Some(matches!(
                            e.error,
                            PartError::Connect { .. } | PartError::NoResponse { .. }
                        )),
                        None,
                    ),
                    Ok(response) => (
                        Some(matches!(
                            response.status,
                            StatusCode::BAD_GATEWAY
                                | StatusCode::SERVICE_UNAVAILABLE
                                | StatusCode::GATEWAY_TIMEOUT
                        )),
                        None,
                    ),
                };
                attempt.finish(failed);
                match (result, next) {
                    (Err(e), Some(next)) => {
                        tracing::debug!(
                            from = %pool.label,
                            to = %next.label,
                            error = %e.error,
                            "sending the part again: it did not run there, or it is idempotent"
                        );
                        pool = next;
                    }
                    (result, _) => return result.map_err(|e| e.error),
                }
            }
        })
    }
}

impl Shared {
    /// Notes how a try at `pool` went, and says so when that ejected it.
    fn record(&self, pool: &Pool, failed: bool) {
        if let Some(period) = pool.record(failed, &self.settings.upstream) {
            self.settings.metrics.ejection(&self.settings.route);
            tracing::warn!(upstream = %pool.label, ?period, "upstream ejected after failing");
        }
    }
}

/// One try at a pool: counted in its in-flight load while it lasts. Dropped unfinished once its deadline
/// has passed, it ran out of time, whichever timer noticed first (the balancer's, or the timeout layer's
/// above it that cancelled it): that is a failure of the address for passive health. Dropped earlier (the
/// batch or its client went away), it says nothing about the address.
struct Attempt<'a> {
    shared: &'a Shared,
    pool: &'a Pool,
    deadline: Option<Instant>,
    finished: bool,
}

impl<'a> Attempt<'a> {
    fn new(shared: &'a Shared, pool: &'a Pool, deadline: Option<&Deadline>) -> Attempt<'a> {
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt {
            shared,
            pool,
            deadline: deadline.map(|d| d.at),
            finished: false,
        }
    }

    /// Records its outcome: failed or not, or `None` for one that tells nothing (a refused stream).
    fn finish(mut self, failed: Option<bool>) {
        self.finished = true;
        if let Some(failed) = failed {
            self.shared.record(self.pool, failed);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished && self.deadline.is_some_and(|at| Instant::now() >= at) {
            self.shared.record(self.pool, true);
        }
    }
}

/// The addresses a part has been sent to, so that a retry goes elsewhere when it can.
#[derive(Debug, Default)]
pub(crate) struct Tried(Mutex<Vec<SocketAddr>>);

impl Tried {
    fn list(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(addr);
    }
}

/// Re-resolves the upstreams' host names while the balancer lives; pools whose address stays keep
/// their pool and health.
async fn resolve_periodically(shared: Weak<Shared>) {
    loop {
        let Some(every) = shared.upgrade().map(|s| s.settings.upstream.resolve_every) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(this) = shared.upgrade() else {
            return;
        };
        let current = this.pools();
        let mut next: Vec<Arc<Pool>> = Vec::with_capacity(current.len());
        for upstream in &this.upstreams {
            let origin = &upstream.origin;
            let host = origin.authority.host().trim_matches(['[', ']']).to_owned();
            let addrs = match tokio::net::lookup_host((host.as_str(), origin.port())).await {
                Ok(addrs) => dedup(addrs),
                Err(e) => {
                    tracing::warn!(%origin, "re-resolving failed, keeping its addresses: {e}");
                    current
                        .iter()
                        .filter(|e| e.origin == *origin)
                        .map(|e| e.addr)
                        .collect()
                }
            };
            for addr in addrs {
                let kept = current
                    .iter()
                    .find(|e| e.origin == *origin && e.addr == addr);
                next.push(kept.cloned().unwrap_or_else(|| {
                    tracing::info!(%origin, %addr, "new upstream address");
                    Arc::new(Pool::new(
                        origin,
                        addr,
                        upstream.tls.clone(),
                        &this.settings,
                    ))
                }));
            }
        }
        *this.pools.write().unwrap_or_else(|e| e.into_inner()) = next.into();
    }
}

fn dedup(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

fn is_ip(host: &str) -> bool {
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
}

impl Balancer {
    /// Each address's passive health now, for `/admin/stats` (read-only).
    pub(crate) fn health(&self) -> Vec<crate::observe::health::AddressHealth> {
        let now = Instant::now();
        self.shared
            .pools()
            .iter()
            .map(|e| {
                crate::observe::health::AddressHealth::describe(
                    &e.label,
                    e.addr,
                    e.health_view(),
                    e.in_flight.load(Ordering::Relaxed),
                    &self.shared.settings.upstream,
                    now,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Method, Response};
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::UpstreamSettings;
    use crate::metrics::Metrics;

    fn post(index: usize) -> PartRequest {
        PartRequest {
            method: Method::POST,
            path: "/x".parse().unwrap(),
            body: Bytes::from_static(b"x"),
            ..crate::stack::tests::part_request(index)
        }
    }

    /// One upstream, `localhost` on the port of the first address, at these addresses; https with `tls`.
    fn balancer(addresses: &[SocketAddr], tls: Option<Arc<rustls::ClientConfig>>) -> Balancer {
        let origin = Origin {
            scheme: if tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            authority: format!("localhost:{}", addresses[0].port())
                .parse()
                .unwrap(),
        };
        let tls = tls.map(|config| TlsTarget {
            config,
            server_name: Pool::server_name(&origin).unwrap(),
        });
        let settings = PoolSettings {
            upstream: UpstreamSettings::default(),
            http2_prior_knowledge: false,
            max_response_bytes: 1 << 20,
            metrics: Arc::new(Metrics::default()),
            route: Arc::from("/"),
        };
        let addresses: Vec<(usize, SocketAddr)> = addresses.iter().map(|&a| (0, a)).collect();
        Balancer::with_addresses(
            vec![Upstream { origin, tls }],
            Balance::RoundRobin,
            settings,
            &addresses,
        )
    }

    /// An address nothing listens on.
    fn dead() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    /// A name with an address that refuses connections (as `localhost` has `::1` where the server listens on
    /// 127.0.0.1 only): every part, a POST too, is served at its other address, and the dead one is ejected
    /// after `eject_after` refusals. When no address connects, the part fails once each, without looping.
    #[tokio::test]
    async fn a_part_goes_to_another_address_of_the_name_when_one_refuses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let refusing = dead();
        let mut two = balancer(&[live, refusing], None);
        for i in 0..6 {
            let response = two.call(post(i)).await.unwrap();
            assert_eq!(
                (response.status, response.peer),
                (StatusCode::OK, Some(live))
            );
        }
        assert_eq!(served.load(Ordering::SeqCst), 6);
        let pools = two.shared.pools();
        assert!(pools[0].available(Instant::now()));
        assert!(!pools[1].available(Instant::now()), "ejected");

        let mut none = balancer(&[refusing, dead()], None);
        let error = none.call(post(0)).await.unwrap_err();
        assert!(
            matches!(&error, PartError::Connect { reason, .. } if reason.contains("refused")),
            "{error}"
        );
    }

    /// A part that reached an address is not sent to another one: not when the connection broke after the
    /// part was sent (only a retry may do that, and a POST is never retried), nor when the TLS handshake
    /// failed (the address is there; its error is the one to report).
    #[tokio::test]
    async fn a_part_that_reached_an_address_goes_nowhere_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closing = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
            }
        });
        let tls = crate::tls::ClientTls {
            key: "routes[0]",
            ca_file: None,
            client_cert: None,
            http_version: crate::config::HttpVersion::Auto,
        }
        .config()
        .unwrap();
        for https in [false, true] {
            let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tls = https.then(|| tls.clone());
            let mut two = balancer(&[closing, other.local_addr().unwrap()], tls);
            let error = two.call(post(0)).await.unwrap_err();
            if https {
                assert!(
                    matches!(&error, PartError::Connect { reason, .. } if reason.contains("TLS")),
                    "{error}"
                );
            } else {
                assert!(matches!(error, PartError::NoResponse { .. }), "{error}");
            }
            let accepted = tokio::time::timeout(Duration::from_millis(100), other.accept()).await;
            assert!(
                accepted.is_err(),
                "the other address got a connection (https: {https})"
            );
        }
    }
}
