//! `[cors]`: which other origins' pages may call the batch endpoint from a browser.

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::ConfigError;
use super::check::{MAX_DURATION, check_duration, invalid};
use super::origin::parse_origin;
use super::units::de_duration;

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

impl CorsConfig {
    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let cors = self;
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
}
