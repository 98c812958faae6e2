//! `[admin]`: the operators' listener.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{MAX_PARTS, check_count, invalid};
use super::{Config, ConfigError};

/// `[admin]`: the operators' listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/metrics`, `/admin/stats` and `/admin/dashboard` are served. Keep it private.
    pub listen: SocketAddr,
    /// `Host` values the listener answers besides its own address and the loopback names (`localhost`,
    /// `127.0.0.1`, `[::1]`): a page on a DNS-rebinding name is refused, whatever address it resolves to.
    /// `"name"` takes any port, `"name:port"` that port only.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Serve `/metrics` on `listen` too (by default, with `[admin]`, only the admin listener serves it).
    #[serde(default)]
    pub public_metrics: bool,
    /// Parts of each recent batch `/admin/stats` keeps and shows; the rest are counted (`parts_omitted`).
    #[serde(default = "AdminConfig::default_stats_parts_per_batch")]
    pub stats_parts_per_batch: usize,
}

impl AdminConfig {
    fn default_stats_parts_per_batch() -> usize {
        100
    }
}

impl Config {
    /// Whether the main listener serves `/metrics`: always without `[admin]` (the only place to scrape it),
    /// with it only when `admin.public_metrics` says so.
    pub fn public_metrics(&self) -> bool {
        self.admin.as_ref().is_none_or(|admin| admin.public_metrics)
    }

    /// Parts of each recent batch the observer keeps for `/admin/stats` (its default without `[admin]`).
    pub fn stats_parts_per_batch(&self) -> usize {
        self.admin
            .as_ref()
            .map_or(AdminConfig::default_stats_parts_per_batch(), |admin| {
                admin.stats_parts_per_batch
            })
    }
}

impl AdminConfig {
    /// Checks this section's values; `listen` is the main listener's, which the admin one must not share.
    pub(super) fn validate(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.listen == listen && self.listen.port() != 0 {
            return Err(invalid(format!(
                "admin.listen {} is the same address as listen: give the admin listener its own",
                self.listen
            )));
        }
        check_count(
            "admin.stats_parts_per_batch",
            self.stats_parts_per_batch,
            0,
            MAX_PARTS,
        )?;
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let authority = host.parse::<http::uri::Authority>();
            if !authority.is_ok_and(|a| !a.host().is_empty() && !a.as_str().contains('@')) {
                return Err(invalid(format!(
                    "admin.allowed_hosts[{i}] {host:?} is not a host name or \"host:port\""
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessLog;
    use crate::config::tests::refused;

    /// `[admin]`'s keys as config.toml documents them (commented out) are the defaults; bad values name the key.
    #[test]
    fn admin_keys_default_as_documented_and_are_checked() {
        let text = include_str!("../../config.toml");
        let section: String = text
            .lines()
            .skip_while(|l| *l != "# [admin]")
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with(' '))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap()))
            .collect();
        let shipped = Config::from_toml(&section).unwrap();
        let admin = shipped.admin.as_ref().unwrap();
        assert!(admin.allowed_hosts.is_empty() && !admin.public_metrics);
        assert_eq!(
            admin.stats_parts_per_batch,
            AdminConfig::default_stats_parts_per_batch()
        );
        assert_eq!(
            shipped.stats_parts_per_batch(),
            Config::default().stats_parts_per_batch()
        );
        assert!(!shipped.public_metrics() && Config::default().public_metrics());

        let admin = |extra: &str| format!("[admin]\nlisten = \"127.0.0.1:9901\"\n{extra}");
        refused(
            &admin("stats_parts_per_batch = 10001"),
            "admin.stats_parts_per_batch",
            &["0 to 10000"],
        );
        for host in ["", "u@h", "bad host", "h/x"] {
            refused(
                &admin(&format!("allowed_hosts = [\"ok\", {host:?}]")),
                "admin.allowed_hosts[1]",
                &[],
            );
        }
        Config::from_toml(&admin(
            "allowed_hosts = [\"admin.internal\", \"10.0.0.5:9901\", \"[fd00::1]:9901\"]",
        ))
        .unwrap();
        refused("access_log = \"paths\"", "access_log", &[]);
        assert_eq!(
            Config::from_toml("access_log = \"parts\"")
                .unwrap()
                .access_log,
            AccessLog::Parts
        );
    }
}
