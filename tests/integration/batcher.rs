//! The micro-batcher (`batchgate_client::Batcher`) against a real gateway started in-process: many concurrent
//! callers each get their own response in few batches, a part's failure stays with its caller, a batch's
//! failure reaches each of its callers, a caller that gives up is left out, backpressure with one batch in
//! flight, flushing by size and by time (on tokio's paused clock), and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use batchgate_client::{BatchClient, Batcher, CallError, ClientError};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn get(path: &str) -> Request<Bytes> {
    Request::get(path).body(Bytes::new()).unwrap()
}

fn client(addr: SocketAddr) -> BatchClient {
    BatchClient::new(format!("http://{addr}/batch")).unwrap()
}

/// Starts `batcher.call(GET path)` on a task of its own.
fn spawn_call(batcher: &Batcher, path: &str) -> JoinHandle<Result<Response<Bytes>, CallError>> {
    let batcher = batcher.clone();
    let request = get(path);
    tokio::spawn(async move { batcher.call(request).await })
}

fn seen_paths(up: &Upstream) -> Vec<String> {
    up.seen().iter().map(|s| s.uri.path().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_each_get_their_own_response_in_about_a_hundred_batches() {
    const CALLS: usize = 10_000;
    const MAX_SIZE: usize = 100;
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(MAX_SIZE)
        .max_wait(Duration::from_millis(200))
        .max_in_flight(4)
        .build();
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| spawn_call(&batcher, &format!("/up/item/{i}")))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let response = within(60, "a call", call).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), format!("/up/item/{i}").as_str());
    }
    let took = started.elapsed();
    // Callers can have their answers before the batch's task has ended: shutdown waits for that.
    within(10, "shutdown", batcher.shutdown()).await;
    let stats = batcher.stats();
    assert_eq!(stats.calls, CALLS as u64);
    let least = (CALLS / MAX_SIZE) as u64;
    assert!(
        (least..=least + 5).contains(&stats.batches),
        "{} batches for {CALLS} calls of at most {MAX_SIZE}",
        stats.batches
    );
    assert_eq!(stats.in_flight, 0);
    let metrics = gw
        .request(http::Method::GET, "/metrics", &[], Bytes::new())
        .await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        metric(&text, "batchgate_batches_served_total", &[]),
        stats.batches,
        "the gateway served the batches the batcher sent"
    );
    assert_eq!(up.seen().len(), CALLS);
    eprintln!("{CALLS} calls in {} batches, {took:?}", stats.batches);
}

#[tokio::test]
async fn a_part_that_fails_reaches_only_its_caller_as_its_response() {
    let up = echo_upstream(Duration::ZERO).await;
    let dead = dead_addr().await;
    let gw = gateway(&routes(&[("/up/", up.addr), ("/dead/", dead)])).await;
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(3)
        .max_wait(Duration::from_secs(3600))
        .build();
    let ok = spawn_call(&batcher, "/up/fine");
    let missing = spawn_call(&batcher, "/nowhere/1");
    let unreachable = spawn_call(&batcher, "/dead/1");
    let ok = within(10, "the good call", ok).await.unwrap().unwrap();
    assert_eq!(
        (ok.status(), ok.body().as_ref()),
        (StatusCode::OK, &b"/up/fine"[..])
    );
    let missing = missing.await.unwrap().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unreachable = unreachable.await.unwrap().unwrap();
    assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
    let error: serde_json::Value = serde_json::from_slice(unreachable.body()).unwrap();
    assert_eq!(error["error"]["code"], 502);
    assert_eq!(batcher.stats().batches, 1, "the three went in one batch");
}

#[tokio::test]
async fn a_whole_batch_failure_reaches_every_caller_of_that_batch() {
    let batcher = Batcher::builder(client(dead_addr().await))
        .max_size(3)
        .max_wait(Duration::from_secs(3600))
        .build();
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_call(&batcher, &format!("/x/{i}")))
        .collect();
    for call in calls {
        match within(10, "a call", call).await.unwrap() {
            Err(CallError::Batch(error)) => {
                assert!(matches!(*error, ClientError::Connect { .. }), "{error:?}")
            }
            other => panic!("expected the batch's connect error, got {other:?}"),
        }
    }
    assert_eq!(batcher.stats().batches, 1);
}

#[tokio::test]
async fn a_caller_that_gives_up_before_its_batch_is_sent_is_left_out() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(3)
        .max_wait(Duration::from_secs(3600))
        .build();
    let first = spawn_call(&batcher, "/up/first");
    let quitter = spawn_call(&batcher, "/up/quitter");
    eventually("the collector holds both calls", || {
        batcher.stats().pending == 2
    })
    .await;
    quitter.abort();
    assert!(quitter.await.unwrap_err().is_cancelled());
    // The third call fills the batch: it goes at once, without the caller that left.
    let last = spawn_call(&batcher, "/up/last");
    assert_eq!(
        within(10, "the first call", first)
            .await
            .unwrap()
            .unwrap()
            .body(),
        "/up/first"
    );
    assert_eq!(last.await.unwrap().unwrap().body(), "/up/last");
    let mut seen = seen_paths(&up);
    seen.sort();
    assert_eq!(
        seen,
        vec!["/up/first", "/up/last"],
        "the upstream never saw the quitter"
    );
    let stats = batcher.stats();
    assert_eq!((stats.batches, stats.calls, stats.cancelled), (1, 2, 1));
}

#[tokio::test]
async fn with_one_batch_in_flight_the_next_is_not_sent_and_its_callers_wait() {
    let HeldUpstream {
        upstream: up,
        release,
        ..
    } = held_upstream("/held/").await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(2)
        .max_wait(Duration::from_secs(3600))
        .max_in_flight(1)
        .queue(1)
        .build();
    let first: Vec<_> = ["/up/held/1", "/up/held/2"]
        .iter()
        .map(|p| spawn_call(&batcher, p))
        .collect();
    eventually("the upstream holds the first batch", || {
        up.seen().len() == 2
    })
    .await;
    let second: Vec<_> = ["/up/next/3", "/up/next/4"]
        .iter()
        .map(|p| spawn_call(&batcher, p))
        .collect();
    eventually("the second batch is ready and waits for the slot", || {
        batcher.stats().waiting_for_slot
    })
    .await;
    // A full batch is pending; a fifth call fills the channel, a sixth waits to get into it.
    let more: Vec<_> = ["/up/next/5", "/up/next/6"]
        .iter()
        .map(|p| spawn_call(&batcher, p))
        .collect();
    let stats = batcher.stats();
    assert_eq!((stats.batches, stats.in_flight, stats.pending), (1, 1, 2));
    assert_eq!(
        seen_paths(&up).len(),
        2,
        "nothing of the second batch was sent"
    );
    assert!(second.iter().chain(&more).all(|c| !c.is_finished()));

    release.add_permits(2);
    for (call, path) in first.into_iter().chain(second).chain(more).zip([
        "/up/held/1",
        "/up/held/2",
        "/up/next/3",
        "/up/next/4",
        "/up/next/5",
        "/up/next/6",
    ]) {
        let response = within(10, "a call", call).await.unwrap().unwrap();
        assert_eq!(response.body(), path);
    }
    let seen = seen_paths(&up);
    let mut head = seen[..2].to_vec();
    head.sort();
    assert_eq!(head, vec!["/up/held/1", "/up/held/2"]);
    assert_eq!(batcher.stats().batches, 3);
}

#[tokio::test]
async fn shutdown_sends_pending_calls_and_waits_for_the_batches_in_flight() {
    let HeldUpstream {
        upstream: up,
        release,
        ..
    } = held_upstream("/held/").await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(10)
        .max_wait(Duration::from_secs(3600))
        .build();
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_call(&batcher, &format!("/up/held/{i}")))
        .collect();
    eventually("the collector holds the calls", || {
        batcher.stats().pending == 3
    })
    .await;
    assert_eq!(batcher.stats().batches, 0, "max_wait is an hour away");
    let shutdown = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.shutdown().await }
    });
    eventually("the pending calls were sent", || up.seen().len() == 3).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the batch in flight"
    );
    release.add_permits(3);
    within(10, "shutdown", shutdown).await.unwrap();
    assert_eq!(batcher.stats().in_flight, 0);
    for (i, call) in calls.into_iter().enumerate() {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.body(), format!("/up/held/{i}").as_str());
    }
    assert!(matches!(
        batcher.call(get("/up/late")).await,
        Err(CallError::Shutdown)
    ));
}

/// A gateway and an echo upstream on a runtime of their own, on their own thread, so that a test on tokio's
/// paused clock measures only the batcher's own waiting: nothing on its runtime but the batcher and its client.
struct GatewayThread {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GatewayThread {
    fn start() -> GatewayThread {
        let (ready, addr) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let up = echo_upstream(Duration::ZERO).await;
                let gw = gateway(&routes(&[("/up/", up.addr)])).await;
                ready.send(gw.addr).unwrap();
                let _ = stopped.await;
            });
        });
        GatewayThread {
            addr: addr.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for GatewayThread {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

/// Lets the batcher's collector run until it holds `n` calls (no virtual time passes).
async fn until_pending(batcher: &Batcher, n: usize) {
    for _ in 0..10_000 {
        if batcher.stats().pending == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the collector never held {n} calls: {:?}", batcher.stats());
}

#[tokio::test(start_paused = true)]
async fn a_lone_call_is_sent_when_max_wait_has_passed_on_the_paused_clock() {
    let gw = GatewayThread::start();
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(10)
        .max_wait(Duration::from_millis(50))
        .build();
    let start = Instant::now();
    let call = spawn_call(&batcher, "/up/lone");
    until_pending(&batcher, 1).await;
    tokio::time::advance(Duration::from_millis(49)).await;
    tokio::task::yield_now().await;
    assert_eq!(batcher.stats().batches, 0, "not sent before 50 ms");
    assert!(!call.is_finished());
    // Nothing else is pending on this runtime: the clock moves on to the flush, then stands still.
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.body(), "/up/lone");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(50) && elapsed < Duration::from_millis(55),
        "sent after {elapsed:?}"
    );
    assert_eq!(batcher.stats().batches, 1);
}

#[tokio::test(start_paused = true)]
async fn max_size_calls_are_sent_at_once_on_the_paused_clock() {
    let gw = GatewayThread::start();
    let batcher = Batcher::builder(client(gw.addr))
        .max_size(3)
        .max_wait(Duration::from_millis(50))
        .build();
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_call(&batcher, &format!("/up/{i}")))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().unwrap().body(),
            format!("/up/{i}").as_str()
        );
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "no waiting for max_wait");
    assert_eq!(batcher.stats().batches, 1);
}
