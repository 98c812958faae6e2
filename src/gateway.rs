//! The gateway's shared state: configuration, routes and their service stacks, limits, metrics. Every
//! connection and batch holds it; the stages of a batch ([`crate::batch`]) read from it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, ConfigError, HttpVersion};
use crate::error::BatchError;
use crate::headers::HeaderRules;
use crate::metrics::{Gauges, Metrics};
use crate::observe::{Observer, RouteState, Stats};
use crate::route::{Route, Router};
use crate::stack::adaptive::AdaptiveLimiter;
use crate::stack::balance::{Balancer, Upstream};
use crate::stack::connect::TlsTarget;
use crate::stack::endpoint::{Endpoint, EndpointSettings};
use crate::stack::limit::Capacity;
use crate::stack::ratelimit::RateLimiter;
use crate::stack::retry::Budget;
use crate::stack::rewrite::Mapping;
use crate::stack::{PartService, Permits, RouteLimit, RouteStack};
use crate::tls::ClientTls;
use batchgate_wire::PartLimits;

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    /// One service stack per route, indexed by `Route::id`.
    services: Vec<PartService>,
    /// Each route's balancer, by prefix: readiness reads their endpoints' health.
    balancers: Vec<(String, Balancer)>,
    /// Each route's in-flight limit, by prefix and upstreams (the route's identity across reloads), for the
    /// scheduler, the gauges and stats.
    route_limits: Vec<(String, Arc<str>, RouteLimit)>,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<Observer>,
    /// The per-client limit on parts, shared by every route's stack (and kept by a reload that names clients
    /// the same way).
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub headers: HeaderRules,
    pub part_limits: PartLimits,
    /// Sub-requests in flight across all batches, shared with the gateways this one succeeds.
    inflight: Arc<Capacity>,
    /// Batches being served, likewise; a batch over the limit is refused at once with 503.
    batches: Arc<Capacity>,
}

impl Gateway {
    /// Builds the gateway from a validated config. Fails on what only building can find: certificate and key
    /// files that cannot be read or used.
    pub fn new(config: Config) -> Result<Gateway, ConfigError> {
        Gateway::build(config, None)
    }

    /// A gateway for a reloaded config that goes on counting into `previous`'s metrics and observations, and
    /// shares its in-flight limits and rate-limit buckets (batches still running on `previous` count against
    /// this one's limits; the new sizes apply when it is served, [`Gateway::take_over_limits`]), and keeps the
    /// passive health of the upstream addresses that stay.
    pub fn succeeding(config: Config, previous: &Gateway) -> Result<Gateway, ConfigError> {
        let next = Gateway::build(config, Some(previous))?;
        next.carry_health(previous);
        Ok(next)
    }

    /// Each route's balancer takes over the health of the same route's addresses in `previous` (by prefix):
    /// an ejected address stays ejected, an address on probation stays so.
    fn carry_health(&self, previous: &Gateway) {
        for (prefix, balancer) in &self.balancers {
            if let Some((_, before)) = previous.balancers.iter().find(|(p, _)| p == prefix) {
                balancer.carry_health(before);
            }
        }
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
        let mut services = Vec::with_capacity(config.routes.len());
        let mut balancers = Vec::with_capacity(config.routes.len());
        let mut route_limits = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let origins = route
                .origins()
                .map_err(|why| ConfigError::Invalid(format!("routes[{i}].{why}")))?;
            let key = format!("routes[{i}]");
            let tls = if origins[0].is_tls() {
                let ca_file = route.ca_file.as_deref();
                let client_cert = route
                    .client_cert
                    .as_deref()
                    .zip(route.client_key.as_deref());
                Some(
                    ClientTls {
                        key: &key,
                        ca_file,
                        client_cert,
                        http_version: route.http_version,
                    }
                    .config()?,
                )
            } else {
                None
            };
            let mut upstreams = Vec::with_capacity(origins.len());
            for origin in &origins {
                let tls = match &tls {
                    None => None,
                    Some(config) => Some(TlsTarget {
                        config: config.clone(),
                        server_name: Endpoint::server_name(origin)
                            .map_err(|why| ConfigError::Invalid(format!("{key}: {why}")))?,
                    }),
                };
                upstreams.push(Upstream {
                    origin: origin.clone(),
                    tls,
                });
            }
            let balancer = Balancer::new(
                upstreams,
                route.balance,
                EndpointSettings {
                    upstream: config.upstream.clone(),
                    http2_prior_knowledge: route.http_version == HttpVersion::Http2,
                    max_response_bytes: limits.max_response_bytes,
                    metrics: metrics.clone(),
                    route: Arc::from(route.prefix.as_str()),
                },
            );
            let label: Vec<String> = origins.iter().map(ToString::to_string).collect();
            let upstream: Arc<str> = Arc::from(label.join(", "));
            let kept = previous.and_then(|p| {
                p.route_limits
                    .iter()
                    .find(|(prefix, up, _)| *prefix == route.prefix && *up == upstream)
                    .map(|(_, _, limit)| limit)
            });
            let route_limit = match (route.adaptive_concurrency, kept) {
                (Some(_), Some(kept @ RouteLimit::Adaptive(_)))
                | (None, Some(kept @ RouteLimit::Fixed(_))) => kept.clone(),
                (Some(bounds), _) => RouteLimit::Adaptive(Arc::new(AdaptiveLimiter::new(
                    Arc::from(route.prefix.as_str()),
                    bounds,
                    observer.clone(),
                ))),
                (None, _) => {
                    observer.set_limit(&route.prefix, limits.max_inflight_per_upstream);
                    RouteLimit::Fixed(Arc::new(Capacity::new(limits.max_inflight_per_upstream)))
                }
            };
            route_limits.push((route.prefix.clone(), upstream.clone(), route_limit.clone()));
            let service = RouteStack {
                upstream,
                timeout: route.timeout.unwrap_or(limits.part_timeout),
                timeout_key: Arc::from(match route.timeout {
                    Some(_) => format!("routes[{i}].timeout"),
                    None => "limits.part_timeout".to_owned(),
                }),
                strip_cookies: route.strip_cookies,
                mapping: Mapping {
                    prefix: route.prefix.clone(),
                    rewrite: route.rewrite.clone(),
                    origins,
                },
                retries: route.retries,
                metrics: metrics.clone(),
                retry_backoff: config.upstream.retry_backoff,
                budget: Budget::new(
                    config.upstream.retry_budget,
                    config.upstream.retry_budget_min,
                ),
                route_limit,
                global_inflight: inflight.permits().clone(),
                max_response_bytes: limits.max_response_bytes,
                balancer: balancer.clone(),
                rate_limit: rate_limit.clone(),
            }
            .build();
            services.push(service);
            balancers.push((route.prefix.clone(), balancer));
        }
        Ok(Gateway {
            router: Router::new(&config),
            services,
            balancers,
            route_limits,
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
            config,
        })
    }

    /// Sets the limits this gateway shares with the gateways it succeeds to its own config's: the in-flight
    /// limits are resized, tuned limits take the new bounds, and the rate limit its new rate and burst. Called
    /// as it is swapped in, so that a reload refused after building it changes nothing.
    pub fn take_over_limits(&self) {
        let limits = &self.config.limits;
        self.inflight.resize(limits.max_inflight);
        self.batches.resize(limits.max_batches);
        for ((prefix, _, limit), route) in self.route_limits.iter().zip(&self.config.routes) {
            match limit {
                RouteLimit::Adaptive(limiter) => {
                    // Built from this route: it has bounds.
                    if let Some(bounds) = route.adaptive_concurrency {
                        limiter.set_bounds(bounds);
                    }
                }
                RouteLimit::Fixed(capacity) => {
                    capacity.resize(limits.max_inflight_per_upstream);
                    self.observer
                        .set_limit(prefix, limits.max_inflight_per_upstream);
                }
            }
        }
        if let (Some(limiter), Some(config)) = (&self.rate_limit, &self.config.rate_limit) {
            limiter.reconfigure(config);
        }
    }

    /// Routes none of whose upstreams can take parts now (all ejected, or none resolved), by prefix.
    pub fn unready_routes(&self) -> Vec<&str> {
        self.balancers
            .iter()
            .filter(|(_, balancer)| !balancer.ready())
            .map(|(prefix, _)| prefix.as_str())
            .collect()
    }

    /// The service stack parts routed to `route` go through.
    pub fn service(&self, route: &Route) -> PartService {
        self.services[route.id].clone()
    }

    /// The permits parts routed to `route` take before entering its stack.
    pub fn permits(&self, route: &Route) -> Permits {
        self.route_limits[route.id].2.permits()
    }

    /// One of `limits.max_batches`, or the batch is refused with 503.
    pub fn admit_batch(&self) -> Result<OwnedSemaphorePermit, BatchError> {
        self.batches
            .permits()
            .clone()
            .try_acquire_owned()
            .map_err(|_| BatchError::Overloaded(self.config.limits.max_batches))
    }

    /// The gauges `/metrics` reads at scrape time.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            batches: self.batches_in_flight(),
            sub_requests: self.sub_requests_in_flight(),
            routes: self
                .route_limits
                .iter()
                .map(|(prefix, _, limit)| {
                    let (in_flight, limit) = limit.gauge();
                    (prefix.clone(), in_flight, limit)
                })
                .collect(),
        }
    }

    /// What `/admin/stats` shows.
    pub fn stats(&self) -> Stats {
        let routes: Vec<RouteState> = self
            .route_limits
            .iter()
            .map(|(prefix, _, limit)| RouteState {
                route: prefix.clone(),
                in_flight: limit.gauge().0,
                adaptive: matches!(limit, RouteLimit::Adaptive(_)),
                upstreams: self
                    .balancers
                    .iter()
                    .find(|(route, _)| route == prefix)
                    .map(|(_, balancer)| balancer.health())
                    .unwrap_or_default(),
            })
            .collect();
        self.observer.stats(
            &routes,
            self.sub_requests_in_flight(),
            self.config.limits.max_inflight,
            self.batches_in_flight(),
        )
    }

    /// The gateway-wide in-flight permits.
    pub fn global_inflight(&self) -> Arc<Semaphore> {
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
