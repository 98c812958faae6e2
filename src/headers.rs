//! Header rules at the proxy boundary: what is hop-by-hop, what parts inherit from the batch, and what the
//! gateway adds for the upstream.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::config::HeaderPolicy;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), and are never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers, including the ones a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Which outer headers parts inherit. Built once from the config.
#[derive(Debug, Clone, Default)]
pub struct Inheritance {
    only: Vec<HeaderName>,
    deny: Vec<HeaderName>,
}

impl Inheritance {
    pub fn new(policy: &HeaderPolicy) -> Inheritance {
        let names = |list: &[String]| {
            list.iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        Inheritance {
            only: names(&policy.inherit_only),
            deny: names(&policy.inherit_deny),
        }
    }

    /// The batch's headers that every part starts from: all but hop-by-hop, `Content-*`, `Host`, `Expect`
    /// and whatever the policy excludes.
    pub fn inherited(&self, outer: &HeaderMap) -> HeaderMap {
        let mut out = outer.clone();
        strip_hop_by_hop(&mut out);
        let drop: Vec<HeaderName> = out
            .keys()
            .filter(|n| {
                n.as_str().starts_with("content-")
                    || *n == header::HOST
                    || *n == header::EXPECT
                    || *n == header::ACCEPT_ENCODING
                    || self.deny.contains(n)
                    || (!self.only.is_empty() && !self.only.contains(n))
            })
            .cloned()
            .collect();
        for name in drop {
            out.remove(name);
        }
        out
    }
}

/// The headers sent upstream for one part: the inherited ones, overridden name by name by the part's own,
/// without hop-by-hop headers, with `X-Forwarded-For`/`-Proto` added. `Host` comes from the URI.
pub fn upstream_headers(
    inherited: &HeaderMap,
    mut part: HeaderMap,
    peer: IpAddr,
    strip_cookies: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut part);
    part.remove(header::HOST);
    part.remove(header::EXPECT);
    part.remove(header::CONTENT_LENGTH);
    // Part bodies go back uncompressed: clients such as google-api-python-client cannot decode a part the
    // upstream compressed, and the reply as a whole is compressed for the client's connection instead.
    part.remove(header::ACCEPT_ENCODING);
    let mut out = HeaderMap::with_capacity(inherited.len() + part.len() + 2);
    for (name, value) in inherited {
        if !part.contains_key(name) {
            out.append(name.clone(), value.clone());
        }
    }
    let mut last = None;
    for (name, value) in part {
        // `HeaderMap`'s owned iterator yields the name once, then `None` for further values of it.
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => last.clone().expect("a value follows its name"),
        };
        out.append(name, value);
    }
    if strip_cookies {
        out.remove(header::COOKIE);
    }
    let peer = peer.to_string();
    let forwarded_for = match out.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {peer}"),
        None => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        out.insert("x-forwarded-for", v);
    }
    out.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "p"),
            ("x-keep", "k"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, map(&[("x-keep", "k")]));
    }

    #[test]
    fn inheritance_and_override() {
        let outer = map(&[
            ("authorization", "Bearer outer"),
            ("content-type", "multipart/mixed; boundary=b"),
            ("host", "gw"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-trace", "t"),
            ("cookie", "c=1"),
        ]);
        let policy = Inheritance::new(&HeaderPolicy {
            inherit_only: vec![],
            inherit_deny: vec!["x-trace".into()],
        });
        let inherited = policy.inherited(&outer);
        assert_eq!(
            inherited,
            map(&[
                ("authorization", "Bearer outer"),
                ("accept", "a"),
                ("accept", "b"),
                ("cookie", "c=1")
            ])
        );
        let part = map(&[
            ("authorization", "Bearer inner"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("host", "evil"),
        ]);
        let up = upstream_headers(&inherited, part, "10.0.0.9".parse().unwrap(), true);
        assert_eq!(
            up.get_all("authorization").iter().collect::<Vec<_>>(),
            ["Bearer inner"]
        );
        assert_eq!(up.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(up.get_all("accept").iter().count(), 2);
        assert!(up.get("host").is_none() && up.get("cookie").is_none());
        assert_eq!(up["x-forwarded-for"], "10.0.0.9");
        assert_eq!(up["x-forwarded-proto"], "http");
    }
}
