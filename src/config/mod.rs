//! The gateway's configuration: one documented struct with defaults, read from TOML.
//!
//! The shipped `config.toml` doubles as the documentation of every key. Key names under `[limits]` and
//! `[[routes]]` are a contract with users and tools: add keys, never rename them.
//!
//! Every value is range-checked by [`Config::validate`] before the gateway starts, and every error names the
//! key at fault: nothing read from a config file can make the gateway panic later (a duration that overflows
//! `Instant + d`, a count that sizes a huge allocation, a compression level that burns a core per reply).
//!
//! A file per section, each with its struct, its defaults and its checks: [`Limits`] (`limits.rs`),
//! `upstream.rs`, `routes.rs` (with `origin.rs`, the upstream URLs), `headers.rs`, `compression.rs`,
//! `tls.rs`, `cors.rs`, `admin.rs`, `rate_limit.rs`, `cache.rs`; the top-level keys, loading and [`Config::validate`]
//! here. `units.rs` reads durations and sizes, `cidr.rs` networks, and `check.rs` holds the range checks the
//! sections share.

mod admin;
mod cache;
mod check;
mod cidr;
mod compression;
mod cors;
mod headers;
mod jobs;
mod limits;
mod origin;
mod rate_limit;
mod routes;
mod tls;
mod units;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::AdminConfig;
pub use cache::{Backend, CacheConfig};
pub use cidr::Cidr;
pub use compression::{Coding, CompressionConfig};
pub(crate) use compression::{MAX_BROTLI_QUALITY, MAX_GZIP_LEVEL, MAX_ZSTD_LEVEL};
pub use cors::CorsConfig;
pub use headers::HeaderPolicy;
pub use jobs::{JobsConfig, StoreUrl};
pub use limits::Limits;
pub use origin::Origin;
pub use rate_limit::{RateLimitConfig, RateLimitKey};
pub use routes::{AdaptiveConcurrency, Balance, HttpVersion, RouteConfig};
pub use tls::TlsConfig;
pub use units::{parse_bytes, parse_duration};
pub use upstream::UpstreamSettings;

use check::{check_path, invalid};
use cidr::de_cidrs;

/// Why a configuration could not be used. Each message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file as given.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not TOML, or has a key or value of the wrong shape (unknown keys are refused).
    #[error("config file {path}: {source}")]
    Parse {
        /// The file as given, or `<text>` for [`Config::from_toml`].
        path: String,
        /// toml's error, with the line and column.
        source: Box<toml::de::Error>,
    },
    /// A value out of range, or values that contradict each other; the message names the key.
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
    /// Peers (usually a load balancer or TLS terminator in front) whose `X-Forwarded-For`, `-Proto` and
    /// `-Host` are believed and passed on; from any other peer they are replaced.
    #[serde(deserialize_with = "de_cidrs")]
    pub trusted_proxies: Vec<Cidr>,
    /// Serve HTTPS (and HTTP/2 over ALPN) on `listen`.
    pub tls: Option<TlsConfig>,
    /// Browsers calling the batch endpoint from other origins.
    pub cors: Option<CorsConfig>,
    /// How log lines are written to stderr.
    pub log_format: LogFormat,
    /// What the access log says at info: a line per batch, or a line per part too.
    pub access_log: AccessLog,
    /// The operators' listener: metrics, stats, dashboard.
    pub admin: Option<AdminConfig>,
    /// Per-client limit on parts (every part counts, not every batch).
    pub rate_limit: Option<RateLimitConfig>,
    /// Where spans are exported.
    pub tracing: TracingConfig,
    /// `[limits]`: sizes, counts and timeouts that bound what a batch may cost.
    pub limits: Limits,
    /// `[upstream]`: connecting to upstreams, their pools, passive health and the retry budget.
    pub upstream: UpstreamSettings,
    /// `[headers]`: which of the batch's headers the parts inherit.
    pub headers: HeaderPolicy,
    /// `[compression]`: how the reply is compressed.
    pub compression: CompressionConfig,
    /// `[cache]`: the HTTP cache routes with `cache = true` use; none, no route may cache.
    pub cache: Option<CacheConfig>,
    /// `[[routes]]`: the longest prefix matching on a segment boundary wins; none is a 404 part.
    pub routes: Vec<RouteConfig>,
    /// `[jobs]`: asynchronous batch jobs (`POST /jobs`); none without the section.
    pub jobs: Option<JobsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            batch_path: "/batch".to_owned(),
            trusted_proxies: Vec::new(),
            tls: None,
            cors: None,
            log_format: LogFormat::Pretty,
            access_log: AccessLog::Batches,
            admin: None,
            rate_limit: None,
            tracing: TracingConfig::default(),
            limits: Limits::default(),
            upstream: UpstreamSettings::default(),
            headers: HeaderPolicy::default(),
            compression: CompressionConfig::default(),
            cache: None,
            routes: Vec::new(),
            jobs: None,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people: aligned, coloured when stderr is a terminal.
    #[default]
    Pretty,
    /// For machines: one JSON object per line, never colour codes.
    Json,
}

/// What the access log writes at info (target `batchgate::access`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    /// One line per batch: who, how many parts with which statuses, bytes, time.
    #[default]
    Batches,
    /// The batch's line and one line per part (method, path, route, upstream address, status, duration),
    /// for teams that must see which paths were called.
    Parts,
}

/// `[tracing]`: span export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; empty: no export. Needs the `otel` feature.
    pub otlp_endpoint: String,
}

impl TracingConfig {
    /// Checks `otlp_endpoint`: a URL, and a build that can export to it.
    fn validate(&self) -> Result<(), ConfigError> {
        let endpoint = &self.otlp_endpoint;
        if !endpoint.is_empty() {
            if !cfg!(feature = "otel") {
                return Err(invalid(format!(
                    "tracing.otlp_endpoint = {endpoint:?}, but this batchgate was built without OTLP export; \
                     build it with `--features otel`, or leave the key empty"
                )));
            }
            let uri: Result<http::Uri, _> = endpoint.parse();
            if !uri.is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            }) {
                return Err(invalid(format!(
                    "tracing.otlp_endpoint {endpoint:?} is not a URL like \"http://127.0.0.1:4317\""
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Adds `route`, replacing the route with the same prefix if there is one (so the command line and the
    /// testing kit override a file's route rather than duplicate its prefix).
    pub fn put_route(&mut self, route: RouteConfig) {
        self.routes.retain(|r| r.prefix != route.prefix);
        self.routes.push(route);
    }

    /// Reads and validates a config file. Its relative file paths are taken from the file's folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Joins the relative file paths (`[tls]` cert and key; a route's `ca_file`, `client_cert`, `client_key`)
    /// to `dir`, the config file's folder: a file that names `certs/gateway.pem` next to it must mean the same
    /// file whatever directory the gateway is started (or reloaded) from.
    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        if let Some(jobs) = &mut self.jobs {
            jobs.resolve_paths(dir);
        }
        for route in &mut self.routes {
            for path in [
                &mut route.ca_file,
                &mut route.client_cert,
                &mut route.client_key,
            ]
            .into_iter()
            .flatten()
            {
                resolve(path);
            }
        }
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let parse_error = |source| ConfigError::Parse {
            path: "<text>".to_owned(),
            source: Box::new(source),
        };
        let mut config: Config = toml::from_str(text).map_err(parse_error)?;
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        config.limits.follow_given(&table);
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range, the relations between values, and the shape of paths and routes. The
    /// error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        self.upstream.validate()?;
        self.headers.validate()?;
        self.compression.validate()?;
        if let Some(cors) = &self.cors {
            cors.validate()?;
        }
        self.tracing.validate()?;
        if let Some(admin) = &self.admin {
            admin.validate(self.listen)?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        if let Some(jobs) = &self.jobs {
            jobs.validate()?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate_adaptive(i)?;
        }
        check_path("batch_path", &self.batch_path)?;
        if matches!(
            self.batch_path.as_str(),
            "/healthz" | "/readyz" | "/metrics"
        ) {
            return Err(invalid(format!(
                "batch_path {:?} collides with the gateway's own {} endpoint",
                self.batch_path, self.batch_path
            )));
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(i, &self.routes[..i])?;
        }
        if let Some(cache) = &self.cache {
            cache.validate()?;
        } else if let Some(i) = self.routes.iter().position(|r| r.cache) {
            return Err(invalid(format!(
                "routes[{i}].cache = true needs a [cache] section (cache.max_bytes and the backend)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    /// A config file in a folder of its own names its certificate files relative to that folder; loaded from
    /// another working directory (the tests run in the crate's), they are found there, and an absolute path
    /// stays as written.
    #[test]
    fn relative_paths_are_taken_from_the_config_files_folder() {
        let dir =
            std::env::temp_dir().join(format!("batchgate-config-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("certs/gw.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.join("certs/gw.key"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        let absolute = dir.join("certs/gw.pem");
        let text = format!(
            "[tls]\ncert = \"certs/gw.pem\"\nkey = \"certs/gw.key\"\n\n[[routes]]\nprefix = \"/a/\"\n\
             upstream = \"https://a\"\nca_file = \"certs/gw.pem\"\nclient_cert = {absolute:?}\n\
             client_key = \"../gw.key\"\n"
        );
        let file = dir.join("gateway.toml");
        std::fs::write(&file, text).unwrap();
        assert_ne!(std::env::current_dir().unwrap(), dir);

        let config = Config::from_file(&file).unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.cert, dir.join("certs/gw.pem"));
        assert_eq!(tls.key, dir.join("certs/gw.key"));
        crate::tls::server_config(tls)
            .expect("the certificate and key are read from the file's folder");
        let route = &config.routes[0];
        assert_eq!(
            route.ca_file.as_deref(),
            Some(dir.join("certs/gw.pem").as_path())
        );
        assert_eq!(route.client_cert.as_deref(), Some(absolute.as_path()));
        assert_eq!(
            route.client_key.as_deref(),
            Some(dir.join("../gw.key").as_path())
        );
        // Text has no folder: its paths are left as written.
        let from_text = Config::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        assert_eq!(from_text.tls.unwrap().cert, PathBuf::from("c.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The error for this TOML text, which must be refused.
    pub(super) fn error(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts that the text is refused with a message naming `key` (and each of `also`).
    pub(super) fn refused(text: &str, key: &str, also: &[&str]) {
        let e = error(text);
        assert!(e.contains(key), "{text:?}: {e} does not name {key}");
        for word in also {
            assert!(e.contains(word), "{text:?}: {e} does not say {word:?}");
        }
    }

    /// A route on `/a/` with the `extra` keys.
    pub(super) fn route(extra: &str) -> String {
        format!("[[routes]]\nprefix = \"/a/\"\nupstream = \"http://127.0.0.1:9\"\n{extra}\n")
    }

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
        let shipped = Config::from_toml(include_str!("../../config.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(
            format!("{:?}", shipped.limits),
            format!("{:?}", defaults.limits)
        );
        assert_eq!(
            format!("{:?}", shipped.upstream),
            format!("{:?}", defaults.upstream)
        );
        assert_eq!(shipped.routes.len(), 1);
        assert_eq!(
            format!("{:?}", shipped.compression),
            format!("{:?}", defaults.compression)
        );
        assert_eq!(
            format!("{:?}", shipped.headers),
            format!("{:?}", defaults.headers)
        );
        assert_eq!(shipped.trusted_proxies, defaults.trusted_proxies);
        assert_eq!(shipped.batch_path, defaults.batch_path);
        assert_eq!(shipped.listen, defaults.listen);
        Config::default().validate().unwrap();

        // Every key is written out in the shipped file, so that it documents them all.
        let table: toml::Table = toml::from_str(include_str!("../../config.toml")).unwrap();
        let sections = [
            ("limits", format!("{:?}", defaults.limits)),
            ("upstream", format!("{:?}", defaults.upstream)),
            ("headers", format!("{:?}", defaults.headers)),
            ("compression", format!("{:?}", defaults.compression)),
        ];
        for (section, debug) in &sections {
            let stated = table[*section].as_table().unwrap();
            for key in field_names(debug) {
                assert!(
                    stated.contains_key(&key),
                    "config.toml lacks {section}.{key}"
                );
            }
        }
        let text = include_str!("../../config.toml");
        for key in field_names(&format!("{defaults:?}")) {
            // Optional sections are documented as commented-out examples.
            if matches!(
                key.as_str(),
                "tls" | "cors" | "admin" | "rate_limit" | "cache" | "jobs"
            ) {
                assert!(
                    text.contains(&format!("# [{key}]")),
                    "config.toml lacks [{key}]"
                );
            } else {
                assert!(table.contains_key(&key), "config.toml lacks {key}");
            }
        }
        for key in field_names(&format!("{:?}", JobsConfig::default())) {
            assert!(
                text.contains(&format!("# {key} =")),
                "config.toml lacks jobs.{key}"
            );
        }
        for key in field_names(&format!("{:?}", CorsConfig::default())) {
            assert!(
                text.contains(&format!("# {key} =")),
                "config.toml lacks cors.{key}"
            );
        }
    }

    /// The field names of a struct's derived `Debug` output (`Name { a: 1, b: [x, y] }`).
    fn field_names(debug: &str) -> Vec<String> {
        let body = &debug[debug.find('{').unwrap() + 1..debug.rfind('}').unwrap()];
        let (mut names, mut depth, mut start) = (Vec::new(), 0, 0);
        for (i, c) in body.char_indices() {
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(body[start..i].to_owned());
                    start = i + 1;
                }
                _ => {}
            }
        }
        names.push(body[start..].to_owned());
        names
            .iter()
            .map(|field| field.split(':').next().unwrap().trim().to_owned())
            .collect()
    }

    #[test]
    fn bad_values_name_their_key() {
        refused("[limits]\nconcurrency = 0", "limits.concurrency", &[]);
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://a\"\nhttp2 = true",
            "routes[0].http2",
            &["http_version = \"2\""],
        );
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"gopher://x\"",
            "routes[0].upstream",
            &["not supported"],
        );
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstreams = [\"http://a\", \"https://b\"]",
            "routes[0]",
            &["mix http and https"],
        );
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://a\"\nupstreams = [\"http://b\"]",
            "routes[0]",
            &["not both"],
        );
        refused("[[routes]]\nprefix = \"/a/\"", "routes[0]", &["upstreams"]);
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://a\"\nca_file = \"x.pem\"",
            "routes[0]",
            &["https upstreams only"],
        );
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://a\"\nretries = 11",
            "routes[0].retries",
            &[],
        );
        refused(
            "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://a\"\nrewrite = \"api\"",
            "routes[0].rewrite",
            &[],
        );
        refused(
            "[cors]\nallow_origins = [\"*\"]\nallow_credentials = true",
            "cors.allow_origins",
            &["credentials"],
        );
        refused(
            "[cors]\nallow_origins = [\"https://a.example/app\"]",
            "cors.allow_origins[0]",
            &[],
        );
        refused(
            "[upstream]\nretry_budget = 1.5",
            "upstream.retry_budget",
            &[],
        );
        refused(
            "[upstream]\neject_for = \"10s\"\neject_max = \"1s\"",
            "upstream.eject_max",
            &[],
        );
        refused("[limits]\nmax_partz = 3", "max_partz", &[]);
        refused(
            "[limits]\nconcurrency = 100\nwindow = 10",
            "limits.window",
            &["limits.concurrency"],
        );
    }

    #[test]
    fn new_keys_have_their_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.limits.upload_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.http2_keepalive_interval, Duration::from_secs(20));
        assert_eq!(c.limits.http2_keepalive_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.http2_max_streams, 100);
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn batch_path_is_a_plain_path_of_its_own() {
        for path in [
            "batch", "/healthz", "/readyz", "/metrics", "/b?x", "/b//c", "/b/../c",
        ] {
            refused(&format!("batch_path = {path:?}"), "batch_path", &[]);
        }
        Config::from_toml("batch_path = \"/batch/storage/v1\"").unwrap();
    }
}
