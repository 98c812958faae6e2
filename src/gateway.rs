//! The gateway's shared state: configuration, routes and their service stacks, limits, metrics. Every
//! connection and batch holds it; the stages of a batch ([`crate::batch`]) read from it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::BatchError;
use crate::headers::HeaderRules;
use crate::metrics::Metrics;
use crate::route::{Route, Router};
use crate::stack::{PartService, Pools, RouteStack};
use crate::wire::PartLimits;

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    /// One service stack per route, indexed by `Route::id`.
    services: Vec<PartService>,
    pub metrics: Arc<Metrics>,
    pub headers: HeaderRules,
    pub part_limits: PartLimits,
    /// Sub-requests in flight across all batches.
    inflight: Arc<Semaphore>,
    /// Batches being served; a batch over the limit is refused at once with 503.
    batches: Arc<Semaphore>,
}

impl Gateway {
    /// Builds the gateway from a validated config.
    pub fn new(config: Config) -> Gateway {
        let limits = &config.limits;
        let metrics = Arc::new(Metrics::default());
        let pools = Pools::new(&config.upstream, metrics.clone());
        let inflight = Arc::new(Semaphore::new(limits.max_inflight));
        let services = config
            .routes
            .iter()
            .map(|route| {
                let (_, authority) = route.origin().expect("validated route upstream");
                RouteStack {
                    upstream: Arc::from(authority.as_str()),
                    http2: route.http2,
                    timeout: route.timeout.unwrap_or(limits.part_timeout),
                    strip_cookies: route.strip_cookies,
                    route_inflight: Arc::new(Semaphore::new(limits.max_inflight_per_upstream)),
                    global_inflight: inflight.clone(),
                    pools: &pools,
                    max_response_bytes: limits.max_response_bytes,
                }
                .build()
            })
            .collect();
        Gateway {
            router: Router::new(&config),
            services,
            metrics,
            headers: HeaderRules::new(&config),
            part_limits: PartLimits {
                max_headers: limits.max_part_headers,
                max_header_bytes: usize::try_from(limits.max_part_header_bytes)
                    .unwrap_or(usize::MAX),
            },
            inflight,
            batches: Arc::new(Semaphore::new(limits.max_batches)),
            config,
        }
    }

    /// The service stack parts routed to `route` go through.
    pub fn service(&self, route: &Route) -> PartService {
        self.services[route.id].clone()
    }

    /// One of `limits.max_batches`, or the batch is refused with 503.
    pub fn admit_batch(&self) -> Result<OwnedSemaphorePermit, BatchError> {
        self.batches
            .clone()
            .try_acquire_owned()
            .map_err(|_| BatchError::Overloaded(self.config.limits.max_batches))
    }

    /// Sub-requests in flight right now, across all batches.
    pub fn sub_requests_in_flight(&self) -> usize {
        self.config.limits.max_inflight - self.inflight.available_permits()
    }

    /// Batches being served right now (from arrival until the last reply byte is out or the client is gone).
    pub fn batches_in_flight(&self) -> usize {
        self.config.limits.max_batches - self.batches.available_permits()
    }
}
