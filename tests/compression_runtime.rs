//! Compression never stalls the runtime: a large part compressed at the highest level the config allows is
//! compressed off the reactor, so the runtime keeps serving everything else meanwhile.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use batchgate::config::{Coding, CompressionConfig};
use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

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

#[tokio::test]
async fn a_large_part_at_the_highest_level_does_not_stall_the_runtime() {
    let body = text_body();
    let config = CompressionConfig {
        zstd_level: 15,
        ..CompressionConfig::default()
    };
    // How long compressing this part takes when done inline: the stall the runtime would see.
    let inline = {
        let started = Instant::now();
        let mut encoder = config.encoder(Coding::Zstd);
        encoder.write(&body);
        let _ = encoder.finish();
        started.elapsed()
    };
    assert!(
        inline > Duration::from_millis(40),
        "the part compresses too fast ({inline:?}) to show a stall"
    );

    let served = body.clone();
    let up = upstream(move |_| {
        let served = served.clone();
        async move { text(StatusCode::OK, served) }
    })
    .await;
    let gw = gateway(&format!(
        "[compression]\nzstd_level = 15\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;

    // A ticker on the same (single-threaded) runtime records the longest time it was kept from running.
    let stop = Arc::new(AtomicBool::new(false));
    let longest = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let (stop, longest) = (stop.clone(), longest.clone());
        async move {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let gap = last.elapsed().as_micros() as u64;
                longest.fetch_max(gap, Ordering::Relaxed);
                last = Instant::now();
            }
        }
    });
    let reply = gw
        .request(
            Method::POST,
            "/batch",
            &[
                ("content-type", "multipart/mixed; boundary=b"),
                ("accept-encoding", "zstd"),
            ],
            Bytes::from(get_batch("b", &["/up/big".to_owned()])),
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-encoding"], "zstd");
    let decoded = zstd::stream::decode_all(&reply.body[..]).unwrap();
    assert!(
        decoded
            .windows(body.len().min(64))
            .any(|w| w == &body[..64]),
        "the part's body is in the reply"
    );
    let longest = Duration::from_micros(longest.load(Ordering::Relaxed));
    assert!(
        longest < inline / 3,
        "the runtime was kept from running for {longest:?}; compressing inline takes {inline:?}"
    );
}
