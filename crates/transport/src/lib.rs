//! Connections to HTTP servers, plain TCP or TLS, and the TLS trust roots: what the batch client
//! (`batchgate-client`), the gateway's upstream side and `batchgate send` have in common. One crypto provider,
//! `ring`, so that no other can be picked at run time.
//!
//! Internal plumbing of the batchgate crates, published only because they depend on it: no stability promise.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use rustls::client::ClientConfig;
use rustls::{RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The default connect timeout of the client and of `batchgate send`: TCP and the TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider, passed to every configuration explicitly rather than installed process-wide, so
/// that a dependent that installs another (or enables rustls's aws-lc-rs too) changes nothing here.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // rustls 0.23.48 deprecates this constructor ("no support for post-quantum algorithms") without
            // a replacement for ring: the provider's random source and key loader are private, so it cannot
            // be assembled from public parts. The only non-deprecated providers are aws-lc-rs, or the
            // process default chosen from crate features, which panics when a dependent enables both.
            #[allow(deprecated)]
            let ring = rustls::crypto::ring::default_provider();
            Arc::new(ring)
        })
        .clone()
}

/// The system's trust roots, read once per process (unreadable ones are skipped).
pub fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    })
}

/// A client configuration trusting the system's roots and `extra`, offering `alpn` in that order.
pub fn client_config(
    extra: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = system_roots().clone();
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("an extra root certificate is unusable: {e}"))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How to reach a TLS server: the configuration and the name its certificate must carry (sent as SNI).
#[derive(Clone)]
pub struct TlsTarget {
    /// Roots and ALPN offer, usually from [`client_config`].
    pub config: Arc<ClientConfig>,
    /// The name verified against the certificate; usually the URL's host, not the resolved address.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.server_name)
    }
}

/// Why no connection was made; nothing was sent on it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No TCP connection: refused, unreachable, a name that does not resolve. Worded as its cause is
    /// ("Connection refused (os error 111)").
    #[error("{0}")]
    Tcp(io::Error),
    /// No TCP connection within the limit.
    #[error("no connection within {0:?}")]
    TcpTimeout(Duration),
    /// The TLS handshake failed, as rustls words it ("invalid peer certificate: UnknownIssuer").
    #[error("{0}")]
    Tls(io::Error),
    /// No TLS handshake within the limit (counted from the start of the TCP connect).
    #[error("no handshake within {0:?}")]
    TlsTimeout(Duration),
}

/// Connects to `addr` with `TCP_NODELAY`, then, given a `tls` target, makes the TLS handshake; TCP and TLS
/// together within `limit`: a listener that never answers the handshake is no more of a connection than one
/// that never accepts.
pub async fn connect(
    addr: impl ToSocketAddrs,
    tls: Option<TlsTarget>,
    limit: Duration,
) -> Result<MaybeTlsStream, ConnectError> {
    let deadline = tokio::time::Instant::now() + limit;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::TcpTimeout(limit))?
        .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(MaybeTlsStream::Plain(tcp));
    };
    let handshake = TlsConnector::from(tls.config).connect(tls.server_name, tcp);
    let stream = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| ConnectError::TlsTimeout(limit))?
        .map_err(ConnectError::Tls)?;
    Ok(MaybeTlsStream::Tls(Box::new(stream)))
}

/// A connection to an HTTP server, plain or TLS; with TLS, ALPN tells hyper whether to speak HTTP/2.
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// An `http://` connection.
    Plain(TcpStream),
    /// An `https://` connection after its handshake (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for MaybeTlsStream {
    fn connected(&self) -> Connected {
        match self {
            MaybeTlsStream::Plain(tcp) => tcp.connected(),
            MaybeTlsStream::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A listener that accepts but never answers the handshake: the same limit as for TCP ends the wait.
    #[tokio::test(start_paused = true)]
    async fn a_silent_tls_server_is_a_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move { listener.accept().await.map(|(tcp, _)| tcp) });
        let tls = TlsTarget {
            config: client_config(&[], &[b"http/1.1"]).unwrap(),
            server_name: ServerName::try_from("localhost").unwrap(),
        };
        let limit = Duration::from_secs(3);
        let error = connect(addr, Some(tls), limit).await.unwrap_err();
        assert!(
            matches!(error, ConnectError::TlsTimeout(l) if l == limit),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "no handshake within 3s");
        drop(held);
    }

    /// A port nobody listens on: refused, worded as the operating system words it.
    #[tokio::test]
    async fn a_closed_port_is_a_tcp_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = connect(addr, None, CONNECT_TIMEOUT).await.unwrap_err();
        let ConnectError::Tcp(cause) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(cause.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(error.to_string(), cause.to_string());
    }
}
