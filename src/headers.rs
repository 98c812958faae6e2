//! Header rules at the proxy boundary: what is hop-by-hop, what parts inherit from the batch, and what the
//! gateway adds for the upstream.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

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
pub struct HeaderRules {
    only: Vec<HeaderName>,
    deny: Vec<HeaderName>,
}

/// What every part of one batch starts from.
#[derive(Debug, Clone)]
pub struct BatchHeaders {
    inherited: HeaderMap,
    peer: IpAddr,
}

impl HeaderRules {
    pub fn new(config: &crate::Config) -> HeaderRules {
        let policy = &config.headers;
        let names = |list: &[String]| {
            list.iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        HeaderRules {
            only: names(&policy.inherit_only),
            deny: names(&policy.inherit_deny),
        }
    }

    pub fn batch(&self, outer: &HeaderMap, peer: IpAddr, _tls: bool) -> BatchHeaders {
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
        BatchHeaders {
            inherited: out,
            peer,
        }
    }
}

impl BatchHeaders {
    pub fn for_part(&self, mut part: HeaderMap, strip_cookies: bool) -> HeaderMap {
        let inherited = &self.inherited;
        strip_hop_by_hop(&mut part);
        part.remove(header::HOST);
        part.remove(header::EXPECT);
        part.remove(header::CONTENT_LENGTH);
        part.remove(header::ACCEPT_ENCODING);
        let mut out = HeaderMap::with_capacity(inherited.len() + part.len() + 2);
        for (name, value) in inherited {
            if !part.contains_key(name) {
                out.append(name.clone(), value.clone());
            }
        }
        let mut last = None;
        for (name, value) in part {
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
        if let Ok(v) = HeaderValue::from_str(&self.peer.to_string()) {
            out.insert("x-forwarded-for", v);
        }
        out.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        out
    }
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
}
