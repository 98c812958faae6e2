//! The checks behind the `route` fuzz target (`fuzz/fuzz_targets/route.rs`), shared with the replay of its saved
//! inputs (`tests/fixtures/fuzz/route/`, the test below): routing never panics, and whatever it accepts is
//! already normalised, routes to itself again, and reaches no other route when an upstream decodes it naively.

use std::sync::Arc;

use super::{Router, best_route, prefix_match};
use crate::config::Config;

/// Routes with overlapping prefixes (a more private one inside a public one), a bare prefix, and an
/// absolute-form host: the shapes a confused path would try to cross.
const ROUTES: &str = r#"
[[routes]]
prefix = "/mail/"
upstream = "http://127.0.0.1:9001"
hosts = ["mail.example.com"]
[[routes]]
prefix = "/mail/admin/"
upstream = "http://127.0.0.1:9002"
[[routes]]
prefix = "/files/"
upstream = "https://127.0.0.1:9003"
[[routes]]
prefix = "/posts"
upstream = "http://127.0.0.1:9004"
"#;

/// `route`: `[flags][target...]`; bit 0 of `flags` says whether the batch named the gateway's own `Host`.
///
/// Panics when an accepted target breaks an invariant:
/// - its path is normalised: absolute, ASCII, no empty, `.` or `..` segment, no backslash, escapes upper-case
///   and never of an unreserved character;
/// - routing that path again gives the same route and the same path and query;
/// - the route's prefix matches it on a segment boundary;
/// - for an origin-form target, an upstream that decodes every escape (`%2F` included), reads `\` as `/` and
///   resolves dot segments still lands in the same route, or in none of the others.
pub(crate) fn route(data: &[u8]) {
    let [flags, target @ ..] = data else {
        return;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let router = router();
    let host = (flags & 1 == 1).then_some("gw.local:8080");
    let Ok(destination) = router.route(target, host) else {
        return;
    };
    let route = &destination.route;
    let path = destination.path.path();
    assert_normalised(path);
    assert!(
        prefix_match(&route.prefix, path).is_some(),
        "{target:?} routed to {:?} with path {path:?} outside it",
        route.prefix
    );
    // An absolute-form target is routed among the routes serving its authority: route it again as such.
    let origin = match target.split_once("://") {
        Some((scheme, rest)) if !target.starts_with('/') => {
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            format!("{scheme}://{authority}")
        }
        _ => String::new(),
    };
    let again = router
        .route(&format!("{origin}{}", destination.path), host)
        .unwrap_or_else(|e| panic!("{target:?} routed to {path:?}, which is then refused: {e}"));
    assert!(
        Arc::ptr_eq(&again.route, route) && again.path == destination.path,
        "{target:?}: routing {:?} again gives {:?} {:?}",
        destination.path,
        again.route.prefix,
        again.path
    );
    if !origin.is_empty() {
        return;
    }
    let naive = naive_resolve(path);
    if let Some(other) = best_route(router.routes.iter(), &naive) {
        assert!(
            Arc::ptr_eq(other, route),
            "{target:?} routed to {:?}, but an upstream decoding {path:?} reads {naive:?}, which is {:?}'s",
            route.prefix,
            other.prefix
        );
    }
}

fn router() -> Router {
    Router::new(&Config::from_toml(ROUTES).expect("the fuzz routes are valid"))
}

fn assert_normalised(path: &str) {
    assert!(path.starts_with('/'), "{path:?} is not absolute");
    assert!(path.is_ascii(), "{path:?} has raw non-ASCII");
    assert!(!path.contains('\\'), "{path:?} has a backslash");
    let inner = path.strip_suffix('/').unwrap_or(path);
    for segment in inner.split('/').skip(1) {
        assert!(
            !segment.is_empty() && segment != "." && segment != "..",
            "{path:?} has an empty or dot segment"
        );
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).expect("an escape has two digits");
        assert!(
            hex.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?} has an escape that is not upper-case hex"
        );
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{path:?} escapes the unreserved {:?}",
            char::from(value)
        );
    }
}

/// What a careless upstream makes of `path`: every escape decoded (bytes outside ASCII kept as escapes, so
/// the result stays a string), `\` as `/`, repeated slashes as one, dot segments applied and clamped at the
/// root.
fn naive_resolve(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
            .filter(u8::is_ascii);
        match escaped {
            Some(b) => {
                decoded.push(char::from(b));
                i += 3;
            }
            None => {
                decoded.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    let slashed = decoded.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in slashed.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out: String = segments.iter().flat_map(|s| ["/", s]).collect();
    if out.is_empty() || slashed.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    /// Every saved input (crashers the fuzzer found, hand-made hostile targets) passes the checks.
    #[test]
    fn saved_inputs_pass_the_route_checks() {
        crate::fuzz_inputs::replay("route", 10, super::route);
    }

    /// The careless upstream the checks compare against decodes encoded slashes and dots and climbs with them.
    #[test]
    fn the_naive_reading_decodes_and_climbs() {
        assert_eq!(
            super::naive_resolve("/mail/x%2F..%2Fadmin/"),
            "/mail/admin/"
        );
        assert_eq!(super::naive_resolve("/a/%2e%2e/%2e%2e/../b"), "/b");
        assert_eq!(super::naive_resolve("/mail/%C3%A9"), "/mail/%C3%A9");
    }
}
