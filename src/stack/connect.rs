//! Connections to one upstream address (`batchgate_transport::connect`: TCP with `TCP_NODELAY`, then TLS
//! with SNI and ALPN for https upstreams), both within `upstream.connect_timeout`. Each address has its own
//! connector, so the pool in front of it is that address's own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use batchgate_transport::TlsTarget;
use batchgate_transport::{ConnectError, MaybeTlsStream, connect};
use http::Uri;
use hyper_util::rt::TokioIo;
use tower::Service;

use crate::metrics::Metrics;
use crate::response::BoxError;

/// Connects to one address, whatever the request's URI says (the URI carries the upstream's name for the
/// `Host` header and the pool; the balancer has already chosen the address).
#[derive(Debug, Clone)]
pub(crate) struct AddrConnector {
    pub addr: SocketAddr,
    pub connect_timeout: Duration,
    pub tls: Option<TlsTarget>,
    pub metrics: Arc<Metrics>,
}

impl Service<Uri> for AddrConnector {
    type Response = TokioIo<MaybeTlsStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

impl AddrConnector {
    /// One new connection, TLS handshake made: the error a [`TcpError`] (nothing was sent, another address
    /// may take the part) or a [`TlsError`].
    pub(crate) async fn connect(&self) -> Result<MaybeTlsStream, BoxError> {
        self.metrics.upstream_connect();
        let limit = self.connect_timeout;
        connect(self.addr, self.tls.clone(), limit)
            .await
            .map_err(|e| -> BoxError {
                match e {
                    ConnectError::Tcp(e) => Box::new(TcpError(e)),
                    ConnectError::TcpTimeout(_) => Box::new(TcpError(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {limit:?} (upstream.connect_timeout)"),
                    ))),
                    ConnectError::Tls(e) => Box::new(TlsError(e.to_string())),
                    ConnectError::TlsTimeout(_) => Box::new(TlsError(format!(
                        "no handshake within {limit:?} (upstream.connect_timeout)"
                    ))),
                }
            })
    }
}

/// No TCP connection: refused, unreachable, or not within `connect_timeout`; nothing was sent. Worded as
/// its cause is ("Connection refused (os error 111)").
#[derive(Debug)]
pub(crate) struct TcpError(pub io::Error);

impl std::fmt::Display for TcpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TcpError {}

/// A failed TLS handshake: its message always says "certificate" where the certificate was the problem,
/// as rustls words it ("invalid peer certificate: UnknownIssuer").
#[derive(Debug)]
pub(crate) struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl std::error::Error for TlsError {}
