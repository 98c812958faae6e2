//! Connections to the batch endpoint: the host and port its URI names, TCP then rustls for https (SNI, ALPN
//! h2 and http/1.1), all within `connect_timeout`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use batchgate_transport::{ConnectError, MaybeTlsStream, TlsTarget, client_config, connect};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};

/// Connects to the host each request's URI names; errors are [`ConnectError`]s, which the sender turns
/// into [`ClientError`](super::ClientError)s.
#[derive(Clone)]
pub(crate) struct UriConnector {
    pub tls: Option<Arc<ClientConfig>>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for UriConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UriConnector")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl tower_service::Service<Uri> for UriConnector {
    type Response = TokioIo<MaybeTlsStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            let (host, port, tls) = target(&uri, tls)?;
            connect((host.as_str(), port), tls, limit)
                .await
                .map(TokioIo::new)
        })
    }
}

/// The host and port to connect to, and for https the TLS target named after the host.
fn target(
    uri: &Uri,
    tls: Option<Arc<ClientConfig>>,
) -> Result<(String, u16, Option<TlsTarget>), ConnectError> {
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::Tcp(invalid(format!("{uri} has no host"))))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    if !https {
        return Ok((host, port, None));
    }
    let config =
        tls.ok_or_else(|| ConnectError::Tls(invalid("no TLS configuration".to_owned())))?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| ConnectError::Tls(invalid(format!("{host:?} is not a server name: {e}"))))?;
    Ok((
        host,
        port,
        Some(TlsTarget {
            config,
            server_name,
        }),
    ))
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, reason)
}

/// The client's TLS configuration: the system roots plus `extra`, ALPN h2 then http/1.1.
pub(crate) fn tls_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    client_config(extra, &[b"h2", b"http/1.1"])
}
