//! CORS for the batch endpoint (`[cors]`): which other origins' pages may call it from a browser.
//!
//! A `multipart/mixed` POST is never a "simple" request, so a browser first sends a preflight
//! (`OPTIONS` with `Access-Control-Request-Method`). For an allowed origin the preflight gets `204` with
//! the allowed method (`POST`), headers and max age; the POST's reply (a `200` or an error) gets
//! `Access-Control-Allow-Origin` and, when configured, `-Expose-Headers` and `-Allow-Credentials`.
//!
//! An origin that is not allowed gets no CORS headers at all: its preflight is refused with `403` and a
//! JSON error (so the reason shows in the browser's network panel, and the browser fails the `fetch`), and
//! a POST it sends anyway (only non-browser clients do) is served as a same-origin request would be:
//! CORS protects the browser's user, it is not access control. Every response of the batch endpoint says
//! `Vary: Origin`, since its CORS headers depend on it.
//!
//! Our own small layer rather than tower-http's `CorsLayer`: the rules above (a refused preflight with a
//! reason, errors decorated like replies) are a few lines here, and the layer would have to be rebuilt on
//! every reload anyway.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderValue, ORIGIN, VARY,
};
use http::{Method, Request, Response, StatusCode};

use crate::config::CorsConfig;
use crate::response::{ReplyBody, full, json_error};

/// The `[cors]` rules, ready to apply.
#[derive(Debug, Clone)]
pub struct Cors {
    /// `"*"` is listed (never with credentials: config validation refuses that).
    any: bool,
    /// The allowed origins, canonical (see [`canonical_origin`]).
    origins: Vec<String>,
    credentials: bool,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// What the batch endpoint's responses vary by when CORS is on; a preflight's answer also varies by what it
/// asks for.
const VARY_ACTUAL: &str = "Origin";
const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

impl Cors {
    pub fn new(config: &CorsConfig) -> Cors {
        let list = |names: &[String]| {
            let joined = names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ");
            // Validated as header names, so the list is a valid header value.
            if joined.is_empty() {
                None
            } else {
                HeaderValue::try_from(joined).ok()
            }
        };
        Cors {
            any: config.allow_origins.iter().any(|o| o == "*") && !config.allow_credentials,
            origins: config
                .allow_origins
                .iter()
                .filter_map(|o| canonical_origin(o))
                .collect(),
            credentials: config.allow_credentials,
            allow_headers: list(&config.allow_headers),
            expose_headers: list(&config.expose_headers),
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// Whether `request` is a CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
    pub fn is_preflight<B>(request: &Request<B>) -> bool {
        request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The `Access-Control-Allow-Origin` for a request with this `Origin`: `*`, or the origin itself; `None`
    /// when it has none or is not allowed.
    pub fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let canonical = canonical_origin(origin.to_str().ok()?)?;
        self.origins.contains(&canonical).then(|| origin.clone())
    }

    /// The answer to a preflight with these request headers: `204` with the CORS headers for an allowed
    /// origin, else `403` with a JSON error and no CORS headers.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<ReplyBody> {
        let origin = headers.get(ORIGIN);
        let Some(allowed) = self.allow_origin(origin) else {
            let shown = origin.map_or_else(
                || "(none)".to_owned(),
                |o| String::from_utf8_lossy(o.as_bytes()).into_owned(),
            );
            tracing::info!(origin = %shown, "CORS preflight refused: origin not in cors.allow_origins");
            let message =
                format!("CORS preflight refused: origin {shown:?} is not in cors.allow_origins");
            let mut response = json_error(StatusCode::FORBIDDEN, &message);
            let h = response.headers_mut();
            h.append(VARY, HeaderValue::from_static(VARY_PREFLIGHT));
            return response;
        };
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        // The configured list as it is: the requested headers it holds are in it, the others must not be
        // (the browser then fails the request, as it should).
        if let Some(allow) = &self.allow_headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, allow.clone());
        }
        h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.append(VARY, HeaderValue::from_static(VARY_PREFLIGHT));
        response
    }

    /// Adds the CORS headers to the response of an actual (not preflight) request from `origin`: nothing but
    /// `Vary: Origin` when the origin is not allowed.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        headers.append(VARY, HeaderValue::from_static(VARY_ACTUAL));
        let Some(allowed) = self.allow_origin(origin) else {
            return;
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if let Some(expose) = &self.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// An origin as browsers serialise it: lowercase scheme and host, the port only when it is not the scheme's
/// default, no trailing slash. `None` for what is not an `http(s)://host[:port]` origin (`null`, say).
pub(crate) fn canonical_origin(origin: &str) -> Option<String> {
    let uri: http::Uri = origin.trim_end_matches('/').parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use http::header::CONTENT_TYPE;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsConfig {
            allow_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allow_credentials: credentials,
            allow_headers: vec!["Content-Type".into(), "authorization".into()],
            expose_headers: vec!["x-request-id".into()],
            max_age: Duration::from_secs(600),
        })
    }

    fn preflight_headers(origin: &str, requested: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            "access-control-request-headers",
            HeaderValue::from_str(requested).unwrap(),
        );
        h
    }

    fn cors_headers(h: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = h
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn origins_compare_as_browsers_serialise_them() {
        assert_eq!(
            canonical_origin("HTTPS://App.Example.com:443").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            canonical_origin("http://127.0.0.1:8080/").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            canonical_origin("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
        for bad in [
            "null",
            "",
            "file:///x",
            "https://a.example/path",
            "a.example",
        ] {
            assert_eq!(canonical_origin(bad), None, "{bad}");
        }
        let c = cors(
            &["https://app.example.com:443", "http://127.0.0.1:8080"],
            false,
        );
        let allow = |o: &str| c.allow_origin(Some(&HeaderValue::from_str(o).unwrap()));
        assert_eq!(
            allow("https://app.example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            allow("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(allow("http://127.0.0.1:8081"), None);
        assert_eq!(allow("http://app.example.com"), None, "scheme counts");
        assert_eq!(allow("https://evil.app.example.com"), None);
        assert_eq!(allow("null"), None);
        assert_eq!(c.allow_origin(None), None);
    }

    #[test]
    fn an_allowed_preflight_gets_204_with_the_configured_rules() {
        let c = cors(&["https://app.example.com"], true);
        let r = c.preflight(&preflight_headers(
            "https://app.example.com",
            "content-type, x-not-listed",
        ));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, authorization"
        );
        assert!(
            !h[ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("x-not-listed"),
            "a requested header not in the list is not echoed"
        );
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[VARY], VARY_PREFLIGHT);
        assert!(!h.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));
    }

    #[test]
    fn wildcard_without_credentials_answers_star() {
        let c = cors(&["*"], false);
        let r = c.preflight(&preflight_headers(
            "http://anything.example",
            "content-type",
        ));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!r.headers().contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        let mut h = HeaderMap::new();
        c.decorate(Some(&HeaderValue::from_static("http://x.example")), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn a_disallowed_preflight_gets_403_without_cors_headers() {
        let c = cors(&["https://app.example.com"], true);
        let r = c.preflight(&preflight_headers("https://evil.example", "content-type"));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(cors_headers(r.headers()), Vec::<String>::new());
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn actual_responses_are_decorated_only_for_allowed_origins() {
        let c = cors(&["https://app.example.com"], true);
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        c.decorate(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(
            vary,
            ["Accept-Encoding", "Origin"],
            "Vary is added to, not replaced"
        );

        let mut h = HeaderMap::new();
        c.decorate(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut h,
        );
        assert_eq!(cors_headers(&h), Vec::<String>::new());
        assert_eq!(h[VARY], "Origin");
        let mut h = HeaderMap::new();
        c.decorate(None, &mut h);
        assert_eq!(cors_headers(&h), Vec::<String>::new());
    }

    #[test]
    fn without_expose_or_credentials_those_headers_are_absent() {
        let c = Cors::new(&CorsConfig {
            allow_origins: vec!["https://app.example.com".into()],
            allow_headers: Vec::new(),
            ..CorsConfig::default()
        });
        let mut h = HeaderMap::new();
        c.decorate(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert_eq!(cors_headers(&h), ["access-control-allow-origin"]);
        let r = c.preflight(&preflight_headers(
            "https://app.example.com",
            "content-type",
        ));
        assert_eq!(
            cors_headers(r.headers()),
            [
                "access-control-allow-methods",
                "access-control-allow-origin",
                "access-control-max-age"
            ]
        );
    }
}
