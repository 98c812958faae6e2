//! Upstream origins (`http://host:port`) as routes and `[cors]` write them.

use std::fmt;

use http::uri::{Authority, Scheme};

/// Where an upstream is: its scheme, and its authority with the port always given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`, the port filled in (80 or 443) when the URL left it out; never userinfo.
    pub authority: Authority,
}

impl Origin {
    /// `https` or not.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The authority's port (always present once parsed; 443 or 80 as a fallback).
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.is_tls() { 443 } else { 80 })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Parses one upstream URL: `http` or `https`, a host, an optional port; nothing else.
pub(super) fn parse_origin(url: &str) -> Result<Origin, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("needs a scheme, as in http://host:port")?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!(
            "scheme {scheme} is not supported; use http:// or https://"
        ));
    }
    let authority = uri.authority().cloned().ok_or("needs a host")?;
    if authority.as_str().contains('@') {
        return Err(
            "must not contain user:password@ (userinfo): it is not how HTTP sends credentials, and the \
             upstream URL is logged; let the parts carry an Authorization header instead"
                .to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err("needs a host".to_owned());
    }
    if authority.port_u16() == Some(0) {
        return Err("port 0 cannot be connected to".to_owned());
    }
    // `http::Uri` drops a fragment silently: look at the text.
    if url.contains('#') {
        return Err("must not have a fragment".to_owned());
    }
    if uri.query().is_some() {
        return Err("must not have a query: the part's own query is forwarded".to_owned());
    }
    if !matches!(uri.path(), "" | "/") {
        return Err("must not have a path: use `rewrite` to forward under another path".to_owned());
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
    let authority = format!("{}:{port}", authority.host())
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok(Origin { scheme, authority })
}

/// The URL or authority with any userinfo (`user:password@`) replaced by `***@`, fit for an error message.
pub(super) fn redact_userinfo(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}
