//! The HTTPS listener (`[tls]`), over real loopback sockets with certificates made in the test: batches over
//! HTTP/1.1 and HTTP/2 (ALPN), `X-Forwarded-Proto: https` upstream, the handshake under the first-request
//! deadline, a certificate swapped by reload, and bad certificate files at startup.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use batchgate::server::{Live, ReloadError};
use batchgate::{Config, Gateway};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A CA, a first certificate written where `[tls]` points, and the config's `[tls]` section.
struct Tls {
    ca: TestCa,
    first: Leaf,
    dir: TempDir,
    section: String,
}

fn tls_material() -> Tls {
    let ca = TestCa::new();
    let dir = TempDir::new("tls");
    let first = ca.leaf("first");
    first.write(&dir.join("cert.pem"), &dir.join("key.pem"));
    let section = tls_section(&dir.join("cert.pem"), &dir.join("key.pem"));
    Tls {
        ca,
        first,
        dir,
        section,
    }
}

fn two_gets() -> String {
    get_batch("b", &["/up/one".to_owned(), "/up/two?x=1".to_owned()])
}

#[tokio::test]
async fn https_batches_over_http1_and_http2_tell_the_upstream_https() {
    let up = echo_upstream(Duration::ZERO).await;
    let tls = tls_material();
    let gw = gateway(&format!("{}{}", tls.section, routes(&[("/up/", up.addr)]))).await;
    for (alpn, expect_alpn, expect_version) in [
        (
            &[b"http/1.1".as_slice()][..],
            b"http/1.1".as_slice(),
            http::Version::HTTP_11,
        ),
        (
            &[b"h2".as_slice(), b"http/1.1"][..],
            b"h2",
            http::Version::HTTP_2,
        ),
    ] {
        let mut conn = https_connect(gw.addr, &tls.ca, alpn).await;
        assert_eq!(conn.alpn.as_deref(), Some(expect_alpn));
        assert_eq!(conn.peer_cert, tls.first.der);
        let (version, reply) = conn
            .request(Method::POST, "/batch", &[("content-type", MP)], two_gets())
            .await;
        assert_eq!(version, expect_version);
        let parts = reply.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].status, StatusCode::OK);
        assert_eq!(parts[0].body, "/up/one");
        assert_eq!(parts[1].body, "/up/two");
        // A second batch on the same connection.
        let again = conn.post(MP, two_gets()).await;
        assert_eq!(again.parts().len(), 2);
        // The other endpoints are served over HTTPS too.
        let (_, health) = conn.request(Method::GET, "/healthz", &[], "").await;
        assert_eq!(health.status, StatusCode::OK);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 8);
    for request in &seen {
        assert_eq!(
            request.headers["x-forwarded-proto"], "https",
            "{:?}",
            request.headers
        );
    }
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = within(
        10,
        "the refused plain connection",
        read_until_closed(&mut plain),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    gw.stop().await;
}

/// Without `[tls]`, the same batch tells the upstream `http` (the flag follows the connection).
#[tokio::test]
async fn plain_http_batches_tell_the_upstream_http() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    assert_eq!(gw.post(MP, two_gets()).await.parts().len(), 2);
    for request in up.seen() {
        assert_eq!(request.headers["x-forwarded-proto"], "http");
    }
}

/// The handshake counts against `header_read_timeout` like a silent plain socket: a client that sends
/// nothing, half a ClientHello, or completes the handshake and then nothing, is closed at the limit counted
/// from the connection's start; meanwhile other clients are served.
#[tokio::test(start_paused = true)]
async fn the_tls_handshake_counts_against_the_first_request_deadline() {
    let limit = Duration::from_secs(5);
    let up = echo_upstream(Duration::ZERO).await;
    let tls = tls_material();
    let gw = gateway(&format!(
        "{}[limits]\nheader_read_timeout = \"5s\"\nidle_timeout = \"60s\"\n{}",
        tls.section,
        routes(&[("/up/", up.addr)])
    ))
    .await;
    // A TLS record header for a handshake message, and the first bytes of a ClientHello.
    let partial_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    for (what, sent) in [
        ("a silent connection", &[][..]),
        ("half a ClientHello", partial_hello),
    ] {
        let start = Instant::now();
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client.write_all(sent).await.unwrap();
        // Another client is served while this one holds its handshake open.
        let mut other = https_connect(gw.addr, &tls.ca, &[b"h2"]).await;
        assert_eq!(other.post(MP, two_gets()).await.parts().len(), 2);
        let got = within(30, what, read_until_closed(&mut client)).await;
        at_limit(&format!("{what}: closed"), start.elapsed(), limit);
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{what}: at most an alert: {got:?}"
        );
    }
    // A completed handshake with no request after it: the deadline runs from the connection's start.
    let start = Instant::now();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.ca.client_config(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut session = connector.connect(name, tcp).await.unwrap();
    let mut rest = Vec::new();
    let _ = within(30, "the close", session.read_to_end(&mut rest)).await;
    at_limit("handshake then silence: closed", start.elapsed(), limit);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// A reload reads the certificate again: new connections get the new one, a connection made before keeps
/// working. A reload whose key cannot be read is refused and changes nothing.
#[tokio::test]
async fn a_certificate_swapped_by_reload_serves_new_connections_and_old_ones_keep_working() {
    let up = echo_upstream(Duration::ZERO).await;
    let tls = tls_material();
    let toml = format!("{}{}", tls.section, routes(&[("/up/", up.addr)]));
    let (gw, live) = live_gateway(&toml).await;
    let mut old_h2 = https_connect(gw.addr, &tls.ca, &[b"h2"]).await;
    let mut old_h1 = https_connect(gw.addr, &tls.ca, &[b"http/1.1"]).await;
    assert_eq!(old_h2.peer_cert, tls.first.der);
    assert_eq!(old_h2.post(MP, two_gets()).await.parts().len(), 2);

    let second = tls.ca.leaf("second");
    second.write(&tls.dir.join("cert.pem"), &tls.dir.join("key.pem"));
    // Not read until a reload.
    let before = https_connect(gw.addr, &tls.ca, &[b"h2"]).await;
    assert_eq!(before.peer_cert, tls.first.der);
    let replaced = live.replace(build_gateway(&toml)).unwrap();
    assert!(replaced.needs_restart.is_empty(), "{replaced:?}");

    let mut new = https_connect(gw.addr, &tls.ca, &[b"h2"]).await;
    assert_eq!(
        new.peer_cert, second.der,
        "a new connection gets the new certificate"
    );
    assert_eq!(new.post(MP, two_gets()).await.parts().len(), 2);
    for old in [&mut old_h2, &mut old_h1] {
        assert_eq!(
            old.post(MP, two_gets()).await.parts().len(),
            2,
            "the old connection still works"
        );
    }

    // A key that is not a key: refused, naming tls.key; the second certificate stays.
    std::fs::write(tls.dir.join("key.pem"), "not a key").unwrap();
    let Err(error) = live.replace(build_gateway(&toml)) else {
        panic!("a reload with a broken key was accepted");
    };
    assert!(matches!(error, ReloadError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("tls.key"), "{error}");
    let after = https_connect(gw.addr, &tls.ca, &[b"h2"]).await;
    assert_eq!(after.peer_cert, second.der);
    gw.stop().await;
}

/// `[tls]` cannot be turned on or off by a reload: the listener's protocol is fixed at startup.
#[tokio::test]
async fn a_reload_cannot_turn_tls_on_or_off() {
    let tls = tls_material();
    let (plain, plain_live) = live_gateway("").await;
    let error = plain_live.replace(build_gateway(&tls.section)).unwrap_err();
    assert!(
        error.to_string().contains("[tls] cannot be turned on"),
        "{error}"
    );
    assert!(plain_live.gateway().config.tls.is_none());
    let (secure, secure_live) = live_gateway(&tls.section).await;
    let error = secure_live.replace(build_gateway("")).unwrap_err();
    assert!(
        error.to_string().contains("[tls] cannot be turned off"),
        "{error}"
    );
    let conn = https_connect(secure.addr, &tls.ca, &[b"h2"]).await;
    assert_eq!(conn.peer_cert, tls.first.der);
    plain.stop().await;
    secure.stop().await;
}

/// Certificate and key files that cannot be used are refused when the server is set up, naming the key.
#[test]
fn bad_tls_files_are_refused_naming_the_key() {
    let tls = tls_material();
    let missing = tls.dir.join("missing.pem");
    let other_key = tls.ca.leaf("other");
    std::fs::write(tls.dir.join("other-key.pem"), &other_key.key_pem).unwrap();
    let cases = [
        (tls_section(&missing, &tls.dir.join("key.pem")), "tls.cert"),
        (tls_section(&tls.dir.join("cert.pem"), &missing), "tls.key"),
        (
            tls_section(&tls.dir.join("key.pem"), &tls.dir.join("key.pem")),
            "tls.cert",
        ),
        (
            tls_section(&tls.dir.join("cert.pem"), &tls.dir.join("cert.pem")),
            "tls.key",
        ),
        (
            tls_section(&tls.dir.join("cert.pem"), &tls.dir.join("other-key.pem")),
            "tls.key",
        ),
    ];
    for (section, key) in cases {
        let gateway = Gateway::new(Config::from_toml(&section).unwrap()).unwrap();
        let error = Live::new(gateway.into()).unwrap_err().to_string();
        assert!(error.contains(key), "{section}: {error}");
    }
}

/// The binary: a certificate file that cannot be read is a startup error naming `tls.cert`.
#[tokio::test]
async fn the_binary_refuses_to_start_with_an_unreadable_certificate() {
    let dir = TempDir::new("tls-bin");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        tls_section(&dir.join("nope.pem"), &dir.join("nope-key.pem")),
    )
    .unwrap();
    let output = within(
        30,
        "the binary to exit",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_batchgate"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.cert"), "{stderr}");
    assert!(stderr.contains("nope.pem"), "{stderr}");
}
