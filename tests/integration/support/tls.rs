//! Certificates made up per test, and an HTTPS client connection to the gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::Reply;

/// A certificate authority made up for one test: it signs server certificates for `localhost` and
/// `127.0.0.1`, and clients that trust it.
pub(crate) struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its key.
pub(crate) struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl Leaf {
    /// Writes the PEM certificate and key where `[tls] cert` and `key` point.
    pub(crate) fn write(&self, cert: &std::path::Path, key: &std::path::Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

impl TestCa {
    pub(crate) fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "batchgate test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A new server certificate for `localhost` and `127.0.0.1`, with `name` as its common name.
    pub(crate) fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The CA's own certificate, for clients to trust.
    pub(crate) fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA's own certificate as PEM, for clients that read a file (`batchgate send --cacert`).
    pub(crate) fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client configuration that trusts this CA only and offers `alpn`.
    pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(batchgate_transport::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// `[tls]` for a certificate and key at these paths.
pub(crate) fn tls_section(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    )
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS client connection to the gateway (HTTP/2 when ALPN picked `h2`, else HTTP/1.1).
pub(crate) struct HttpsConn {
    sender: Sender,
    authority: String,
    /// The protocol ALPN picked.
    pub alpn: Option<Vec<u8>>,
    /// The certificate the gateway presented.
    pub peer_cert: rustls::pki_types::CertificateDer<'static>,
}

/// Connects to `addr` over TLS as `localhost`, trusting `ca`, offering `alpn`.
pub(crate) async fn https_connect(addr: SocketAddr, ca: &TestCa, alpn: &[&[u8]]) -> HttpsConn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_cert = session.peer_certificates().unwrap()[0].clone();
    let io = TokioIo::new(tls);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(connection);
        Sender::Http2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        Sender::Http1(sender)
    };
    HttpsConn {
        sender,
        authority: format!("localhost:{}", addr.port()),
        alpn,
        peer_cert,
    }
}

impl HttpsConn {
    /// Sends one request on this connection and reads the whole response.
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (http::Version, Reply) {
        let uri = match self.sender {
            Sender::Http1(_) => path.to_owned(),
            Sender::Http2(_) => format!("https://{}{path}", self.authority),
        };
        let mut request = Request::builder().method(method).uri(uri);
        if let Sender::Http1(_) = self.sender {
            request = request.header("host", &self.authority);
        }
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
            Sender::Http2(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
        };
        let version = response.version();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            version,
            Reply {
                status,
                headers,
                body,
            },
        )
    }

    /// POSTs a batch to /batch on this connection.
    pub(crate) async fn post(&mut self, content_type: &str, body: impl Into<Bytes>) -> Reply {
        self.request(
            Method::POST,
            "/batch",
            &[("content-type", content_type)],
            body,
        )
        .await
        .1
    }
}
