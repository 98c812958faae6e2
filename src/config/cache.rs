//! `[cache]`: the shared HTTP cache (RFC 9111) that routes with `cache = true` store their GET answers in
//! (the cache itself is `crate::cache`).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::check::{check_duration, check_size, invalid};
use super::units::{de_bytes, de_duration};

/// Most `cache.max_bytes`: far above any sensible memory store, below what a size could overflow on.
const MAX_CACHE_BYTES: u64 = 1 << 40;
/// Most `cache.max_entry_bytes`: one entry's weight must fit the store's 32-bit weigher with room to spare.
const MAX_ENTRY_BYTES: u64 = 1 << 30;
/// Shortest and longest `cache.redis_timeout`: a cache that waits longer than the upstream would is worse than
/// none, and a zero timeout would make every lookup a miss.
const MIN_REDIS_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// `[cache]` in the config: where cached answers are kept, and how big they may be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "CacheToml")]
pub struct CacheConfig {
    /// The bound of the memory store, counting keys, headers and bodies (default 256MiB).
    pub max_bytes: u64,
    /// Larger answers pass through uncached (default 1MiB; at most `max_bytes`).
    pub max_entry_bytes: u64,
    /// Where entries are kept.
    pub backend: Backend,
}

/// Where cached answers are kept (`cache.backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In this process, bounded by `cache.max_bytes` (`backend = "memory"`, the default).
    Memory,
    /// In Redis, one cache shared by every instance (`backend = "redis"`).
    Redis {
        /// `cache.redis_url`: `redis://` or `rediss://`.
        url: String,
        /// `cache.redis_timeout`: how long a lookup or store may take before it counts as a miss.
        timeout: Duration,
    },
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 256 << 20,
            max_entry_bytes: 1 << 20,
            backend: Backend::Memory,
        }
    }
}

/// The keys of `[cache]` as the file writes them; [`CacheConfig`] is what they mean.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CacheToml {
    #[serde(deserialize_with = "de_bytes")]
    max_bytes: u64,
    #[serde(deserialize_with = "de_bytes")]
    max_entry_bytes: u64,
    backend: BackendName,
    redis_url: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    redis_timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum BackendName {
    #[default]
    Memory,
    Redis,
}

impl Default for CacheToml {
    fn default() -> Self {
        let defaults = CacheConfig::default();
        CacheToml {
            max_bytes: defaults.max_bytes,
            max_entry_bytes: defaults.max_entry_bytes,
            backend: BackendName::Memory,
            redis_url: None,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }
}

/// `cache.redis_timeout` when not given.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

impl TryFrom<CacheToml> for CacheConfig {
    type Error = String;

    fn try_from(toml: CacheToml) -> Result<CacheConfig, String> {
        let backend = match (toml.backend, toml.redis_url) {
            (BackendName::Memory, None) => Backend::Memory,
            (BackendName::Memory, Some(_)) => {
                return Err(
                    "cache.redis_url is set but cache.backend is \"memory\": set backend = \"redis\" \
                     or remove redis_url"
                        .to_owned(),
                );
            }
            (BackendName::Redis, None) => {
                return Err(
                    "cache.backend = \"redis\" needs cache.redis_url, e.g. \"redis://127.0.0.1:6379/0\""
                        .to_owned(),
                );
            }
            (BackendName::Redis, Some(url)) => Backend::Redis {
                url,
                timeout: toml.redis_timeout,
            },
        };
        Ok(CacheConfig {
            max_bytes: toml.max_bytes,
            max_entry_bytes: toml.max_entry_bytes,
            backend,
        })
    }
}

impl CacheConfig {
    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_size("cache.max_bytes", self.max_bytes, MAX_CACHE_BYTES)?;
        check_size(
            "cache.max_entry_bytes",
            self.max_entry_bytes,
            self.max_bytes.min(MAX_ENTRY_BYTES),
        )?;
        if let Backend::Redis { url, timeout } = &self.backend {
            let scheme_ok = url.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "redis" | "rediss") && !rest.is_empty()
            });
            if !scheme_ok {
                let shown = super::origin::redact_userinfo(url);
                return Err(invalid(format!(
                    "cache.redis_url {shown:?} is not a URL like \"redis://127.0.0.1:6379/0\" (redis:// or rediss://)"
                )));
            }
            // What only the client can tell: a bad port or database, or rediss:// (TLS is not built in).
            if let Err(err) = redis::Client::open(url.as_str()) {
                let shown = super::origin::redact_userinfo(url);
                return Err(invalid(format!(
                    "cache.redis_url {shown:?} cannot be used: {err} (TLS, rediss://, is not supported: reach \
                     Redis over loopback or a private network with redis://)"
                )));
            }
            check_duration(
                "cache.redis_timeout",
                *timeout,
                MIN_REDIS_TIMEOUT,
                MAX_REDIS_TIMEOUT,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Backend, CacheConfig};
    use crate::config::Config;
    use crate::config::tests::{refused, route};

    #[test]
    fn cache_keys_have_defaults_and_ranges() {
        let c = Config::from_toml("[cache]").unwrap();
        assert_eq!(c.cache, Some(CacheConfig::default()));
        assert_eq!(c.cache.unwrap().max_bytes, 256 << 20);
        let c: Config = toml::from_str(
            "[cache]\nbackend = \"redis\"\nredis_url = \"rediss://u:p@h:6380/1\"\nredis_timeout = \"50ms\"",
        )
        .unwrap();
        assert_eq!(
            c.cache.unwrap().backend,
            Backend::Redis {
                url: "rediss://u:p@h:6380/1".to_owned(),
                timeout: Duration::from_millis(50)
            }
        );
        refused("[cache]\nmax_bytes = 0", "cache.max_bytes", &[]);
        refused(
            "[cache]\nmax_bytes = \"1MiB\"\nmax_entry_bytes = \"2MiB\"",
            "cache.max_entry_bytes",
            &[],
        );
        refused("[cache]\nbackend = \"redis\"", "cache.redis_url", &[]);
        refused(
            "[cache]\nredis_url = \"redis://h\"",
            "cache.redis_url",
            &["memory"],
        );
        refused(
            "[cache]\nbackend = \"redis\"\nredis_url = \"http://u:s3cret@h\"",
            "cache.redis_url",
            &["redis://"],
        );
        refused(
            "[cache]\nbackend = \"redis\"\nredis_url = \"redis://h\"\nredis_timeout = \"1m\"",
            "cache.redis_timeout",
            &[],
        );
        refused("[cache]\nbackend = \"disk\"", "disk", &[]);
        let text = include_str!("../../config.toml");
        for key in [
            "max_bytes",
            "max_entry_bytes",
            "backend",
            "redis_url",
            "redis_timeout",
        ] {
            assert!(
                text.contains(&format!("# {key} =")),
                "config.toml lacks cache.{key}"
            );
        }
        refused(&route("cache = true"), "routes[0].cache", &["[cache]"]);
        let c = Config::from_toml(&format!("[cache]\n{}", route("cache = true"))).unwrap();
        assert!(c.routes[0].cache && c.routes[0].coalesces());
        let plain = &Config::from_toml(&route("")).unwrap().routes[0];
        assert!(!plain.cache && plain.coalesces());
        assert!(
            !Config::from_toml(&route("coalesce = false"))
                .unwrap()
                .routes[0]
                .coalesces()
        );
    }
}
