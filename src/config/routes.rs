//! `[[routes]]`: where paths under a prefix go, and how.

use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

use super::ConfigError;
use super::check::{MAX_DURATION, MAX_PERMITS, MIN_TIMEOUT, check_duration, check_path, invalid};
use super::origin::{Origin, parse_origin, redact_userinfo};
use super::units::de_opt_duration;

/// Retries of one part.
const MAX_RETRIES: u32 = 10;

/// A route's adaptive concurrency limit, held within these bounds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrency {
    /// The floor the limit never falls below, however latency grows (at least 1).
    pub min: usize,
    /// The ceiling the limit never rises above (`min` to 1000000).
    pub max: usize,
}

/// How a route spreads its parts over its upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The less busy of two upstreams picked at random (power of two choices).
    #[default]
    LeastRequests,
    /// Each upstream in turn, whatever its load.
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
    /// How parts are spread over the upstreams (default `least_requests`).
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
    /// The private key of `client_cert` (PEM); the two are given together or not at all.
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
    /// Cut this route's JSON answers down to the part's `fields=` mask (or the batch's `X-Fields`), and send
    /// the target upstream without it.
    #[serde(default)]
    pub fields: bool,
    /// Tune this route's in-flight limit from its latency, within `{min, max}`, instead of the fixed
    /// `limits.max_inflight_per_upstream`.
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    /// Let absolute-form `https://` targets reach this route although its upstreams speak plain http (TLS
    /// ends at the gateway). Off, such parts are refused rather than sent in the clear.
    #[serde(default)]
    pub accept_https_targets: bool,
    /// Proxy plain requests under `prefix` (anything but a `POST` to the batch path) through this route's
    /// stack and answer them as ordinary HTTP responses, so one origin serves single calls and batches.
    #[serde(default)]
    pub direct: bool,
    /// Identical GET and HEAD parts of one batch (same target, headers and body) make one upstream call,
    /// whose answer each of them gets.
    #[serde(default)]
    pub dedup: bool,
    /// Store this route's cacheable GET answers in the `[cache]` and serve parts from it (RFC 9111).
    #[serde(default)]
    pub cache: bool,
    /// Identical GETs in flight (same target and forwarded headers) share one upstream call; unset is on
    /// (read it with [`RouteConfig::coalesces`]).
    #[serde(default)]
    pub coalesce: Option<bool>,
    /// Drop answer headers that say nothing to a client reading a part (the upstream's `Date`, `Server`,
    /// `Accept-Ranges` and the like: see `stack::prune`), for smaller replies.
    #[serde(default)]
    pub prune_headers: bool,
}

impl RouteConfig {
    /// A route sending paths under `prefix` to `upstream`, every other key at its default: what `--route`,
    /// `--demo` and the testing kit add.
    pub fn to(prefix: impl Into<String>, upstream: impl Into<String>) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            upstream: Some(upstream.into()),
            ..RouteConfig::default()
        }
    }

    /// Whether identical GETs in flight share one upstream call (`coalesce`, default true).
    pub fn coalesces(&self) -> bool {
        self.coalesce.unwrap_or(true)
    }

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

    /// Checks `routes[i]`'s values; `earlier` are the routes before it, none of which may have its prefix.
    /// The error names the key at fault.
    pub(super) fn validate(&self, i: usize, earlier: &[RouteConfig]) -> Result<(), ConfigError> {
        let route = self;
        check_path(&format!("routes[{i}].prefix"), &route.prefix)?;
        if let Some(http2) = route.http2 {
            let instead = if http2 { "\"2\"" } else { "\"auto\"" };
            return Err(invalid(format!(
                "routes[{i}].http2 was replaced by http_version: write http_version = {instead}"
            )));
        }
        if earlier.iter().any(|r| r.prefix == route.prefix) {
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
        Ok(())
    }

    /// Checks `routes[i].adaptive_concurrency`'s bounds.
    pub(super) fn validate_adaptive(&self, i: usize) -> Result<(), ConfigError> {
        if let Some(a) = self.adaptive_concurrency
            && (a.min == 0 || a.min > a.max || a.max > MAX_PERMITS)
        {
            return Err(invalid(format!(
                "routes[{i}].adaptive_concurrency {{ min = {}, max = {} }}: need 1 <= min <= max <= {MAX_PERMITS}",
                a.min, a.max
            )));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::{error, refused, route};

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
}
