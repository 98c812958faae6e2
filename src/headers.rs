//! Header rules at the proxy boundary: what is hop-by-hop, what parts inherit from the batch, and the
//! forwarding headers the gateway owns.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use smallvec::SmallVec;

use crate::config::{Cidr, Config};

/// An IP address as its `Display` writes it, an IPv4 one in a single write. The standard library's `Ipv4Addr`
/// formats each octet through the integer formatter; the peer's address is written for every batch (its span, its access
/// line, `X-Forwarded-For`), and that was about 3% of a 1-part batch's instructions (docs/performance.md).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpText(pub(crate) IpAddr);

impl IpText {
    /// `X-Forwarded-For`'s value for a lone address.
    fn header_value(self) -> HeaderValue {
        let mut buf = [0; 15];
        let text = match self.0 {
            IpAddr::V4(v4) => v4_text(v4, &mut buf),
            IpAddr::V6(_) => {
                return HeaderValue::from_str(&self.0.to_string()).expect("an IP address");
            }
        };
        HeaderValue::from_str(text).expect("an IP address")
    }
}

impl fmt::Display for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // With a width or precision, the standard library pads the address as a whole: left to it.
            IpAddr::V4(v4) if f.width().is_none() && f.precision().is_none() => {
                f.write_str(v4_text(v4, &mut [0; 15]))
            }
            ip => fmt::Display::fmt(&ip, f),
        }
    }
}

/// `a.b.c.d` in `buf`, decimal octets without leading zeros.
fn v4_text(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    std::str::from_utf8(&buf[..len]).expect("ASCII digits and dots")
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), and are never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Names one request, never a batch of different ones: inherited, it would give every part the same key, and
/// an upstream that honours it would answer the second POST with the first one's answer (and the retry layer
/// would take them all for retryable). A part's own key is passed on as usual.
/// The batch header whose field mask applies to every part that has no `fields=` of its own.
pub(crate) const X_FIELDS: HeaderName = HeaderName::from_static("x-fields");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Headers that tell an upstream who the client is or what it asked for, as seen by a proxy. Only the
/// gateway sets them: a client's copies are removed from the batch's headers and from every part's.
///
/// Of these, only `X-Forwarded-For`/`-Proto`/`-Host` from a trusted proxy are passed on (see
/// [`HeaderRules::batch`]). The others are dropped even from trusted proxies: the gateway does not extend
/// `Forwarded` or `X-Real-IP`, so passing them would put a stale (or forged) claim next to the
/// `X-Forwarded-For` it does extend; `X-Forwarded-Port`/`-Prefix` would describe the proxy's listener, not
/// the gateway's routing; and `X-Original-URL`/`X-Rewrite-URL` make some servers (IIS, some PHP frameworks)
/// serve another path than the one the gateway routed and authorised, for every part of the batch.
const FORWARDING: [HeaderName; 9] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Headers set on a part's request after [`BatchHeaders::for_part`]: the policy layer's trace context
/// (`traceparent`, `tracestate`) and the pool's `Host`.
const ADDED_BELOW: usize = 3;

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers, including the ones a `Connection` header names: those first, in the order
/// listed, then the others in the map's order (removal order decides the order of what is left, which the
/// reply part shows). Nothing is allocated unless more than a few names go.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Without a `Connection` header (itself hop-by-hop) no name is listed either.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // The values are copied (a reference count each) so that the names they list can be removed.
    let connection: SmallVec<[HeaderValue; 2]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    let listed = connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for name in listed {
        // A name that is no valid header name removes nothing.
        headers.remove(name.trim());
    }
    let hop: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// What parts inherit from their batch, and whose forwarding headers are believed. Built once from a
/// validated config.
#[derive(Debug, Clone)]
pub(crate) struct HeaderRules {
    only: Vec<HeaderName>,
    deny: Vec<HeaderName>,
    trusted_proxies: Vec<Cidr>,
    /// Whether some route applies field masks: only then is the batch's `X-Fields` looked up.
    fields: bool,
}

/// The headers every part of one batch starts from, and the forwarding headers the gateway sets on each.
#[derive(Debug, Clone)]
pub(crate) struct BatchHeaders {
    inherited: HeaderMap,
    forwarding: HeaderMap,
    /// The batch's `X-Fields`: the field mask of every part (on a route with `fields = true`) that names none.
    fields: Option<HeaderValue>,
}

/// A copy of `value` in a buffer of its own, as sensitive as `value`.
fn detached(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).expect("the bytes of a header value");
    copy.set_sensitive(value.is_sensitive());
    copy
}

impl HeaderRules {
    /// The config must be validated: its header names are expected to parse.
    pub(crate) fn new(config: &Config) -> HeaderRules {
        let names = |list: &[String]| {
            list.iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("validated header name"))
                .collect()
        };
        HeaderRules {
            only: names(&config.headers.inherit_only),
            deny: names(&config.headers.inherit_deny),
            trusted_proxies: config.trusted_proxies.clone(),
            fields: config.routes.iter().any(|route| route.fields),
        }
    }

    /// The per-batch context: what every part inherits from the batch's outer headers (all but hop-by-hop,
    /// `Content-*`, `Host`, `Expect`, `Accept-Encoding`, `Idempotency-Key`, forwarding headers and whatever
    /// the policy excludes), and the forwarding headers the gateway adds. `peer` is the TCP peer; `tls` whether the
    /// client connection was HTTPS.
    ///
    /// Its values are copies, not shares of `outer`'s: a value parsed by hyper is a slice of the connection's
    /// read buffer, and a batch context that shared one would keep that whole buffer (8 KiB or more) from
    /// being reused for as long as the batch's parts run, so that hyper had to allocate another for the
    /// connection's next read.
    pub(crate) fn batch(&self, outer: &HeaderMap, peer: IpAddr, tls: bool) -> BatchHeaders {
        let mut inherited = self.inherited(outer);
        for value in inherited.values_mut() {
            *value = detached(value);
        }
        BatchHeaders {
            inherited,
            forwarding: self.forwarding(outer, peer, tls),
            fields: self
                .fields
                .then(|| outer.get(X_FIELDS).map(detached))
                .flatten(),
        }
    }

    /// The context of a direct (non-batch) request: nothing to inherit, since its headers are its own, the
    /// forwarding headers as for a batch, and its `X-Fields` as the mask when its target names none.
    pub(crate) fn direct(&self, outer: &HeaderMap, peer: IpAddr, tls: bool) -> BatchHeaders {
        BatchHeaders {
            inherited: HeaderMap::new(),
            forwarding: self.forwarding(outer, peer, tls),
            fields: self.fields.then(|| outer.get(X_FIELDS).cloned()).flatten(),
        }
    }

    /// The client a batch comes from: the peer, or, when the peer is a trusted proxy, the nearest address in
    /// its `X-Forwarded-For` chain that is not itself a trusted proxy. Each entry is the address the hop to
    /// its right saw; an entry that names no address (`unknown`, an obfuscated name, garbage) ends the walk
    /// at that hop, the last trusted one: whatever is left of it is only what the client claims.
    pub(crate) fn client(&self, outer: &HeaderMap, peer: IpAddr) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        let mut hop = peer.to_canonical();
        if !trusted(hop) {
            return hop;
        }
        let values: Vec<&str> = outer
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().unwrap_or("unknown"))
            .collect();
        let entries = values
            .iter()
            .rev()
            .flat_map(|v| v.rsplit(','))
            .map(str::trim)
            // Empty list elements are allowed by the list syntax (RFC 9110 5.6.1) and name no one.
            .filter(|entry| !entry.is_empty());
        for entry in entries {
            match forwarded_address(entry) {
                Some(address) if trusted(address) => hop = address,
                Some(address) => return address,
                None => return hop,
            }
        }
        hop
    }

    fn inherited(&self, outer: &HeaderMap) -> HeaderMap {
        let dropped = |n: &HeaderName| {
            n.as_str().starts_with("content-")
                || *n == header::HOST
                || *n == header::EXPECT
                || *n == header::ACCEPT_ENCODING
                || *n == IDEMPOTENCY_KEY
                || FORWARDING.contains(n)
                || self.deny.contains(n)
                || (!self.only.is_empty() && !self.only.contains(n))
        };
        // Most batches carry nothing to inherit (`Host`, `Content-Type`, `Content-Length`): no copy to empty.
        if outer.keys().all(|n| is_hop_by_hop(n) || dropped(n)) {
            return HeaderMap::new();
        }
        let mut out = outer.clone();
        strip_hop_by_hop(&mut out);
        let drop: Vec<HeaderName> = out.keys().filter(|n| dropped(n)).cloned().collect();
        for name in drop {
            out.remove(name);
        }
        out
    }

    /// `X-Forwarded-For`, `-Proto` and `-Host` for the upstream: the gateway's own view of the connection,
    /// or, from a trusted proxy, the proxy's chain extended by the proxy's address and its proto and host.
    fn forwarding(&self, outer: &HeaderMap, peer: IpAddr, tls: bool) -> HeaderMap {
        // A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; upstreams expect `a.b.c.d`.
        let peer = peer.to_canonical();
        let trusted = self.trusted_proxies.iter().any(|net| net.contains(peer));
        let mut out = HeaderMap::with_capacity(3);

        let chain: Vec<&str> = if trusted {
            outer
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        let peer_value = || IpText(peer).header_value();
        let forwarded_for = if chain.is_empty() {
            peer_value()
        } else {
            // Values that were header values, joined by ", ": still a valid header value.
            HeaderValue::from_str(&format!("{}, {peer}", chain.join(", ")))
                .unwrap_or_else(|_| peer_value())
        };
        out.insert(X_FORWARDED_FOR, forwarded_for);

        let kept = |name: &HeaderName, out: &mut HeaderMap| {
            let mut any = false;
            if trusted {
                for value in outer.get_all(name) {
                    out.append(name.clone(), detached(value));
                    any = true;
                }
            }
            any
        };
        if !kept(&X_FORWARDED_PROTO, &mut out) {
            let proto = if tls { "https" } else { "http" };
            out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !kept(&X_FORWARDED_HOST, &mut out)
            && let Some(host) = outer.get(header::HOST).filter(|h| is_valid_host(h))
        {
            out.insert(X_FORWARDED_HOST, detached(host));
        }
        out
    }
}

/// The address in one `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711` (proxies such as Azure's and some nginx setups add the port).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let address = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        if !port_ok {
            return None;
        }
        IpAddr::V6(inside.parse().ok()?)
    } else if let Ok(address) = entry.parse::<IpAddr>() {
        address
    } else {
        let (host, port) = entry.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        IpAddr::V4(host.parse().ok()?)
    };
    Some(address.to_canonical())
}

/// Whether a `Host` value is a plain `host[:port]`, fit to be passed on as `X-Forwarded-Host`.
fn is_valid_host(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .filter(|h| !h.contains('@'))
        .and_then(|h| h.parse::<Authority>().ok())
        .is_some_and(|a| !a.host().is_empty())
}

impl BatchHeaders {
    /// The batch's `X-Fields` mask, when some route applies masks.
    pub(crate) fn fields(&self) -> Option<&HeaderValue> {
        self.fields.as_ref()
    }

    /// The headers sent upstream for one part: inherited ones overridden name by name by the part's own,
    /// minus hop-by-hop, `Host`, `Expect`, `Content-Length` and `Accept-Encoding`, minus `Cookie` if
    /// `strip_cookies`, with the gateway's forwarding headers set last. `Host` comes from the URI.
    pub(crate) fn for_part(&self, mut part: HeaderMap, strip_cookies: bool) -> HeaderMap {
        strip_hop_by_hop(&mut part);
        part.remove(header::HOST);
        part.remove(header::EXPECT);
        part.remove(header::CONTENT_LENGTH);
        // Part bodies go back uncompressed: clients such as google-api-python-client cannot decode a part the
        // upstream compressed, and the reply as a whole is compressed for the client's connection instead.
        part.remove(header::ACCEPT_ENCODING);
        // A part can never speak for the gateway, trusted proxy in front or not.
        for name in &FORWARDING {
            part.remove(name);
        }
        // Room for what goes on below too (`traceparent`, `tracestate`, `Host`): growing a map reallocates
        // both its tables.
        let mut out = HeaderMap::with_capacity(
            self.inherited.len() + part.len() + self.forwarding.len() + ADDED_BELOW,
        );
        for (name, value) in &self.inherited {
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
        for (name, value) in &self.forwarding {
            out.append(name.clone(), value.clone());
        }
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
    fn an_address_is_written_as_the_standard_library_writes_it() {
        let mut addresses: Vec<IpAddr> = ["::1", "::ffff:10.0.0.1", "2001:db8::8a2e:370:7334"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for a in [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 255] {
            for b in [0u8, 7, 10, 100, 255] {
                addresses.push(IpAddr::V4(Ipv4Addr::new(a, b, 255 - b, a / 3)));
            }
        }
        for ip in addresses {
            assert_eq!(IpText(ip).to_string(), ip.to_string());
            assert_eq!(
                format!("{:>20}|{:<9.3}", IpText(ip), IpText(ip)),
                format!("{ip:>20}|{ip:<9.3}")
            );
            assert_eq!(IpText(ip).header_value(), ip.to_string().as_str());
        }
    }

    fn rules(toml: &str) -> HeaderRules {
        HeaderRules::new(&Config::from_toml(toml).unwrap())
    }

    fn all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// Every forwarding header, spelled as a client might.
    const SPOOFS: [(&str, &str); 9] = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("X-FORWARDED-HOST", "evil.example"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/admin"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Original-URL", "/admin/delete"),
        ("x-rewrite-url", "/admin/delete"),
    ];

    fn spoofed(extra: &[(&str, &str)]) -> HeaderMap {
        let mut pairs = SPOOFS.to_vec();
        pairs.extend_from_slice(extra);
        map(&pairs)
    }

    const GONE: [&str; 6] = [
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
    ];

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

    /// What is left, and in which order (the reply part shows it), is what removing the listed names one by
    /// one and then the hop-by-hop ones one by one leaves.
    #[test]
    fn stripping_keeps_the_order_of_one_removal_at_a_time() {
        fn one_at_a_time(headers: &mut HeaderMap) {
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
        let shapes: [&[(&str, &str)]; 4] = [
            &[
                ("server", "nginx"),
                ("date", "d"),
                ("content-type", "application/json"),
                ("content-length", "2"),
                ("connection", "keep-alive"),
                ("etag", "\"e\""),
                ("accept-ranges", "bytes"),
            ],
            &[
                ("a", "1"),
                ("connection", "X-B, close,, bad name, Keep-Alive"),
                ("x-a", "2"),
                ("b", "3"),
                ("x-b", "4"),
                ("connection", "x-a"),
                ("keep-alive", "timeout=5"),
                ("proxy-foo", "5"),
                ("c", "6"),
                ("te", "trailers"),
                ("d", "7"),
            ],
            &[("a", "1"), ("b", "2")],
            &[
                ("upgrade", "h2c"),
                ("a", "1"),
                ("trailer", "x"),
                ("b", "2"),
                ("c", "3"),
            ],
        ];
        for shape in shapes {
            let (mut ours, mut reference) = (map(shape), map(shape));
            strip_hop_by_hop(&mut ours);
            one_at_a_time(&mut reference);
            let order = |h: &HeaderMap| {
                h.iter()
                    .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(order(&ours), order(&reference), "{shape:?}");
        }
    }

    #[test]
    fn a_batch_with_nothing_to_inherit_gives_nothing_and_its_forwarding_headers() {
        let outer = map(&[
            ("host", "gw"),
            ("content-type", "multipart/mixed; boundary=b"),
            ("content-length", "9"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
        ]);
        let batch = rules("").batch(&outer, "10.0.0.9".parse().unwrap(), false);
        assert!(batch.inherited.is_empty());
        assert_eq!(
            batch.forwarding,
            map(&[
                ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "gw"),
            ])
        );
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
            ("expect", "100-continue"),
            ("accept-encoding", "gzip"),
            ("connection", "x-hop"),
            ("x-hop", "h"),
            ("te", "trailers"),
            ("idempotency-key", "batch-1"),
        ]);
        let batch = rules("[headers]\ninherit_deny = [\"X-Trace\"]").batch(
            &outer,
            "10.0.0.9".parse().unwrap(),
            false,
        );
        assert_eq!(
            batch.inherited,
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
            ("content-length", "5"),
            ("content-type", "application/json"),
            ("accept-encoding", "br"),
            ("expect", "100-continue"),
            ("upgrade", "websocket"),
        ]);
        let up = batch.for_part(part.clone(), true);
        assert_eq!(all(&up, "authorization"), ["Bearer inner"]);
        assert_eq!(all(&up, "x-a"), ["1", "2"]);
        assert_eq!(all(&up, "accept"), ["a", "b"]);
        assert_eq!(all(&up, "content-type"), ["application/json"]);
        for gone in [
            "host",
            "cookie",
            "content-length",
            "accept-encoding",
            "expect",
            "upgrade",
            "x-trace",
            "x-hop",
            "te",
            "connection",
        ] {
            assert!(up.get(gone).is_none(), "{gone}");
        }
        assert_eq!(all(&up, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(all(&up, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&up, "x-forwarded-host"), ["gw"]);
        // Cookies stay for routes that do not strip them.
        assert_eq!(all(&batch.for_part(part, false), "cookie"), ["c=1"]);

        // A part's own key goes through; the batch's never does, not even when listed.
        let keyed = batch.for_part(map(&[("idempotency-key", "part-1")]), false);
        assert_eq!(all(&keyed, "idempotency-key"), ["part-1"]);

        let only = rules(
            "[headers]\ninherit_only = [\"Authorization\", \"x-forwarded-for\", \"Idempotency-Key\"]",
        )
        .batch(
            &spoofed(&[
                ("authorization", "a"),
                ("accept", "x"),
                ("idempotency-key", "k"),
            ]),
                "10.0.0.9".parse().unwrap(),
                false,
            );
        assert_eq!(only.inherited, map(&[("authorization", "a")]));
    }

    /// hyper parses a request's header values as slices of the connection's read buffer: the batch context,
    /// which lives as long as the batch's parts, holds copies, so that the buffer is free for the next read.
    #[test]
    fn the_batch_context_shares_no_byte_of_the_request_head() {
        let head = bytes::Bytes::from_static(b"gw.example:8080 Bearer t https a,b 10.1.1.1");
        let value = |text: &str| {
            let at = head
                .windows(text.len())
                .position(|w| w == text.as_bytes())
                .unwrap();
            let mut value =
                HeaderValue::from_maybe_shared(head.slice(at..at + text.len())).unwrap();
            value.set_sensitive(text.starts_with("Bearer"));
            value
        };
        let mut outer = HeaderMap::new();
        outer.insert(header::HOST, value("gw.example:8080"));
        outer.insert(header::AUTHORIZATION, value("Bearer t"));
        outer.insert(X_FORWARDED_PROTO, value("https"));
        outer.insert(X_FORWARDED_FOR, value("10.1.1.1"));
        outer.insert(X_FIELDS, value("a,b"));
        let rules = rules(
            "trusted_proxies = [\"10.0.0.0/8\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\nfields = true",
        );
        let batch = rules.batch(&outer, "10.0.0.1".parse().unwrap(), false);
        let in_head = |v: &HeaderValue| head.as_ptr_range().contains(&v.as_bytes().as_ptr());
        let up = batch.for_part(HeaderMap::new(), false);
        assert_eq!(all(&up, "authorization"), ["Bearer t"]);
        assert!(up["authorization"].is_sensitive());
        assert_eq!(all(&up, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&up, "x-forwarded-host"), ["gw.example:8080"]);
        assert_eq!(
            batch.fields.as_ref().map(|v| v.as_bytes()),
            Some(&b"a,b"[..])
        );
        for (name, value) in &up {
            assert!(!in_head(value), "{name} shares the request head's buffer");
        }
        assert!(!in_head(batch.fields.as_ref().unwrap()));
    }

    #[test]
    fn an_untrusted_peer_gets_only_the_gateways_forwarding_headers() {
        let outer = spoofed(&[("host", "gw.example:8080"), ("x-keep", "k")]);
        for toml in ["", "trusted_proxies = [\"10.0.0.0/8\"]"] {
            let batch = rules(toml).batch(&outer, "192.0.2.7".parse().unwrap(), false);
            for own in [HeaderMap::new(), spoofed(&[])] {
                let up = batch.for_part(own, false);
                assert_eq!(all(&up, "x-forwarded-for"), ["192.0.2.7"], "{toml}");
                assert_eq!(all(&up, "x-forwarded-proto"), ["http"]);
                assert_eq!(all(&up, "x-forwarded-host"), ["gw.example:8080"]);
                for gone in GONE {
                    assert!(up.get(gone).is_none(), "{gone} with {toml:?}");
                }
                assert_eq!(all(&up, "x-keep"), ["k"]);
            }
        }
        // Over TLS, and with a Host that is no authority or none at all.
        let rules = rules("");
        let up = rules
            .batch(
                &spoofed(&[("host", "a@b")]),
                "192.0.2.7".parse().unwrap(),
                true,
            )
            .for_part(HeaderMap::new(), false);
        assert_eq!(all(&up, "x-forwarded-proto"), ["https"]);
        assert!(up.get("x-forwarded-host").is_none());
        let up = rules
            .batch(
                &HeaderMap::new(),
                "::ffff:192.0.2.7".parse().unwrap(),
                false,
            )
            .for_part(HeaderMap::new(), false);
        assert_eq!(all(&up, "x-forwarded-for"), ["192.0.2.7"]);
        assert!(up.get("x-forwarded-host").is_none());
    }

    #[test]
    fn a_trusted_peer_keeps_its_chain_and_proto_but_parts_never_forward() {
        let rules = rules("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]");
        let outer = map(&[
            ("x-forwarded-for", "203.0.113.5, 198.51.100.2"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("host", "gw.internal"),
            ("forwarded", "for=203.0.113.5"),
            ("x-real-ip", "203.0.113.5"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-forwarded-port", "443"),
        ]);
        let batch = rules.batch(&outer, "10.1.2.3".parse().unwrap(), false);
        for own in [HeaderMap::new(), spoofed(&[])] {
            let up = batch.for_part(own, false);
            assert_eq!(
                all(&up, "x-forwarded-for"),
                ["203.0.113.5, 198.51.100.2, 10.9.9.9, 10.1.2.3"]
            );
            assert_eq!(all(&up, "x-forwarded-proto"), ["https"]);
            assert_eq!(all(&up, "x-forwarded-host"), ["api.example.com"]);
            for gone in GONE {
                assert!(up.get(gone).is_none(), "{gone}");
            }
        }

        // A trusted peer that says nothing gets the gateway's own values.
        let up = rules
            .batch(
                &map(&[("host", "gw.internal")]),
                "::1".parse().unwrap(),
                true,
            )
            .for_part(spoofed(&[]), false);
        assert_eq!(all(&up, "x-forwarded-for"), ["::1"]);
        assert_eq!(all(&up, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&up, "x-forwarded-host"), ["gw.internal"]);
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_in_any_address_form() {
        let rules = rules("trusted_proxies = [\"10.0.0.0/8\", \"2001:db8:ffff::/48\"]");
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let client = |chain: &[&str]| {
            let pairs: Vec<(&str, &str)> = chain.iter().map(|v| ("x-forwarded-for", *v)).collect();
            rules.client(&map(&pairs), proxy).to_string()
        };
        // Bare addresses, with ports, bracketed IPv6 with and without a port; the client's own claims to the
        // left never count.
        assert_eq!(client(&["6.6.6.6, 203.0.113.5"]), "203.0.113.5");
        assert_eq!(client(&["6.6.6.6, 203.0.113.5:4711"]), "203.0.113.5");
        assert_eq!(client(&["6.6.6.6, [2001:db8::7]:4711"]), "2001:db8::7");
        assert_eq!(client(&["6.6.6.6, [2001:db8::7]"]), "2001:db8::7");
        assert_eq!(client(&["6.6.6.6, 2001:db8::7"]), "2001:db8::7");
        assert_eq!(client(&["6.6.6.6, [::ffff:203.0.113.5]:1"]), "203.0.113.5");
        // Trusted hops are walked through, whatever their form, and over several header lines.
        assert_eq!(
            client(&[
                "6.6.6.6, 203.0.113.5:80, 10.9.9.9:1234",
                "[2001:db8:ffff::1]:443,"
            ]),
            "203.0.113.5"
        );
        // A hop that names nobody: the proxy that wrote it is the client, never what is left of it.
        for unnamed in [
            "unknown",
            "_hidden",
            "203.0.113.5:99999",
            "[2001:db8::7",
            "[2001:db8::7]x",
            "2001:db8::7:80x",
            "host.example",
        ] {
            assert_eq!(
                client(&[&format!("6.6.6.6, {unnamed}")]),
                "10.1.2.3",
                "{unnamed}"
            );
        }
        assert_eq!(client(&["6.6.6.6, unknown, 10.9.9.9"]), "10.9.9.9");
        // All trusted, or nothing said: the nearest trusted hop.
        assert_eq!(client(&["10.7.7.7, 10.8.8.8"]), "10.7.7.7");
        assert_eq!(client(&[]), "10.1.2.3");
        // An untrusted peer is the client, whatever it says.
        assert_eq!(
            rules
                .client(
                    &map(&[("x-forwarded-for", "203.0.113.5")]),
                    "192.0.2.1".parse().unwrap()
                )
                .to_string(),
            "192.0.2.1"
        );
    }
}
