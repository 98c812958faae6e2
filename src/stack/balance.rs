//! Spreading a route's parts over its upstreams: every address every upstream name resolves to is an
//! endpoint; names are resolved again periodically. An endpoint that fails `eject_after` times in a row is
//! ejected for a back-off period, then let back in by one probe (passive health).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::StatusCode;
use rand::Rng;
use tokio::time::Instant;
use tower::Service;

use super::connect::TlsTarget;
use super::endpoint::{Endpoint, EndpointSettings, InFlight};
use super::{PartRequest, UpstreamResponse};
use crate::config::{Balance, Origin};
use crate::error::PartError;

/// One configured upstream: its origin and how to reach it over TLS.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub origin: Origin,
    pub tls: Option<TlsTarget>,
}

type Endpoints = Arc<[Arc<Endpoint>]>;

/// A route's endpoints and how to choose among them. Cloned into every part's call.
#[derive(Debug, Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    upstreams: Vec<Upstream>,
    policy: Balance,
    settings: EndpointSettings,
    endpoints: RwLock<Endpoints>,
    next: AtomicUsize,
}

impl Balancer {
    /// Resolves the upstreams (blocking, once, at build) and starts re-resolving host names every
    /// `upstream.resolve_every` while the balancer lives.
    pub fn new(upstreams: Vec<Upstream>, policy: Balance, settings: EndpointSettings) -> Balancer {
        let mut endpoints = Vec::new();
        for upstream in &upstreams {
            let origin = &upstream.origin;
            match std::net::ToSocketAddrs::to_socket_addrs(&(
                origin.authority.host().trim_matches(['[', ']']),
                origin.port(),
            )) {
                Ok(addrs) => {
                    endpoints.extend(dedup(addrs).into_iter().map(|a| {
                        Arc::new(Endpoint::new(origin, a, upstream.tls.clone(), &settings))
                    }))
                }
                Err(e) => tracing::warn!(%origin, "cannot resolve the upstream yet: {e}"),
            }
        }
        let shared = Arc::new(Shared {
            upstreams,
            policy,
            settings,
            endpoints: RwLock::new(endpoints.into()),
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

    /// Whether some endpoint can take parts now (not ejected).
    pub fn ready(&self) -> bool {
        let now = Instant::now();
        self.shared.endpoints().iter().any(|e| e.available(now))
    }

    /// Chooses the endpoint for a part that has already tried `tried`.
    fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let all = self.shared.endpoints();
        let now = Instant::now();
        let fresh = |e: &&Arc<Endpoint>| !tried.contains(&e.addr);
        let mut candidates: Vec<&Arc<Endpoint>> = all
            .iter()
            .filter(|e| e.available(now))
            .filter(fresh)
            .collect();
        if candidates.is_empty() {
            // Every untried one is ejected: an ejected endpoint is still better than none (fail open).
            candidates = all.iter().filter(fresh).collect();
        }
        if candidates.is_empty() {
            candidates = all.iter().collect();
        }
        let chosen = match (candidates.len(), self.shared.policy) {
            (0, _) => return None,
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
        };
        Some(chosen.clone())
    }
}

impl Shared {
    fn endpoints(&self) -> Endpoints {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
            let tried = request.tried.as_ref().map(|t| t.list()).unwrap_or_default();
            let Some(endpoint) = this.pick(&tried) else {
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
            if let Some(t) = &request.tried {
                t.add(endpoint.addr);
            }
            let in_flight = InFlight::new(endpoint.clone());
            let result = endpoint.send(request).await;
            drop(in_flight);
            let failed = match &result {
                Err(PartError::Connect { .. } | PartError::NoResponse { .. }) => true,
                Ok(response) => matches!(
                    response.status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
                Err(_) => false,
            };
            if let Some(period) = endpoint.record(failed, &this.shared.settings.upstream) {
                tracing::warn!(upstream = %endpoint.label, ?period, "upstream ejected after failing");
            }
            result
        })
    }
}

/// The addresses a part has been sent to, so that a retry goes elsewhere when it can.
#[derive(Debug, Default)]
pub struct Tried(Mutex<Vec<SocketAddr>>);

impl Tried {
    fn list(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(addr);
    }
}

/// Re-resolves the upstreams' host names while the balancer lives; endpoints whose address stays keep
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
        let current = this.endpoints();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(current.len());
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
                    Arc::new(Endpoint::new(
                        origin,
                        addr,
                        upstream.tls.clone(),
                        &this.settings,
                    ))
                }));
            }
        }
        *this.endpoints.write().unwrap_or_else(|e| e.into_inner()) = next.into();
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
