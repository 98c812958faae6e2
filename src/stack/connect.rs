//! Connections to one upstream address: TCP with `TCP_NODELAY`, then TLS with SNI and ALPN for https
//! upstreams, both within `upstream.connect_timeout`. Each address has its own connector, so the pool in
//! front of it is that address's own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::Service;

use crate::metrics::Metrics;
use crate::response::BoxError;
use crate::transport::Conn;

/// How to reach an https upstream: its TLS configuration and the name its certificate must carry.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.server_name)
    }
}

/// Connects to one address, whatever the request's URI says (the URI carries the upstream's name for the
/// `Host` header and the pool; the balancer has already chosen the address).
#[derive(Debug, Clone)]
pub struct Connector {
    pub addr: SocketAddr,
    pub connect_timeout: Duration,
    pub tls: Option<TlsTarget>,
    pub metrics: Arc<Metrics>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.metrics.upstream_connect();
            // One deadline for TCP and the TLS handshake: a listener that never answers the handshake is
            // no more of a connection than one that never accepts.
            let deadline = tokio::time::Instant::now() + this.connect_timeout;
            let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(this.addr))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no connection within {:?} (upstream.connect_timeout)",
                            this.connect_timeout
                        ),
                    ))
                })
                .map_err(TcpError)?;
            let _ = tcp.set_nodelay(true);
            let conn = match this.tls {
                None => Conn::Plain(tcp),
                Some(tls) => {
                    let handshake = TlsConnector::from(tls.config).connect(tls.server_name, tcp);
                    let stream = tokio::time::timeout_at(deadline, handshake)
                        .await
                        .map_err(|_| {
                            TlsError(format!(
                                "no handshake within {:?} (upstream.connect_timeout)",
                                this.connect_timeout
                            ))
                        })?
                        .map_err(|e| TlsError(e.to_string()))?;
                    Conn::Tls(Box::new(stream))
                }
            };
            Ok(TokioIo::new(conn))
        })
    }
}

/// No TCP connection: refused, unreachable, or not within `connect_timeout`; nothing was sent. Worded as
/// its cause is ("Connection refused (os error 111)").
#[derive(Debug)]
pub struct TcpError(pub io::Error);

impl std::fmt::Display for TcpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TcpError {}

/// A failed TLS handshake: its message always says "certificate" where the certificate was the problem,
/// as rustls words it ("invalid peer certificate: UnknownIssuer").
#[derive(Debug)]
pub struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl std::error::Error for TlsError {}
