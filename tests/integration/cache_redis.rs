//! The Redis cache backend (`[cache] backend = "redis"`) against a real `redis-server` (Debian's package,
//! started by each test on a free port): gateways sharing one Redis share one cache, a purge on one is a
//! purge for all, and a Redis that dies or was never there costs misses, never a failed part.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, StatusCode};

use batchgate::server::admin::Admin;

use crate::support::*;

/// An upstream answering every GET `200 <path>`, fresh for a minute, counting what it is asked.
async fn cacheable_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let up = upstream(move |seen| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut answer = text(StatusCode::OK, seen.uri.path().to_owned());
            answer
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            answer
        }
    })
    .await;
    (up, calls)
}

/// A `[cache]` in `redis_url` and a route `/mail/` to `upstream` that caches.
fn redis_cached(redis_url: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "[cache]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\nredis_timeout = \"2s\"\n\n\
         [[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{upstream}\"\ncache = true\n"
    )
}

/// One GET part for `target` through `gw`: its status, `Cache-Status` and body.
async fn get(gw: &TestGateway, target: &str) -> (u16, String, String) {
    let parts = within(10, target, gw.post(MP, batch(&[get_part("p", target)])))
        .await
        .parts();
    assert_eq!(parts.len(), 1);
    let part = &parts[0];
    let status = part
        .headers
        .get("cache-status")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (part.status.as_u16(), status, part_body(part))
}

async fn metrics(gw: &TestGateway) -> String {
    let reply = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// The test server answers, holds what it is sent, and refuses once killed (as a crashed Redis would).
#[tokio::test]
async fn the_test_server_answers_until_killed() {
    let mut redis = RedisServer::start().await;
    assert_eq!(redis.url(), format!("redis://{}/0", redis.addr));
    assert_eq!(redis.command(&["SET", "k", "v"]).await.unwrap(), "+OK");
    assert_eq!(redis.command(&["GET", "k"]).await.unwrap(), "v");
    assert_eq!(redis.keys().await, 1);
    redis.kill();
    assert!(redis.command(&["PING"]).await.is_err());
}

/// Two gateways, one Redis: what one fetched and stored, the other serves as a hit, the upstream asked
/// once; the entry is one key in Redis, namespaced, with a time to live from its freshness.
#[tokio::test]
async fn a_miss_on_one_gateway_is_a_hit_on_the_other() {
    let redis = RedisServer::start().await;
    let (up, calls) = cacheable_upstream().await;
    let one = gateway(&redis_cached(&redis.url(), up.addr)).await;
    let two = gateway(&redis_cached(&redis.url(), up.addr)).await;

    let (status, cache_status, body) = get(&one, "/mail/messages/1").await;
    assert_eq!((status, body.as_str()), (200, "/mail/messages/1"));
    assert_eq!(cache_status, "batchgate; fwd=uri-miss; stored");
    assert_eq!(redis.keys().await, 1);
    let ttl: u64 = redis
        .command(&["PTTL", "batchgate:cache:/mail/messages/1"])
        .await
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(ttl > 50_000, "a minute fresh, kept {ttl} ms");

    let (status, cache_status, body) = get(&two, "/mail/messages/1").await;
    assert_eq!((status, body.as_str()), (200, "/mail/messages/1"));
    assert_eq!(cache_status, "batchgate; hit");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the upstream was asked once"
    );
    assert_eq!(
        metric(
            &metrics(&two).await,
            "batchgate_cache_total",
            &[("outcome", "hit")]
        ),
        1
    );
}

/// `POST /admin/cache/purge` on one gateway drops the entry from Redis, so the other misses too.
#[tokio::test]
async fn a_purge_on_one_gateway_drops_the_entry_for_both() {
    let redis = RedisServer::start().await;
    let (up, calls) = cacheable_upstream().await;
    let (one, live) = live_gateway(&redis_cached(&redis.url(), up.addr)).await;
    let admin = start_admin(Admin::new(live)).await;
    let two = gateway(&redis_cached(&redis.url(), up.addr)).await;

    get(&one, "/mail/messages/1").await;
    get(&one, "/mail/messages/2").await;
    assert_eq!(get(&two, "/mail/messages/1").await.1, "batchgate; hit");
    // A key outside the prefix, and one of another program, stay.
    get(&one, "/mail/other/1").await;
    redis.command(&["SET", "theirs", "x"]).await.unwrap();
    assert_eq!(redis.keys().await, 4);

    let purged = admin
        .request(
            Method::POST,
            "/admin/cache/purge",
            &[("content-type", "application/json")],
            Bytes::from_static(b"{\"prefix\":\"/mail/messages/\"}"),
        )
        .await;
    assert_eq!(purged.status, StatusCode::OK);
    let purged: serde_json::Value = serde_json::from_slice(&purged.body).unwrap();
    assert_eq!(purged["purged"], 2);
    assert_eq!(redis.keys().await, 2);

    let (status, cache_status, _) = get(&two, "/mail/messages/1").await;
    assert_eq!(status, 200);
    assert_eq!(cache_status, "batchgate; fwd=uri-miss; stored");
    assert_eq!(get(&two, "/mail/other/1").await.1, "batchgate; hit");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    admin.stop().await;
}

/// Redis killed while the gateway runs: every part is still answered 200 by the upstream (a miss, not
/// stored), promptly, and the store's failures are counted.
#[tokio::test]
async fn redis_killed_mid_run_costs_misses_never_a_failed_part() {
    let mut redis = RedisServer::start().await;
    let (up, calls) = cacheable_upstream().await;
    let gw = gateway(&redis_cached(&redis.url(), up.addr)).await;
    get(&gw, "/mail/messages/1").await;
    assert_eq!(get(&gw, "/mail/messages/1").await.1, "batchgate; hit");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    redis.kill();
    let targets: Vec<String> = (0..10)
        .map(|i| format!("/mail/messages/{}", i % 2))
        .collect();
    let reply = within(
        10,
        "a batch with Redis gone",
        gw.post(MP, get_batch("b", &targets)),
    )
    .await;
    let parts = reply.parts();
    assert_eq!(statuses(&parts), vec![200; 10]);
    for (part, target) in parts.iter().zip(&targets) {
        assert_eq!(&part_body(part), target);
        let cache_status = part.headers["cache-status"].to_str().unwrap();
        assert!(
            cache_status != "batchgate; hit" && !cache_status.contains("stored"),
            "{cache_status}"
        );
    }
    assert!(
        calls.load(Ordering::SeqCst) > 1,
        "the upstream answered the parts"
    );
    let text = metrics(&gw).await;
    // At least each distinct target's lookup failed.
    assert!(
        metric(&text, "batchgate_cache_total", &[("outcome", "error")]) >= 2,
        "the store's failures are counted: {text}"
    );
    assert_eq!(
        metric(&text, "batchgate_parts_total", &[("outcome", "2xx")]),
        12
    );
}

/// Redis restarted (empty) on the same address: the gateway connects again by itself, and the cache works
/// again. The operation that finds the old connection dead fails (a miss) and makes the new one.
#[tokio::test]
async fn a_restarted_redis_is_used_again() {
    let mut redis = RedisServer::start().await;
    let (up, calls) = cacheable_upstream().await;
    let gw = gateway(&redis_cached(&redis.url(), up.addr)).await;
    assert_eq!(
        get(&gw, "/mail/messages/1").await.1,
        "batchgate; fwd=uri-miss; stored"
    );
    redis.restart().await;
    assert_eq!(redis.keys().await, 0);

    // At most the first part after the restart meets the dead connection; the next stores again.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, cache_status, _) = get(&gw, "/mail/messages/1").await;
        assert_eq!(status, 200);
        statuses.push(cache_status);
        if statuses.last().unwrap().contains("stored") {
            break;
        }
    }
    assert!(statuses.len() <= 2, "{statuses:?}");
    assert_eq!(redis.keys().await, 1);
    assert_eq!(get(&gw, "/mail/messages/1").await.1, "batchgate; hit");
    assert_eq!(calls.load(Ordering::SeqCst), 1 + statuses.len());
}

/// What is under a key but is not an entry of ours (another version, a program writing there, a value too
/// large to be one) is a miss, counted, and the fresh answer replaces it.
#[tokio::test]
async fn a_corrupt_entry_is_a_miss_and_is_replaced() {
    let redis = RedisServer::start().await;
    let (up, calls) = cacheable_upstream().await;
    let gw = gateway(&redis_cached(&redis.url(), up.addr)).await;
    let key = "batchgate:cache:/mail/messages/1";
    redis.command(&["SET", key, "not an entry"]).await.unwrap();

    let (status, cache_status, body) = get(&gw, "/mail/messages/1").await;
    assert_eq!((status, body.as_str()), (200, "/mail/messages/1"));
    assert_eq!(cache_status, "batchgate; fwd=uri-miss; stored");
    assert_eq!(
        metric(
            &metrics(&gw).await,
            "batchgate_cache_total",
            &[("outcome", "error")]
        ),
        1
    );
    assert_ne!(redis.command(&["GET", key]).await.unwrap(), "not an entry");
    assert_eq!(get(&gw, "/mail/messages/1").await.1, "batchgate; hit");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // An entry larger than any may be (max_entry_bytes, 1MiB by default, plus 1MiB of headers), though well
    // formed (3MiB appended to the body of a good one), is not read whole: a miss, counted, replaced.
    redis
        .command(&["APPEND", key, &"x".repeat(3 << 20)])
        .await
        .unwrap();
    let (status, cache_status, body) = get(&gw, "/mail/messages/1").await;
    assert_eq!(status, 200);
    assert!(body == "/mail/messages/1", "served {} bytes", body.len());
    assert_eq!(cache_status, "batchgate; fwd=uri-miss; stored");
    assert_eq!(
        metric(
            &metrics(&gw).await,
            "batchgate_cache_total",
            &[("outcome", "error")]
        ),
        2
    );
    let stored: usize = redis.command(&["STRLEN", key]).await.unwrap()[1..]
        .parse()
        .unwrap();
    assert!(
        stored < 1 << 20,
        "the entry replaced the huge one: {stored} bytes"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A Redis that accepts connections and never answers: each lookup and store gives up after
/// `cache.redis_timeout`, and the part is answered by the upstream.
#[tokio::test]
async fn a_redis_that_never_answers_is_a_miss_after_the_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // Accepts and holds every connection, reading nothing, writing nothing.
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let (up, calls) = cacheable_upstream().await;
    let config = redis_cached(&format!("redis://{silent_addr}/0"), up.addr)
        .replace("redis_timeout = \"2s\"", "redis_timeout = \"50ms\"");
    let gw = gateway(&config).await;

    // Without the timeout the lookup would wait forever: `get` fails the test after 10 s.
    let (status, cache_status, _) = get(&gw, "/mail/messages/1").await;
    assert_eq!(status, 200);
    assert!(!cache_status.contains("stored"), "{cache_status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        metric(
            &metrics(&gw).await,
            "batchgate_cache_total",
            &[("outcome", "error")]
        ) >= 1
    );
    held.abort();
}

/// The real binary with a Redis that is not there: it starts, warns once, and serves every part from the
/// upstream.
#[tokio::test]
async fn redis_down_at_startup_is_a_warning_and_the_gateway_serves() {
    // A port nothing listens on: a Redis that was started, then killed.
    let mut gone = RedisServer::start().await;
    gone.kill();
    let (up, calls) = cacheable_upstream().await;
    let dir = TempDir::new("cache-redis-down");
    let config = dir.join("batchgate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n{}",
            redis_cached(&gone.url(), up.addr)
        ),
    )
    .unwrap();
    let mut binary = Binary::spawn(
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", None)],
    );
    let (_, addr) = binary.listening().await;
    // The warning comes from a check running beside the startup: before or after the listening line.
    const WARNING: &str = "Redis is unreachable at startup";
    let warning = match binary.log.seen.iter().find(|line| line.contains(WARNING)) {
        Some(line) => line.clone(),
        None => binary.log.wait_for(WARNING).await,
    };
    assert!(warning.contains("WARN"), "{warning}");

    for round in 1..=3 {
        let reply = within(
            10,
            "a batch with no Redis",
            http_request(
                &format!("http://{addr}/batch"),
                Method::POST,
                &[("content-type", MP)],
                Bytes::from(batch(&[get_part("p", "/mail/messages/1")])),
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let parts = reply.parts();
        assert_eq!(statuses(&parts), vec![200]);
        assert_eq!(part_body(&parts[0]), "/mail/messages/1");
        assert_eq!(calls.load(Ordering::SeqCst), round);
    }
}
