//! The gateway's shared state: configuration, routes and their service stacks, limits, metrics. Every
//! connection and batch holds it; the stages of a batch ([`crate::batch`]) read from it.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::CacheHandle;
use crate::config::{Config, ConfigError};
use crate::error::BatchError;
use crate::headers::HeaderRules;
use crate::metrics::{Gauges, Metrics};
use crate::observe::{Observer, RouteState, Stats};
use crate::route::{Route, Router};
use crate::stack::limit::Capacity;
use crate::stack::ratelimit::{ClientKey, RateLimiter};
use crate::stack::{PartService, Permits, RouteStack, Shared};
use batchgate_wire::PartLimits;

/// What one validated config makes: its routes and their stacks, limits, metrics. Shared (`Arc`) by every
/// connection and batch; a reload builds a new one with [`Gateway::succeeding`] and swaps it in.
#[derive(Debug)]
pub struct Gateway {
    /// The config it was built from, already validated.
    pub config: Config,
    pub(crate) router: Router,
    /// One stack per route, indexed by `Route::id`.
    routes: Vec<RouteStack>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) observer: Arc<Observer>,
    /// The per-client limit on parts, shared by every route's stack (and kept by a reload that names clients
    /// the same way).
    pub(crate) rate_limit: Option<Arc<RateLimiter>>,
    pub(crate) headers: HeaderRules,
    pub(crate) part_limits: PartLimits,
    /// Sub-requests in flight across all batches, shared with the gateways this one succeeds.
    inflight: Arc<Capacity>,
    /// Batches being served, likewise; a batch over the limit is refused at once with 503.
    batches: Arc<Capacity>,
    /// The HTTP cache of `[cache]`, if configured.
    pub(crate) cache: Option<CacheHandle>,
}

impl Gateway {
    /// Builds the gateway from a validated config. Fails on what only building can find: certificate and key
    /// files that cannot be read or used.
    pub fn new(config: Config) -> Result<Gateway, ConfigError> {
        Gateway::build(config, None)
    }

    /// A gateway for a reloaded config that goes on counting into `previous`'s metrics and observations, and
    /// shares its in-flight limits and rate-limit buckets (batches still running on `previous` count against
    /// this one's limits; the new sizes apply when [`server::Live`](crate::server::Live) serves it), and keeps the
    /// passive health of the upstream addresses that stay (each route's, by prefix: an ejected address stays
    /// ejected, an address on probation stays so).
    pub fn succeeding(config: Config, previous: &Gateway) -> Result<Gateway, ConfigError> {
        Gateway::build(config, Some(previous))
    }

    fn build(config: Config, previous: Option<&Gateway>) -> Result<Gateway, ConfigError> {
        let metrics = previous.map_or_else(Arc::default, |p| p.metrics.clone());
        let observer = previous.map_or_else(Arc::default, |p| p.observer.clone());
        let limits = &config.limits;
        let rate_limit = config.rate_limit.as_ref().map(|c| {
            match previous.and_then(|p| p.rate_limit.as_ref()) {
                Some(kept) if kept.keys_like(c) => kept.clone(),
                _ => Arc::new(RateLimiter::new(c)),
            }
        });
        let capacity = |kept: Option<&Arc<Capacity>>, size: usize| {
            kept.cloned()
                .unwrap_or_else(|| Arc::new(Capacity::new(size)))
        };
        let inflight = capacity(previous.map(|p| &p.inflight), limits.max_inflight);
        let batches = capacity(previous.map(|p| &p.batches), limits.max_batches);
        // The cache outlives a reload that leaves `[cache]` as it was: its entries stay good.
        let cache =
            config
                .cache
                .as_ref()
                .map(|section| match previous.and_then(|p| p.cache.as_ref()) {
                    Some(kept) if kept.config == *section => kept.clone(),
                    _ => CacheHandle::open(section),
                });
        let shared = Shared {
            limits,
            upstream: &config.upstream,
            metrics: &metrics,
            observer: &observer,
            rate_limit: rate_limit.as_ref(),
            global_inflight: inflight.permits(),
            cache: cache.as_ref(),
        };
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let before =
                    previous.and_then(|p| p.routes.iter().find(|r| r.prefix() == route.prefix));
                RouteStack::build(i, route, shared, before)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Gateway {
            router: Router::new(&config),
            routes,
            metrics,
            observer,
            rate_limit,
            headers: HeaderRules::new(&config),
            part_limits: PartLimits {
                max_headers: limits.max_part_headers,
                max_header_bytes: usize::try_from(limits.max_part_header_bytes)
                    .unwrap_or(usize::MAX),
            },
            inflight,
            batches,
            cache,
            config,
        })
    }

    /// Sets the limits this gateway shares with the gateways it succeeds to its own config's: the in-flight
    /// limits are resized, tuned limits take the new bounds, and the rate limit its new rate and burst. Called
    /// as it is swapped in, so that a reload refused after building it changes nothing.
    pub(crate) fn take_over_limits(&self) {
        let limits = &self.config.limits;
        self.inflight.resize(limits.max_inflight);
        self.batches.resize(limits.max_batches);
        for route in &self.routes {
            route.take_over_limit(limits, &self.observer);
        }
        if let (Some(limiter), Some(config)) = (&self.rate_limit, &self.config.rate_limit) {
            limiter.reconfigure(config);
        }
    }

    /// Routes none of whose upstreams can take parts now (all ejected, or none resolved), by prefix.
    pub fn unready_routes(&self) -> Vec<&str> {
        self.routes
            .iter()
            .filter(|route| !route.ready())
            .map(RouteStack::prefix)
            .collect()
    }

    /// The service stack parts routed to `route` go through.
    pub(crate) fn service(&self, route: &Route) -> PartService {
        self.routes[route.id].service()
    }

    /// The stack parts routed to `route` go through, shared, for a part to clone when it is called.
    pub(crate) fn shared_service(&self, route: &Route) -> Arc<PartService> {
        self.routes[route.id].shared_service()
    }

    /// The permits parts routed to `route` take before entering its stack.
    pub(crate) fn permits(&self, route: &Route) -> Permits {
        self.routes[route.id].permits()
    }

    /// Who a request comes from, for the rate limit: its client address (see [`HeaderRules::client`]), or
    /// the limiter's key for it.
    pub(crate) fn client_key(&self, outer: &http::HeaderMap, peer: IpAddr) -> ClientKey {
        let client = self.headers.client(outer, peer);
        match &self.rate_limit {
            Some(limiter) => limiter.address_key(client),
            None => ClientKey::Ip(client),
        }
    }

    /// One of `limits.max_batches`, or the batch is refused with 503.
    pub(crate) fn admit_batch(&self) -> Result<OwnedSemaphorePermit, BatchError> {
        self.batches
            .permits()
            .clone()
            .try_acquire_owned()
            .map_err(|_| BatchError::Overloaded(self.config.limits.max_batches))
    }

    /// The gauges `/metrics` reads at scrape time.
    pub(crate) fn gauges(&self) -> Gauges {
        Gauges {
            batches: self.batches_in_flight(),
            sub_requests: self.sub_requests_in_flight(),
            routes: self
                .routes
                .iter()
                .map(|route| {
                    let (in_flight, limit) = route.gauge();
                    (route.prefix().to_owned(), in_flight, limit)
                })
                .collect(),
            cache: self.cache.as_ref().and_then(|cache| cache.store.usage()),
        }
    }

    /// The Prometheus/OpenMetrics text `/metrics` serves: for a program that embeds the gateway and serves
    /// its metrics itself.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&self.gauges())
    }

    /// The JSON document `/admin/stats` serves (routes, tuning, recent batches).
    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::to_value(self.stats()).unwrap_or_default()
    }

    /// What `/admin/stats` shows.
    pub(crate) fn stats(&self) -> Stats {
        let routes: Vec<RouteState> = self
            .routes
            .iter()
            .map(|route| route.state(&self.metrics))
            .collect();
        self.observer.stats(
            &routes,
            self.sub_requests_in_flight(),
            self.config.limits.max_inflight,
            self.batches_in_flight(),
        )
    }

    /// The gateway-wide in-flight permits.
    pub(crate) fn global_inflight(&self) -> Arc<Semaphore> {
        self.inflight.permits().clone()
    }

    /// Sub-requests in flight right now, across all batches (and the gateways this one succeeds).
    pub fn sub_requests_in_flight(&self) -> usize {
        self.inflight.in_use()
    }

    /// Batches being served right now (from arrival until the last reply byte is out or the client is gone),
    /// likewise.
    pub fn batches_in_flight(&self) -> usize {
        self.batches.in_use()
    }
}
