//! `[rate_limit]`: a token bucket per client.

use serde::Deserialize;

use super::ConfigError;
use super::check::{MAX_PERMITS, check_count, invalid};

/// `[rate_limit]`: a token bucket per client; each part takes a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Tokens added per second.
    pub parts_per_second: f64,
    /// The bucket's size: parts a client may send at once after a pause.
    pub burst: u32,
    /// Who a client is.
    pub key: RateLimitKey,
    /// IPv6 clients are one client per network of this prefix length: a single host is commonly given a
    /// whole /64, so one bucket per address would give it 2^64 of them.
    pub ipv6_prefix: u8,
    /// Clients tracked at once; the least recently seen are forgotten past it.
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            parts_per_second: 100.0,
            burst: 200,
            key: RateLimitKey::ClientIp,
            ipv6_prefix: 64,
            max_clients: 100_000,
        }
    }
}

/// What identifies a client to the rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// The peer's address (or, from a trusted proxy, the client address it forwards).
    #[default]
    ClientIp,
    /// A hash of the `Authorization` header each part is sent upstream with, its own or the one it inherits
    /// from the batch (parts sent without one are keyed by the client's address).
    Authorization,
}

impl RateLimitConfig {
    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.parts_per_second > 0.0 && self.parts_per_second <= 1e9) {
            return Err(invalid(format!(
                "rate_limit.parts_per_second = {} must be above 0 (and at most 1e9)",
                self.parts_per_second
            )));
        }
        check_count("rate_limit.burst", self.burst as usize, 1, MAX_PERMITS)?;
        check_count("rate_limit.max_clients", self.max_clients, 1, 10_000_000)?;
        check_count(
            "rate_limit.ipv6_prefix",
            usize::from(self.ipv6_prefix),
            32,
            128,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::refused;

    #[test]
    fn the_ipv6_prefix_of_the_rate_limit_is_a_network_size() {
        let c = Config::from_toml("[rate_limit]\nipv6_prefix = 48").unwrap();
        assert_eq!(c.rate_limit.unwrap().ipv6_prefix, 48);
        assert_eq!(RateLimitConfig::default().ipv6_prefix, 64);
        for bad in ["31", "129", "0"] {
            refused(
                &format!("[rate_limit]\nipv6_prefix = {bad}"),
                "rate_limit.ipv6_prefix",
                &["32 to 128"],
            );
        }
    }
}
