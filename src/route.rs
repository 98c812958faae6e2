//! Routing: which upstream a part's target goes to, after normalising it so that no spelling of a path
//! reaches what its plain form would not.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery};
use tokio::sync::Semaphore;

use crate::config::{Config, RouteConfig};

/// One configured route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Position in the config's `[[routes]]`: indexes the route's service stack.
    pub id: usize,
    pub prefix: String,
    /// `http://host:port` of the upstream; every part routed here goes there.
    pub authority: Authority,
    pub http2: bool,
    pub timeout: Duration,
    pub strip_cookies: bool,
    /// Absolute-form authorities that map here (the upstream's own included).
    hosts: Vec<Authority>,
    /// Bounds the sub-requests in flight to this upstream across all batches.
    pub inflight: Arc<Semaphore>,
}

/// Where a part goes.
#[derive(Debug, Clone)]
pub struct Destination {
    pub route: Arc<Route>,
    /// Absolute URI on the upstream: its authority, the normalised path, the query as sent.
    pub uri: Uri,
}

/// Why a target cannot be routed. Nothing is sent anywhere for such a part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no route for path {0:?}")]
    NoRoute(String),
    #[error("absolute-form target names {0:?}, which is no configured route's upstream or host")]
    UnknownAuthority(String),
    #[error("target {target:?} leaves its route's prefix {prefix:?} once normalised")]
    EscapesPrefix { target: String, prefix: String },
    #[error("target {target:?} climbs above the root with '..'")]
    EscapesRoot { target: String },
    #[error(
        "target {0:?} has an encoded '/' or '\\' (%2F, %5C) that, decoded, would make a '.' or '..' segment or \
         lead to another route; it is refused"
    )]
    EncodedSlash(String),
    #[error("target {0:?} is not an origin-form path or an absolute http(s) URL")]
    BadTarget(String),
    #[error("target {0:?} is the batch endpoint itself; batches do not nest")]
    NestedBatch(String),
}

/// All routes, longest prefix first.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    batch_path: String,
}

impl Router {
    /// Builds the routes of a validated config.
    pub fn new(config: &Config) -> Router {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(id, r)| Arc::new(Route::new(id, r, config)))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router {
            routes,
            batch_path: config.batch_path.clone(),
        }
    }

    /// Routes a target. `gateway_host` is the batch request's own `Host`: an absolute-form target naming
    /// the gateway is treated as origin-form.
    pub fn route(
        &self,
        target: &str,
        gateway_host: Option<&str>,
    ) -> Result<Destination, RouteError> {
        let (authority, path_and_query) = split_target(target)?;
        let (raw_path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let path = normalise_path(raw_path).map_err(|e| match e {
            Normalise::EncodedSlash => RouteError::EncodedSlash(target.to_owned()),
            Normalise::AboveRoot => RouteError::EscapesRoot {
                target: target.to_owned(),
            },
        })?;
        if path == self.batch_path {
            return Err(RouteError::NestedBatch(target.to_owned()));
        }

        let names_gateway =
            |a: &Authority| gateway_host.is_some_and(|h| a.as_str().eq_ignore_ascii_case(h));
        let candidates: Vec<&Arc<Route>> = match &authority {
            Some(a) if !names_gateway(a) => {
                let matching: Vec<_> = self
                    .routes
                    .iter()
                    .filter(|r| r.serves_authority(a))
                    .collect();
                if matching.is_empty() {
                    return Err(RouteError::UnknownAuthority(a.to_string()));
                }
                matching
            }
            _ => self.routes.iter().collect(),
        };

        // The route the target asked for before normalisation must still be the one it gets.
        let lexical = collapse_slashes(raw_path);
        if let Some(asked) = candidates.iter().find(|r| lexical.starts_with(&r.prefix))
            && !path.starts_with(&asked.prefix)
        {
            return Err(RouteError::EscapesPrefix {
                target: target.to_owned(),
                prefix: asked.prefix.clone(),
            });
        }
        let route = candidates
            .iter()
            .copied()
            .find(|r| path.starts_with(&r.prefix))
            .ok_or_else(|| RouteError::NoRoute(path.clone()))?;
        // Encoded slashes are forwarded as sent (storage APIs put them in object names), but an upstream that
        // decodes them must still be inside the route the gateway chose.
        if has_encoded_slash(raw_path) {
            let decoded = collapse_slashes(&decode(&path, &[("%2f", '/'), ("%5c", '/')]));
            let decoded_route = candidates.iter().find(|r| decoded.starts_with(&r.prefix));
            if !decoded_route.is_some_and(|r| Arc::ptr_eq(r, route)) {
                return Err(RouteError::EncodedSlash(target.to_owned()));
            }
        }

        let mut pq = path;
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq =
            PathAndQuery::try_from(pq).map_err(|_| RouteError::BadTarget(target.to_owned()))?;
        let uri = Uri::builder()
            .scheme("http")
            .authority(route.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| RouteError::BadTarget(target.to_owned()))?;
        Ok(Destination {
            route: route.clone(),
            uri,
        })
    }
}

impl Route {
    fn new(id: usize, r: &RouteConfig, config: &Config) -> Route {
        // Validated by Config::validate.
        let (_, authority) = r.origin().expect("validated route upstream");
        let mut hosts: Vec<Authority> = r.hosts.iter().filter_map(|h| h.parse().ok()).collect();
        hosts.push(authority.clone());
        Route {
            id,
            prefix: r.prefix.clone(),
            authority,
            http2: r.http2,
            timeout: r.timeout.unwrap_or(config.limits.part_timeout),
            strip_cookies: r.strip_cookies,
            hosts,
            inflight: Arc::new(Semaphore::new(config.limits.max_inflight_per_upstream)),
        }
    }

    fn serves_authority(&self, a: &Authority) -> bool {
        self.hosts.iter().any(|h| {
            h.host().eq_ignore_ascii_case(a.host())
                && (h.port_u16() == a.port_u16() || a.port_u16().is_none())
        })
    }
}

/// Splits a target into its authority (absolute-form only) and its path-and-query.
fn split_target(target: &str) -> Result<(Option<Authority>, &str), RouteError> {
    if target.starts_with('/') {
        return Ok((None, target));
    }
    let bad = || RouteError::BadTarget(target.to_owned());
    let (scheme, rest) = target.split_once("://").ok_or_else(bad)?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(bad());
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        // Userinfo in a target is a classic confusion trick; nobody legitimate sends it.
        return Err(bad());
    }
    let authority: Authority = authority.parse().map_err(|_| bad())?;
    let path = if path.is_empty() { "/" } else { path };
    if path.starts_with('?') {
        return Err(bad());
    }
    Ok((Some(authority), path))
}

enum Normalise {
    EncodedSlash,
    AboveRoot,
}

/// Resolves a path the way a file server would read it: backslashes are slashes, `%2e` is a dot, repeated
/// slashes are one, `.` and `..` segments are applied. Encoded slashes stay encoded, but are refused where
/// decoding them would make a `.` or `..` segment.
fn normalise_path(raw: &str) -> Result<String, Normalise> {
    if has_encoded_slash(raw) {
        let decoded = decode(raw, &[("%2e", '.'), ("%2f", '/'), ("%5c", '/')]).replace('\\', "/");
        if decoded.split('/').any(|s| s == "." || s == "..") {
            return Err(Normalise::EncodedSlash);
        }
    }
    let decoded = decode(raw, &[("%2e", '.')]).replace('\\', "/");
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(Normalise::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

fn has_encoded_slash(raw: &str) -> bool {
    let lower = raw.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

/// Decodes the given escapes (lower-case, matched in any case); every other escape is left for the upstream.
fn decode(raw: &str, escapes: &[(&str, char)]) -> String {
    if !raw.contains('%') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        if let Some(&(_, c)) = escapes.iter().find(|(e, _)| esc.eq_ignore_ascii_case(e)) {
            out.push(c);
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn collapse_slashes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c == '\\' { '/' } else { c };
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let config = Config::from_toml(
            r#"
[[routes]]
prefix = "/mail/"
upstream = "http://127.0.0.1:9001"
hosts = ["mail.example.com"]
[[routes]]
prefix = "/mail/admin/"
upstream = "http://127.0.0.1:9002"
[[routes]]
prefix = "/files/"
upstream = "http://127.0.0.1:9003"
"#,
        )
        .unwrap();
        Router::new(&config)
    }

    fn to(target: &str) -> Result<String, RouteError> {
        router()
            .route(target, Some("gw.local:8080"))
            .map(|d| d.uri.to_string())
    }

    #[test]
    fn longest_prefix_wins_and_query_is_kept() {
        assert_eq!(
            to("/mail/v1/m/1?fields=id").unwrap(),
            "http://127.0.0.1:9001/mail/v1/m/1?fields=id"
        );
        assert_eq!(
            to("/mail/admin/x").unwrap(),
            "http://127.0.0.1:9002/mail/admin/x"
        );
        assert_eq!(to("/other"), Err(RouteError::NoRoute("/other".into())));
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            to("//mail///v1/./m/../m/1").unwrap(),
            "http://127.0.0.1:9001/mail/v1/m/1"
        );
        assert_eq!(
            to("/mail\\v1\\m").unwrap(),
            "http://127.0.0.1:9001/mail/v1/m"
        );
        assert!(matches!(
            to("/mail/../files/secret"),
            Err(RouteError::EscapesPrefix { .. })
        ));
        assert!(matches!(
            to("/mail/%2e%2E/files/x"),
            Err(RouteError::EscapesPrefix { .. })
        ));
        assert!(matches!(
            to("/mail/admin/../v1"),
            Err(RouteError::EscapesPrefix { .. })
        ));
        assert!(matches!(
            to("/../etc/passwd"),
            Err(RouteError::EscapesRoot { .. })
        ));
        assert!(matches!(
            to("/mail/a%2F..%2Fb"),
            Err(RouteError::EncodedSlash(_))
        ));
        // Object names in storage APIs: kept encoded, served.
        assert_eq!(
            to("/mail/o/2024%2Fa.jpg").unwrap(),
            "http://127.0.0.1:9001/mail/o/2024%2Fa.jpg"
        );
        for refused in [
            "/mail/a%5C..%5Cb",
            "/mail/x%2F%2e%2E%2Fy",
            "/mail/%2E%2e%2Ffiles/x",
            // Decoded, this is /mail/admin/, another route than the /mail/ it was checked against.
            "/mail/admin%2Fusers",
        ] {
            assert!(
                matches!(to(refused), Err(RouteError::EncodedSlash(_))),
                "{refused}"
            );
        }
        assert_eq!(
            to("/mail/a%20b").unwrap(),
            "http://127.0.0.1:9001/mail/a%20b"
        );
    }

    #[test]
    fn absolute_form_only_through_routes() {
        assert_eq!(
            to("https://mail.example.com/mail/v1/m").unwrap(),
            "http://127.0.0.1:9001/mail/v1/m"
        );
        assert_eq!(
            to("http://127.0.0.1:9003/files/a").unwrap(),
            "http://127.0.0.1:9003/files/a"
        );
        assert_eq!(
            to("http://gw.local:8080/files/a").unwrap(),
            "http://127.0.0.1:9003/files/a"
        );
        assert!(matches!(
            to("http://169.254.169.254/latest"),
            Err(RouteError::UnknownAuthority(_))
        ));
        assert!(matches!(
            to("http://mail.example.com/files/a"),
            Err(RouteError::NoRoute(_))
        ));
        assert!(matches!(
            to("http://u@mail.example.com/mail/"),
            Err(RouteError::BadTarget(_))
        ));
        assert!(matches!(to("ftp://x/y"), Err(RouteError::BadTarget(_))));
        assert!(matches!(to("*"), Err(RouteError::BadTarget(_))));
    }

    #[test]
    fn no_nesting() {
        assert!(matches!(to("/batch"), Err(RouteError::NestedBatch(_))));
        assert!(matches!(to("/x/../batch"), Err(RouteError::NestedBatch(_))));
    }
}
