//! Upstreams end to end over loopback: HTTPS (SNI, ALPN, certificate checks, mTLS) with certificates made
//! here by a test CA, absolute-form https targets, the HTTP version per route, balancing, passive health (also
//! over a reload), retries and their budget, path rewriting, host names and the route timeout and its tries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::*;
use http::{Request, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// How many requests an upstream saw for this path.
fn hits(up: &Upstream, path: &str) -> usize {
    up.seen().iter().filter(|s| s.uri.path() == path).count()
}

/// A `[[routes]]` entry for `prefix` with two upstreams, in this order, and `extra` lines.
fn two_upstreams(prefix: &str, a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstreams = [\"http://{a}\", \"http://{b}\"]\n{extra}\n"
    )
}

/// A TOML basic string holding this path.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

/// A certificate authority made for one test, and the PEM files the gateway reads, in a directory of its own
/// (removed when dropped).
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

/// A certificate signed by a [`Pki`], its key, and where their PEM files are.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        static DIRS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "batchgate-upstreams-{}-{}-{name}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("batchgate test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca: cert.der().clone(),
        }
    }

    fn ca_file(&self) -> String {
        toml_path(&self.dir.join("ca.pem"))
    }

    /// The CA as a trust root, for an upstream checking client certificates.
    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }

    /// A certificate for `names` (DNS names or IP addresses) with this extended key usage, written to
    /// `<file>.pem` and `<file>.key`.
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, file: &str) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_file,
            key_file,
        }
    }

    fn server(&self, file: &str) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            file,
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An in-process HTTPS upstream (hyper serving HTTP/1.1 and h2, as ALPN decides), answering 200 with the
/// path, and what it saw: per handshake the SNI name and ALPN protocol, per request the HTTP version.
#[derive(Clone, Default)]
struct HttpsUpstream {
    port: u16,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    versions: Arc<Mutex<Vec<(Version, String)>>>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl HttpsUpstream {
    fn sni(&self) -> Vec<Option<String>> {
        self.sni.lock().unwrap().clone()
    }
    fn alpn(&self) -> Vec<Option<Vec<u8>>> {
        self.alpn.lock().unwrap().clone()
    }
    fn versions(&self) -> Vec<(Version, String)> {
        self.versions.lock().unwrap().clone()
    }
}

/// Starts an [`HttpsUpstream`] with this certificate, offering `alpn`; with `clients`, it demands a client
/// certificate issued by one of them.
async fn https_upstream(
    leaf: &Leaf,
    alpn: &[&[u8]],
    clients: Option<RootCertStore>,
) -> HttpsUpstream {
    let provider = batchgate_transport::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
        ),
    };
    let mut config = builder
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = HttpsUpstream {
        port: listener.local_addr().unwrap().port(),
        ..HttpsUpstream::default()
    };
    let state = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        state.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let (_, session) = tls.get_ref();
                let sni = session.server_name().map(str::to_owned);
                state.sni.lock().unwrap().push(sni);
                let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                state.alpn.lock().unwrap().push(alpn);
                let versions = state.versions.clone();
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let path = request.uri().path().to_owned();
                    versions
                        .lock()
                        .unwrap()
                        .push((request.version(), path.clone()));
                    async move { Ok::<_, Infallible>(text(StatusCode::OK, path)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    up
}

/// A raw TCP upstream that reads a request head and closes the connection without answering; it keeps the
/// request lines it read.
#[derive(Clone)]
struct Resetting {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Resetting {
    fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.as_str() == line)
            .count()
    }
}

async fn resetting_upstream() -> Resetting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Resetting {
        addr: listener.local_addr().unwrap(),
        lines: Arc::default(),
    };
    let lines = up.lines.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf)
                    .lines()
                    .next()
                    .unwrap()
                    .to_owned();
                lines.lock().unwrap().push(line);
                // Dropped here: closed without a byte of answer.
            });
        }
    });
    up
}

/// A raw HTTP/1.1 upstream that answers the first request of each connection, keeping it alive, then reads
/// the second and closes the connection without answering it: what a server does when it closes an idle
/// kept-alive connection just as a request arrives. It keeps the request lines it read and those it left
/// unanswered.
#[derive(Clone, Default)]
struct ClosingIdle {
    read: Arc<Mutex<Vec<String>>>,
    unanswered: Arc<Mutex<Vec<String>>>,
}

impl ClosingIdle {
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for answered in [true, false] {
                        let Some(line) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        this.read.lock().unwrap().push(line.clone());
                        if !answered {
                            this.unanswered.lock().unwrap().push(line);
                            return;
                        }
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}",
                            line.len()
                        );
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn read(&self, line: &str) -> usize {
        self.read
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    fn unanswered(&self) -> Vec<String> {
        self.unanswered.lock().unwrap().clone()
    }
}

/// Reads one request (head, and a body of its `content-length`) from `stream`, keeping what follows in `buf`;
/// its request line, or None once the peer closes.
async fn read_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + length);
    Some(head.lines().next().unwrap_or_default().to_owned())
}

/// An upstream that closes a kept-alive connection as a part arrives on it (the race every server with an idle
/// timeout has with its clients): an idempotent part goes again on a new connection and is answered, without
/// `retries`; a POST is not sent twice, and its 502 says it may or may not have run.
#[tokio::test]
async fn a_kept_alive_connection_closed_unanswered_resends_only_idempotent_parts() {
    let up = ClosingIdle::default();
    let addr = up.start().await;
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/\"\nupstream = \"http://{addr}\"\n"
    ))
    .await;
    // One part at a time: each after the first finds the last one's connection idle in the pool, unless the
    // pool has not taken it back yet; within a few, one certainly does.
    let mut n = 0;
    while up.unanswered().is_empty() {
        n += 1;
        assert!(
            n <= 50,
            "no part went on a kept-alive connection in 50 batches"
        );
        let method = if n % 2 == 0 { "PUT" } else { "GET" };
        let parts = gw
            .send_parts(&[part(
                "a",
                &format!("{method} /idem/{n} HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
            )])
            .await;
        assert_eq!(statuses(&parts), [200], "{method} /idem/{n}: {parts:?}");
        assert_eq!(part_body(&parts[0]), format!("{method} /idem/{n} HTTP/1.1"));
    }
    let closed = &up.unanswered()[0];
    assert_eq!(
        up.read(closed),
        2,
        "{closed} went again once: {:?}",
        up.read
    );
    let mut n = 0;
    let refused = loop {
        n += 1;
        assert!(
            n <= 50,
            "no POST went on a kept-alive connection in 50 batches"
        );
        let line = format!("POST /post/{n} HTTP/1.1");
        let parts = gw
            .send_parts(&[part(
                "p",
                &format!("POST /post/{n} HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
            )])
            .await;
        if up.unanswered().contains(&line) {
            break (line, parts);
        }
        assert_eq!(statuses(&parts), [200], "{line}");
    };
    let (line, parts) = refused;
    assert_eq!(statuses(&parts), [502]);
    assert!(
        part_body(&parts[0]).contains("may or may not have run"),
        "{}",
        part_body(&parts[0])
    );
    assert_eq!(up.read(&line), 1, "a POST is never sent twice");
}

/// HTTPS upstream named `localhost` (route `ca_file`): SNI `localhost`, h2 via ALPN, else HTTP/1.1.
#[tokio::test]
async fn https_upstreams_get_sni_and_alpn_h2_or_http1() {
    let pki = Pki::new("https");
    let leaf = pki.server("server");
    let h2 = https_upstream(&leaf, &[b"h2", b"http/1.1"], None).await;
    let h1 = https_upstream(&leaf, &[b"http/1.1"], None).await;
    let ca = pki.ca_file();
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/h2/\"\nupstream = \"https://localhost:{}\"\nca_file = {ca}\n\
         [[routes]]\nprefix = \"/h1/\"\nupstream = \"https://localhost:{}\"\nca_file = {ca}\n",
        h2.port, h1.port
    ))
    .await;
    let parts = gw
        .send_parts(&[
            get_part("a", "/h2/a"),
            get_part("b", "/h2/b?q=1"),
            get_part("c", "/h1/c"),
            get_part("d", "/h1/d"),
        ])
        .await;
    assert_eq!(statuses(&parts), [200, 200, 200, 200]);
    assert_eq!(
        parts.iter().map(part_body).collect::<Vec<_>>(),
        ["/h2/a", "/h2/b", "/h1/c", "/h1/d"]
    );
    for up in [&h2, &h1] {
        assert!(!up.sni().is_empty());
        assert!(
            up.sni().iter().all(|s| s.as_deref() == Some("localhost")),
            "{:?}",
            up.sni()
        );
        assert_eq!(up.failed_handshakes.load(Ordering::SeqCst), 0);
    }
    assert!(
        h2.alpn().iter().all(|a| a.as_deref() == Some(b"h2")),
        "{:?}",
        h2.alpn()
    );
    let mut seen = h2.versions();
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        seen,
        [
            (Version::HTTP_2, "/h2/a".to_owned()),
            (Version::HTTP_2, "/h2/b".to_owned())
        ]
    );
    assert!(
        h1.alpn().iter().all(|a| a.as_deref() == Some(b"http/1.1")),
        "{:?}",
        h1.alpn()
    );
    let mut seen = h1.versions();
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        seen,
        [
            (Version::HTTP_11, "/h1/c".to_owned()),
            (Version::HTTP_11, "/h1/d".to_owned())
        ]
    );
}

/// An untrusted or misnamed upstream certificate: a 502 part saying "certificate"; other parts served.
#[tokio::test]
async fn a_bad_upstream_certificate_is_a_502_part_naming_it() {
    let pki = Pki::new("trusted");
    let good = https_upstream(&pki.server("server"), &[b"h2", b"http/1.1"], None).await;
    let misnamed_leaf = pki.leaf(
        &["other.example"],
        ExtendedKeyUsagePurpose::ServerAuth,
        "other",
    );
    let misnamed = https_upstream(&misnamed_leaf, &[b"h2", b"http/1.1"], None).await;
    let plain = echo_upstream(Duration::ZERO).await;
    let ca = pki.ca_file();
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/untrusted/\"\nupstream = \"https://localhost:{good}\"\n\
         [[routes]]\nprefix = \"/misnamed/\"\nupstream = \"https://localhost:{misnamed}\"\nca_file = {ca}\n\
         [[routes]]\nprefix = \"/good/\"\nupstream = \"https://localhost:{good}\"\nca_file = {ca}\n{}",
        routes(&[("/plain/", plain.addr)]),
        good = good.port,
        misnamed = misnamed.port,
    ))
    .await;
    let parts = gw
        .send_parts(&[
            get_part("a", "/untrusted/x"),
            get_part("b", "/misnamed/x"),
            get_part("c", "/good/x"),
            get_part("d", "/plain/x"),
        ])
        .await;
    assert_eq!(statuses(&parts), [502, 502, 200, 200]);
    for bad in &parts[..2] {
        let message = part_error(bad);
        assert!(message.contains("certificate"), "{message}");
    }
    assert!(part_error(&parts[0]).contains("UnknownIssuer"));
    assert_eq!(part_body(&parts[2]), "/good/x");
    assert_eq!(part_body(&parts[3]), "/plain/x");
    assert_eq!(good.versions(), [(Version::HTTP_2, "/good/x".to_owned())]);
    assert!(misnamed.versions().is_empty());
}

/// `connect_timeout` bounds the TLS handshake: a silent https upstream is a 502 naming it, not a 504.
#[tokio::test(start_paused = true)]
async fn a_silent_tls_handshake_fails_within_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let gw = gateway(&format!(
        "[upstream]\nconnect_timeout = \"200ms\"\n\
         [[routes]]\nprefix = \"/silent/\"\nupstream = \"https://localhost:{port}\"\ntimeout = \"5s\"\n"
    ))
    .await;
    let start = Instant::now();
    let parts = gw.send_parts(&[get_part("a", "/silent/x")]).await;
    let took = start.elapsed();
    assert_eq!(statuses(&parts), [502]);
    let message = part_error(&parts[0]);
    assert!(message.contains("connect_timeout"), "{message}");
    at_limit("the 502", took, Duration::from_millis(200));
    assert_eq!(held.lock().unwrap().len(), 1);
}

/// `GET https://...` reaches https routes; a plain one only with `accept_https_targets`, else 400.
#[tokio::test]
async fn absolute_https_targets_reach_only_https_routes_or_those_accepting_them() {
    let pki = Pki::new("targets");
    let tls = https_upstream(&pki.server("server"), &[b"h2", b"http/1.1"], None).await;
    let plain = echo_upstream(Duration::ZERO).await;
    let open = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/tls/\"\nupstream = \"https://localhost:{}\"\nca_file = {}\n{}\
         [[routes]]\nprefix = \"/open/\"\nupstream = \"http://{}\"\naccept_https_targets = true\n",
        tls.port,
        pki.ca_file(),
        routes(&[("/plain/", plain.addr)]),
        open.addr,
    ))
    .await;
    let parts = gw
        .send_parts(&[
            get_part("a", &format!("https://localhost:{}/tls/x?y=1", tls.port)),
            get_part("b", &format!("https://{}/plain/x", plain.addr)),
            get_part("c", &format!("https://{}/open/x", open.addr)),
            get_part("d", &format!("http://{}/plain/y", plain.addr)),
        ])
        .await;
    assert_eq!(statuses(&parts), [200, 400, 200, 200]);
    assert_eq!(part_body(&parts[0]), "/tls/x");
    let message = part_error(&parts[1]);
    assert!(message.contains("plain http"), "{message}");
    assert_eq!(
        plain
            .seen()
            .iter()
            .map(|s| s.uri.path().to_owned())
            .collect::<Vec<_>>(),
        ["/plain/y"],
        "the refused https target reached nothing"
    );
    assert_eq!(hits(&open, "/open/x"), 1);
    assert_eq!(tls.versions().len(), 1);
}

/// mTLS: with `client_cert`/`client_key` parts are served; without, 502 and no request reaches the handler.
#[tokio::test]
async fn mtls_client_certificates_are_presented() {
    let pki = Pki::new("mtls");
    let client = pki.leaf(
        &["batchgate-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    let up = https_upstream(
        &pki.server("server"),
        &[b"h2", b"http/1.1"],
        Some(pki.roots()),
    )
    .await;
    let ca = pki.ca_file();
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/mtls/\"\nupstream = \"https://localhost:{port}\"\nca_file = {ca}\n\
         client_cert = {}\nclient_key = {}\n\
         [[routes]]\nprefix = \"/anon/\"\nupstream = \"https://localhost:{port}\"\nca_file = {ca}\n",
        toml_path(&client.cert_file),
        toml_path(&client.key_file),
        port = up.port,
    ))
    .await;
    let parts = gw
        .send_parts(&[get_part("a", "/mtls/x"), get_part("b", "/anon/x")])
        .await;
    assert_eq!(statuses(&parts), [200, 502]);
    assert_eq!(part_body(&parts[0]), "/mtls/x");
    let message = part_error(&parts[1]);
    assert!(
        message.to_ascii_lowercase().contains("certificate"),
        "{message}"
    );
    assert_eq!(up.versions(), [(Version::HTTP_2, "/mtls/x".to_owned())]);
    assert!(up.failed_handshakes.load(Ordering::SeqCst) >= 1);
}

/// Round robin alternates exactly between two upstreams; least requests sends most parts to the fast one.
#[tokio::test(start_paused = true)]
async fn parts_are_spread_over_upstreams() {
    let a = echo_upstream(Duration::ZERO).await;
    let b = echo_upstream(Duration::ZERO).await;
    let slow = echo_upstream(Duration::from_millis(200)).await;
    let fast = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 8\n{}{}",
        two_upstreams("/rr/", a.addr, b.addr, "balance = \"round_robin\""),
        two_upstreams("/lr/", slow.addr, fast.addr, "balance = \"least_requests\""),
    ))
    .await;
    // One part at a time: they alternate, A first.
    for i in 0..20 {
        let parts = gw.send_parts(&[get_part("r", &format!("/rr/{i}"))]).await;
        assert_eq!(statuses(&parts), [200]);
    }
    let paths = |up: &Upstream| -> Vec<String> {
        up.seen().iter().map(|s| s.uri.path().to_owned()).collect()
    };
    let every_other = |from: usize| -> Vec<String> {
        (from..20).step_by(2).map(|i| format!("/rr/{i}")).collect()
    };
    assert_eq!((paths(&a), paths(&b)), (every_other(0), every_other(1)));

    let lr: Vec<String> = (0..40)
        .map(|i| get_part(&format!("l{i}"), &format!("/lr/{i}")))
        .collect();
    let parts = gw.send_parts(&lr).await;
    assert!(parts.iter().all(|p| p.status == StatusCode::OK));
    let (slow, fast) = (slow.seen().len(), fast.seen().len());
    assert_eq!(slow + fast, 40);
    // The slow one takes a part only while it has no more in flight than the fast one: at most half of the
    // batch's 8 in flight at once, then again after 200 ms.
    assert!(slow <= 10 && fast >= 30, "slow {slow}, fast {fast}");
}

/// Failing `eject_after` times ejects an upstream for `eject_for`; then it is probed back in and takes parts.
#[tokio::test(start_paused = true)]
async fn a_failing_upstream_is_ejected_then_probed_back_in() {
    let eject_for = Duration::from_millis(300);
    let good = echo_upstream(Duration::ZERO).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let sick = upstream(move |seen| {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if ok {
                text(StatusCode::OK, seen.uri.path().to_owned())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "down")
            }
        }
    })
    .await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 1\n[upstream]\neject_after = 2\neject_for = \"{}ms\"\n{}",
        eject_for.as_millis(),
        two_upstreams("/h/", good.addr, sick.addr, "balance = \"round_robin\""),
    ))
    .await;
    let batch = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| get_part(&format!("p{i}"), &format!("/h/{i}")))
            .collect()
    };
    // Round robin, one part at a time: good, sick, good, sick. The second 503 ejects it.
    let sent = Instant::now();
    let parts = gw.send_parts(&batch(0, 4)).await;
    let ejected = Instant::now();
    assert_eq!(statuses(&parts), [200, 503, 200, 503]);
    assert_eq!(sick.seen().len(), 2);

    let parts = gw.send_parts(&batch(4, 6)).await;
    assert!(
        Instant::now() < sent + eject_for,
        "still within the ejection (paused clock)"
    );
    assert_eq!(statuses(&parts), [200; 6]);
    assert_eq!(sick.seen().len(), 2, "no part while ejected");
    assert_eq!(good.seen().len(), 8);

    healthy.store(true, Ordering::SeqCst);
    let over = ejected + eject_for + Duration::from_millis(20);
    tokio::time::sleep_until(over).await;
    // Let back in: the round robin goes on where it was (good, then sick), every part answered.
    let parts = gw.send_parts(&batch(10, 4)).await;
    assert_eq!(statuses(&parts), [200; 4]);
    assert_eq!(
        sick.seen()[2..]
            .iter()
            .map(|s| s.uri.path().to_owned())
            .collect::<Vec<_>>(),
        ["/h/11", "/h/13"]
    );
    assert_eq!(good.seen().len(), 10);
}

/// Concurrent failures eject once (not doubled each), one part probes, a failed probe doubles the ejection.
#[tokio::test(start_paused = true)]
async fn a_burst_ejects_once_and_one_part_probes() {
    let eject_for = Duration::from_millis(250);
    let good = echo_upstream(Duration::ZERO).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    // Failing slowly: every part of a batch has picked its upstream before the first failure is known.
    let sick = upstream(move |seen| {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if ok {
                return text(StatusCode::OK, seen.uri.path().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            text(StatusCode::SERVICE_UNAVAILABLE, "down")
        }
    })
    .await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 8\n\
         [upstream]\neject_after = 2\neject_for = \"{}ms\"\neject_max = \"10s\"\n{}",
        eject_for.as_millis(),
        two_upstreams("/h/", good.addr, sick.addr, "balance = \"round_robin\""),
    ))
    .await;
    let batch = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| get_part(&format!("p{i}"), &format!("/h/{i}")))
            .collect()
    };
    let wait_until = |at: Instant| tokio::time::sleep_until(at);
    // Four parts fail together: the second failure ejects the upstream, the other two were sent before.
    let parts = gw.send_parts(&batch(0, 8)).await;
    let ejected = Instant::now();
    assert_eq!(sick.seen().len(), 4);
    assert_eq!(parts.iter().filter(|p| p.status == 503).count(), 4);

    // Once `eject_for` is over (not doubled twice by the two late failures), one part of a burst probes it.
    wait_until(ejected + eject_for + Duration::from_millis(20)).await;
    let parts = gw.send_parts(&batch(8, 8)).await;
    let probed = Instant::now();
    assert_eq!(sick.seen().len(), 5, "exactly one probe");
    assert_eq!(parts.iter().filter(|p| p.status == 503).count(), 1);

    // The failed probe ejected it for twice as long: still out after eject_for, back in after twice that.
    healthy.store(true, Ordering::SeqCst);
    wait_until(probed + eject_for + Duration::from_millis(20)).await;
    let parts = gw.send_parts(&batch(16, 4)).await;
    assert!(
        Instant::now() < probed + 2 * eject_for - Duration::from_millis(50),
        "still within the ejection (paused clock)"
    );
    assert_eq!(statuses(&parts), [200; 4]);
    assert_eq!(sick.seen().len(), 5, "out for twice eject_for");
    wait_until(probed + 2 * eject_for + Duration::from_millis(50)).await;
    let parts = gw.send_parts(&batch(20, 8)).await;
    assert_eq!(statuses(&parts), [200; 8]);
    assert!(sick.seen().len() > 5, "back in");
}

/// `retries`: 503 GETs/keyed POSTs go elsewhere; POSTs, Retry-After and 429 do not; resets: GET 3x, POST 1x.
#[tokio::test]
async fn idempotent_parts_are_retried_elsewhere() {
    let flaky = upstream(|seen| async move {
        let path = seen.uri.path();
        let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "flaky");
        if path.starts_with("/after/") {
            response
                .headers_mut()
                .insert("retry-after", "3".parse().unwrap());
        } else if path.starts_with("/busy/") {
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        }
        response
    })
    .await;
    let good = echo_upstream(Duration::ZERO).await;
    let resets = resetting_upstream().await;
    let reset = resets.addr;
    let mut toml = "[upstream]\neject_after = 1000\n".to_owned();
    for prefix in ["/get/", "/post/", "/keyed/", "/after/", "/busy/"] {
        // A route each: each one's round robin starts with the flaky upstream.
        toml.push_str(&two_upstreams(
            prefix,
            flaky.addr,
            good.addr,
            "balance = \"round_robin\"\nretries = 2",
        ));
    }
    toml.push_str(&format!(
        "[[routes]]\nprefix = \"/reset/\"\nupstream = \"http://{reset}\"\nretries = 2\n"
    ));
    let gw = gateway(&toml).await;
    let parts = gw
        .send_parts(&[
            get_part("a", "/get/x"),
            part("b", "POST /post/x HTTP/1.1\r\nContent-Length: 1\r\n\r\nb"),
            part(
                "c",
                "POST /keyed/x HTTP/1.1\r\nIdempotency-Key: k-1\r\nContent-Length: 1\r\n\r\nc",
            ),
            get_part("d", "/after/x"),
            get_part("e", "/busy/x"),
            get_part("f", "/reset/get"),
            part(
                "g",
                "POST /reset/post HTTP/1.1\r\nContent-Length: 1\r\n\r\ng",
            ),
        ])
        .await;
    assert_eq!(statuses(&parts), [200, 503, 200, 503, 429, 502, 502]);
    assert_eq!(part_body(&parts[0]), "/get/x");
    assert_eq!(part_body(&parts[1]), "flaky");
    assert_eq!(part_body(&parts[2]), "/keyed/x");
    assert_eq!(parts[3].headers["retry-after"], "3");
    for (path, flaky_hits, good_hits) in [
        ("/get/x", 1, 1),
        ("/post/x", 1, 0),
        ("/keyed/x", 1, 1),
        ("/after/x", 1, 0),
        ("/busy/x", 1, 0),
    ] {
        assert_eq!(
            (hits(&flaky, path), hits(&good, path)),
            (flaky_hits, good_hits),
            "{path}"
        );
    }
    // Each of its 3 tries went once more on a new connection: closed unanswered, an idempotent part may go
    // again once without a retry (see a_kept_alive_connection_closed_unanswered_resends_only_idempotent_parts).
    assert_eq!(resets.count("GET /reset/get HTTP/1.1"), 6);
    assert_eq!(resets.count("POST /reset/post HTTP/1.1"), 1);
}

/// The retry budget: 0.0 with no floor allows no retry; `retry_budget_min = 1` allows exactly 10 per window.
#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let flaky = upstream(|_| async { text(StatusCode::SERVICE_UNAVAILABLE, "flaky") }).await;
    let good = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[upstream]\nretry_budget = 0.0\nretry_budget_min = 0\neject_after = 1000\n{}",
        two_upstreams(
            "/none/",
            flaky.addr,
            good.addr,
            "balance = \"round_robin\"\nretries = 2"
        ),
    ))
    .await;
    let parts = gw.send_parts(&[get_part("a", "/none/x")]).await;
    assert_eq!(statuses(&parts), [503]);
    assert_eq!((flaky.seen().len(), good.seen().len()), (1, 0));

    let failing = upstream(|_| async { text(StatusCode::SERVICE_UNAVAILABLE, "no") }).await;
    let gw = gateway(&format!(
        "[upstream]\nretry_budget = 0.0\nretry_budget_min = 1\nretry_backoff = \"1ms\"\n\
         [[routes]]\nprefix = \"/f/\"\nupstream = \"http://{}\"\nretries = 2\n",
        failing.addr
    ))
    .await;
    let many: Vec<String> = (0..30)
        .map(|i| get_part(&format!("f{i}"), &format!("/f/{i}")))
        .collect();
    let parts = gw.send_parts(&many).await;
    assert_eq!(statuses(&parts), [503; 30]);
    assert_eq!(failing.seen().len(), 30 + 10);
}

/// `rewrite` maps paths (query kept) and maps the upstream's own `Location` back; other origins untouched.
#[tokio::test]
async fn rewrite_maps_paths_and_locations() {
    let own: Arc<OnceLock<SocketAddr>> = Arc::default();
    let me = own.clone();
    let up = upstream(move |seen| {
        let me = *me.get().unwrap();
        async move {
            let location = match seen.uri.path() {
                "/api/v1/messages/1" => format!("http://{me}/api/v1/messages/9"),
                "/api/v1/elsewhere" => "http://other.example:8080/api/v1/messages/9".to_owned(),
                _ => "http://127.0.0.1:1/api/v1/messages/9".to_owned(),
            };
            let mut response = text(StatusCode::CREATED, "");
            response
                .headers_mut()
                .insert("location", location.parse().unwrap());
            response
        }
    })
    .await;
    own.set(up.addr).unwrap();
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{}\"\nrewrite = \"/api/v1/\"\n",
        up.addr
    ))
    .await;
    let parts = gw
        .send_parts(&[
            get_part("a", "/mail/messages/1?x=1"),
            get_part("b", "/mail/elsewhere"),
            get_part("c", "/mail/other-port"),
        ])
        .await;
    assert_eq!(statuses(&parts), [201, 201, 201]);
    let mut targets: Vec<String> = up.seen().iter().map(|s| s.uri.to_string()).collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "/api/v1/elsewhere",
            "/api/v1/messages/1?x=1",
            "/api/v1/other-port"
        ]
    );
    assert_eq!(parts[0].headers["location"], "/mail/messages/9");
    assert_eq!(
        parts[1].headers["location"],
        "http://other.example:8080/api/v1/messages/9"
    );
    assert_eq!(
        parts[2].headers["location"],
        "http://127.0.0.1:1/api/v1/messages/9"
    );
}

/// A `Location` mapped back to the client never becomes a scheme-relative URL to another host, however the
/// upstream spells its path (`//host`, `///host`, `/\\host`).
#[tokio::test]
async fn mapped_locations_never_leave_the_gateways_origin() {
    let own: Arc<OnceLock<SocketAddr>> = Arc::default();
    let me = own.clone();
    let up = upstream(move |seen| {
        let me = *me.get().unwrap();
        async move {
            let path = match seen.uri.path() {
                "/mail/a" => "//evil.example/x",
                "/mail/b" => "///evil.example",
                _ => "/\\evil.example",
            };
            let mut response = text(StatusCode::FOUND, "");
            response
                .headers_mut()
                .insert("location", format!("http://{me}{path}").parse().unwrap());
            response
        }
    })
    .await;
    own.set(up.addr).unwrap();
    let gw = gateway(&routes(&[("/mail/", up.addr)])).await;
    let parts = gw
        .send_parts(&[
            get_part("a", "/mail/a"),
            get_part("b", "/mail/b"),
            get_part("c", "/mail/c"),
        ])
        .await;
    assert_eq!(statuses(&parts), [302, 302, 302]);
    let locations: Vec<&str> = parts
        .iter()
        .map(|p| p.headers["location"].to_str().unwrap())
        .collect();
    assert_eq!(
        locations,
        ["/evil.example/x", "/evil.example", "/evil.example"]
    );
}

/// An upstream named `localhost` serves every part, without retries, before and after re-resolution.
#[tokio::test]
async fn an_upstream_named_localhost_is_reached() {
    let up = echo_upstream(Duration::ZERO).await;
    let port = up.addr.port();
    let gw = gateway(&format!(
        "[upstream]\nresolve_every = \"50ms\"\n\
         [[routes]]\nprefix = \"/local/\"\nupstream = \"http://localhost:{port}\"\n"
    ))
    .await;
    let batch: Vec<String> = (0..10)
        .map(|i| get_part(&format!("p{i}"), &format!("/local/{i}")))
        .collect();
    let parts = gw.send_parts(&batch).await;
    assert_eq!(statuses(&parts), [200; 10]);
    // Past a few re-resolutions, the same.
    let later = Instant::now() + Duration::from_millis(200);
    tokio::time::sleep_until(later).await;
    let parts = gw.send_parts(&batch).await;
    assert_eq!(statuses(&parts), [200; 10]);
    assert_eq!(up.seen().len(), 20);
    assert!(gw.gateway.unready_routes().is_empty());
}

/// The route `timeout` bounds all tries together, shared evenly: three tries at an upstream that never answers
/// take 100 ms, about 100 ms and the rest, and the part is a 504 at 300 ms naming the key.
#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_all_tries_and_each_try_has_a_share() {
    let hanging = upstream(|_| std::future::pending()).await;
    let gw = gateway(&format!(
        "[upstream]\neject_after = 1000\nretry_backoff = \"1ms\"\n\
         [[routes]]\nprefix = \"/hang/\"\nupstream = \"http://{}\"\nretries = 2\ntimeout = \"300ms\"\n",
        hanging.addr
    ))
    .await;
    let start = Instant::now();
    let parts = gw.send_parts(&[get_part("a", "/hang/x")]).await;
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(statuses(&parts), [504]);
    assert_eq!(hanging.seen().len(), 3, "three tries");
    let message = part_error(&parts[0]);
    assert!(
        message.contains("within 300ms (routes[0].timeout)"),
        "{message}"
    );
}

/// An upstream that accepts and never answers, next to a healthy one: each try there runs out of its share of
/// the route's timeout (half, with `retries = 1`), counts as a failure, and the part goes to the healthy one.
/// After `eject_after` such tries the hanging one is ejected: later parts go straight to the healthy one, and
/// the route stays ready.
#[tokio::test(start_paused = true)]
async fn a_hanging_upstream_is_ejected_and_its_parts_tried_elsewhere() {
    let hanging = upstream(|_| std::future::pending()).await;
    let good = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 1\n\
         [upstream]\neject_after = 2\neject_for = \"60s\"\neject_max = \"60s\"\nretry_backoff = \"1ms\"\n{}",
        two_upstreams(
            "/h/",
            hanging.addr,
            good.addr,
            "balance = \"round_robin\"\nretries = 1\ntimeout = \"4s\""
        ),
    ))
    .await;
    let targets: Vec<String> = (0..8)
        .map(|i| get_part(&format!("p{i}"), &format!("/h/{i}")))
        .collect();
    let start = Instant::now();
    let parts = gw.send_parts(&targets).await;
    let took = start.elapsed();
    assert_eq!(statuses(&parts), [200; 8]);
    // Round robin, one part at a time: parts 0 and 2 tried the hanging upstream first, 2 s each (plus a
    // backoff of at most 1 ms); then it was out.
    assert!(
        took >= Duration::from_secs(4) && took <= Duration::from_millis(4002),
        "{took:?}"
    );
    assert_eq!(hanging.seen().len(), 2);
    assert_eq!(good.seen().len(), 8);
    assert!(gw.gateway.unready_routes().is_empty());
    let metrics = gw
        .request(http::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert_eq!(
        metric(&metrics, "batchgate_ejections_total", &[("route", "/h/")]),
        1
    );
}

/// A part out of time is a 504 naming the key that ran out: the route's `timeout`, or `limits.part_timeout`
/// for a route without one. Each such part counts against the address, POSTs (never retried) too, so a route
/// whose only upstream hangs is ejected and `/readyz` says so.
#[tokio::test(start_paused = true)]
async fn a_part_out_of_time_names_the_key_and_counts_against_the_address() {
    let hanging = upstream(|_| std::future::pending()).await;
    let gw = gateway(&format!(
        "[limits]\npart_timeout = \"3s\"\n\
         [upstream]\neject_after = 2\neject_for = \"60s\"\neject_max = \"60s\"\n\
         [[routes]]\nprefix = \"/r/\"\nupstream = \"http://{0}\"\nretries = 1\ntimeout = \"2s\"\n\
         [[routes]]\nprefix = \"/p/\"\nupstream = \"http://{0}\"\n",
        hanging.addr
    ))
    .await;
    let post = |id: &str, target: &str| {
        part(
            id,
            &format!("POST {target} HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
        )
    };
    let start = Instant::now();
    let parts = gw
        .send_parts(&[post("a", "/r/1"), get_part("b", "/p/1")])
        .await;
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(statuses(&parts), [504, 504]);
    let (r, p) = (part_error(&parts[0]), part_error(&parts[1]));
    assert!(r.contains("within 2s (routes[0].timeout)"), "{r}");
    assert!(p.contains("within 3s (limits.part_timeout)"), "{p}");
    assert_eq!(hanging.seen().len(), 2, "the POST was not retried");
    assert!(gw.gateway.unready_routes().is_empty(), "one failure each");

    let parts = gw
        .send_parts(&[post("c", "/r/2"), get_part("d", "/p/2")])
        .await;
    assert_eq!(statuses(&parts), [504, 504]);
    assert_eq!(gw.gateway.unready_routes(), ["/r/", "/p/"]);
    let ready = gw
        .request(http::Method::GET, "/readyz", &[], bytes::Bytes::new())
        .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// `http_version = "1.1"` on an https route: ALPN offers only http/1.1, so an upstream that would choose h2
/// speaks HTTP/1.1; `"2"` offers only h2.
#[tokio::test]
async fn an_https_route_can_force_http1_or_http2() {
    let pki = Pki::new("versions");
    let leaf = pki.server("server");
    let forced_1 = https_upstream(&leaf, &[b"h2", b"http/1.1"], None).await;
    let forced_2 = https_upstream(&leaf, &[b"h2", b"http/1.1"], None).await;
    let ca = pki.ca_file();
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/one/\"\nupstream = \"https://localhost:{}\"\nca_file = {ca}\nhttp_version = \"1.1\"\n\
         [[routes]]\nprefix = \"/two/\"\nupstream = \"https://localhost:{}\"\nca_file = {ca}\nhttp_version = \"2\"\n",
        forced_1.port, forced_2.port
    ))
    .await;
    let parts = gw
        .send_parts(&[get_part("a", "/one/a"), get_part("b", "/two/b")])
        .await;
    assert_eq!(statuses(&parts), [200, 200]);
    assert_eq!(forced_1.alpn(), [Some(b"http/1.1".to_vec())]);
    assert_eq!(
        forced_1.versions(),
        [(Version::HTTP_11, "/one/a".to_owned())]
    );
    assert_eq!(forced_2.alpn(), [Some(b"h2".to_vec())]);
    assert_eq!(
        forced_2.versions(),
        [(Version::HTTP_2, "/two/b".to_owned())]
    );

    let bad = batchgate::Config::from_toml(
        "[[routes]]\nprefix = \"/x/\"\nupstream = \"https://localhost\"\nhttp_version = \"3\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("http_version"), "{bad}");
}

/// A reload keeps passive health: an address ejected before it is still out after it (and `/readyz` still
/// unready), while the route and its address stay in the config.
#[tokio::test]
async fn a_reload_keeps_an_ejected_address_out() {
    let live_up = echo_upstream(Duration::ZERO).await;
    let dead = dead_addr().await;
    let toml = format!(
        "[upstream]\neject_after = 1\neject_for = \"60s\"\neject_max = \"60s\"\n{}",
        routes(&[("/live/", live_up.addr), ("/dead/", dead)])
    );
    let (gw, live) = live_gateway(&toml).await;
    let parts = gw
        .send_parts(&[get_part("a", "/dead/1"), get_part("b", "/live/1")])
        .await;
    assert_eq!(statuses(&parts), [502, 200]);
    assert_eq!(gw.gateway.unready_routes(), ["/dead/"]);

    let config =
        batchgate::Config::from_toml(&format!("{toml}[limits]\nmax_batches = 100\n")).unwrap();
    let next = batchgate::Gateway::succeeding(config, &live.gateway()).unwrap();
    assert_eq!(next.unready_routes(), ["/dead/"], "still ejected");
    live.replace(next).unwrap();
    let ready = gw
        .request(http::Method::GET, "/readyz", &[], bytes::Bytes::new())
        .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let parts = gw.send_parts(&[get_part("c", "/live/2")]).await;
    assert_eq!(statuses(&parts), [200]);
}
