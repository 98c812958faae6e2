//! Connections to the batch endpoint: TCP with `TCP_NODELAY`, then rustls for https (SNI, ALPN h2 and
//! http/1.1), all within `connect_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::transport::{Conn, client_config};

/// Why a connection could not be made; the sender turns it into a [`ClientError`](super::ClientError).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectFailure {
    #[error("{0}")]
    Tcp(String),
    #[error("{0}")]
    Tls(String),
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
}

#[derive(Clone)]
pub(crate) struct Connector {
    pub tls: Option<Arc<ClientConfig>>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectFailure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let limit = this.connect_timeout;
            tokio::time::timeout(limit, this.connect(uri))
                .await
                .map_err(|_| ConnectFailure::Timeout(limit))?
                .map(TokioIo::new)
        })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<Conn, ConnectFailure> {
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| ConnectFailure::Tcp(format!("{uri} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| ConnectFailure::Tcp(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Conn::Plain(tcp));
        }
        let config = self
            .tls
            .ok_or_else(|| ConnectFailure::Tls("no TLS configuration".to_owned()))?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| ConnectFailure::Tls(format!("{host:?} is not a server name: {e}")))?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectFailure::Tls(super::error::chain(&e)))?;
        Ok(Conn::Tls(Box::new(stream)))
    }
}

/// The client's TLS configuration: the system roots plus `extra`, ALPN h2 then http/1.1.
pub(crate) fn tls_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    client_config(extra, &[b"h2", b"http/1.1"])
}
