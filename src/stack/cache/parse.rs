//! The headers the rules ([`CachePolicy`](http_cache_semantics::CachePolicy)) are handed, parsed as RFC 9110
//! and 9111 say where `http-cache-semantics` is lax: it splits `Cache-Control` on every comma and compares
//! directive names case-sensitively, reads `Age` and `Expires` only as one well-formed value, and ignores
//! `Date` when it ages an answer. Only the rules' copy is rewritten: what clients receive is the upstream's
//! headers as they came.

use std::borrow::Cow;
use std::time::SystemTime;

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, PRAGMA};
use http::{HeaderMap, HeaderValue};

/// The largest delta-seconds a cache must be able to count to (RFC 9111 section 1.2.2); larger values are
/// taken as this.
const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// An answer's headers as the rules should read them, for an answer received at `received`:
/// - `Cache-Control` as one list of directives with lower-case names, the first of each name kept (RFC 9111
///   section 4.2.1 allows either the first or "stale"), malformed ones dropped, and a `max-age` or `s-maxage`
///   that is not delta-seconds (`3600.5`, `3600a`, `= 3600`) made `0`: invalid freshness is stale;
/// - `Age` as its first member when that is a non-negative integer (RFC 9111 section 5.1), otherwise none,
///   and at least the apparent age (`received` minus `Date`, section 4.2.3);
/// - `Expires` and `Date` in IMF-fixdate, read from any of HTTP's three date formats (RFC 9110 section
///   5.6.7); an `Expires` that is no date stays, and the rules take it as already expired.
pub(super) fn response(headers: &HeaderMap, received: SystemTime) -> HeaderMap {
    let mut rules = headers.clone();
    if let Some(value) = cache_control(headers) {
        rules.insert(CACHE_CONTROL, value);
    }
    for name in [EXPIRES, DATE] {
        let Some(first) = headers.get(&name) else {
            continue;
        };
        let date = date(first);
        rules.remove(&name);
        rules.insert(name, date.map_or_else(|| first.clone(), fixdate));
    }
    let age = headers.get(AGE).and_then(age);
    let apparent = headers
        .get(DATE)
        .and_then(date)
        .and_then(|date| received.duration_since(date).ok())
        .map(|apparent| apparent.as_secs());
    rules.remove(AGE);
    if let Some(age) = age.max(apparent).filter(|age| *age > 0) {
        rules.insert(AGE, HeaderValue::from(age.min(MAX_DELTA_SECONDS)));
    }
    rules
}

/// A request's headers as the rules should read them: `Cache-Control` as for an answer, and no `Pragma`
/// (RFC 9111 section 5.4 deprecates it: `Pragma: no-cache` does not pass over a fresh entry). Borrowed
/// when there is nothing to change.
pub(super) fn request(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    if !headers.contains_key(CACHE_CONTROL) && !headers.contains_key(PRAGMA) {
        return Cow::Borrowed(headers);
    }
    let mut rules = headers.clone();
    rules.remove(PRAGMA);
    if let Some(value) = cache_control(headers) {
        rules.insert(CACHE_CONTROL, value);
    }
    Cow::Owned(rules)
}

/// Whether a request's `Cache-Control` has `only-if-cached` (RFC 9111 section 5.2.1.7), in any case.
pub(super) fn only_if_cached(headers: &HeaderMap) -> bool {
    directives(headers).any(|(name, _)| name == "only-if-cached")
}

/// Whether an answer's headers, as [`response`] made them, give it an explicit freshness lifetime (RFC 9111
/// section 4.2.1: `s-maxage` in a shared cache, `max-age`, or `Expires`).
pub(super) fn explicit_freshness(rules: &HeaderMap) -> bool {
    rules.contains_key(EXPIRES)
        || directives(rules).any(|(name, _)| matches!(name.as_str(), "max-age" | "s-maxage"))
}

/// Whether an answer says `must-understand` (RFC 9111 section 5.2.2.3).
pub(super) fn must_understand(rules: &HeaderMap) -> bool {
    directives(rules).any(|(name, _)| name == "must-understand")
}

/// When a stored answer's headers let it be served stale for an upstream that failed (RFC 9111 section
/// 4.2.4, RFC 5861 section 4): `None` when they forbid it (`must-revalidate`, `proxy-revalidate`, `no-cache`,
/// or `s-maxage`, which implies `proxy-revalidate` in a shared cache), else its `stale-if-error` window in
/// seconds, if it gives one.
pub(super) fn stale_window(headers: &HeaderMap) -> Option<Option<u64>> {
    let mut window = None;
    for (name, value) in directives(headers) {
        match name.as_str() {
            "must-revalidate" | "proxy-revalidate" | "no-cache" | "s-maxage" => return None,
            "stale-if-error" if window.is_none() => {
                window = Some(value.as_deref().and_then(delta_seconds).unwrap_or(0));
            }
            _ => {}
        }
    }
    Some(window)
}

/// `Cache-Control` rewritten as the rules read it (see [`response`]), if the message has one.
fn cache_control(headers: &HeaderMap) -> Option<HeaderValue> {
    if !headers.contains_key(CACHE_CONTROL) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut text = String::new();
    for (name, value) in directives(headers) {
        if seen.contains(&name) {
            continue;
        }
        let value = match (name.as_str(), value) {
            ("max-age" | "s-maxage", value) => Some(
                value
                    .as_deref()
                    .and_then(delta_seconds)
                    .unwrap_or(0)
                    .to_string(),
            ),
            // The rules split on every comma and do not unquote: a list (`no-cache="a, b"`) is left out,
            // which they read as the directive alone, as they would anyway.
            (_, Some(value)) if value.contains([',', '"', '\\']) => None,
            (_, value) => value,
        };
        if !text.is_empty() {
            text.push_str(", ");
        }
        text.push_str(&name);
        if let Some(value) = value {
            text.push('=');
            if !value.is_empty() && value.bytes().all(is_tchar) {
                text.push_str(&value);
            } else {
                text.push('"');
                text.push_str(&value);
                text.push('"');
            }
        }
        seen.push(name);
    }
    // Only visible ASCII and spaces went in.
    Some(HeaderValue::try_from(text).expect("a valid header value"))
}

/// The directives of every `Cache-Control` line, in order: lower-case name and unquoted value (RFC 9111
/// section 5.2: `token [ "=" ( token / quoted-string ) ]`). A malformed directive is skipped, but a
/// `max-age` or `s-maxage` with a malformed value is given as having none, so that it is read as stale.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .flat_map(|line| split_list(line.as_bytes()))
        .filter_map(|element| {
            let (name, value) = match element.iter().position(|b| *b == b'=') {
                Some(at) => (&element[..at], Some(&element[at + 1..])),
                None => (&element[..], None),
            };
            let trimmed = name.trim_ascii();
            if trimmed.is_empty() || !trimmed.iter().copied().all(is_tchar) {
                return None;
            }
            let lower = String::from_utf8_lossy(trimmed).to_ascii_lowercase();
            let freshness = matches!(lower.as_str(), "max-age" | "s-maxage");
            // `max-age =1` or `max-age= 1`: no space is allowed around `=`.
            let value = match value {
                None => None,
                Some(_) if trimmed.len() != name.len() => {
                    return freshness.then_some((lower, None));
                }
                Some(value) => match unquote(value) {
                    Some(value) => Some(value),
                    None if freshness => None,
                    None => return None,
                },
            };
            Some((lower, value))
        })
}

/// One comma-separated list's elements, trimmed, commas inside quoted strings kept.
fn split_list(line: &[u8]) -> Vec<Vec<u8>> {
    let mut elements = Vec::new();
    let mut current = Vec::new();
    let (mut quoted, mut escaped) = (false, false);
    for &b in line {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                elements.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(b);
    }
    elements.push(current);
    elements
        .into_iter()
        .map(|e| e.trim_ascii().to_vec())
        .filter(|e| !e.is_empty())
        .collect()
}

/// A directive's value: a token, or a quoted string with its escapes undone; `None` when it is neither.
fn unquote(value: &[u8]) -> Option<String> {
    if !value.is_empty() && value.iter().copied().all(is_tchar) {
        return Some(String::from_utf8_lossy(value).into_owned());
    }
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        match b {
            _ if escaped => {
                out.push(b);
                escaped = false;
            }
            b'\\' => escaped = true,
            b'"' => return None,
            _ => out.push(b),
        }
    }
    (!escaped).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// RFC 9110 section 5.6.2's tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// delta-seconds (RFC 9111 section 1.2.2): digits only, capped at [`MAX_DELTA_SECONDS`].
fn delta_seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        value
            .parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// `Age`'s first member, when it is delta-seconds.
fn age(value: &HeaderValue) -> Option<u64> {
    let first = value.to_str().ok()?.split(',').next()?.trim();
    delta_seconds(first)
}

/// An HTTP-date in any of its three formats.
fn date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

fn fixdate(date: SystemTime) -> HeaderValue {
    HeaderValue::try_from(httpdate::fmt_http_date(date)).expect("an HTTP-date is a header value")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn cc(lines: &[&str]) -> String {
        let lines: Vec<_> = lines.iter().map(|l| ("cache-control", *l)).collect();
        let rules = response(&headers(&lines), SystemTime::now());
        rules["cache-control"].to_str().unwrap().to_owned()
    }

    #[test]
    fn cache_control_is_read_as_rfc_9111_writes_it() {
        assert_eq!(cc(&["No-Cache, MAX-AGE=10"]), "no-cache, max-age=10");
        assert_eq!(cc(&["max-age=003600"]), "max-age=3600");
        assert_eq!(cc(&["max-age=\"3600\""]), "max-age=3600");
        for odd in [
            "max-age=3600.5",
            "max-age=3600a",
            "max-age= 3600",
            "max-age =3600",
            "max-age",
        ] {
            assert_eq!(cc(&[odd]), "max-age=0", "{odd}");
        }
        assert_eq!(cc(&["max-age=99999999999999999999"]), "max-age=2147483648");
        assert_eq!(cc(&["max-age=1800, max-age=1"]), "max-age=1800");
        assert_eq!(cc(&["max-age=1800", "max-age=1"]), "max-age=1800");
        assert_eq!(
            cc(&["extension=\"max-age=3600, x\", max-age=1"]),
            "extension, max-age=1"
        );
        assert_eq!(
            cc(&["private=\"set-cookie\", public"]),
            "private=set-cookie, public"
        );
        assert_eq!(cc(&["x=\"a b\", bad name, =1, , ok"]), "x=\"a b\", ok");
    }

    #[test]
    fn age_is_its_first_integer_and_at_least_the_apparent_age() {
        let now = SystemTime::now();
        let age = |lines: &[(&'static str, &str)]| {
            response(&headers(lines), now)
                .get("age")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(age(&[("age", "7200, 0")]).as_deref(), Some("7200"));
        assert_eq!(age(&[("age", "0, 7200")]), None);
        assert_eq!(
            age(&[("age", "30"), ("age", "7200")]).as_deref(),
            Some("30")
        );
        for invalid in ["-7200", "7200.0", "abc", "7200;foo=bar"] {
            assert_eq!(age(&[("age", invalid)]), None, "{invalid}");
        }
        let two_hours_ago = httpdate::fmt_http_date(now - Duration::from_secs(7200));
        assert_eq!(
            age(&[("age", "60"), ("date", &two_hours_ago)]).as_deref(),
            Some("7200")
        );
    }

    #[test]
    fn expires_is_read_in_all_three_date_formats() {
        let now = SystemTime::now();
        let expires = |value: &str| {
            let rules = response(&headers(&[("expires", value)]), now);
            rules["expires"].to_str().unwrap().to_owned()
        };
        let fixdate = "Thu, 18 Aug 2050 02:01:18 GMT";
        assert_eq!(expires(fixdate), fixdate);
        assert_eq!(expires("Thursday, 18-Aug-50 02:01:18 GMT"), fixdate);
        assert_eq!(expires("Thu Aug 18 02:01:18 2050"), fixdate);
        assert_eq!(expires("0"), "0");
        let two = response(
            &headers(&[
                ("expires", fixdate),
                ("expires", "Fri, 19 Aug 2050 02:01:18 GMT"),
            ]),
            now,
        );
        assert_eq!(two.get_all("expires").iter().count(), 1);
        assert_eq!(two["expires"], fixdate);
    }

    #[test]
    fn requests_lose_pragma_and_have_their_directives_read_alike() {
        let plain = headers(&[("accept", "*/*")]);
        assert!(matches!(request(&plain), Cow::Borrowed(_)));
        let odd = headers(&[("pragma", "no-cache"), ("cache-control", "Max-Stale=10")]);
        let rules = request(&odd);
        assert!(!rules.contains_key("pragma"));
        assert_eq!(rules["cache-control"], "max-stale=10");
        assert!(only_if_cached(&headers(&[(
            "cache-control",
            "Only-If-Cached"
        )])));
        assert!(!only_if_cached(&plain));
    }
}
