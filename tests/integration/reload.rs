//! Reload: a new gateway swapped in while the server runs. In process (`Live::replace`) under load, and end to
//! end on the real binary with SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use batchgate::server::Live;
use batchgate::{Config, Gateway};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn svc_batch(path: &str) -> String {
    get_batch("b", &[path.to_owned()])
}

/// A batch in flight finishes on the gateway it started with; the next batch, on a new connection or on one
/// opened before the reload, takes the new route.
#[tokio::test]
async fn a_batch_in_flight_keeps_its_route_while_the_next_takes_the_new_one() {
    let HeldUpstream {
        upstream: old,
        mut arrivals,
        release,
    } = held_upstream("/svc/").await;
    let new =
        upstream(|seen| async move { text(StatusCode::OK, format!("new {}", seen.uri.path())) })
            .await;
    let (gw, live) = live_gateway(&routes(&[("/svc/", old.addr)])).await;
    let first_gateway = live.gateway();

    // A keep-alive connection opened before the reload.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut kept, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let post = |path: &str| {
        Request::post("/batch")
            .header("host", "gw")
            .header("content-type", MP)
            .body(Full::new(Bytes::from(svc_batch(path))))
            .unwrap()
    };
    let response = kept.send_request(post("/svc/warm")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Its part reached the old upstream, which holds it: release it and read the reply.
    within(10, "the warm-up part at the old upstream", arrivals.recv()).await;
    release.add_permits(1);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\r\n\r\n/svc/warm"));

    // The batch in flight: its part waits at the old upstream.
    let in_flight = {
        let addr = gw.addr;
        tokio::spawn(
            async move { send_raw(addr, post_bytes(&svc_batch("/svc/slow")).as_bytes()).await },
        )
    };
    within(10, "the slow part at the old upstream", arrivals.recv()).await;

    let replaced = live
        .replace(build_gateway(&routes(&[("/svc/", new.addr)])))
        .unwrap();
    assert!(replaced.needs_restart.is_empty());
    assert!(!Arc::ptr_eq(&live.gateway(), &first_gateway));

    // The next batch, on a new connection, goes to the new upstream while the first is still held.
    let reply = gw.post(MP, svc_batch("/svc/next")).await;
    assert_eq!(reply.parts()[0].body, "new /svc/next");
    // So does one on the connection opened before the reload.
    let response = kept.send_request(post("/svc/kept")).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("new /svc/kept"),
        "{body:?}"
    );

    // The batch in flight finishes where it began.
    release.add_permits(1);
    let slow = within(10, "the batch in flight", in_flight).await.unwrap();
    let parts = slow.reply().parts();
    assert_eq!(parts[0].status, StatusCode::OK);
    assert_eq!(parts[0].body, "/svc/slow");
    let old_paths: Vec<String> = old.seen().iter().map(|s| s.uri.path().to_owned()).collect();
    assert_eq!(old_paths, ["/svc/warm", "/svc/slow"]);
    let new_paths: Vec<String> = new.seen().iter().map(|s| s.uri.path().to_owned()).collect();
    assert_eq!(new_paths, ["/svc/next", "/svc/kept"]);
    // Nothing is left running on the old gateway.
    assert_eq!(first_gateway.batches_in_flight(), 0);
    assert_eq!(first_gateway.sub_requests_in_flight(), 0);
    gw.stop().await;
}

fn post_bytes(body: &str) -> String {
    format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reloads `toml` the way SIGHUP does: a gateway succeeding the one served.
fn reload(live: &Live, toml: &str) {
    let next = Gateway::succeeding(Config::from_toml(toml).unwrap(), &live.gateway()).unwrap();
    live.replace(next).unwrap();
}

/// Reloads do not multiply limits: parts of batches still running on an old config count against the new
/// one's `max_inflight_per_upstream`, and their batches against `max_batches`. Three batches of four parts
/// over two reloads, against an upstream that holds every request until released one at a time: it never
/// sees more than two at once, and a fourth batch is refused.
#[tokio::test]
async fn limits_hold_across_reloads() {
    let HeldUpstream {
        upstream: up,
        release,
        mut arrivals,
    } = held_upstream("/svc/").await;
    let toml = format!(
        "[limits]\nmax_inflight_per_upstream = 2\nmax_batches = 3\n{}",
        routes(&[("/svc/", up.addr)])
    );
    let (gw, live) = live_gateway(&toml).await;
    let send = |batch: usize| {
        let targets: Vec<String> = (0..4).map(|i| format!("/svc/{batch}-{i}")).collect();
        let bytes = post_bytes(&get_batch("b", &targets));
        let addr = gw.addr;
        tokio::spawn(async move { send_raw(addr, bytes.as_bytes()).await })
    };
    let mut batches = vec![send(0)];
    for _ in 0..2 {
        within(10, "a part at the upstream", arrivals.recv()).await;
    }
    for batch in 1..3 {
        reload(&live, &toml);
        batches.push(send(batch));
        let admitted = batch + 1;
        eventually(&format!("{admitted} batches counted"), || {
            live.gateway().batches_in_flight() == admitted
        })
        .await;
    }
    let refused = gw.post(MP, svc_batch("/svc/over")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.error_message().contains("limits.max_batches"));

    // Each part released lets exactly one waiting part through, whichever gateway its batch started on.
    for arrived in 2..12 {
        release.add_permits(1);
        within(
            10,
            format!("part {arrived} at the upstream").as_str(),
            arrivals.recv(),
        )
        .await;
        assert_eq!(live.gateway().sub_requests_in_flight(), 2);
    }
    release.add_permits(2);
    for batch in batches {
        let reply = within(10, "a batch", batch).await.unwrap().reply();
        assert!(reply.parts().iter().all(|p| p.status == StatusCode::OK));
    }
    assert_eq!(up.seen().len(), 12);
    assert_eq!(up.peak_concurrency(), 2, "max_inflight_per_upstream = 2");
    assert_eq!(live.gateway().batches_in_flight(), 0);
    gw.stop().await;
}

/// A client at its rate limit stays there across reloads that keep how clients are named, even when the
/// rate or burst changes; the buckets start again when `key` changes.
#[tokio::test]
async fn rate_limit_buckets_survive_a_reload() {
    let up = echo_upstream(Duration::ZERO).await;
    // One token in 1000 s: a spent bucket stays spent for the test.
    let toml = |extra: &str| {
        format!(
            "[rate_limit]\nparts_per_second = 0.001\nburst = 2\n{extra}\n{}",
            routes(&[("/svc/", up.addr)])
        )
    };
    let (gw, live) = live_gateway(&toml("")).await;
    let statuses = |n: usize| {
        let targets: Vec<String> = (0..n).map(|i| format!("/svc/{i}")).collect();
        let gw = &gw;
        async move {
            let reply = gw.post(MP, get_batch("b", &targets)).await;
            reply
                .parts()
                .iter()
                .map(|p| p.status.as_u16())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(statuses(3).await, [200, 200, 429]);
    reload(&live, &toml(""));
    assert_eq!(statuses(1).await, [429], "the same settings");
    reload(&live, &toml("max_clients = 10"));
    reload(&live, &toml("").replace("burst = 2", "burst = 5"));
    assert_eq!(
        statuses(1).await,
        [429],
        "a larger burst, the same empty bucket"
    );
    reload(&live, &toml("key = \"authorization\""));
    assert_eq!(statuses(2).await, [200, 200], "clients named another way");
    gw.stop().await;
}

/// What needs a restart is reported and otherwise ignored; the rest of the new config applies.
#[tokio::test]
async fn a_changed_listen_or_max_connections_needs_a_restart() {
    let up = echo_upstream(Duration::ZERO).await;
    let (gw, live) = live_gateway(&routes(&[("/a/", up.addr)])).await;
    let replaced = live
        .replace(build_gateway(&format!(
            "listen = \"127.0.0.1:9\"\n[limits]\nmax_connections = 7\n{}",
            routes(&[("/b/", up.addr)])
        )))
        .unwrap();
    assert_eq!(replaced.needs_restart.len(), 2, "{replaced:?}");
    assert!(replaced.needs_restart[0].starts_with("listen changed to 127.0.0.1:9"));
    assert!(replaced.needs_restart[1].starts_with("limits.max_connections changed to 7"));
    // The routes did change, on the same listener.
    let reply = gw.post(MP, svc_batch("/b/x")).await;
    assert_eq!(reply.parts()[0].body, "/b/x");
    let reply = gw.post(MP, svc_batch("/a/x")).await;
    assert_eq!(reply.parts()[0].status, StatusCode::NOT_FOUND);
    gw.stop().await;
}

fn route_file(prefix_upstream: SocketAddr, extra: &str) -> String {
    // `listen` here is overridden by --listen, on start and on every reload.
    format!(
        "listen = \"127.0.0.1:9\"\n{extra}\n[[routes]]\nprefix = \"/svc/\"\nupstream = \"http://{prefix_upstream}\"\n"
    )
}

/// The real binary: SIGHUP re-reads `--config`; the next batch goes to the new upstream. A file that fails is
/// refused with a log naming the problem, and batches keep going to the previous upstream.
#[tokio::test]
async fn sighup_reloads_the_config_file_and_keeps_the_old_one_when_the_new_is_bad() {
    let first = echo_upstream(Duration::ZERO).await;
    let second = echo_upstream(Duration::ZERO).await;
    let dir = TempDir::new("reload");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, route_file(first.addr, "")).unwrap();
    let mut gw = Binary::spawn(
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("BATCHGATE_LOG", Some("batchgate=info")),
            ("NO_COLOR", Some("1")),
        ],
    );
    let (_, addr) = gw.listening().await;
    let batch = |path: &str| {
        let bytes = post_bytes(&svc_batch(path));
        async move { send_raw(addr, bytes.as_bytes()).await.reply() }
    };
    assert_eq!(batch("/svc/1").await.parts()[0].body, "/svc/1");
    assert_eq!(first.seen().len(), 1);

    // Point the route elsewhere (and change what needs a restart).
    std::fs::write(
        &path,
        route_file(second.addr, "[limits]\nmax_connections = 77\n"),
    )
    .unwrap();
    gw.signal("-HUP");
    let restart = gw.log.wait_for("needs a restart").await;
    assert!(
        restart.contains("limits.max_connections changed to 77"),
        "{restart}"
    );
    gw.log.wait_for("config reloaded").await;
    assert!(
        !gw.log.seen.iter().any(|l| l.contains("listen changed")),
        "--listen still overrides the file's listen: {:#?}",
        gw.log.seen
    );
    assert_eq!(batch("/svc/2").await.parts()[0].body, "/svc/2");
    assert_eq!(first.seen().len(), 1);
    assert_eq!(second.seen().len(), 1);

    // A file that does not validate: refused, logged with the key at fault; the previous config stays.
    std::fs::write(
        &path,
        "[[routes]]\nprefix = \"/svc/\"\nupstream = \"ftp://127.0.0.1:21\"\n",
    )
    .unwrap();
    gw.signal("-HUP");
    let refused = gw.log.wait_for("config reload refused").await;
    assert!(refused.contains("routes[0]"), "{refused}");
    assert!(refused.contains("ftp"), "{refused}");
    // And one that is not TOML.
    std::fs::write(&path, "[[routes]\n").unwrap();
    gw.signal("-HUP");
    let refused = gw.log.wait_for("config reload refused").await;
    assert!(refused.contains(path.to_str().unwrap()), "{refused}");
    assert_eq!(batch("/svc/3").await.parts()[0].body, "/svc/3");
    assert_eq!(first.seen().len(), 1);
    assert_eq!(second.seen().len(), 2);

    gw.signal("-TERM");
    let status = within(10, "the exit", gw.child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}
