//! Routing: which upstream a part's target goes to, after normalising it so that no spelling of a path
//! reaches what its plain form would not.
//!
//! A target is normalised as RFC 3986 section 6 describes before any route is chosen: the fragment is
//! dropped, percent-encoded unreserved characters are decoded and every other escape's hex digits are
//! upper-cased, raw non-ASCII characters are percent-encoded as UTF-8, and dot segments are removed. What the
//! upstream receives is this normalised path, with the query as sent (non-ASCII encoded, nothing else).

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery};

use crate::config::{Config, RouteConfig};

/// One configured route, ready to serve.
#[derive(Debug)]
pub(crate) struct Route {
    /// Position in the config's `[[routes]]`: indexes the route's service stack.
    pub id: usize,
    /// Matched on segment boundaries: `/posts` serves `/posts` and `/posts/...`, never `/postsecret`; a
    /// prefix ending in `/`, like `/mail/`, serves `/mail/...` and also the bare `/mail` (a client asking for
    /// the collection itself means the same upstream, not "no route").
    pub prefix: String,
    /// The prefix again, shared: it labels the route's metrics and logs.
    pub name: Arc<str>,
    /// Whether an absolute-form `https://` target may come here: its upstreams speak https, or the route
    /// accepts such targets over plain http.
    pub tls: bool,
    /// Plain requests under the prefix are proxied too (`direct`), not only batch parts.
    pub direct: bool,
    /// Identical safe parts of one batch share one upstream call (`dedup`).
    pub dedup: bool,
    /// Absolute-form authorities that map here (the upstreams' own included).
    hosts: Vec<Authority>,
}

/// Where a part goes.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub route: Arc<Route>,
    /// The normalised path and the query as sent (raw non-ASCII percent-encoded), no fragment. Which upstream
    /// it goes to, and under which prefix, the route's stack decides.
    pub path: PathAndQuery,
}

/// Why a target cannot be routed. Nothing is sent anywhere for such a part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
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
    #[error(
        "target {target:?} asks for https, but route {prefix:?} speaks plain http to its upstreams; it is not \
         sent in the clear"
    )]
    PlainForHttps { target: String, prefix: String },
    #[error("target {0:?} is the batch endpoint itself; batches do not nest")]
    NestedBatch(String),
    #[error(
        "target {target:?} has a malformed percent-escape {escape:?}: '%' in a path must be followed by two \
         hex digits"
    )]
    MalformedEscape { target: String, escape: String },
    #[error(
        "target {target:?} has a raw {character:?}, which a request target cannot carry; control characters, \
         spaces, '<', '>', '`' (and '\"' in the query) must be percent-encoded"
    )]
    BadCharacter { target: String, character: char },
    #[error(
        "target {0:?} has a '.' or '..' segment with path parameters (like '..;/'), which servers that strip \
         parameters read as a dot segment; it is refused"
    )]
    DotSegmentParams(String),
}

/// All routes, longest prefix first.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Vec<Arc<Route>>,
    /// The batch endpoint, normalised like a target.
    batch_path: String,
}

impl Router {
    /// Builds the routes of a validated config.
    pub(crate) fn new(config: &Config) -> Router {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(id, r)| Arc::new(Route::new(id, r)))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let batch_path = normalise_chars(&config.batch_path, Component::Path)
            .and_then(|p| normalise_path(&p))
            .unwrap_or_else(|_| config.batch_path.clone());
        Router { routes, batch_path }
    }

    /// Whether any route proxies plain requests (`direct`).
    pub(crate) fn has_direct(&self) -> bool {
        self.routes.iter().any(|r| r.direct)
    }

    /// Routes a target. `gateway_host` is the batch request's own `Host`: an absolute-form target naming
    /// the gateway is treated as origin-form.
    ///
    /// The target is normalised first (see the module documentation); a route is then chosen for the
    /// normalised path by the longest prefix that matches it on a segment boundary (see [`Route::prefix`]).
    pub(crate) fn route(
        &self,
        target: &str,
        gateway_host: Option<&str>,
    ) -> Result<Destination, RouteError> {
        let refused = |e: Normalise| e.for_target(target);
        // The fragment is the client's own business (RFC 9110 7.1); it goes before anything else is read.
        let sent = target.split_once('#').map_or(target, |(t, _)| t);
        let (absolute, path_and_query) =
            split_target(sent).ok_or_else(|| RouteError::BadTarget(target.to_owned()))?;
        let wants_tls = absolute.as_ref().is_some_and(|(https, _)| *https);
        let authority = absolute.map(|(_, authority)| authority);
        let (raw_path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        // A target that is already normal (the common case) is used as it is, rather than rebuilt equal.
        let plain = is_normal_path(raw_path) && raw_query.is_none_or(is_normal_query);
        // Escapes and characters normalised, dot segments still there: what the client asked for.
        let asked_path: Cow<'_, str> = if plain {
            raw_path.into()
        } else {
            normalise_chars(raw_path, Component::Path)
                .map_err(refused)?
                .into()
        };
        let query: Option<Cow<'_, str>> = match raw_query {
            Some(q) if plain => Some(q.into()),
            Some(q) => Some(
                normalise_chars(q, Component::Query)
                    .map_err(refused)?
                    .into(),
            ),
            None => None,
        };
        let path: Cow<'_, str> = if plain {
            raw_path.into()
        } else {
            normalise_path(&asked_path).map_err(refused)?.into()
        };
        if path == self.batch_path {
            return Err(RouteError::NestedBatch(target.to_owned()));
        }

        let names_gateway =
            |a: &Authority| gateway_host.is_some_and(|h| a.as_str().eq_ignore_ascii_case(h));
        // Routes for another authority are no candidates; an origin-form target (the common case) has them all,
        // without a list made for it.
        let elsewhere = authority.as_ref().filter(|a| !names_gateway(a));
        let candidate = |r: &Route| elsewhere.is_none_or(|a| r.serves_authority(a));
        if let Some(a) = elsewhere
            && !self.routes.iter().any(|r| candidate(r))
        {
            return Err(RouteError::UnknownAuthority(a.to_string()));
        }
        let best = |path: &str| best_route(self.routes.iter().filter(|r| candidate(r)), path);

        // The route the target asked for before dot segments were applied must still be the one it gets (a plain
        // target has none: it asked for the path it has).
        if !plain
            && let Some(asked) = best(&collapse_slashes(&asked_path))
            && prefix_match(&asked.prefix, &path).is_none()
        {
            return Err(RouteError::EscapesPrefix {
                target: target.to_owned(),
                prefix: asked.prefix.clone(),
            });
        }
        let route = best(&path).ok_or_else(|| RouteError::NoRoute(path.clone().into_owned()))?;
        if wants_tls && !route.tls {
            return Err(RouteError::PlainForHttps {
                target: target.to_owned(),
                prefix: route.prefix.clone(),
            });
        }
        // Encoded slashes are forwarded as sent (storage APIs put them in object names), but an upstream that
        // decodes them must still be inside the route the gateway chose.
        if has_encoded_slash(&path) {
            let decoded = collapse_slashes(&decode(&path, &[("%2f", '/'), ("%5c", '/')]));
            if !best(&decoded).is_some_and(|r| Arc::ptr_eq(r, route)) {
                return Err(RouteError::EncodedSlash(target.to_owned()));
            }
        }

        let mut pq = String::with_capacity(path.len() + query.as_ref().map_or(0, |q| q.len() + 1));
        pq.push_str(&path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(&q);
        }
        let path =
            PathAndQuery::try_from(pq).map_err(|_| RouteError::BadTarget(target.to_owned()))?;
        Ok(Destination {
            route: route.clone(),
            path,
        })
    }
}

impl Route {
    fn new(id: usize, r: &RouteConfig) -> Route {
        // Validated by Config::validate.
        let origins = r.origins().expect("validated route upstreams");
        let mut hosts: Vec<Authority> = r.hosts.iter().filter_map(|h| h.parse().ok()).collect();
        hosts.extend(origins.iter().map(|o| o.authority.clone()));
        Route {
            id,
            prefix: r.prefix.clone(),
            name: Arc::from(r.prefix.as_str()),
            tls: origins[0].is_tls() || r.accept_https_targets,
            direct: r.direct,
            dedup: r.dedup,
            hosts,
        }
    }

    fn serves_authority(&self, a: &Authority) -> bool {
        self.hosts.iter().any(|h| {
            h.host().eq_ignore_ascii_case(a.host())
                && (h.port_u16() == a.port_u16() || a.port_u16().is_none())
        })
    }
}

/// How well `prefix` matches `path` on a segment boundary, or `None`. `/posts` matches `/posts` and
/// `/posts/...` but not `/postsecret`; `/mail/` matches `/mail/...` and the bare `/mail`. The rank orders
/// matches by how much of the path they cover; of two covering the same (`/posts` and `/posts/` for the path
/// `/posts`), the prefix that is the path itself wins over the bare form of a longer one.
fn prefix_match(prefix: &str, path: &str) -> Option<usize> {
    if let Some(rest) = path.strip_prefix(prefix)
        && (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    {
        return Some(2 * prefix.len() + 1);
    }
    let dir = prefix.strip_suffix('/')?;
    (!dir.is_empty() && path == dir).then_some(2 * dir.len())
}

/// The route whose prefix matches `path` best: the longest prefix on a segment boundary.
fn best_route<'r>(
    candidates: impl Iterator<Item = &'r Arc<Route>>,
    path: &str,
) -> Option<&'r Arc<Route>> {
    candidates
        .filter_map(|r| prefix_match(&r.prefix, path).map(|rank| (rank, r)))
        .max_by_key(|&(rank, _)| rank)
        .map(|(_, r)| r)
}

/// Splits a target into its authority (absolute-form only) and its path-and-query; `None` if it is
/// neither origin-form nor an absolute http(s) URL.
fn split_target(target: &str) -> Option<(Option<(bool, Authority)>, &str)> {
    if target.starts_with('/') {
        return Some((None, target));
    }
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        // Userinfo in a target is a classic confusion trick; nobody legitimate sends it.
        return None;
    }
    let authority: Authority = authority.parse().ok()?;
    let path = if path.is_empty() { "/" } else { path };
    if path.starts_with('?') {
        return None;
    }
    Some((
        Some((scheme.eq_ignore_ascii_case("https"), authority)),
        path,
    ))
}

/// Why a path could not be normalised; [`Normalise::for_target`] names the target.
#[derive(Debug)]
enum Normalise {
    EncodedSlash,
    AboveRoot,
    MalformedEscape(String),
    BadCharacter(char),
    DotSegmentParams,
}

impl Normalise {
    fn for_target(self, target: &str) -> RouteError {
        let target = target.to_owned();
        match self {
            Normalise::EncodedSlash => RouteError::EncodedSlash(target),
            Normalise::AboveRoot => RouteError::EscapesRoot { target },
            Normalise::MalformedEscape(escape) => RouteError::MalformedEscape { target, escape },
            Normalise::BadCharacter(character) => RouteError::BadCharacter { target, character },
            Normalise::DotSegmentParams => RouteError::DotSegmentParams(target),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Path,
    Query,
}

/// Character-level normalisation (RFC 3986 6.2.2.1 and 6.2.2.2). In a path, escapes of unreserved
/// characters are decoded (`%7e` is `~`), every other escape keeps its byte with upper-case hex (`%2f` is
/// `%2F`), and a `%` without two hex digits is refused. In both path and query, raw non-ASCII characters
/// become the escapes of their UTF-8 bytes, and characters no target may carry raw are refused: control
/// characters, space, and what `http::Uri` refuses besides (`<`, `>`, and `` ` `` in a path, `"` in a
/// query). The query is otherwise left as sent: its escapes are neither decoded nor checked.
fn normalise_chars(raw: &str, component: Component) -> Result<String, Normalise> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' if component == Component::Path => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| Some((hex_value(h[0])?, hex_value(h[1])?)));
                let Some((hi, lo)) = hex else {
                    return Err(Normalise::MalformedEscape(
                        raw[i..].chars().take(3).collect(),
                    ));
                };
                let decoded = hi << 4 | lo;
                if is_unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    push_escape(&mut out, decoded);
                }
                i += 3;
                continue;
            }
            0x80.. => push_escape(&mut out, b),
            _ if b.is_ascii_control() || b == b' ' || b"<>".contains(&b) => {
                return Err(Normalise::BadCharacter(char::from(b)));
            }
            b'`' if component == Component::Path => {
                return Err(Normalise::BadCharacter('`'));
            }
            b'"' if component == Component::Query => {
                return Err(Normalise::BadCharacter('"'));
            }
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Resolves a path (its characters already normalised by [`normalise_chars`]) the way a file server would
/// read it: backslashes are slashes, repeated slashes are one, `.` and `..` segments are applied. Encoded
/// slashes stay encoded, but are refused where decoding them would make a `.` or `..` segment. A `.` or
/// `..` segment with path parameters (`..;/`, `.;x`, also with `;` encoded as `%3B` or behind an encoded
/// slash) is refused: servers that strip parameters before resolving dot segments would climb with it.
fn normalise_path(path: &str) -> Result<String, Normalise> {
    let all_decoded = decode(path, &[("%2f", '/'), ("%5c", '/'), ("%3b", ';')]).replace('\\', "/");
    if all_decoded
        .split('/')
        .any(|s| s.starts_with(".;") || s.starts_with("..;"))
    {
        return Err(Normalise::DotSegmentParams);
    }
    if has_encoded_slash(path) {
        let decoded = decode(path, &[("%2f", '/'), ("%5c", '/')]).replace('\\', "/");
        if decoded.split('/').any(|s| s == "." || s == "..") {
            return Err(Normalise::EncodedSlash);
        }
    }
    let slashed = path.replace('\\', "/");
    let trailing_slash =
        slashed.ends_with('/') || slashed.ends_with("/.") || slashed.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in slashed.split('/') {
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
    let mut out = String::with_capacity(path.len());
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
    raw.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    })
}

/// Whether [`normalise_chars`] and then [`normalise_path`] leave `path` as it is: it starts with `/`, its
/// segments are non-empty (an empty last one, a trailing slash, aside) and none starts with `.`, and it has
/// only characters that pass unchanged (no `%`, no backslash, nothing to escape or refuse).
fn is_normal_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment.starts_with('.') {
            return false;
        }
    }
    rest.bytes().all(plain)
}

/// Whether [`normalise_chars`] leaves a query as it is: visible ASCII only, none of what it refuses.
fn is_normal_query(query: &str) -> bool {
    query
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"<>\"".contains(&b))
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

    /// The shortcut for targets that are already normal takes only those that normalising leaves as they
    /// are, and takes the common ones.
    #[test]
    fn a_normal_target_is_one_normalising_leaves_as_it_is() {
        let pieces = [
            "",
            "/",
            "//",
            "a",
            "mail",
            "v1",
            ".",
            "..",
            ".well-known",
            "a.b",
            "%2e",
            "%2F",
            "%7e",
            "%41",
            "%",
            "%zz",
            "\\",
            ";",
            "..;",
            ".;x",
            "a;b",
            "~",
            "é",
            " ",
            "`",
            "<",
            "\"",
            "@:!$&'()*+,=",
            "-_",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in ["", "/", "x", "/.", "/..", "//"] {
                    let path = format!("/{a}/{b}{c}");
                    if is_normal_path(&path) {
                        checked += 1;
                        let chars = normalise_chars(&path, Component::Path).unwrap();
                        assert_eq!(chars, path);
                        assert_eq!(normalise_path(&chars).unwrap(), path);
                        assert_eq!(collapse_slashes(&path), path);
                        assert!(!has_encoded_slash(&path));
                    }
                    let query = format!("{a}={b}{c}");
                    if is_normal_query(&query) {
                        assert_eq!(normalise_chars(&query, Component::Query).unwrap(), query);
                    }
                }
            }
        }
        assert!(checked > 100, "{checked}");
        for common in [
            "/mail/v1/messages/17",
            "/mail/",
            "/",
            "/a/b.json",
            "/users/me@x.com/items;v=2",
        ] {
            assert!(is_normal_path(common), "{common}");
        }
        assert!(is_normal_query("format=metadata&fields=id,snippet&q=%20x"));
        for unusual in [
            "/mail//x",
            "/mail/./x",
            "/mail/%7ex",
            "/mail/\\x",
            "/caf\u{e9}",
            "mail",
        ] {
            assert!(!is_normal_path(unusual), "{unusual}");
        }
    }

    /// Where a destination goes, as `upstream + path`: the route's first upstream in `config`.
    fn upstream_of(config: &Config, d: Destination) -> String {
        let route = &config.routes[d.route.id];
        format!("{}{}", route.upstream.as_deref().unwrap(), d.path)
    }

    fn config() -> Config {
        Config::from_toml(
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
        .unwrap()
    }

    fn router() -> Router {
        Router::new(&config())
    }

    fn to(target: &str) -> Result<String, RouteError> {
        let config = config();
        Router::new(&config)
            .route(target, Some("gw.local:8080"))
            .map(|d| upstream_of(&config, d))
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
            to("http://mail.example.com/mail/v1/m").unwrap(),
            "http://127.0.0.1:9001/mail/v1/m"
        );
        // An https target is never sent in the clear.
        assert!(matches!(
            to("https://mail.example.com/mail/v1/m"),
            Err(RouteError::PlainForHttps { .. })
        ));
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
        // However it is spelt.
        for nested in [
            "/b%61tch",
            "/%62%61%74%63%68",
            "/batch#x",
            "/batch?x=1",
            "//batch",
        ] {
            assert_eq!(
                to(nested),
                Err(RouteError::NestedBatch(nested.into())),
                "{nested}"
            );
        }
    }

    fn posts_config() -> Config {
        Config::from_toml(
            r#"
[[routes]]
prefix = "/posts"
upstream = "http://127.0.0.1:9004"
[[routes]]
prefix = "/mail/"
upstream = "http://127.0.0.1:9001"
[[routes]]
prefix = "/mail/admin/"
upstream = "http://127.0.0.1:9002"
[[routes]]
prefix = "/tags"
upstream = "http://127.0.0.1:9005"
[[routes]]
prefix = "/tags/"
upstream = "http://127.0.0.1:9006"
"#,
        )
        .unwrap()
    }

    fn posts(target: &str) -> Result<String, RouteError> {
        let config = posts_config();
        Router::new(&config)
            .route(target, None)
            .map(|d| upstream_of(&config, d))
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert_eq!(posts("/posts").unwrap(), "http://127.0.0.1:9004/posts");
        assert_eq!(posts("/posts/").unwrap(), "http://127.0.0.1:9004/posts/");
        assert_eq!(posts("/posts/1").unwrap(), "http://127.0.0.1:9004/posts/1");
        assert_eq!(
            posts("/posts?page=2").unwrap(),
            "http://127.0.0.1:9004/posts?page=2"
        );
        for unrouted in [
            "/postsecret",
            "/posts.json",
            "/posts;x",
            "/mailbox",
            "/mail.x",
        ] {
            assert_eq!(
                posts(unrouted),
                Err(RouteError::NoRoute(unrouted.into())),
                "{unrouted}"
            );
        }
        // A prefix with a trailing slash also serves its bare directory, and the longest still wins.
        assert_eq!(posts("/mail").unwrap(), "http://127.0.0.1:9001/mail");
        assert_eq!(
            posts("/mail/admin").unwrap(),
            "http://127.0.0.1:9002/mail/admin"
        );
        assert_eq!(
            posts("/mail/administrator").unwrap(),
            "http://127.0.0.1:9001/mail/administrator"
        );
        // `/tags` and `/tags/` both configured: the path that is a prefix goes to that prefix.
        assert_eq!(posts("/tags").unwrap(), "http://127.0.0.1:9005/tags");
        assert_eq!(posts("/tags/a").unwrap(), "http://127.0.0.1:9006/tags/a");
        assert_eq!(posts("/tags/").unwrap(), "http://127.0.0.1:9006/tags/");
    }

    #[test]
    fn escaping_a_prefix_is_judged_on_segment_boundaries_too() {
        // Lexically under /posts; normalised, /postsecret is not (a plain starts_with would let it through).
        assert_eq!(
            posts("/posts/../postsecret"),
            Err(RouteError::EscapesPrefix {
                target: "/posts/../postsecret".into(),
                prefix: "/posts".into()
            })
        );
        assert!(matches!(
            posts("/mail/../mailbox"),
            Err(RouteError::EscapesPrefix { .. })
        ));
        assert!(matches!(
            posts("/mail/admin/.."),
            Err(RouteError::EscapesPrefix { .. })
        ));
        // Lexically under no route, so nothing to escape from.
        assert_eq!(
            posts("/postsecret/../posts/1").unwrap(),
            "http://127.0.0.1:9004/posts/1"
        );
        // Decoded, an encoded slash may not pick another route either.
        assert!(matches!(
            posts("/mail/admin%2Fx"),
            Err(RouteError::EncodedSlash(_))
        ));
    }

    #[test]
    fn fragment_is_dropped_first() {
        assert_eq!(to("/mail/x#frag").unwrap(), "http://127.0.0.1:9001/mail/x");
        // Before the query is split: a '?' in the fragment is no query.
        assert_eq!(
            to("/mail/x#frag?a=1").unwrap(),
            "http://127.0.0.1:9001/mail/x"
        );
        assert_eq!(
            to("/mail/x?a=1#frag?b=2").unwrap(),
            "http://127.0.0.1:9001/mail/x?a=1"
        );
        // Whatever the fragment holds is never read.
        assert_eq!(
            to("/mail/x#/../../files/%zz y").unwrap(),
            "http://127.0.0.1:9001/mail/x"
        );
        assert_eq!(
            to("http://mail.example.com/mail/x#f").unwrap(),
            "http://127.0.0.1:9001/mail/x"
        );
        let d = router().route("/mail/x?q#f", None).unwrap();
        assert_eq!(d.path.as_str(), "/mail/x?q");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(to("/m%61il/x").unwrap(), "http://127.0.0.1:9001/mail/x");
        assert_eq!(
            to("/%6D%61%69%6C/x").unwrap(),
            "http://127.0.0.1:9001/mail/x"
        );
        // A spelling picks the route its plain form picks.
        assert_eq!(
            to("/mail/%61dmin/x").unwrap(),
            "http://127.0.0.1:9002/mail/admin/x"
        );
        assert_eq!(
            to("/mail/%7euser/%2D%2e%5f%30").unwrap(),
            "http://127.0.0.1:9001/mail/~user/-._0"
        );
        assert_eq!(
            to("/mail/a%2fb").unwrap(),
            "http://127.0.0.1:9001/mail/a%2Fb"
        );
        assert_eq!(
            to("/mail/a%3db%3Bc%c3%a9").unwrap(),
            "http://127.0.0.1:9001/mail/a%3Db%3Bc%C3%A9"
        );
        // `%25` is a '%': kept, and what follows it is not decoded again.
        assert_eq!(
            to("/mail/%2561").unwrap(),
            "http://127.0.0.1:9001/mail/%2561"
        );
        // A decoded dot is a dot segment like any other.
        assert_eq!(
            to("/mail/a/%2e%2E/b").unwrap(),
            "http://127.0.0.1:9001/mail/b"
        );
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for (target, escape) in [
            ("/mail/a%zzb", "%zz"),
            ("/mail/a%4", "%4"),
            ("/mail/%", "%"),
            ("/mail/%g1/x", "%g1"),
            ("/mail/%4/x", "%4/"),
            ("/m%a/x", "%a/"),
        ] {
            assert_eq!(
                to(target),
                Err(RouteError::MalformedEscape {
                    target: target.into(),
                    escape: escape.into()
                }),
                "{target}"
            );
        }
        let message = to("/mail/a%zzb").unwrap_err().to_string();
        assert!(
            message.contains("\"/mail/a%zzb\"") && message.contains("\"%zz\""),
            "{message}"
        );
        // The query is the upstream's to read: kept as sent.
        assert_eq!(
            to("/mail/x?q=100%&r=%zz").unwrap(),
            "http://127.0.0.1:9001/mail/x?q=100%&r=%zz"
        );
    }

    #[test]
    fn dot_segments_behind_path_parameters_are_refused() {
        for target in [
            "/mail/..;/files/x",
            "/mail/.;x/y",
            "/mail/..;jsessionid=1",
            "/mail/x/..;/..;/files/x",
            "/mail/%2e%2E;/files/x",
            "/mail/.%2e;a=b/files/x",
            "/mail/..%3b/files/x",
            "/mail/a%2F..;%2Fb",
            "/mail\\..;\\files",
            "/..;/files/x",
        ] {
            assert_eq!(
                to(target),
                Err(RouteError::DotSegmentParams(target.into())),
                "{target}"
            );
        }
        // Parameters elsewhere, or dots that are not a dot segment, are an upstream's business.
        for (target, forwarded) in [
            ("/mail/a;b/c", "/mail/a;b/c"),
            ("/mail/x..;y", "/mail/x..;y"),
            ("/mail/...;x", "/mail/...;x"),
            ("/mail/a;/../b", "/mail/b"),
        ] {
            assert_eq!(
                to(target).unwrap(),
                format!("http://127.0.0.1:9001{forwarded}"),
                "{target}"
            );
        }
    }

    #[test]
    fn non_ascii_is_encoded_and_raw_controls_refused() {
        assert_eq!(to("/mail/é").unwrap(), "http://127.0.0.1:9001/mail/%C3%A9");
        assert_eq!(
            to("/mail/日本?q=ü&r=%FC").unwrap(),
            "http://127.0.0.1:9001/mail/%E6%97%A5%E6%9C%AC?q=%C3%BC&r=%FC"
        );
        // The raw and the encoded spelling are one path.
        assert_eq!(to("/mail/%c3%a9").unwrap(), to("/mail/é").unwrap());
        for (target, character) in [
            ("/mail/a b", ' '),
            ("/mail/a\tb", '\t'),
            ("/mail/a\u{7f}", '\u{7f}'),
            ("/mail/a\0", '\0'),
            ("/mail/x?q=a b", ' '),
            ("/mail/x?q=\r\n", '\r'),
            ("/mail/<x>", '<'),
            ("/mail/`x`", '`'),
            ("/mail/x?q=\"a\"", '"'),
            ("/mail/x?q=<a>", '<'),
        ] {
            assert_eq!(
                to(target),
                Err(RouteError::BadCharacter {
                    target: target.into(),
                    character
                }),
                "{target:?}"
            );
        }
        // What http::Uri carries raw stays raw.
        assert_eq!(
            to("/mail/{\"a\"}|^[]?q={`}|^\\").unwrap(),
            "http://127.0.0.1:9001/mail/{\"a\"}|^[]?q={`}|^\\"
        );
    }

    #[test]
    fn query_is_kept_as_sent() {
        assert_eq!(
            to("/mail/x?b=2&a=%7e&c=%2f&d=/../&&e").unwrap(),
            "http://127.0.0.1:9001/mail/x?b=2&a=%7e&c=%2f&d=/../&&e"
        );
        assert_eq!(to("/mail/x?").unwrap(), "http://127.0.0.1:9001/mail/x?");
    }

    #[test]
    fn normalised_targets_route_to_themselves() {
        let r = router();
        for target in [
            "/m%61il/a/b%2f/%c3%a9?q=%zz#f",
            "/m%61il/a/%2e/b/%c3%a9?q=%zz#f",
            "/mail/x/../é/%7E;x",
            "//mail\\a\\..\\b/",
        ] {
            let once = r.route(target, None).unwrap();
            let pq = once.path.as_str();
            let twice = r.route(pq, None).unwrap();
            assert_eq!(once.path, twice.path, "{target}");
            assert!(Arc::ptr_eq(&once.route, &twice.route), "{target}");
        }
    }
}
