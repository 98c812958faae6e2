//! The Redis cache backend against a real `redis-server` (Debian's package, started by each test on a free
//! port): the test server itself, then gateways sharing one Redis.

use crate::support::*;

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
