//! Each upstream address's passive health, as `/admin/stats` and the dashboard show it: whether the balancer
//! sends it parts, and if not, why and from when until when.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::UpstreamSettings;

/// A copy of an upstream address's passive health (the balancer's pool makes it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthView {
    /// Failures in a row since the last success.
    pub failures: u32,
    /// Ejections in a row without a success in between.
    pub ejections: u32,
    /// Out until then; once past it, the next part probes it.
    pub ejected_until: Option<Instant>,
    /// A part is probing it.
    pub probing: bool,
}

/// Whether the balancer sends an address parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AddressState {
    /// In rotation (it may have failed fewer than `upstream.eject_after` times in a row).
    Healthy,
    /// Out until `ejected_until_unix_ms`.
    Ejected,
    /// Its ejection is over: the next part it gets is the probe that lets it back in.
    ProbeDue,
    /// One part is probing it; the others stay away until that part's outcome.
    Probing,
}

/// One address of a route's upstreams.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AddressHealth {
    /// The upstream as configured, with the address when it is a name (`api.internal:80 (10.0.0.5:80)`).
    pub upstream: String,
    pub address: SocketAddr,
    pub state: AddressState,
    /// Failures in a row since its last success (`upstream.eject_after` of them eject it).
    pub failures: u32,
    /// Ejections in a row without a success in between (each doubles the next one, up to `eject_max`).
    pub ejections: u32,
    /// Why it is not healthy, in words.
    pub reason: Option<String>,
    /// When its current ejection (or probe) began and when it ends, Unix milliseconds.
    pub since_unix_ms: Option<u64>,
    pub until_unix_ms: Option<u64>,
    pub in_flight: usize,
}

impl AddressHealth {
    /// Describes a pool's health `view` at `now`.
    pub(crate) fn describe(
        upstream: &str,
        address: SocketAddr,
        view: HealthView,
        in_flight: usize,
        settings: &UpstreamSettings,
        now: Instant,
    ) -> AddressHealth {
        let mut health = AddressHealth {
            upstream: upstream.to_owned(),
            address,
            state: AddressState::Healthy,
            failures: view.failures,
            ejections: view.ejections,
            reason: None,
            since_unix_ms: None,
            until_unix_ms: None,
            in_flight,
        };
        let Some(until) = view.ejected_until else {
            return health;
        };
        let (state, began, reason) = if view.probing {
            // A probe holds the address for `eject_for` at most.
            (
                AddressState::Probing,
                until.checked_sub(settings.eject_for),
                "its ejection is over; one part is probing it".to_owned(),
            )
        } else {
            // The ejection that set `until` lasted `eject_for` doubled once per earlier ejection in a row.
            let period = settings
                .eject_for
                .saturating_mul(1u32 << view.ejections.saturating_sub(1).min(16))
                .min(settings.eject_max);
            let why = if view.ejections <= 1 {
                format!(
                    "failed {} times in a row (upstream.eject_after) and was ejected for {period:?}",
                    settings.eject_after
                )
            } else {
                format!(
                    "failed its probe after ejection {} in a row and was ejected for {period:?}",
                    view.ejections - 1
                )
            };
            let state = if until > now {
                AddressState::Ejected
            } else {
                AddressState::ProbeDue
            };
            (state, until.checked_sub(period), why)
        };
        health.state = state;
        health.reason = Some(reason);
        health.since_unix_ms = began.map(|at| unix_ms(at, now));
        health.until_unix_ms = Some(unix_ms(until, now));
        health
    }
}

/// The wall-clock time of `at`, in Unix milliseconds.
fn unix_ms(at: Instant, now: Instant) -> u64 {
    let wall = SystemTime::now();
    let wall = if at >= now {
        wall + (at - now)
    } else {
        wall.checked_sub(now - at).unwrap_or(wall)
    };
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(failures: u32, ejections: u32, until: Option<Instant>, probing: bool) -> HealthView {
        HealthView {
            failures,
            ejections,
            ejected_until: until,
            probing,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn states_reasons_and_times() {
        let settings = UpstreamSettings::default();
        let addr: SocketAddr = "10.0.0.5:80".parse().unwrap();
        let now = Instant::now();
        let describe = |v| AddressHealth::describe("api:80", addr, v, 0, &settings, now);

        let healthy = describe(view(2, 0, None, false));
        assert_eq!(healthy.state, AddressState::Healthy);
        assert_eq!((healthy.failures, healthy.reason), (2, None));

        // Ejected a second ago for eject_for (5 s): since one second ago, until four seconds from now.
        let first = describe(view(0, 1, Some(now + Duration::from_secs(4)), false));
        assert_eq!(first.state, AddressState::Ejected);
        assert!(first.reason.unwrap().contains("failed 3 times in a row"));
        assert_eq!(
            first.until_unix_ms.unwrap() - first.since_unix_ms.unwrap(),
            5000
        );

        // A failed probe: the second ejection in a row lasts twice as long.
        let second = describe(view(0, 2, Some(now + Duration::from_secs(10)), false));
        assert!(second.reason.unwrap().contains("failed its probe"));
        assert_eq!(
            second.until_unix_ms.unwrap() - second.since_unix_ms.unwrap(),
            10_000
        );

        let due = describe(view(0, 1, Some(now), false));
        assert_eq!(due.state, AddressState::ProbeDue);
        let probing = describe(view(0, 1, Some(now + Duration::from_secs(5)), true));
        assert_eq!(probing.state, AddressState::Probing);
    }
}
