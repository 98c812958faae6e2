//! The gateway's configuration: one documented struct with defaults, read from TOML.
//!
//! The shipped `config.toml` doubles as the documentation of every key. Key names under `[limits]` and
//! `[[routes]]` are a contract with users and tools: add keys, never rename them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::{Deserialize, Deserializer};

use crate::compress::CompressionConfig;

/// Why a configuration could not be used. Each message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole configuration. Every field has a default, so an empty file is a valid (route-less) config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// Path of the batch endpoint.
    pub batch_path: String,
    pub limits: Limits,
    pub upstream: UpstreamSettings,
    pub headers: HeaderPolicy,
    pub compression: CompressionConfig,
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            batch_path: "/batch".to_owned(),
            limits: Limits::default(),
            upstream: UpstreamSettings::default(),
            headers: HeaderPolicy::default(),
            compression: CompressionConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// Bounds on everything a client can make the gateway hold or do.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Parts per batch (inclusive). More gets the whole batch a 413 naming both numbers.
    pub max_parts: usize,
    /// Sub-requests of one batch in flight at once.
    pub concurrency: usize,
    /// Parts of one batch started but not yet written to the client (in flight, or done and waiting for an
    /// earlier part). Bounds a batch's memory to about `window` x `max_response_bytes`. At least `concurrency`.
    pub window: usize,
    /// Sub-requests in flight across all batches.
    pub max_inflight: usize,
    /// Sub-requests in flight to any one route's upstream, across all batches.
    pub max_inflight_per_upstream: usize,
    /// Batches being served at once; more are answered 503 at once rather than queued.
    pub max_batches: usize,
    /// Client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From sending a part upstream until its response is complete.
    #[serde(deserialize_with = "de_duration")]
    pub part_timeout: Duration,
    /// From the batch's arrival until its last part is written.
    #[serde(deserialize_with = "de_duration")]
    pub batch_timeout: Duration,
    /// Request body cap, enforced while the body streams in.
    #[serde(deserialize_with = "de_bytes")]
    pub max_batch_bytes: u64,
    /// One part (its MIME headers, embedded request head and body).
    #[serde(deserialize_with = "de_bytes")]
    pub max_part_bytes: u64,
    /// Header lines in one embedded request.
    pub max_part_headers: usize,
    /// Bytes of one embedded request's head (request line and headers) and of a part's MIME headers.
    #[serde(deserialize_with = "de_bytes")]
    pub max_part_header_bytes: u64,
    /// An upstream response body for one part; larger bodies become a 502 part.
    #[serde(deserialize_with = "de_bytes")]
    pub max_response_bytes: u64,
    /// All upstream response bodies of one batch together; parts past it become 502 parts.
    #[serde(deserialize_with = "de_bytes")]
    pub max_batch_response_bytes: u64,
    /// A client that has not sent its request head within this is disconnected (slowloris).
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body before the batch is refused with 408.
    #[serde(deserialize_with = "de_duration")]
    pub body_read_timeout: Duration,
    /// Longest a reply may wait for the client to read it before the connection is cut.
    #[serde(deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight batches may take to finish before the process exits.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// From the batch's arrival until its whole body is in.
    #[serde(deserialize_with = "de_duration")]
    pub upload_timeout: Duration,
    /// A client connection with no request in progress is closed after this.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub http2_keepalive_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub http2_keepalive_timeout: Duration,
    pub http2_max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_parts: 100,
            concurrency: 16,
            window: 64,
            max_inflight: 1024,
            max_inflight_per_upstream: 256,
            max_batches: 256,
            max_connections: 1024,
            part_timeout: Duration::from_secs(10),
            batch_timeout: Duration::from_secs(60),
            max_batch_bytes: 8 << 20,
            max_part_bytes: 1 << 20,
            max_part_headers: 64,
            max_part_header_bytes: 16 << 10,
            max_response_bytes: 8 << 20,
            max_batch_response_bytes: 64 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_streams: 100,
        }
    }
}

/// The shared upstream connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[serde(deserialize_with = "de_duration")]
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per upstream.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

/// Which outer (batch) headers every part inherits. Hop-by-hop headers, `Content-*`, `Host` and `Expect` are
/// never inherited, whatever these lists say.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderPolicy {
    /// If not empty, only these outer headers are inherited.
    pub inherit_only: Vec<String>,
    /// Outer headers never inherited.
    pub inherit_deny: Vec<String>,
}

/// One `[[routes]]` entry: where paths under `prefix` go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix; the longest matching prefix wins.
    pub prefix: String,
    /// `http://host:port`; the part's path is forwarded as is.
    pub upstream: String,
    /// Speak HTTP/2 (prior knowledge) to this upstream instead of HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// Overrides `limits.part_timeout` for this route.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// Authorities that absolute-form targets (`GET http://host/path`) may name to reach this route, besides
    /// the upstream's own.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Do not pass the batch's `Cookie` header on to this route's parts.
    #[serde(default)]
    pub strip_cookies: bool,
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<text>".to_owned(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: relations between values, and the shape of routes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("limits.max_parts", l.max_parts),
            ("limits.concurrency", l.concurrency),
            ("limits.window", l.window),
            ("limits.max_inflight", l.max_inflight),
            (
                "limits.max_inflight_per_upstream",
                l.max_inflight_per_upstream,
            ),
            ("limits.max_batches", l.max_batches),
            ("limits.max_connections", l.max_connections),
            ("limits.max_part_headers", l.max_part_headers),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if l.window < l.concurrency {
            return Err(ConfigError::Invalid(format!(
                "limits.window ({}) must be at least limits.concurrency ({})",
                l.window, l.concurrency
            )));
        }
        let c = &self.compression;
        if c.gzip_level > 9 || !(1..=19).contains(&c.zstd_level) || c.brotli_quality > 11 {
            return Err(ConfigError::Invalid(
                "compression levels: gzip_level 0-9, zstd_level 1-19, brotli_quality 0-11"
                    .to_owned(),
            ));
        }
        if !self.batch_path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "batch_path {:?} must start with '/'",
                self.batch_path
            )));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !route.prefix.starts_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "routes[{i}].prefix {:?} must start with '/'",
                    route.prefix
                )));
            }
            if self.routes[..i].iter().any(|r| r.prefix == route.prefix) {
                return Err(ConfigError::Invalid(format!(
                    "routes[{i}].prefix {:?} is configured twice",
                    route.prefix
                )));
            }
            route.origin().map_err(|why| {
                ConfigError::Invalid(format!("routes[{i}].upstream {:?}: {why}", route.upstream))
            })?;
            for host in &route.hosts {
                host.parse::<Authority>().map_err(|e| {
                    ConfigError::Invalid(format!("routes[{i}].hosts entry {host:?}: {e}"))
                })?;
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    /// The upstream's scheme and authority. Only plain `http` is spoken upstream.
    pub fn origin(&self) -> Result<(Scheme, Authority), String> {
        let uri: http::Uri = self.upstream.parse().map_err(|e| format!("{e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("needs a scheme, as in http://host:port")?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "scheme {scheme} is not supported; use http:// (terminate TLS in front of the upstream)"
            ));
        }
        let authority = uri.authority().cloned().ok_or("needs a host")?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("must not have a path: the part's own path is forwarded as is".to_owned());
        }
        Ok((scheme, authority))
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"250ms\" or \"10s\""))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `8MiB`, `64KiB`, `1GiB`, `500kB`, `2MB` (or a bare number of bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"8MiB\" or \"64KiB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A TOML value that is either a string with a unit or a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u64),
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        TextOrNumber::Number(n) => Ok(Duration::from_secs(n)),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
        TextOrNumber::Number(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_with_defaults_elsewhere() {
        let c = Config::from_toml(
            r#"
listen = "127.0.0.1:8080"
[limits]
max_parts = 100
concurrency = 16
part_timeout = "10s"
max_batch_bytes = "8MiB"
[[routes]]
prefix = "/mail/"
upstream = "http://127.0.0.1:9001"
"#,
        )
        .unwrap();
        assert_eq!(c.limits.max_batch_bytes, 8 << 20);
        assert_eq!(c.limits.part_timeout, Duration::from_secs(10));
        assert_eq!(c.routes[0].prefix, "/mail/");
        assert_eq!(c.limits.window, Limits::default().window);
    }

    #[test]
    fn the_shipped_config_parses_and_states_the_defaults() {
        let shipped = Config::from_toml(include_str!("../config.toml")).unwrap();
        let defaults = Limits::default();
        assert_eq!(format!("{:?}", shipped.limits), format!("{defaults:?}"));
        assert_eq!(
            format!("{:?}", shipped.upstream),
            format!("{:?}", UpstreamSettings::default())
        );
        assert_eq!(shipped.routes.len(), 1);
        assert_eq!(
            format!("{:?}", shipped.compression),
            format!("{:?}", CompressionConfig::default())
        );
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("8 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Config::from_toml("[limits]\nconcurrency = 0").unwrap_err();
        assert!(e.to_string().contains("limits.concurrency"), "{e}");
        let e = Config::from_toml("[[routes]]\nprefix = \"/a/\"\nupstream = \"https://x\"")
            .unwrap_err();
        assert!(e.to_string().contains("routes[0].upstream"), "{e}");
        let e = Config::from_toml("[limits]\nmax_partz = 3").unwrap_err();
        assert!(e.to_string().contains("max_partz"), "{e}");
        let e = Config::from_toml("[limits]\nconcurrency = 100\nwindow = 10").unwrap_err();
        assert!(e.to_string().contains("limits.window"), "{e}");
    }
}
