//! The gateway's configuration: one documented struct with defaults, read from TOML.
//!
//! The shipped `config.toml` doubles as the documentation of every key. Key names under `[limits]` and
//! `[[routes]]` are a contract with users and tools: add keys, never rename them.
//!
//! Every value is range-checked by [`Config::validate`] before the gateway starts, and every error names the
//! key at fault: nothing read from a config file can make the gateway panic later (a duration that overflows
//! `Instant + d`, a count that sizes a huge allocation, a compression level that burns a core per reply).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};
use serde::{Deserialize, Deserializer};

use crate::compress::CompressionConfig;

/// Longest any duration may be: one day. Far below what `Instant + duration` could overflow on.
const MAX_DURATION: Duration = Duration::from_secs(86_400);
/// Shortest timeout: a zero timeout would expire before anything could happen.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest `compression.flush_delay`: it holds finished parts back, so it must stay short.
const MAX_FLUSH_DELAY: Duration = Duration::from_secs(1);
/// Most parts per batch, and most parts of one batch started but not yet written (`window`).
const MAX_PARTS: usize = 10_000;
/// Most header lines in one embedded request: it sizes an allocation made for every part.
const MAX_PART_HEADERS: usize = 1024;
/// Most permits of the gateway-wide semaphores (sub-requests, batches, connections).
const MAX_PERMITS: usize = 1_000_000;
/// Most idle upstream connections kept per upstream.
const MAX_IDLE_PER_HOST: usize = 100_000;
/// Most concurrent streams per HTTP/2 client connection.
const MAX_HTTP2_STREAMS: usize = 10_000;
/// Retries of one part.
const MAX_RETRIES: u32 = 10;
/// Consecutive failures before an upstream address is ejected.
const MAX_EJECT_AFTER: usize = 1000;
/// Largest size of any kind.
const MAX_SIZE: u64 = 16 << 30;
/// Largest `max_part_header_bytes`: a part's head is buffered whole before it is parsed.
const MAX_PART_HEADER_BYTES: u64 = 1 << 20;
/// Highest compression settings: above these, a level costs many times the CPU for a few percent fewer bytes,
/// and a client could make the gateway spend a core per reply.
const MAX_GZIP_LEVEL: u32 = 9;
const MAX_ZSTD_LEVEL: i32 = 15;
const MAX_BROTLI_QUALITY: u32 = 9;

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
    /// From the batch's arrival until its whole body (the closing delimiter) is in; slower uploads get 408.
    /// At most `batch_timeout`.
    #[serde(deserialize_with = "de_duration")]
    pub upload_timeout: Duration,
    /// Request body cap, enforced while the body streams in.
    #[serde(deserialize_with = "de_bytes")]
    pub max_batch_bytes: u64,
    /// One part (its MIME headers, embedded request head and body). At most `max_batch_bytes`.
    #[serde(deserialize_with = "de_bytes")]
    pub max_part_bytes: u64,
    /// Header lines in one embedded request.
    pub max_part_headers: usize,
    /// Bytes of one embedded request's head (request line and headers) and of a part's MIME headers.
    #[serde(deserialize_with = "de_bytes")]
    pub max_part_header_bytes: u64,
    /// An upstream response body for one part; larger bodies become a 502 part. At most
    /// `max_batch_response_bytes`.
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
    /// A client connection with no request in progress is closed after this (HTTP/1 keep-alive and HTTP/2).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 client connections are pinged this often.
    #[serde(deserialize_with = "de_duration")]
    pub http2_keepalive_interval: Duration,
    /// An HTTP/2 client connection whose ping is not acknowledged within this is closed.
    #[serde(deserialize_with = "de_duration")]
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams per HTTP/2 client connection.
    pub http2_max_streams: usize,
    /// On SIGTERM/SIGINT, how long in-flight batches may take to finish before the process exits.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
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
            upload_timeout: Duration::from_secs(30),
            max_batch_bytes: 8 << 20,
            max_part_bytes: 1 << 20,
            max_part_headers: 64,
            max_part_header_bytes: 16 << 10,
            max_response_bytes: 8 << 20,
            max_batch_response_bytes: 64 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_streams: 100,
            shutdown_grace: Duration::from_secs(30),
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
    /// Idle keep-alive connections kept per upstream (0: none, a new connection per sub-request).
    pub pool_max_idle_per_host: usize,
    /// Consecutive failures (connect errors, resets, 502/503/504) that eject an upstream address.
    pub eject_after: u32,
    /// How long a first ejection lasts; each further one in a row doubles it, up to `eject_max`.
    #[serde(deserialize_with = "de_duration")]
    pub eject_for: Duration,
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

/// `[tls]`: the gateway's own certificate. Both files are read at startup and again on every reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[cors]`: which other origins' pages may call the batch endpoint from a browser.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `"*"` (only without credentials).
    pub allow_origins: Vec<String>,
    /// Let the browser send cookies and HTTP authentication along.
    pub allow_credentials: bool,
    /// Request headers a page may set, besides the ones every browser may.
    pub allow_headers: Vec<String>,
    /// Response headers a page may read, besides the ones every browser may.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allow_origins: Vec::new(),
            allow_credentials: false,
            allow_headers: vec!["authorization".to_owned(), "content-type".to_owned()],
            expose_headers: Vec::new(),
            max_age: Duration::from_secs(600),
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

/// `[tracing]`: span export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; empty: no export. Needs the `otel` feature.
    pub otlp_endpoint: String,
}

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

/// A route's adaptive concurrency limit, held within these bounds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrency {
    pub min: usize,
    pub max: usize,
}

/// How a route spreads its parts over its upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The less busy of two upstreams picked at random (power of two choices).
    #[default]
    LeastRequests,
    RoundRobin,
}

/// The HTTP version a route speaks to its upstreams (`http_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HttpVersion {
    /// Over http, HTTP/1.1; over https, ALPN offers h2 and HTTP/1.1 and the upstream chooses.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// HTTP/1.1 only; over https, ALPN offers only `http/1.1` (for upstreams whose HTTP/2 misbehaves).
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 only: with prior knowledge over http, as the only ALPN offer over https.
    #[serde(rename = "2")]
    Http2,
}

/// Which outer (batch) headers every part inherits. Hop-by-hop headers, `Content-*`, `Host`, `Expect`,
/// `Accept-Encoding` and the forwarding headers are never inherited, whatever these lists say.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderPolicy {
    /// If not empty, only these outer headers are inherited.
    pub inherit_only: Vec<String>,
    /// Outer headers never inherited.
    pub inherit_deny: Vec<String>,
}

/// One `[[routes]]` entry: where paths under `prefix` go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, matched on segment boundaries; the longest matching prefix wins.
    pub prefix: String,
    /// `http://host:port` or `https://host:port`: shorthand for `upstreams` with one entry.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Instances of the same service; every one of them serves every path under the prefix.
    #[serde(default)]
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    /// Replaces the matched prefix before forwarding (`/mail/x` -> `/api/v1/x`); by default it is kept.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Extra trust roots (PEM) for this route's https upstreams, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and key (PEM) this route presents to its https upstreams (mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Extra tries for idempotent parts, within the retry budget.
    #[serde(default)]
    pub retries: u32,
    /// The HTTP version spoken to this route's upstreams.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// The key `http_version` replaced: read only to refuse it with a message saying what to write instead.
    #[serde(default)]
    pub http2: Option<bool>,
    /// Overrides `limits.part_timeout` for this route.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// Authorities that absolute-form targets (`GET http://host/path`) may name to reach this route, besides
    /// the upstreams' own.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Do not pass the batch's `Cookie` header on to this route's parts.
    #[serde(default)]
    pub strip_cookies: bool,
    /// Tune this route's in-flight limit from its latency, within `{min, max}`, instead of the fixed
    /// `limits.max_inflight_per_upstream`.
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    /// Let absolute-form `https://` targets reach this route although its upstreams speak plain http (TLS
    /// ends at the gateway). Off, such parts are refused rather than sent in the clear.
    #[serde(default)]
    pub accept_https_targets: bool,
}

/// Where an upstream is: its scheme, and its authority with the port always given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Origin {
    /// `https` or not.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.is_tls() { 443 } else { 80 })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl Config {
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
        config.follow_given_limits(&table);
        config.validate()?;
        Ok(config)
    }

    /// A limit bounded by another one, when the file leaves it out, follows the other one down instead of
    /// contradicting it: `max_batch_bytes = "1KiB"` alone also lowers `max_part_bytes` to 1KiB, rather than
    /// refusing the file over a default nobody wrote. Limits the file does give are checked as given.
    fn follow_given_limits(&mut self, table: &toml::Table) {
        let given = |key: &str| {
            table
                .get("limits")
                .and_then(toml::Value::as_table)
                .is_some_and(|l| l.contains_key(key))
        };
        let l = &mut self.limits;
        if !given("max_part_bytes") {
            l.max_part_bytes = l.max_part_bytes.min(l.max_batch_bytes);
        }
        if !given("max_response_bytes") {
            l.max_response_bytes = l.max_response_bytes.min(l.max_batch_response_bytes);
        }
        if !given("upload_timeout") {
            l.upload_timeout = l.upload_timeout.min(l.batch_timeout);
        }
        if !given("window") {
            l.window = l.window.max(l.concurrency);
        }
    }

    /// Checks every value's range, the relations between values, and the shape of paths and routes. The
    /// error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_limits()?;
        self.validate_upstream()?;
        self.validate_headers()?;
        self.validate_compression()?;
        self.validate_cors()?;
        self.validate_observability()?;
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
        self.validate_routes()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        check_count("limits.max_parts", l.max_parts, 1, MAX_PARTS)?;
        check_count("limits.concurrency", l.concurrency, 1, MAX_PARTS)?;
        check_count("limits.window", l.window, 1, MAX_PARTS)?;
        if l.window < l.concurrency {
            return Err(invalid(format!(
                "limits.window ({}) must be at least limits.concurrency ({})",
                l.window, l.concurrency
            )));
        }
        check_count(
            "limits.max_part_headers",
            l.max_part_headers,
            1,
            MAX_PART_HEADERS,
        )?;
        for (key, value) in [
            ("limits.max_inflight", l.max_inflight),
            (
                "limits.max_inflight_per_upstream",
                l.max_inflight_per_upstream,
            ),
            ("limits.max_batches", l.max_batches),
            ("limits.max_connections", l.max_connections),
        ] {
            check_count(key, value, 1, MAX_PERMITS)?;
        }
        check_count(
            "limits.http2_max_streams",
            l.http2_max_streams,
            1,
            MAX_HTTP2_STREAMS,
        )?;

        // The bounds before what they bound: a left-out limit follows its bound (see `follow_given_limits`),
        // so the error names the key the file got wrong.
        for (key, value) in [
            ("limits.max_batch_bytes", l.max_batch_bytes),
            (
                "limits.max_batch_response_bytes",
                l.max_batch_response_bytes,
            ),
            ("limits.max_part_bytes", l.max_part_bytes),
            ("limits.max_response_bytes", l.max_response_bytes),
        ] {
            check_size(key, value, MAX_SIZE)?;
        }
        check_size(
            "limits.max_part_header_bytes",
            l.max_part_header_bytes,
            MAX_PART_HEADER_BYTES,
        )?;
        for (small, small_value, big, big_value) in [
            (
                "limits.max_part_bytes",
                l.max_part_bytes,
                "limits.max_batch_bytes",
                l.max_batch_bytes,
            ),
            (
                "limits.max_response_bytes",
                l.max_response_bytes,
                "limits.max_batch_response_bytes",
                l.max_batch_response_bytes,
            ),
        ] {
            if small_value > big_value {
                return Err(invalid(format!(
                    "{small} ({small_value} bytes) must be at most {big} ({big_value} bytes)"
                )));
            }
        }

        for (key, value) in [
            ("limits.part_timeout", l.part_timeout),
            ("limits.batch_timeout", l.batch_timeout),
            ("limits.upload_timeout", l.upload_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.body_read_timeout", l.body_read_timeout),
            ("limits.write_timeout", l.write_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            (
                "limits.http2_keepalive_interval",
                l.http2_keepalive_interval,
            ),
            ("limits.http2_keepalive_timeout", l.http2_keepalive_timeout),
        ] {
            check_duration(key, value, MIN_TIMEOUT, MAX_DURATION)?;
        }
        // Zero is meaningful here: on a signal, stop at once.
        check_duration(
            "limits.shutdown_grace",
            l.shutdown_grace,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        if l.upload_timeout > l.batch_timeout {
            return Err(invalid(format!(
                "limits.upload_timeout ({:?}) must be at most limits.batch_timeout ({:?})",
                l.upload_timeout, l.batch_timeout
            )));
        }
        Ok(())
    }

    fn validate_upstream(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
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

    fn validate_headers(&self) -> Result<(), ConfigError> {
        for (key, names) in [
            ("headers.inherit_only", &self.headers.inherit_only),
            ("headers.inherit_deny", &self.headers.inherit_deny),
        ] {
            for (i, name) in names.iter().enumerate() {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(format!(
                        "{key}[{i}] {name:?} is not a valid header name"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_compression(&self) -> Result<(), ConfigError> {
        let c = &self.compression;
        let slow = "higher levels cost many times the CPU per reply for a few percent fewer bytes";
        if c.gzip_level > MAX_GZIP_LEVEL {
            return Err(invalid(format!(
                "compression.gzip_level is {}; it must be 0 to {MAX_GZIP_LEVEL}",
                c.gzip_level
            )));
        }
        if !(1..=MAX_ZSTD_LEVEL).contains(&c.zstd_level) {
            return Err(invalid(format!(
                "compression.zstd_level is {}; it must be 1 to {MAX_ZSTD_LEVEL} ({slow})",
                c.zstd_level
            )));
        }
        if c.brotli_quality > MAX_BROTLI_QUALITY {
            return Err(invalid(format!(
                "compression.brotli_quality is {}; it must be 0 to {MAX_BROTLI_QUALITY} ({slow})",
                c.brotli_quality
            )));
        }
        check_duration(
            "compression.flush_delay",
            c.flush_delay,
            Duration::ZERO,
            MAX_FLUSH_DELAY,
        )?;
        if c.enabled && c.order.is_empty() {
            return Err(invalid(
                "compression.order is empty while compression.enabled = true: list the codings to offer, \
                 or set enabled = false",
            ));
        }
        for (i, coding) in c.order.iter().enumerate() {
            if c.order[..i].contains(coding) {
                return Err(invalid(format!(
                    "compression.order names {:?} twice",
                    coding.as_str()
                )));
            }
        }
        Ok(())
    }

    fn validate_observability(&self) -> Result<(), ConfigError> {
        let endpoint = &self.tracing.otlp_endpoint;
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
        if let Some(admin) = &self.admin
            && admin.listen == self.listen
            && admin.listen.port() != 0
        {
            return Err(invalid(format!(
                "admin.listen {} is the same address as listen: give the admin listener its own",
                admin.listen
            )));
        }
        if let Some(admin) = &self.admin {
            check_count(
                "admin.stats_parts_per_batch",
                admin.stats_parts_per_batch,
                0,
                MAX_PARTS,
            )?;
            for (i, host) in admin.allowed_hosts.iter().enumerate() {
                let authority = host.parse::<http::uri::Authority>();
                if !authority.is_ok_and(|a| !a.host().is_empty() && !a.as_str().contains('@')) {
                    return Err(invalid(format!(
                        "admin.allowed_hosts[{i}] {host:?} is not a host name or \"host:port\""
                    )));
                }
            }
        }
        if let Some(limit) = &self.rate_limit {
            if !(limit.parts_per_second > 0.0 && limit.parts_per_second <= 1e9) {
                return Err(invalid(format!(
                    "rate_limit.parts_per_second = {} must be above 0 (and at most 1e9)",
                    limit.parts_per_second
                )));
            }
            check_count("rate_limit.burst", limit.burst as usize, 1, MAX_PERMITS)?;
            check_count("rate_limit.max_clients", limit.max_clients, 1, 10_000_000)?;
            check_count(
                "rate_limit.ipv6_prefix",
                usize::from(limit.ipv6_prefix),
                32,
                128,
            )?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(a) = route.adaptive_concurrency
                && (a.min == 0 || a.min > a.max || a.max > MAX_PERMITS)
            {
                return Err(invalid(format!(
                    "routes[{i}].adaptive_concurrency {{ min = {}, max = {} }}: need 1 <= min <= max <= {MAX_PERMITS}",
                    a.min, a.max
                )));
            }
        }
        Ok(())
    }

    fn validate_cors(&self) -> Result<(), ConfigError> {
        let Some(cors) = &self.cors else {
            return Ok(());
        };
        for (j, origin) in cors.allow_origins.iter().enumerate() {
            if origin == "*" {
                if cors.allow_credentials {
                    return Err(invalid(
                        "cors.allow_origins has \"*\" with cors.allow_credentials = true: browsers refuse \
                         credentials for a wildcard origin; list the origins"
                            .to_owned(),
                    ));
                }
                continue;
            }
            let exact = parse_origin(origin).is_ok_and(|o| {
                let default_port = if o.is_tls() { ":443" } else { ":80" };
                let written = origin.trim_end_matches('/');
                written == format!("{o}") || format!("{written}{default_port}") == format!("{o}")
            });
            if !exact || origin.ends_with('/') {
                return Err(invalid(format!(
                    "cors.allow_origins[{j}] {origin:?} is not an origin like \"https://app.example.com\" \
                     (scheme, host, optional port; no path)"
                )));
            }
        }
        for (key, names) in [
            ("cors.allow_headers", &cors.allow_headers),
            ("cors.expose_headers", &cors.expose_headers),
        ] {
            for (j, name) in names.iter().enumerate() {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(format!(
                        "{key}[{j}] {name:?} is not a valid header name"
                    )));
                }
            }
        }
        check_duration("cors.max_age", cors.max_age, Duration::ZERO, MAX_DURATION)
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        for (i, route) in self.routes.iter().enumerate() {
            check_path(&format!("routes[{i}].prefix"), &route.prefix)?;
            if let Some(http2) = route.http2 {
                let instead = if http2 { "\"2\"" } else { "\"auto\"" };
                return Err(invalid(format!(
                    "routes[{i}].http2 was replaced by http_version: write http_version = {instead}"
                )));
            }
            if self.routes[..i].iter().any(|r| r.prefix == route.prefix) {
                return Err(invalid(format!(
                    "routes[{i}].prefix {:?} is configured twice",
                    route.prefix
                )));
            }
            let origins = route
                .origins()
                .map_err(|why| invalid(format!("routes[{i}].{why}")))?;
            let tls = origins[0].is_tls();
            if let Some(rewrite) = &route.rewrite {
                check_path(&format!("routes[{i}].rewrite"), rewrite)?;
            }
            if route.retries > MAX_RETRIES {
                return Err(invalid(format!(
                    "routes[{i}].retries = {} is more than {MAX_RETRIES}",
                    route.retries
                )));
            }
            if route.client_cert.is_some() != route.client_key.is_some() {
                return Err(invalid(format!(
                    "routes[{i}]: client_cert and client_key go together"
                )));
            }
            if !tls && (route.ca_file.is_some() || route.client_cert.is_some()) {
                return Err(invalid(format!(
                    "routes[{i}]: ca_file, client_cert and client_key are for https upstreams only"
                )));
            }
            for (j, host) in route.hosts.iter().enumerate() {
                parse_host(host).map_err(|why| {
                    let host = redact_userinfo(host);
                    invalid(format!("routes[{i}].hosts[{j}] {host:?}: {why}"))
                })?;
            }
            if let Some(timeout) = route.timeout {
                check_duration(
                    &format!("routes[{i}].timeout"),
                    timeout,
                    MIN_TIMEOUT,
                    MAX_DURATION,
                )?;
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    /// The upstreams this route sends parts to, parsed; all of one scheme.
    pub fn origins(&self) -> Result<Vec<Origin>, String> {
        let urls: Vec<&String> = self.upstream.iter().chain(&self.upstreams).collect();
        if urls.is_empty() {
            return Err(
                "needs `upstream = \"http://host:port\"` or `upstreams = [...]`".to_owned(),
            );
        }
        if self.upstream.is_some() && !self.upstreams.is_empty() {
            return Err("give `upstream` or `upstreams`, not both".to_owned());
        }
        let mut origins: Vec<Origin> = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let origin = parse_origin(url).map_err(|why| {
                let key = if self.upstream.is_some() {
                    "upstream".to_owned()
                } else {
                    format!("upstreams[{i}]")
                };
                format!("{key} {:?}: {why}", redact_userinfo(url))
            })?;
            if origins.iter().any(|o| o.scheme != origin.scheme) {
                return Err("upstreams mix http and https; a route speaks one of them".to_owned());
            }
            if origins.contains(&origin) {
                return Err(format!("upstream {origin} is listed twice"));
            }
            origins.push(origin);
        }
        Ok(origins)
    }
}

/// Parses one upstream URL: `http` or `https`, a host, an optional port; nothing else.
fn parse_origin(url: &str) -> Result<Origin, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("needs a scheme, as in http://host:port")?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!(
            "scheme {scheme} is not supported; use http:// or https://"
        ));
    }
    let authority = uri.authority().cloned().ok_or("needs a host")?;
    if authority.as_str().contains('@') {
        return Err(
            "must not contain user:password@ (userinfo): it is not how HTTP sends credentials, and the \
             upstream URL is logged; let the parts carry an Authorization header instead"
                .to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err("needs a host".to_owned());
    }
    if authority.port_u16() == Some(0) {
        return Err("port 0 cannot be connected to".to_owned());
    }
    // `http::Uri` drops a fragment silently: look at the text.
    if url.contains('#') {
        return Err("must not have a fragment".to_owned());
    }
    if uri.query().is_some() {
        return Err("must not have a query: the part's own query is forwarded".to_owned());
    }
    if !matches!(uri.path(), "" | "/") {
        return Err("must not have a path: use `rewrite` to forward under another path".to_owned());
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
    let authority = format!("{}:{port}", authority.host())
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok(Origin { scheme, authority })
}

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address is one host (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a dual-stack
    /// socket reports IPv4 peers) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix_len);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix_len);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask_v6(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        let bits: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            None => bits,
            Some(p) => {
                let valid = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if valid && n <= bits => n,
                    _ => return Err(format!("prefix length {p:?} must be 0 to {bits}")),
                }
            }
        };
        // `::ffff:10.0.0.0/104` is written `10.0.0.0/8`, the form peers are compared in.
        let (network, prefix_len) = match address {
            IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
                None => (address, prefix_len),
            },
            _ => (address, prefix_len),
        };
        let host_bits_set = match network {
            IpAddr::V4(v4) => u32::from(v4) & !mask_v4(prefix_len) != 0,
            IpAddr::V6(v6) => u128::from(v6) & !mask_v6(prefix_len) != 0,
        };
        if host_bits_set {
            // `10.0.0.1/8` is refused rather than read as `10.0.0.0/8`: it is as likely a typo for `/32`, and
            // guessing wrong would trust a whole network.
            return Err(format!(
                "{text:?} has bits set past its prefix length; write the network address, or /{bits} for \
                 one host"
            ));
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

fn check_count(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} is {value}; it must be {min} to {max}"
        )))
    }
}

fn check_size(key: &str, value: u64, max: u64) -> Result<(), ConfigError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} is {value} bytes; it must be 1 to {max} bytes ({})",
            show_size(max)
        )))
    }
}

fn show_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b => format!("{b}B"),
    }
}

fn check_duration(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} is {value:?}; it must be {min:?} to {max:?}"
        )))
    }
}

/// Checks a path the gateway compares normalised request paths with (`batch_path`, a route's `prefix`): one
/// that could never equal a normalised path, or means something else once decoded, is refused.
fn check_path(key: &str, path: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| Err(invalid(format!("{key} {path:?} {why}")));
    if !path.starts_with('/') {
        return refuse("must start with '/'");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("must be printable ASCII without white space");
    }
    if let Some(c) = path.chars().find(|c| matches!(c, '?' | '#' | '%' | '\\')) {
        return refuse(&format!(
            "must not contain {c:?}: request paths are compared after normalising, so it would never match \
             what it seems to"
        ));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if matches!(*segment, "." | "..") {
            return refuse("must not have '.' or '..' segments");
        }
        if segment.is_empty() && i + 1 < segments.len() {
            return refuse("must not contain '//': request paths are normalised to single slashes");
        }
    }
    Ok(())
}

/// The URL or authority with any userinfo (`user:password@`) replaced by `***@`, fit for an error message.
fn redact_userinfo(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

/// An authority a route's `hosts` may list: `host` or `host:port`, without userinfo.
fn parse_host(text: &str) -> Result<Authority, String> {
    if text.contains('@') {
        return Err("must not contain userinfo (user@)".to_owned());
    }
    let authority: Authority = text.parse().map_err(|e| format!("{e}"))?;
    if authority.host().is_empty() {
        return Err("needs a host".to_owned());
    }
    Ok(authority)
}

/// Parses `250ms`, `10s`, `2m`, `1h` (or a bare number of seconds). Never panics: a value too large for a
/// `Duration` is an error (ranges are checked by [`Config::validate`]).
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
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {text:?} is out of range"))
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
    Integer(i64),
    Float(f64),
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let duration = match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => parse_duration(&s),
        TextOrNumber::Integer(n) => u64::try_from(n)
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {n} must not be negative")),
        TextOrNumber::Float(x) => {
            Duration::try_from_secs_f64(x).map_err(|_| format!("duration {x} is out of range"))
        }
    };
    duration.map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let bytes = match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => parse_bytes(&s),
        TextOrNumber::Integer(n) => {
            u64::try_from(n).map_err(|_| format!("size {n} must not be negative"))
        }
        TextOrNumber::Float(x) => Err(format!("size {x} must be a whole number of bytes")),
    };
    bytes.map_err(serde::de::Error::custom)
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            entry.parse().map_err(|why| {
                serde::de::Error::custom(format!("trusted_proxies[{i}] {entry:?}: {why}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
    fn error(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts that the text is refused with a message naming `key` (and each of `also`).
    fn refused(text: &str, key: &str, also: &[&str]) {
        let e = error(text);
        assert!(e.contains(key), "{text:?}: {e} does not name {key}");
        for word in also {
            assert!(e.contains(word), "{text:?}: {e} does not say {word:?}");
        }
    }

    fn route(extra: &str) -> String {
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
        let shipped = Config::from_toml(include_str!("../config.toml")).unwrap();
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
        let table: toml::Table = toml::from_str(include_str!("../config.toml")).unwrap();
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
        let text = include_str!("../config.toml");
        for key in field_names(&format!("{defaults:?}")) {
            // Optional sections are documented as commented-out examples.
            if matches!(key.as_str(), "tls" | "cors" | "admin" | "rate_limit") {
                assert!(
                    text.contains(&format!("# [{key}]")),
                    "config.toml lacks [{key}]"
                );
            } else {
                assert!(table.contains_key(&key), "config.toml lacks {key}");
            }
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
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("8 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("soon").is_err());
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
    fn no_duration_text_panics_and_out_of_range_ones_name_their_key() {
        let nasty = [
            "1e30s",
            "99999999999999999999h",
            "18446744073709551616s",
            "1.8446744073709552e19s",
            "5124095576030431h",
            "307445734561825861m",
            &"9".repeat(400),
            &format!("{}ms", "9".repeat(400)),
            "-1s",
            "NaN",
            "nans",
            "inf",
            "infs",
            "-0s",
            ".",
            ".s",
            "1..2s",
            "",
            " ",
            "ms",
            "0.0000000001ms",
            "1e-30s",
            "\u{0}",
            "١s",
        ];
        for text in nasty {
            // Ok or Err, never a panic.
            let _ = parse_duration(text);
            for key in ["part_timeout", "idle_timeout", "shutdown_grace"] {
                let toml = format!("[limits]\n{key} = {:?}", text);
                if let Err(e) = Config::from_toml(&toml) {
                    assert!(e.to_string().contains(key), "{toml:?}: {e}");
                }
            }
        }
        for number in [
            "-1",
            "1e300",
            "-0.5",
            "1.7976931348623157e308",
            "nan",
            "inf",
        ] {
            let toml = format!("[limits]\npart_timeout = {number}");
            if let Err(e) = Config::from_toml(&toml) {
                assert!(e.to_string().contains("part_timeout"), "{toml:?}: {e}");
            }
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&"9".repeat(400)).is_err());
    }

    #[test]
    fn durations_are_range_checked_by_key() {
        for key in [
            "part_timeout",
            "batch_timeout",
            "header_read_timeout",
            "body_read_timeout",
            "write_timeout",
            "idle_timeout",
            "http2_keepalive_interval",
            "http2_keepalive_timeout",
        ] {
            let full = format!("limits.{key}");
            refused(&format!("[limits]\n{key} = \"0s\""), &full, &["1ms"]);
            refused(&format!("[limits]\n{key} = 0"), &full, &[]);
            refused(&format!("[limits]\n{key} = \"25h\""), &full, &["86400s"]);
        }
        refused(
            "[limits]\nupload_timeout = \"0ms\"",
            "limits.upload_timeout",
            &[],
        );
        refused(
            "[limits]\nshutdown_grace = \"2d\"",
            "shutdown_grace",
            &["unknown duration unit"],
        );
        refused(
            "[limits]\nshutdown_grace = \"1000h\"",
            "limits.shutdown_grace",
            &[],
        );
        let zero_grace = Config::from_toml("[limits]\nshutdown_grace = \"0s\"").unwrap();
        assert_eq!(zero_grace.limits.shutdown_grace, Duration::ZERO);
        for key in ["connect_timeout", "pool_idle_timeout"] {
            refused(
                &format!("[upstream]\n{key} = \"0s\""),
                &format!("upstream.{key}"),
                &[],
            );
            refused(
                &format!("[upstream]\n{key} = \"48h\""),
                &format!("upstream.{key}"),
                &[],
            );
        }
        refused(
            "[compression]\nflush_delay = \"2s\"",
            "compression.flush_delay",
            &["1s"],
        );
        let no_delay = Config::from_toml("[compression]\nflush_delay = \"0ms\"").unwrap();
        assert_eq!(no_delay.compression.flush_delay, Duration::ZERO);
        let route = |timeout: &str| {
            format!(
                "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://h\"\n\
                 [[routes]]\nprefix = \"/b/\"\nupstream = \"http://h\"\n\
                 [[routes]]\nprefix = \"/c/\"\nupstream = \"http://h\"\ntimeout = \"{timeout}\""
            )
        };
        refused(&route("0s"), "routes[2].timeout", &[]);
        refused(&route("2h30m"), "timeout", &["unknown duration unit"]);
        refused(&route("1000h"), "routes[2].timeout", &[]);
        Config::from_toml(&route("24h")).unwrap();
        Config::from_toml(&route("1ms")).unwrap();
    }

    #[test]
    fn counts_are_range_checked_by_key() {
        for (key, max) in [
            ("max_parts", 10_000),
            ("concurrency", 64),
            ("window", 10_000),
            ("max_part_headers", 1024),
            ("max_inflight", 1_000_000),
            ("max_inflight_per_upstream", 1_000_000),
            ("max_batches", 1_000_000),
            ("max_connections", 1_000_000),
            ("http2_max_streams", 10_000),
        ] {
            let full = format!("limits.{key}");
            refused(&format!("[limits]\n{key} = 0"), &full, &[]);
            refused(&format!("[limits]\n{key} = -1"), key, &[]);
            // `concurrency` above the default window is refused for the window it exceeds.
            if key != "concurrency" {
                refused(&format!("[limits]\n{key} = {}", max + 1), &full, &[]);
            }
            Config::from_toml(&format!("[limits]\n{key} = {max}")).unwrap();
        }
        refused(
            "[limits]\nconcurrency = 10001\nwindow = 10000",
            "limits.concurrency",
            &[],
        );
        refused(
            "[upstream]\npool_max_idle_per_host = 100001",
            "upstream.pool_max_idle_per_host",
            &[],
        );
        Config::from_toml("[upstream]\npool_max_idle_per_host = 0").unwrap();
    }

    #[test]
    fn sizes_are_range_checked_by_key() {
        for key in [
            "max_batch_bytes",
            "max_part_bytes",
            "max_response_bytes",
            "max_batch_response_bytes",
            "max_part_header_bytes",
        ] {
            let full = format!("limits.{key}");
            refused(&format!("[limits]\n{key} = 0"), &full, &[]);
            refused(&format!("[limits]\n{key} = \"0MiB\""), &full, &[]);
            let cap = if key == "max_part_header_bytes" {
                "1MiB"
            } else {
                "16GiB"
            };
            refused(&format!("[limits]\n{key} = \"17GiB\""), &full, &[cap]);
            refused(&format!("[limits]\n{key} = -5"), key, &["negative"]);
            refused(&format!("[limits]\n{key} = 1.5"), key, &["whole number"]);
            refused(
                &format!("[limits]\n{key} = \"99999999999GiB\""),
                key,
                &["too large"],
            );
        }
        refused(
            "[limits]\nmax_part_header_bytes = \"2MiB\"",
            "limits.max_part_header_bytes",
            &["1MiB"],
        );
        refused(
            "[limits]\nmax_batch_bytes = \"1KiB\"\nmax_part_bytes = \"2KiB\"",
            "limits.max_part_bytes",
            &["limits.max_batch_bytes"],
        );
        refused(
            "[limits]\nmax_response_bytes = \"2MiB\"\nmax_batch_response_bytes = \"1MiB\"",
            "limits.max_response_bytes",
            &["limits.max_batch_response_bytes"],
        );
        let big = Config::from_toml(
            "[limits]\nmax_batch_bytes = \"16GiB\"\nmax_part_bytes = \"16GiB\"\n\
             max_batch_response_bytes = \"16GiB\"\nmax_response_bytes = \"16GiB\"",
        )
        .unwrap();
        assert_eq!(big.limits.max_part_bytes, 16 << 30);
    }

    #[test]
    fn a_limit_left_out_follows_the_one_bounding_it() {
        let c = Config::from_toml(
            "[limits]\nmax_batch_bytes = \"1KiB\"\nmax_batch_response_bytes = 10000\n\
             batch_timeout = \"300ms\"\nconcurrency = 100",
        )
        .unwrap();
        assert_eq!(c.limits.max_part_bytes, 1024);
        assert_eq!(c.limits.max_response_bytes, 10000);
        assert_eq!(c.limits.upload_timeout, Duration::from_millis(300));
        assert_eq!(c.limits.window, 100);
        // Given explicitly, they are checked as given.
        refused(
            "[limits]\nbatch_timeout = \"10s\"\nupload_timeout = \"11s\"",
            "limits.upload_timeout",
            &["limits.batch_timeout"],
        );
        // Larger bounds do not raise the defaults.
        let c = Config::from_toml("[limits]\nmax_batch_bytes = \"1GiB\"\nbatch_timeout = \"1h\"")
            .unwrap();
        assert_eq!(c.limits.max_part_bytes, Limits::default().max_part_bytes);
        assert_eq!(c.limits.upload_timeout, Limits::default().upload_timeout);
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
    fn compression_levels_are_capped() {
        refused(
            "[compression]\ngzip_level = 10",
            "compression.gzip_level",
            &[],
        );
        refused(
            "[compression]\nzstd_level = 16",
            "compression.zstd_level",
            &["CPU"],
        );
        refused(
            "[compression]\nzstd_level = 0",
            "compression.zstd_level",
            &[],
        );
        refused(
            "[compression]\nbrotli_quality = 10",
            "compression.brotli_quality",
            &["CPU"],
        );
        Config::from_toml("[compression]\ngzip_level = 9\nzstd_level = 15\nbrotli_quality = 9")
            .unwrap();
        Config::from_toml("[compression]\ngzip_level = 0\nzstd_level = 1\nbrotli_quality = 0")
            .unwrap();
        refused("[compression]\norder = []", "compression.order", &["empty"]);
        Config::from_toml("[compression]\nenabled = false\norder = []").unwrap();
        refused(
            "[compression]\norder = [\"gzip\", \"br\", \"gzip\"]",
            "compression.order",
            &["gzip", "twice"],
        );
    }

    #[test]
    fn inheritance_lists_refuse_bad_header_names() {
        refused(
            "[headers]\ninherit_only = [\"authorization\", \"bad header\"]",
            "headers.inherit_only[1]",
            &["bad header"],
        );
        refused(
            "[headers]\ninherit_deny = [\"\"]",
            "headers.inherit_deny[0]",
            &[],
        );
        refused(
            "[headers]\ninherit_deny = [\"x-a:\"]",
            "headers.inherit_deny[0]",
            &["x-a:"],
        );
        Config::from_toml("[headers]\ninherit_only = [\"Authorization\", \"X-Trace\"]").unwrap();
    }

    #[test]
    fn route_prefixes_must_be_plain_paths() {
        for prefix in [
            "a/", "", "/a?b", "/a#b", "/a%2f", "/a\\b", "/a/../b/", "/a/./", "/..", "/a b/",
            "/a\tb/", "/a//b/", "//", "/ä/",
        ] {
            let text = format!("[[routes]]\nprefix = {prefix:?}\nupstream = \"http://h\"");
            refused(&text, "routes[0].prefix", &[]);
        }
        for prefix in ["/", "/a/", "/a", "/v1.2/", "/a..b/", "/.well-known/"] {
            let text = format!("[[routes]]\nprefix = {prefix:?}\nupstream = \"http://h\"");
            Config::from_toml(&text).unwrap();
        }
        refused(
            &format!("{}{}", route(""), route("")),
            "routes[1].prefix",
            &["twice"],
        );
    }

    #[test]
    fn route_upstreams_are_http_or_https_origins() {
        for (upstream, why) in [
            ("ftp://h", "not supported"),
            ("h:80", "scheme"),
            ("http://user:pw@h:80", "userinfo"),
            ("http://user@h", "userinfo"),
            ("http://h/api", "path"),
            ("http://h/?q=1", "query"),
            ("http://h/#frag", "fragment"),
            ("http://h:0", "port 0"),
            ("http://", ""),
            ("/just/a/path", ""),
        ] {
            let text = format!("[[routes]]\nprefix = \"/a/\"\nupstream = {upstream:?}");
            refused(&text, "routes[0].upstream", &[why]);
        }
        // The password is not echoed into logs.
        let e = error("[[routes]]\nprefix = \"/a/\"\nupstream = \"http://user:s3cret@h/x?y#z\"");
        assert!(
            !e.contains("s3cret") && e.contains("http://***@h/x?y#z"),
            "{e}"
        );
        for upstream in [
            "http://h",
            "http://h/",
            "http://127.0.0.1:9001",
            "http://[::1]:80",
            "https://h",
        ] {
            let text = format!("[[routes]]\nprefix = \"/a/\"\nupstream = {upstream:?}");
            Config::from_toml(&text).unwrap();
        }
        refused(
            &route("hosts = [\"ok.example\", \"u:p@evil.example\"]"),
            "routes[0].hosts[1]",
            &["userinfo"],
        );
        let e = error(&route("hosts = [\"u:s3cret@evil.example:80\"]"));
        assert!(
            !e.contains("s3cret") && e.contains("***@evil.example:80"),
            "{e}"
        );
        refused(&route("hosts = [\"bad host\"]"), "routes[0].hosts[0]", &[]);
        refused(&route("hosts = [\"\"]"), "routes[0].hosts[0]", &[]);
        Config::from_toml(&route(
            "hosts = [\"api.example.com\", \"api.example.com:8443\"]",
        ))
        .unwrap();
    }

    /// `[admin]`'s keys as config.toml documents them (commented out) are the defaults; bad values name the key.
    #[test]
    fn admin_keys_default_as_documented_and_are_checked() {
        let text = include_str!("../config.toml");
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

    #[test]
    fn batch_path_is_a_plain_path_of_its_own() {
        for path in [
            "batch", "/healthz", "/readyz", "/metrics", "/b?x", "/b//c", "/b/../c",
        ] {
            refused(&format!("batch_path = {path:?}"), "batch_path", &[]);
        }
        Config::from_toml("batch_path = \"/batch/storage/v1\"").unwrap();
    }

    #[test]
    fn trusted_proxies_are_networks() {
        let c = Config::from_toml(
            "trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7/32\", \"::1/128\", \"172.16.0.1\", \
             \"fd00::/8\", \"::ffff:100.64.0.0/106\"]",
        )
        .unwrap();
        let trusted = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            c.trusted_proxies.iter().any(|n| n.contains(ip))
        };
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "192.168.1.7",
            "::1",
            "172.16.0.1",
            "fd12::1",
            "::ffff:10.1.2.3",
            "100.64.0.1",
        ] {
            assert!(trusted(ip), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "192.168.1.8",
            "::2",
            "172.16.0.2",
            "fe80::1",
            "::ffff:11.0.0.1",
            "100.128.0.1",
        ] {
            assert!(!trusted(ip), "{ip}");
        }
        assert_eq!(c.trusted_proxies[3].to_string(), "172.16.0.1/32");
        assert_eq!(c.trusted_proxies[5].to_string(), "100.64.0.0/10");
        let everyone: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everyone.contains("1.2.3.4".parse().unwrap()));
        assert!(!everyone.contains("::1".parse().unwrap()));

        for (entry, why) in [
            ("10.0.0.0/33", "prefix length"),
            ("::/129", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/0008", "prefix length"),
            ("10.0.0.1/8", "bits set"),
            ("example.com", "not an IP address"),
            ("10.0.0.0/8/8", "prefix length"),
            ("", "not an IP address"),
            ("10.0.0.0 /8", "not an IP address"),
        ] {
            refused(
                &format!("trusted_proxies = [\"192.168.0.0/16\", {entry:?}]"),
                "trusted_proxies[1]",
                &[why, entry],
            );
        }
    }

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
