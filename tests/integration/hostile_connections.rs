//! Hostile and idle connections, over real loopback sockets: silent sockets, idle keep-alive connections
//! (HTTP/1 and HTTP/2), a full house, slow uploads, slow readers (and the bytes they hold), and SIGHUP to
//! the real binary.
//!
//! Timeouts are checked on tokio's paused clock where only timers decide the outcome (hyper's `TokioTimer`
//! and the gateway's own sleeps follow it, and loopback I/O completes within the system call, so the clock
//! only jumps while every socket is quiet): the test then proves a connection was closed at the timeout, not
//! before it and not long after, in virtual time and without waiting for it. Tests where bytes must keep
//! flowing while a timer runs use short real timeouts instead.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `n` GET parts for `{prefix}{i}`.
fn gets(prefix: &str, n: usize) -> String {
    let parts: Vec<String> = (0..n)
        .map(|i| part(&format!("p{i}"), &format!("GET {prefix}{i}")))
        .collect();
    batch(&parts)
}

/// Socket buffers small on both ends, as over a slow link: a reply the client does not read waits in the
/// gateway, not in the kernel, so how much of it is handed over before the writes block is known.
const SMALL_BUFFER: u32 = 16 * 1024;

/// Starts the gateway on a listener whose connections get small send buffers (they inherit it).
async fn gateway_small_buffers(toml: &str) -> TestGateway {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(SMALL_BUFFER).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    gateway_on(socket.listen(16).unwrap(), toml).await
}

/// A client socket with a small receive buffer, for [`send_batch_from`]: a reader that stops reading fills it
/// soon.
fn small_receive_buffer() -> TcpSocket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_BUFFER).unwrap();
    socket
}

/// Connections that send nothing, part of a head, or only the HTTP/2 preface close at `header_read_timeout`.
#[tokio::test(start_paused = true)]
async fn silent_partial_head_and_preface_only_connections_close_after_header_read_timeout() {
    let limit = Duration::from_secs(5);
    let gw = gateway("[limits]\nheader_read_timeout = \"5s\"\nidle_timeout = \"60s\"\n").await;
    let cases: [(&str, &[u8]); 3] = [
        ("a silent connection", b""),
        (
            "part of a request head",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        ),
        ("only the HTTP/2 preface", H2_PREFACE),
    ];
    for (what, sent) in cases {
        let start = Instant::now();
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client.write_all(sent).await.unwrap();
        let got = read_until_closed(&mut client).await;
        at_limit(&format!("{what}: closed"), start.elapsed(), limit);
        if sent == H2_PREFACE {
            // The server's own SETTINGS may come first; never a response.
            assert!(got.is_empty() || got[3] == 0x4, "{what}: got {got:?}");
        } else {
            assert!(
                got.is_empty(),
                "{what}: got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}

/// An idle HTTP/1 keep-alive connection closes at `idle_timeout`, even with a shorter `header_read_timeout`.
#[tokio::test(start_paused = true)]
async fn an_idle_http1_keep_alive_connection_closes_after_idle_timeout() {
    let limit = Duration::from_secs(5);
    let gw = gateway("[limits]\nheader_read_timeout = \"2s\"\nidle_timeout = \"5s\"\n").await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_response(&mut client).await;
    assert_eq!(reply.status, StatusCode::OK);
    let start = Instant::now();
    let got = read_until_closed(&mut client).await;
    at_limit(
        "the idle keep-alive connection closed",
        start.elapsed(),
        limit,
    );
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

/// An idle HTTP/2 connection closes at `idle_timeout`, although it answers the gateway's keep-alive PINGs.
#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_closes_after_idle_timeout() {
    let limit = Duration::from_secs(5);
    let gw = gateway(
        "[limits]\nheader_read_timeout = \"2s\"\nidle_timeout = \"5s\"\nhttp2_keepalive_interval = \"1s\"\n",
    )
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("http://{}/healthz", gw.addr))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "{\"status\":\"ok\"}");
    let start = Instant::now();
    // The connection task ends when the gateway closes the connection, cleanly or not.
    let _ = connection.await.unwrap();
    at_limit("the idle HTTP/2 connection closed", start.elapsed(), limit);
}

/// An HTTP/2 frame on stream 0: its 9-byte header (payload length, type, flags, stream id), then the payload.
fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

/// Reads one HTTP/2 frame: its type, flags and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, u8, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], payload)
}

/// The gateway PINGs an HTTP/2 client every `http2_keepalive_interval`.
#[tokio::test(start_paused = true)]
async fn http2_clients_get_keep_alive_pings_at_the_interval() {
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let interval = Duration::from_secs(3);
    let gw = gateway(
        "[limits]\nheader_read_timeout = \"30s\"\nhttp2_keepalive_interval = \"3s\"\nhttp2_keepalive_timeout = \"20s\"\n",
    )
    .await;
    // A minimal raw HTTP/2 client: the preface and an empty SETTINGS, then it acks the server's SETTINGS and
    // each PING (so the connection stays up for the next one), and records when the PINGs arrive.
    let start = Instant::now();
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, &[]));
    client.write_all(&hello).await.unwrap();
    let mut pings = Vec::new();
    while pings.len() < 2 {
        let (kind, flags, payload) = read_frame(&mut client).await;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                client.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap();
            }
            PING => {
                assert_eq!(flags & ACK, 0, "a PING, not an answer to one");
                pings.push(start.elapsed());
                client.write_all(&frame(PING, ACK, &payload)).await.unwrap();
            }
            _ => {}
        }
    }
    at_limit("the first PING came", pings[0], interval);
    at_limit("the second PING came", pings[1] - pings[0], interval);
}

/// Silent sockets filling `max_connections` never lock clients out: the one idle the longest makes room.
#[tokio::test]
async fn silent_sockets_at_max_connections_never_lock_clients_out() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nmax_connections = 4\nheader_read_timeout = \"30s\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    // Connected all at once (a blocking connect does not yield), so the gateway accepts them in one go.
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(gw.addr).unwrap())
        .collect();
    let mut silent: Vec<TcpStream> = silent
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            TcpStream::from_std(s).unwrap()
        })
        .collect();
    let health = within(
        5,
        "/healthz behind silent sockets",
        gw.request(http::Method::GET, "/healthz", &[], Bytes::new()),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    let reply = within(
        5,
        "a batch behind silent sockets",
        gw.post(MP, gets("/up/", 3)),
    )
    .await;
    let parts = reply.parts();
    assert_eq!(parts.len(), 3);
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.body, format!("/up/{i}"));
    }
    // The socket idle the longest is the one closed to make room; the newest is left alone.
    let got = within(
        5,
        "the oldest silent socket closed",
        read_until_closed(&mut silent[0]),
    )
    .await;
    assert!(got.is_empty());
    let newest = silent[3].try_read(&mut [0u8; 1]);
    assert!(
        matches!(&newest, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the newest silent socket: {newest:?}"
    );
}

/// A new client that finds every connection taken and none quiet gets 503 with Retry-After and a JSON error.
fn assert_refused_as_busy(reply: &RawReply) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.head
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.headers["content-type"], "application/json");
    let error: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(error["error"]["code"], 503);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.max_connections"), "{message}");
}

/// A busy connection (batch running, or its reply still going out) is not evicted; a new client is answered
/// 503 meanwhile, and once the reply is out, the connection (now between requests) makes room for the next.
#[tokio::test]
async fn a_busy_connection_is_not_evicted_to_make_room() {
    // 10 x 40 KiB: more than the socket buffers hold, less than they and the connection's write buffer do,
    // so the reply is all handed to the connection before the client reads any of it.
    const PARTS: usize = 10;
    const SIZE: usize = 40 * 1024;
    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let up = {
        let release = release.clone();
        upstream(move |_| {
            let (release, arrived_tx) = (release.clone(), arrived_tx.clone());
            async move {
                let _ = arrived_tx.send(());
                release.notified().await;
                text(StatusCode::OK, vec![b'x'; SIZE])
            }
        })
        .await
    };
    // Every part upstream before any answer: room in bytes for them all (see `window_bytes`).
    let gw = gateway_small_buffers(&format!(
        "[limits]\nmax_connections = 1\nheader_read_timeout = \"30s\"\nconcurrency = {PARTS}\nwindow = {PARTS}\n\
         window_bytes = \"16MiB\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let mut busy = send_batch_from(small_receive_buffer(), gw.addr, &gets("/up/", PARTS)).await;
    for _ in 0..PARTS {
        within(5, "the parts upstream", arrived.recv())
            .await
            .unwrap();
    }
    let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_refused_as_busy(&send_raw(gw.addr, health).await);
    release.notify_waiters();
    // The whole reply is handed over (the batch's slot goes with its last byte), but not yet read.
    eventually("the reply is handed over", || {
        gw.gateway.batches_in_flight() == 0
    })
    .await;
    assert_refused_as_busy(&send_raw(gw.addr, health).await);
    let reply = within(10, "the batch's reply", read_response(&mut busy)).await;
    let parts = reply.reply().parts();
    assert_eq!(parts.len(), PARTS);
    for part in &parts {
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.body.len(), SIZE);
    }
    let next = send_raw(gw.addr, health).await;
    assert_eq!(next.status, StatusCode::OK);
}

/// To make room, the gateway closes a connection idle between requests, never one in the middle of a request
/// head, although that one has been idle longer; and the client whose connection was closed can tell that
/// nothing it sent ran: the connection ends before any byte of an answer, and its batch never reached the
/// upstream.
#[tokio::test]
async fn eviction_takes_a_connection_between_requests_not_one_mid_request() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nmax_connections = 2\nheader_read_timeout = \"30s\"\nidle_timeout = \"60s\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    // The older connection is in the middle of a request head.
    let mut mid_request = TcpStream::connect(gw.addr).await.unwrap();
    mid_request
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The newer one has been answered and waits between requests.
    let mut between = TcpStream::connect(gw.addr).await.unwrap();
    between
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = within(5, "the first answer", read_response(&mut between)).await;
    assert_eq!(reply.status, StatusCode::OK);

    // A third client finds the house full: the connection between requests makes room for it.
    let health = within(
        5,
        "/healthz on a full house",
        gw.request(http::Method::GET, "/healthz", &[], Bytes::new()),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);

    // The evicted client sends its next request: the connection ends without a byte of an answer, and the
    // batch never ran.
    let body = gets("/up/", 2);
    let request = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The write may already fail: the gateway has closed its end.
    let _ = between.write_all(request.as_bytes()).await;
    let got = within(
        5,
        "the evicted connection closed",
        read_until_closed(&mut between),
    )
    .await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // The connection mid-request was left alone: the rest of its head gets its answer.
    mid_request.write_all(b"\r\n").await.unwrap();
    let reply = within(5, "the mid-request answer", read_response(&mut mid_request)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A body trickled in within `body_read_timeout` is refused 408 at `upload_timeout`, freeing its batch slot.
#[tokio::test(start_paused = true)]
async fn a_trickled_upload_gets_408_at_upload_timeout() {
    let limit = Duration::from_secs(3);
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nbody_read_timeout = \"1s\"\nupload_timeout = \"3s\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let body = gets("/up/", 50);
    let client = TcpStream::connect(gw.addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    // 200 ms a byte: well within body_read_timeout, and the body would take minutes.
    let trickle = tokio::spawn(async move {
        for byte in body.bytes() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    eventually("the batch holds a slot", || {
        gw.gateway.batches_in_flight() == 1
    })
    .await;
    let mut reply = Vec::new();
    within(10, "the 408", async {
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") || !reply.ends_with(b"}") {
            let mut chunk = [0u8; 4096];
            let n = read.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    at_limit("the 408 came", start.elapsed(), limit);
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let json = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let error: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(error["error"]["code"], 408);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.upload_timeout"), "{message}");
    eventually("the batch slot is released", || {
        gw.gateway.batches_in_flight() == 0
    })
    .await;
    assert_eq!(gw.gateway.sub_requests_in_flight(), 0);
    trickle.abort();
}

/// A client that stops reading holds no upstream permits, and is cut off after `write_timeout`.
#[tokio::test]
async fn slow_readers_do_not_hold_up_other_clients() {
    const SIZE: usize = 1 << 20;
    const OTHER_SIZE: usize = 256 * 1024;
    const PARTS: usize = 20;
    let big = upstream(|seen| async move {
        let size = if seen.uri.path().starts_with("/up/b/") {
            OTHER_SIZE
        } else {
            SIZE
        };
        text(StatusCode::OK, vec![b'x'; size])
    })
    .await;
    let ran = |prefix: &str| {
        big.seen()
            .iter()
            .filter(|seen| seen.uri.path().starts_with(prefix))
            .count()
    };
    // The window in parts is the subject here: room in bytes for all of it.
    let limits = "max_inflight = 2\nconcurrency = 2\nwindow = 2\nwindow_bytes = \"16MiB\"\n";
    let gw = gateway_small_buffers(&format!(
        "[limits]\n{limits}write_timeout = \"60s\"\n{}",
        routes(&[("/up/", big.addr)])
    ))
    .await;
    let stalled = send_batch_from(small_receive_buffer(), gw.addr, &gets("/up/a/", PARTS)).await;
    // Its first answer fills the socket buffers and the connection's write buffer; two more fill its window.
    // From then on it is stuck, with its answers in: it should hold no permit.
    eventually("the reader that stopped is stuck", || {
        ran("/up/a/") >= 3 && gw.gateway.sub_requests_in_flight() == 0
    })
    .await;
    let stuck_at = ran("/up/a/");
    assert!(stuck_at < PARTS, "the batch ran all its parts");
    let reply = within(
        10,
        "the other client's batch",
        gw.post(MP, gets("/up/b/", 4)),
    )
    .await;
    let parts = reply.parts();
    assert_eq!(parts.len(), 4);
    for part in &parts {
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.body.len(), OTHER_SIZE);
    }
    eventually("every upstream permit is back", || {
        gw.gateway.sub_requests_in_flight() == 0 && gw.gateway.batches_in_flight() == 1
    })
    .await;
    assert_eq!(
        ran("/up/a/"),
        stuck_at,
        "the reader that stopped stayed stuck"
    );
    drop(stalled);

    let limit = Duration::from_millis(500);
    let gw = gateway_small_buffers(&format!(
        "[limits]\n{limits}write_timeout = \"500ms\"\n{}",
        routes(&[("/up/", big.addr)])
    ))
    .await;
    let start = std::time::Instant::now();
    let mut stalled =
        send_batch_from(small_receive_buffer(), gw.addr, &gets("/up/c/", PARTS)).await;
    eventually("the batch is in", || gw.gateway.batches_in_flight() == 1).await;
    eventually("the stalled batch is dropped", || {
        gw.gateway.batches_in_flight() == 0
    })
    .await;
    assert!(start.elapsed() >= limit, "cut off before write_timeout");
    assert_eq!(gw.gateway.sub_requests_in_flight(), 0);
    let got = within(10, "the cut connection", read_until_closed(&mut stalled)).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    assert!(
        got.len() < SIZE,
        "the connection was cut with its first part still going out"
    );
}

/// `limits.window_bytes` bounds what a reader that stops holds by bytes, though its window has a seat for
/// every part: parts stop starting once the answers waiting for it fill the budget. When it reads again, every
/// part comes, in order and whole.
#[tokio::test]
async fn a_reader_that_stops_holds_its_window_bytes_not_its_window() {
    const SIZE: usize = 64 * 1024;
    const PARTS: usize = 200;
    let big = upstream(|seen| async move {
        // Each body says which part it answers, so that order and wholeness can be checked.
        let mut body = vec![b'x'; SIZE];
        let path = seen.uri.path().as_bytes();
        body[..path.len()].copy_from_slice(path);
        text(StatusCode::OK, body)
    })
    .await;
    let gw = gateway_small_buffers(&format!(
        "[limits]\nmax_parts = {PARTS}\nconcurrency = 8\nwindow = {PARTS}\nwindow_bytes = \"256KiB\"\n\
         write_timeout = \"60s\"\n{}",
        routes(&[("/up/", big.addr)])
    ))
    .await;
    let mut stalled = send_batch_from(small_receive_buffer(), gw.addr, &gets("/up/", PARTS)).await;
    eventually("the reader that stopped is stuck", || {
        big.seen().len() >= 4 && gw.gateway.sub_requests_in_flight() == 0
    })
    .await;
    // What the budget holds (4 answers), what the connection's write buffer and the small socket buffers hold,
    // and the parts running when the budget filled: far from the window's 200.
    let stuck_at = big.seen().len();
    assert!(
        stuck_at <= 24,
        "{stuck_at} parts ran for a reader that stopped"
    );

    let reply = within(30, "the rest of the reply", read_response(&mut stalled)).await;
    let parts = reply.reply().parts();
    assert_eq!(parts.len(), PARTS);
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.body.len(), SIZE, "part {i}");
        let path = format!("/up/{i}");
        assert_eq!(&part.body[..path.len()], path.as_bytes(), "part {i}");
        assert!(
            part.body[path.len()..].iter().all(|&b| b == b'x'),
            "part {i}"
        );
    }
    assert_eq!(big.seen().len(), PARTS);
}

/// The real binary logs and ignores SIGHUP, still answers `/healthz`, and exits 0 on SIGTERM.
#[tokio::test]
async fn the_binary_ignores_sighup() {
    let mut gw = Binary::spawn(
        &["--demo", "--listen", "127.0.0.1:0"],
        &[
            ("BATCHGATE_LOG", Some("batchgate=info")),
            ("NO_COLOR", Some("1")),
        ],
    );
    let (_, addr) = gw.listening().await;
    gw.signal("-HUP");
    gw.log.wait_for("SIGHUP ignored").await;
    let health = send_raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, "{\"status\":\"ok\"}");
    gw.signal("-TERM");
    let status = within(10, "the exit", gw.child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}
