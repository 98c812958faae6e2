//! In-process test servers and clients, each started on `127.0.0.1:0` in one line, split by concern:
//! upstreams, the gateway (and what it is sent), raw HTTP over TCP, TLS, the real binary, the browser, and a
//! real redis-server, a throwaway PostgreSQL cluster.
//! Every area uses a different subset; `use crate::support::*` brings them all.

mod binary;
mod browser;
mod gateway;
mod postgres;
mod raw;
mod redis;
mod tls;
mod upstreams;

pub(crate) use binary::*;
pub(crate) use browser::*;
pub(crate) use gateway::*;
pub(crate) use postgres::*;
pub(crate) use raw::*;
pub(crate) use redis::*;
pub(crate) use tls::*;
pub(crate) use upstreams::*;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Waits until `condition` holds, checking every 10 ms. The 60 s bound is a hang guard, not a timing
/// assertion: a slow (2-core CI) machine takes as long as it needs.
pub(crate) async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fails the test instead of hanging when `future` takes longer than `secs`.
pub(crate) async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
}

/// A directory of its own under the system's temp dir, removed when dropped.
pub(crate) struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "batchgate-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub(crate) fn join(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Asserts that `elapsed` (on tokio's paused clock) is `limit` or a little more: what happened was that
/// limit's timer, not another.
pub(crate) fn at_limit(what: &str, elapsed: Duration, limit: Duration) {
    assert!(
        elapsed >= limit,
        "{what} after {elapsed:?}, before the limit of {limit:?}"
    );
    assert!(
        elapsed < limit + Duration::from_millis(500),
        "{what} after {elapsed:?}, long after the limit of {limit:?}"
    );
}
