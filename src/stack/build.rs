//! One route's stack, built from its `[[routes]]` entry and held as one handle: the type-erased
//! [`PartService`], the balancer under it and the route's in-flight limit. A layer is added in
//! [`RouteStack::build`] and nowhere else.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::adaptive::{AdaptiveLayer, AdaptiveLimiter};
use super::balance::{Balancer, Upstream};
use super::cache::CacheLayer;
use super::connect::TlsTarget;
use super::fields::FieldsLayer;
use super::limit::{Capacity, InflightLayer};
use super::policy::PolicyLayer;
use super::pool::{Pool, PoolSettings};
use super::prune::PruneLayer;
use super::ratelimit::{RateLimitLayer, RateLimiter};
use super::retry::{Budget, RetryLayer};
use super::rewrite::{Mapping, RewriteLayer};
use super::rules::RulesLayer;
use super::timeout::TimeoutLayer;
use super::{PartService, Permits, RouteLimit};
use crate::cache::CacheHandle;
use crate::config::{
    AdaptiveConcurrency, ConfigError, HttpVersion, Limits, RouteConfig, UpstreamSettings,
};
use crate::metrics::Metrics;
use crate::observe::{Observer, RouteState};
use crate::tls::ClientTls;

/// What every route's stack is built with besides its own entry: the gateway's settings, and the state its
/// routes share (and a reload keeps).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared<'a> {
    pub limits: &'a Limits,
    pub upstream: &'a UpstreamSettings,
    /// Where retries, upstream errors and response sizes are counted.
    pub metrics: &'a Arc<Metrics>,
    /// Where tuned limits report and fixed ones are shown.
    pub observer: &'a Arc<Observer>,
    /// The gateway's per-client limit, shared by every route.
    pub rate_limit: Option<&'a Arc<RateLimiter>>,
    /// Sub-requests in flight across the gateway.
    pub global_inflight: &'a Arc<Semaphore>,
    /// The `[cache]` routes with `cache = true` keep their answers in.
    pub cache: Option<&'a CacheHandle>,
}

/// One route's stack and what the gateway asks of it besides calls: its permits, readiness, gauges and the
/// state a reload carries over.
#[derive(Debug)]
pub(crate) struct RouteStack {
    prefix: String,
    /// The route's upstreams as one label: named in error messages and, with the prefix, the route's identity
    /// across reloads.
    upstream: Arc<str>,
    /// Shared: a batch's part holds this until its permits are taken, and only then its own clone (200 bytes),
    /// so parts that wait hold none.
    service: Arc<PartService>,
    /// Readiness and stats read its pools' health; a reload carries that health over.
    balancer: Balancer,
    /// Sub-requests in flight to this route, across all batches (and the gateways this one succeeds).
    limit: RouteLimit,
    /// The bounds a tuned limit is held within, from this route's entry.
    adaptive: Option<AdaptiveConcurrency>,
    /// Whether the route caches (`cache = true`): its stats then show its hit ratio.
    cached: bool,
}

impl RouteStack {
    /// Builds `routes[index]`'s stack. With `previous`, the same route (same prefix) in the gateway this one
    /// succeeds: its addresses' passive health is carried over, and its in-flight limit kept (shared) when the
    /// upstreams and the kind of limit are unchanged. Fails on certificate and key files that cannot be read
    /// or used.
    pub(crate) fn build(
        index: usize,
        route: &RouteConfig,
        shared: Shared<'_>,
        previous: Option<&RouteStack>,
    ) -> Result<RouteStack, ConfigError> {
        let key = format!("routes[{index}]");
        let origins = route
            .origins()
            .map_err(|why| ConfigError::Invalid(format!("{key}.{why}")))?;
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
                    server_name: Pool::server_name(origin)
                        .map_err(|why| ConfigError::Invalid(format!("{key}: {why}")))?,
                }),
            };
            upstreams.push(Upstream {
                origin: origin.clone(),
                tls,
            });
        }
        let limits = shared.limits;
        // The route's name in metrics, stats and the tuning history.
        let name: Arc<str> = Arc::from(route.prefix.as_str());
        let balancer = Balancer::new(
            upstreams,
            route.balance,
            PoolSettings {
                upstream: shared.upstream.clone(),
                http2_prior_knowledge: route.http_version == HttpVersion::Http2,
                max_response_bytes: limits.max_response_bytes,
                metrics: shared.metrics.clone(),
                route: name.clone(),
            },
        );
        if let Some(previous) = previous {
            balancer.carry_health(&previous.balancer);
        }
        let label: Vec<String> = origins.iter().map(ToString::to_string).collect();
        let upstream: Arc<str> = Arc::from(label.join(", "));
        let kept = previous
            .filter(|p| p.prefix == route.prefix && p.upstream == upstream)
            .map(|p| &p.limit);
        let limit = match (route.adaptive_concurrency, kept) {
            (Some(_), Some(kept @ RouteLimit::Adaptive(_)))
            | (None, Some(kept @ RouteLimit::Fixed(_))) => kept.clone(),
            (Some(bounds), _) => RouteLimit::Adaptive(Arc::new(AdaptiveLimiter::new(
                name.clone(),
                bounds,
                shared.observer.clone(),
            ))),
            (None, _) => {
                shared
                    .observer
                    .set_limit(&route.prefix, limits.max_inflight_per_upstream);
                RouteLimit::Fixed(Arc::new(Capacity::new(limits.max_inflight_per_upstream)))
            }
        };

        let timeout_key: Arc<str> = Arc::from(match route.timeout {
            Some(_) => format!("{key}.timeout"),
            None => "limits.part_timeout".to_owned(),
        });
        let retries = route.retries;
        let mapping = Arc::new(Mapping {
            prefix: route.prefix.clone(),
            rewrite: route.rewrite.clone(),
            origins,
        });
        // Validation refuses `cache = true` without a `[cache]`.
        let cache = shared.cache.filter(|_| route.cache).cloned();
        let cached = cache.is_some();
        let cache_layer = (cache.is_some() || route.coalesces()).then(|| {
            CacheLayer::new(
                name.clone(),
                mapping.clone(),
                cache,
                route.coalesces(),
                shared.metrics.clone(),
            )
        });
        let service = ServiceBuilder::new()
            .layer(PolicyLayer::new(route.strip_cookies))
            .option_layer(shared.rate_limit.cloned().map(RateLimitLayer::new))
            .layer(RewriteLayer::new(mapping))
            .option_layer(route.prune_headers.then_some(PruneLayer))
            .option_layer(route.fields.then_some(FieldsLayer))
            .option_layer(cache_layer)
            .layer(TimeoutLayer::new(
                route.timeout.unwrap_or(limits.part_timeout),
                timeout_key,
                upstream.clone(),
                retries > 0 || matches!(limit, RouteLimit::Adaptive(_)),
            ))
            .option_layer((retries > 0).then(|| {
                RetryLayer::new(
                    retries,
                    shared.upstream.retry_backoff,
                    Budget::new(
                        shared.upstream.retry_budget,
                        shared.upstream.retry_budget_min,
                    ),
                    (shared.metrics.clone(), name.clone()),
                )
            }))
            // A fixed limit and the gateway-wide one are taken by the scheduler, before the part enters the
            // stack (see `Permits`); a tuned limit is a layer, with the gateway-wide one below it.
            .option_layer(match &limit {
                RouteLimit::Adaptive(limiter) => Some((
                    AdaptiveLayer::new(limiter.clone()),
                    InflightLayer::new(shared.global_inflight.clone()),
                )),
                RouteLimit::Fixed(_) => None,
            })
            .layer(RulesLayer::new(upstream.clone(), limits.max_response_bytes))
            .service(balancer.clone());
        Ok(RouteStack {
            prefix: route.prefix.clone(),
            upstream,
            service: Arc::new(BoxCloneSyncService::new(service)),
            balancer,
            limit,
            adaptive: route.adaptive_concurrency,
            cached,
        })
    }

    /// The route's prefix, as configured.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stack parts routed here go through.
    pub(crate) fn service(&self) -> PartService {
        PartService::clone(&self.service)
    }

    /// The stack parts routed here go through, shared, for a part to clone when it is called.
    pub(crate) fn shared_service(&self) -> Arc<PartService> {
        self.service.clone()
    }

    /// The permits parts routed here take before entering the stack.
    pub(crate) fn permits(&self) -> Permits {
        self.limit.permits()
    }

    /// Whether some upstream address can take parts now (not all ejected, some resolved).
    pub(crate) fn ready(&self) -> bool {
        self.balancer.ready()
    }

    /// Sub-requests in flight to the route, and its limit now.
    pub(crate) fn gauge(&self) -> (usize, usize) {
        self.limit.gauge()
    }

    /// The route as `/admin/stats` shows it; its cache figures come from `metrics`.
    pub(crate) fn state(&self, metrics: &Metrics) -> RouteState {
        RouteState {
            route: self.prefix.clone(),
            in_flight: self.limit.gauge().0,
            adaptive: matches!(self.limit, RouteLimit::Adaptive(_)),
            upstreams: self.balancer.health(),
            cache: self.cached.then(|| metrics.cache_stats(&self.prefix)),
        }
    }

    /// Sets the limit this route may share with the gateways this one succeeds to its own entry's: a tuned
    /// limit takes its bounds, a fixed one `max_inflight_per_upstream`.
    pub(crate) fn take_over_limit(&self, limits: &Limits, observer: &Observer) {
        match &self.limit {
            RouteLimit::Adaptive(limiter) => {
                // Built from this route: it has bounds.
                if let Some(bounds) = self.adaptive {
                    limiter.set_bounds(bounds);
                }
            }
            RouteLimit::Fixed(capacity) => {
                capacity.resize(limits.max_inflight_per_upstream);
                observer.set_limit(&self.prefix, limits.max_inflight_per_upstream);
            }
        }
    }
}
