//! `[upstream]`: the shared upstream connection pool, ejection and retries.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::check::{MAX_DURATION, MAX_PERMITS, MIN_TIMEOUT, check_count, check_duration, invalid};
use super::units::de_duration;

/// Most idle upstream connections kept per upstream.
const MAX_IDLE_PER_HOST: usize = 100_000;
/// Consecutive failures before an upstream address is ejected.
const MAX_EJECT_AFTER: usize = 1000;

/// The shared upstream connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// TCP connect and TLS handshake to an upstream together; failing, the part is a 502.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[serde(deserialize_with = "de_duration")]
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per upstream (0: none, a new connection per sub-request), by each
    /// worker runtime for HTTP/1.1-only addresses.
    pub pool_max_idle_per_host: usize,
    /// Consecutive failures (connect errors, resets, 502/503/504) that eject an upstream address.
    pub eject_after: u32,
    /// How long a first ejection lasts; each further one in a row doubles it, up to `eject_max`.
    #[serde(deserialize_with = "de_duration")]
    pub eject_for: Duration,
    /// The longest an ejection lasts, however often it repeats (at least `eject_for`).
    #[serde(deserialize_with = "de_duration")]
    pub eject_max: Duration,
    /// How often upstream host names are resolved again.
    #[serde(deserialize_with = "de_duration")]
    pub resolve_every: Duration,
    /// Retries allowed on top of requests, as a fraction of the requests of the last 10 seconds, per route.
    pub retry_budget: f64,
    /// Retries per second a route may always make, whatever the budget.
    pub retry_budget_min: u32,
    /// The first retry waits up to this (jittered); each further one up to twice the last.
    #[serde(deserialize_with = "de_duration")]
    pub retry_backoff: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            eject_after: 3,
            eject_for: Duration::from_secs(5),
            eject_max: Duration::from_secs(60),
            resolve_every: Duration::from_secs(30),
            retry_budget: 0.2,
            retry_budget_min: 10,
            retry_backoff: Duration::from_millis(25),
        }
    }
}

impl UpstreamSettings {
    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let u = self;
        check_count(
            "upstream.eject_after",
            u.eject_after as usize,
            1,
            MAX_EJECT_AFTER,
        )?;
        for (key, value) in [
            ("upstream.eject_for", u.eject_for),
            ("upstream.eject_max", u.eject_max),
            ("upstream.resolve_every", u.resolve_every),
            ("upstream.retry_backoff", u.retry_backoff),
        ] {
            check_duration(key, value, MIN_TIMEOUT, MAX_DURATION)?;
        }
        if u.eject_max < u.eject_for {
            return Err(invalid(format!(
                "upstream.eject_max ({:?}) must be at least upstream.eject_for ({:?})",
                u.eject_max, u.eject_for
            )));
        }
        if !(0.0..=1.0).contains(&u.retry_budget) {
            return Err(invalid(format!(
                "upstream.retry_budget = {} must be a fraction from 0.0 to 1.0",
                u.retry_budget
            )));
        }
        check_count(
            "upstream.retry_budget_min",
            u.retry_budget_min as usize,
            0,
            MAX_PERMITS,
        )?;
        check_duration(
            "upstream.connect_timeout",
            u.connect_timeout,
            MIN_TIMEOUT,
            MAX_DURATION,
        )?;
        check_duration(
            "upstream.pool_idle_timeout",
            u.pool_idle_timeout,
            MIN_TIMEOUT,
            MAX_DURATION,
        )?;
        // Zero is meaningful here: keep no idle connection.
        check_count(
            "upstream.pool_max_idle_per_host",
            u.pool_max_idle_per_host,
            0,
            MAX_IDLE_PER_HOST,
        )
    }
}
