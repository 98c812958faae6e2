//! Compression never stalls the runtime: a large part compressed at the highest level the config allows is
//! compressed on tokio's blocking pool, off the reactor, so the runtime keeps serving everything else
//! meanwhile. Shown by order, not by time: with the only blocking thread taken, the runtime still serves
//! while the compressed reply waits for that thread.

use std::sync::{Arc, mpsc};

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::sync::{Notify, oneshot};

/// About 2 MiB of text that compresses, but not trivially: words from a small vocabulary in a pseudo-random
/// order.
fn text_body() -> Bytes {
    let words = [
        "inbox",
        "message",
        "thread",
        "label",
        "draft",
        "sender",
        "subject",
        "attachment",
        "reply",
        "archive",
        "quarterly",
        "meeting",
        "tomorrow",
        "invoice",
        "project",
        "review",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = String::with_capacity(2 << 20);
    while out.len() < 2 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push_str(words[(state % words.len() as u64) as usize]);
        out.push(if state.is_multiple_of(7) { '\n' } else { ' ' });
    }
    Bytes::from(out)
}

/// On a single-threaded runtime whose blocking pool has one thread, which the test holds: the upstream has
/// answered, yet the zstd-15 reply does not come while the runtime serves twenty `/healthz` round trips;
/// once the thread is free, it does, whole.
#[test]
fn a_large_part_at_the_highest_level_is_compressed_off_the_runtime() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap()
        .block_on(async {
            let body = text_body();
            let answered = Arc::new(Notify::new());
            let up = upstream({
                let (body, answered) = (body.clone(), answered.clone());
                move |_| {
                    let (body, answered) = (body.clone(), answered.clone());
                    async move {
                        answered.notify_one();
                        text(StatusCode::OK, body)
                    }
                }
            })
            .await;
            let gw = gateway(&format!(
                "[compression]\nzstd_level = 15\n{}",
                routes(&[("/up/", up.addr)])
            ))
            .await;

            // The pool's only thread, held until the test lets go.
            let (taken, pool_taken) = oneshot::channel();
            let (free, held) = mpsc::channel::<()>();
            let holder = tokio::task::spawn_blocking(move || {
                let _ = taken.send(());
                let _ = held.recv();
            });
            pool_taken.await.unwrap();

            let url = gw.url("/batch");
            let batch = tokio::spawn(async move {
                let headers = [
                    ("content-type", "multipart/mixed; boundary=b"),
                    ("accept-encoding", "zstd"),
                ];
                let body = Bytes::from(get_batch("b", &["/up/big".to_owned()]));
                http_request(&url, Method::POST, &headers, body).await
            });
            within(10, "the upstream's answer", answered.notified()).await;
            for _ in 0..20 {
                let health = gw.request(Method::GET, "/healthz", &[], Bytes::new()).await;
                assert_eq!(health.status, StatusCode::OK);
            }
            assert!(
                !batch.is_finished(),
                "the reply was compressed without the blocking pool, on the runtime's thread"
            );

            free.send(()).unwrap();
            holder.await.unwrap();
            let reply = within(30, "the compressed reply", batch).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.headers["content-encoding"], "zstd");
            let decoded = zstd::stream::decode_all(&reply.body[..]).unwrap();
            assert!(
                decoded.windows(body.len()).any(|w| w == &body[..]),
                "the part's whole body is in the reply"
            );
        });
}
