//! Hostile clients, faulty upstreams and exhaustion: each fault stays in its part or its batch, nothing
//! reaches what it should not, and nothing is left behind.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use batchgate_wire::boundary_from_content_type;
use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// A raw TCP upstream: reads a request head, then lets `act` do anything with the socket.
async fn raw_upstream<F, Fut>(act: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let act = Arc::new(act);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let act = act.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                act(stream).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_faults_stay_in_their_part() {
    let good = echo_upstream(Duration::ZERO).await;
    let reset = raw_upstream(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            .await;
        // Dropping the socket mid-body resets the exchange.
    })
    .await;
    let garbage = raw_upstream(|mut s| async move {
        let _ = s.write_all(b"\x00\x01 this is not HTTP\r\n\r\n").await;
    })
    .await;
    let hang = raw_upstream(|s| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let failing =
        upstream(|_| async { text(StatusCode::SERVICE_UNAVAILABLE, "down for maintenance") }).await;
    let refused = dead_addr().await;
    let config = format!(
        "[limits]\npart_timeout = \"300ms\"\n{}",
        routes(&[
            ("/good/", good.addr),
            ("/reset/", reset),
            ("/garbage/", garbage),
            ("/hang/", hang),
            ("/failing/", failing.addr),
            ("/refused/", refused),
        ])
    );
    let gw = gateway(&config).await;
    let body = batch(&[
        part("a", "GET /good/1"),
        part("b", "GET /reset/x"),
        part("c", "GET /garbage/x"),
        part("d", "GET /hang/x"),
        part("e", "GET /failing/x"),
        part("f", "GET /refused/x"),
        part("g", "GET /good/2"),
    ]);
    let parts = gw.post(MP, body).await.parts();
    let statuses = statuses(&parts);
    assert_eq!(statuses, [200, 502, 502, 504, 503, 502, 200]);
    assert_eq!(parts[0].body, "/good/1");
    assert_eq!(parts[6].body, "/good/2");
    assert!(
        part_error(&parts[1]).contains("failed"),
        "{}",
        part_error(&parts[1])
    );
    assert!(part_error(&parts[3]).contains("did not answer within 300ms"));
    assert_eq!(
        parts[4].body, "down for maintenance",
        "an upstream's own 5xx passes through"
    );
    assert!(
        part_error(&parts[5]).contains("unreachable"),
        "{}",
        part_error(&parts[5])
    );
    // The next batch through the same pools is unaffected.
    let again = gw
        .post(MP, batch(&[part("a", "GET /good/3")]))
        .await
        .parts();
    assert_eq!(again[0].status, 200);
}

#[tokio::test]
async fn hostile_targets_reach_nothing() {
    let up = echo_upstream(Duration::ZERO).await;
    let other = echo_upstream(Duration::ZERO).await;
    let config = format!(
        "{}\nhosts = [\"api.example.com\"]\n{}",
        routes(&[("/api/", up.addr)]),
        routes(&[("/admin/", other.addr)])
    );
    let gw = gateway(&config).await;
    let hostile = [
        "GET /api/../admin/users",
        "GET /api/%2e%2e/admin/users",
        "GET /api/..%2Fadmin",
        "GET /api\\..\\admin/users",
        "GET /../../etc/passwd",
        "GET http://169.254.169.254/latest/meta-data/",
        "GET http://evil.example.com/api/x",
        "GET http://user@api.example.com/api/x",
        "GET /batch",
        "POST /api/x HTTP/1.1\r\nContent-Type: multipart/mixed; boundary=z\r\nContent-Length: 6\r\n\r\n--z--\r",
        "POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        "POST /api/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        "GET /api/x HTTP/1.1\r\nX-A: 1\r\n folded: yes\r\n",
        "G@T /api/x HTTP/1.1",
        "CONNECT api.example.com:443 HTTP/1.1",
    ];
    let mut parts: Vec<String> = hostile
        .iter()
        .enumerate()
        .map(|(i, r)| part(&format!("h{i}"), r))
        .collect();
    parts.push(part(
        "ok",
        "GET http://api.example.com/api/fine HTTP/1.1\r\nHost: admin.internal",
    ));
    let replies = gw.post(MP, batch(&parts)).await.parts();
    assert_eq!(replies.len(), hostile.len() + 1);
    for (i, reply) in replies[..hostile.len()].iter().enumerate() {
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{:?} -> {}",
            hostile[i],
            part_error(reply)
        );
    }
    let last = replies.last().unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(last.body, "/api/fine");
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        1,
        "only the legitimate part reached an upstream: {seen:?}"
    );
    assert_eq!(
        seen[0].headers["host"],
        up.addr.to_string(),
        "Host never chooses the destination"
    );
    assert!(other.seen().is_empty());
}

#[tokio::test]
async fn limits_name_the_limit_and_the_value() {
    let up = echo_upstream(Duration::ZERO).await;
    let big = upstream(|_| async { text(StatusCode::OK, vec![b'x'; 4096]) }).await;
    let config = format!(
        "[limits]\nmax_part_headers = 4\nmax_part_header_bytes = 512\nmax_response_bytes = 1000\n{}",
        routes(&[("/up/", up.addr), ("/big/", big.addr)])
    );
    let gw = gateway(&config).await;
    let many_headers: String = (0..5).map(|i| format!("X-{i}: v\r\n")).collect();
    let long_header = format!("X-Long: {}\r\n", "a".repeat(600));
    let replies = gw
        .post(
            MP,
            batch(&[
                part("headers", &format!("GET /up/a HTTP/1.1\r\n{many_headers}")),
                part("long", &format!("GET /up/b HTTP/1.1\r\n{long_header}")),
                part("big", "GET /big/x"),
                part("fine", "GET /up/c"),
            ]),
        )
        .await
        .parts();
    assert_eq!(replies[0].status, 400);
    assert!(part_error(&replies[0]).contains("max_part_headers = 4"));
    assert_eq!(replies[1].status, 400);
    assert!(part_error(&replies[1]).contains("max_part_header_bytes = 512"));
    assert_eq!(replies[2].status, 502);
    assert!(part_error(&replies[2]).contains("max_response_bytes = 1000"));
    assert_eq!(replies[3].status, 200);
}

#[tokio::test]
async fn batch_response_budget_fails_the_parts_past_it() {
    let big = upstream(|_| async { text(StatusCode::OK, vec![b'x'; 4000]) }).await;
    let config = format!(
        "[limits]\nconcurrency = 1\nmax_batch_response_bytes = 10000\n{}",
        routes(&[("/big/", big.addr)])
    );
    let gw = gateway(&config).await;
    let parts: Vec<String> = (0..4)
        .map(|i| part(&format!("p{i}"), "GET /big/x"))
        .collect();
    let replies = gw.post(MP, batch(&parts)).await.parts();
    let statuses = statuses(&replies);
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert!(part_error(&replies[2]).contains("max_batch_response_bytes = 10000"));
}

#[tokio::test]
async fn global_and_per_upstream_caps_hold_across_batches() {
    let up = echo_upstream(Duration::from_millis(30)).await;
    let config = format!(
        "[limits]\nconcurrency = 8\nmax_inflight_per_upstream = 3\n{}",
        routes(&[("/up/", up.addr)])
    );
    let gw = Arc::new(gateway(&config).await);
    // Distinct targets: identical GETs in flight would share one call (coalesce).
    let parts: Vec<String> = (0..12)
        .map(|i| part(&format!("p{i}"), &format!("GET /up/x{i}")))
        .collect();
    let body = batch(&parts);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let gw = gw.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            gw.post(MP, body).await.parts().len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 12);
    }
    assert!(up.peak_concurrency() <= 3, "peak {}", up.peak_concurrency());
    assert!(up.peak_concurrency() >= 2, "parts did run in parallel");

    let up2 = echo_upstream(Duration::from_millis(30)).await;
    let config = format!(
        "[limits]\nconcurrency = 8\nmax_inflight = 2\n{}",
        routes(&[("/up/", up2.addr)])
    );
    let gw2 = gateway(&config).await;
    let (a, b) = tokio::join!(gw2.post(MP, body.clone()), gw2.post(MP, body.clone()));
    assert_eq!(a.parts().len() + b.parts().len(), 24);
    assert!(
        up2.peak_concurrency() <= 2,
        "peak {}",
        up2.peak_concurrency()
    );
}

#[tokio::test]
async fn over_max_batches_is_503_at_once() {
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(Notify::new());
    let up = {
        let (release, arrived) = (release.clone(), arrived.clone());
        upstream(move |_| {
            let (release, arrived) = (release.clone(), arrived.clone());
            async move {
                arrived.notify_one();
                release.notified().await;
                text(StatusCode::OK, "late")
            }
        })
        .await
    };
    let gw = Arc::new(
        gateway(&format!(
            "[limits]\nmax_batches = 1\n{}",
            routes(&[("/up/", up.addr)])
        ))
        .await,
    );
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.post(MP, batch(&[part("a", "GET /up/x")])).await })
    };
    arrived.notified().await;
    let second = gw.post(MP, batch(&[part("a", "GET /up/x")])).await;
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers["retry-after"], "1");
    assert!(second.error_message().contains("max_batches"));
    release.notify_one();
    assert_eq!(first.await.unwrap().parts()[0].body, "late");
}

/// No batch, no sub-request and no permit is left behind.
async fn nothing_left_in_flight(gw: &TestGateway) {
    eventually("nothing is in flight", || {
        gw.gateway.sub_requests_in_flight() == 0 && gw.gateway.batches_in_flight() == 0
    })
    .await;
}

/// The upstream handler that never answers, and reports when the gateway gives up on it.
async fn hanging_upstream() -> (
    Upstream,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<()>,
) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let up = upstream(move |_| {
        let arrived_tx = arrived_tx.clone();
        let guard = SignalOnDrop(dropped_tx.clone());
        async move {
            let _guard = guard;
            let _ = arrived_tx.send(());
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    (up, arrived, dropped)
}

#[tokio::test]
async fn client_gone_mid_request_cancels_everything_and_leaks_nothing() {
    let (up, mut arrived, mut dropped) = hanging_upstream().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    // A part is complete once the next delimiter line has arrived.
    let first = part("a", "GET /up/1") + &part("b", "GET /up/2") + "--b\r\n";
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: multipart/mixed; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    client
        .write_all(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes())
        .await
        .unwrap();
    arrived.recv().await.unwrap();
    arrived.recv().await.unwrap();
    assert_eq!(gw.gateway.sub_requests_in_flight(), 2);
    drop(client);
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), dropped.recv())
            .await
            .expect("upstream request cancelled");
    }
    nothing_left_in_flight(&gw).await;
}

#[tokio::test]
async fn client_gone_mid_response_cancels_the_rest() {
    let (slow, mut arrived, mut dropped) = hanging_upstream().await;
    let fast = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/slow/", slow.addr), ("/fast/", fast.addr)])).await;
    let body = batch(&[part("a", "GET /fast/1"), part("b", "GET /slow/2")]);
    let client = send_batch(gw.addr, &body).await;
    // The first part streams out before the second is done.
    let mut reader = BufReader::new(client);
    let mut seen = String::new();
    while !seen.contains("/fast/1") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).await.unwrap() > 0,
            "reply ended early: {seen}"
        );
        seen.push_str(&line);
    }
    arrived.recv().await.unwrap();
    drop(reader);
    tokio::time::timeout(Duration::from_secs(5), dropped.recv())
        .await
        .expect("upstream request cancelled");
    nothing_left_in_flight(&gw).await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off() {
    let big = upstream(|_| async { text(StatusCode::OK, vec![b'x'; 256 * 1024]) }).await;
    let config = format!(
        "[limits]\nwrite_timeout = \"300ms\"\nmax_parts = 200\n{}",
        routes(&[("/big/", big.addr)])
    );
    let gw = gateway(&config).await;
    let parts: Vec<String> = (0..200)
        .map(|i| part(&format!("p{i}"), "GET /big/x"))
        .collect();
    let body = batch(&parts);
    let client = send_batch(gw.addr, &body).await;
    // Read nothing: 50 MiB of reply cannot fit in socket buffers, so the gateway's writes stall.
    eventually("the stalled batch is dropped", || {
        gw.gateway.batches_in_flight() == 0
    })
    .await;
    assert_eq!(gw.gateway.sub_requests_in_flight(), 0);
    drop(client);
}

#[tokio::test]
async fn slowloris_head_is_cut_off() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nheader_read_timeout = \"300ms\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"POST /batch HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the gateway closed the slow connection");
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nbody_read_timeout = \"300ms\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: 500\r\n\r\n--b\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("body_read_timeout"), "{reply}");
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(body)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap(),
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .unwrap(),
        other => panic!("unexpected encoding {other}"),
    };
    out
}

#[tokio::test]
async fn replies_are_compressed_as_negotiated() {
    let up = demo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/mail/", up)])).await;
    let targets: Vec<String> = (1..=50).map(|i| format!("/mail/v1/messages/{i}")).collect();
    let body = get_batch("b", &targets);
    let plain = gw.post(MP, body.clone()).await;
    assert!(plain.headers.get("content-encoding").is_none());
    // Parts as (id, status, body): the upstream's Date header may differ between two requests.
    let essence = |parts: Vec<batchgate_wire::ReplyPart>| {
        parts
            .into_iter()
            .map(|p| (p.content_id, p.status, p.body))
            .collect::<Vec<_>>()
    };
    let plain_parts = essence(plain.parts());
    for (accept, expect) in [
        ("gzip, deflate", "gzip"),
        ("gzip, br, zstd", "zstd"),
        ("br", "br"),
        ("zstd;q=0.1, br;q=0.9", "br"),
    ] {
        let reply = gw
            .request(
                http::Method::POST,
                "/batch",
                &[("content-type", MP), ("accept-encoding", accept)],
                Bytes::from(body.clone()),
            )
            .await;
        assert_eq!(reply.headers["content-encoding"], expect, "for {accept}");
        assert_eq!(reply.headers["vary"], "accept-encoding");
        assert!(
            reply.body.len() * 3 < plain.body.len(),
            "{expect} saves at least 3x"
        );
        let decoded = decode(expect, &reply.body);
        let ct = reply.headers["content-type"].to_str().unwrap();
        let parts = batchgate_client::parse_reply(ct, &decoded).unwrap();
        assert_eq!(essence(parts), plain_parts);
    }
}

/// The real binary: SIGTERM lets the in-flight batch finish, then the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_batches_then_exits_zero() {
    let mut gw = Binary::spawn(
        &[
            "--demo",
            "--demo-latency",
            "400ms",
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("BATCHGATE_LOG", Some("batchgate=debug")),
            ("NO_COLOR", Some("1")),
        ],
    );
    let (_, addr) = gw.listening().await;
    let targets: Vec<String> = (1..=5).map(|i| format!("/mail/v1/messages/{i}")).collect();
    let body = get_batch("b", &targets);
    let mut client = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(body.as_bytes()).await.unwrap();
    let reply = tokio::spawn(async move {
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        reply
    });
    // The gateway logs this once the batch is parsed; its parts take 400 ms each at the demo service.
    gw.log.wait_for("batch streaming").await;
    gw.signal("-TERM");
    let reply = tokio::time::timeout(Duration::from_secs(10), reply)
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    // The outer status line and one per part.
    assert_eq!(
        reply.matches("HTTP/1.1 200 OK").count(),
        6,
        "every part of the in-flight batch was answered"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn the_reply_boundary_is_random_per_reply() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let one = batch(&[part("a", "GET /up/1")]);
    let boundary = |r: &Reply| {
        let ct = r.headers["content-type"].to_str().unwrap();
        boundary_from_content_type(ct).unwrap()
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let reply = gw.post(MP, one.clone()).await;
        let b = boundary(&reply);
        // 32 characters from 62 is about 190 bits: nothing derived from the request predicts it.
        assert!(
            b.len() >= 32 && b.bytes().all(|c| c.is_ascii_alphanumeric()),
            "{b:?}"
        );
        assert!(seen.insert(b), "the same batch got the same boundary twice");
        assert_eq!(reply.parts()[0].body, "/up/1");
    }
}

#[tokio::test]
async fn a_broken_upstream_connection_is_not_reused() {
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    let flaky = raw_upstream(move |mut s| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                // First connection: promise 100 bytes, send 4, hang up.
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                    .await;
            } else {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole")
                    .await;
                // Keep the connection open, as a keep-alive server would.
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    })
    .await;
    let gw = gateway(&routes(&[("/flaky/", flaky)])).await;
    let first = gw
        .post(MP, batch(&[part("a", "GET /flaky/1")]))
        .await
        .parts();
    assert_eq!(first[0].status, StatusCode::BAD_GATEWAY);
    let second = gw
        .post(MP, batch(&[part("a", "GET /flaky/2")]))
        .await
        .parts();
    assert_eq!(second[0].status, StatusCode::OK);
    assert_eq!(second[0].body, "whole");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a new connection for the second request"
    );
}
