//! `[limits]`: bounds on everything a client can make the gateway hold or do.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::check::{
    MAX_DURATION, MAX_PARTS, MAX_PERMITS, MIN_TIMEOUT, check_count, check_duration, check_size,
    invalid,
};
use super::units::{de_bytes, de_duration};

/// Most header lines in one embedded request: it sizes an allocation made for every part.
const MAX_PART_HEADERS: usize = 1024;
/// Most concurrent streams per HTTP/2 client connection.
const MAX_HTTP2_STREAMS: usize = 10_000;
/// Largest size of any kind.
const MAX_SIZE: u64 = 16 << 30;
/// Largest `max_part_header_bytes`: a part's head is buffered whole before it is parsed.
const MAX_PART_HEADER_BYTES: u64 = 1 << 20;

/// Bounds on everything a client can make the gateway hold or do.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Parts per batch (inclusive). More gets the whole batch a 413 naming both numbers.
    pub max_parts: usize,
    /// Sub-requests of one batch in flight at once.
    pub concurrency: usize,
    /// Parts of one batch started but not yet written to the client (in flight, or done and waiting for an
    /// earlier part). Bounds a batch's memory to about `window` x `max_response_bytes`. At least `concurrency`.
    pub window: usize,
    /// Bytes of one batch's answers held in its window (answered, not yet taken by the reply writer). Past
    /// it, no more parts start until the writer catches up (a batch holding nothing always starts one). With
    /// `window` it bounds a batch of large answers by bytes rather than by count.
    #[serde(deserialize_with = "de_bytes")]
    pub window_bytes: u64,
    /// Sub-requests in flight across all batches.
    pub max_inflight: usize,
    /// Sub-requests in flight to any one route's upstream, across all batches.
    pub max_inflight_per_upstream: usize,
    /// Batches being served at once; more are answered 503 at once rather than queued.
    pub max_batches: usize,
    /// Client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From sending a part upstream until its response is complete.
    #[serde(deserialize_with = "de_duration")]
    pub part_timeout: Duration,
    /// From the batch's arrival until its last part is written.
    #[serde(deserialize_with = "de_duration")]
    pub batch_timeout: Duration,
    /// From the batch's arrival until its whole body (the closing delimiter) is in; slower uploads get 408.
    /// At most `batch_timeout`.
    #[serde(deserialize_with = "de_duration")]
    pub upload_timeout: Duration,
    /// Request body cap, enforced while the body streams in.
    #[serde(deserialize_with = "de_bytes")]
    pub max_batch_bytes: u64,
    /// One part (its MIME headers, embedded request head and body). At most `max_batch_bytes`.
    #[serde(deserialize_with = "de_bytes")]
    pub max_part_bytes: u64,
    /// Header lines in one embedded request.
    pub max_part_headers: usize,
    /// Bytes of one embedded request's head (request line and headers) and of a part's MIME headers.
    #[serde(deserialize_with = "de_bytes")]
    pub max_part_header_bytes: u64,
    /// An upstream response body for one part; larger bodies become a 502 part. At most
    /// `max_batch_response_bytes`.
    #[serde(deserialize_with = "de_bytes")]
    pub max_response_bytes: u64,
    /// All upstream response bodies of one batch together; parts past it become 502 parts.
    #[serde(deserialize_with = "de_bytes")]
    pub max_batch_response_bytes: u64,
    /// A client that has not sent its request head within this is disconnected (slowloris).
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body before the batch is refused with 408.
    #[serde(deserialize_with = "de_duration")]
    pub body_read_timeout: Duration,
    /// Longest a reply may wait for the client to read it before the connection is cut.
    #[serde(deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    /// A client connection with no request in progress is closed after this (HTTP/1 keep-alive and HTTP/2).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 client connections are pinged this often.
    #[serde(deserialize_with = "de_duration")]
    pub http2_keepalive_interval: Duration,
    /// An HTTP/2 client connection whose ping is not acknowledged within this is closed.
    #[serde(deserialize_with = "de_duration")]
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams per HTTP/2 client connection.
    pub http2_max_streams: usize,
    /// On SIGTERM/SIGINT, how long in-flight batches may take to finish before the process exits.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_parts: 100,
            concurrency: 16,
            window: 64,
            window_bytes: 512 << 10,
            max_inflight: 1024,
            max_inflight_per_upstream: 256,
            max_batches: 256,
            max_connections: 1024,
            part_timeout: Duration::from_secs(10),
            batch_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(30),
            max_batch_bytes: 8 << 20,
            max_part_bytes: 1 << 20,
            max_part_headers: 64,
            max_part_header_bytes: 16 << 10,
            max_response_bytes: 8 << 20,
            max_batch_response_bytes: 64 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_streams: 100,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// A limit bounded by another one, when the file leaves it out, follows the other one down instead of
    /// contradicting it: `max_batch_bytes = "1KiB"` alone also lowers `max_part_bytes` to 1KiB, rather than
    /// refusing the file over a default nobody wrote. Limits the file does give are checked as given.
    /// `table` is the whole file's.
    pub(super) fn follow_given(&mut self, table: &toml::Table) {
        let given = |key: &str| {
            table
                .get("limits")
                .and_then(toml::Value::as_table)
                .is_some_and(|l| l.contains_key(key))
        };
        let l = self;
        if !given("max_part_bytes") {
            l.max_part_bytes = l.max_part_bytes.min(l.max_batch_bytes);
        }
        if !given("max_response_bytes") {
            l.max_response_bytes = l.max_response_bytes.min(l.max_batch_response_bytes);
        }
        if !given("upload_timeout") {
            l.upload_timeout = l.upload_timeout.min(l.batch_timeout);
        }
        if !given("window") {
            l.window = l.window.max(l.concurrency);
        }
    }

    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        check_count("limits.max_parts", l.max_parts, 1, MAX_PARTS)?;
        check_count("limits.concurrency", l.concurrency, 1, MAX_PARTS)?;
        check_count("limits.window", l.window, 1, MAX_PARTS)?;
        if l.window < l.concurrency {
            return Err(invalid(format!(
                "limits.window ({}) must be at least limits.concurrency ({})",
                l.window, l.concurrency
            )));
        }
        check_count(
            "limits.max_part_headers",
            l.max_part_headers,
            1,
            MAX_PART_HEADERS,
        )?;
        for (key, value) in [
            ("limits.max_inflight", l.max_inflight),
            (
                "limits.max_inflight_per_upstream",
                l.max_inflight_per_upstream,
            ),
            ("limits.max_batches", l.max_batches),
            ("limits.max_connections", l.max_connections),
        ] {
            check_count(key, value, 1, MAX_PERMITS)?;
        }
        check_count(
            "limits.http2_max_streams",
            l.http2_max_streams,
            1,
            MAX_HTTP2_STREAMS,
        )?;

        // The bounds before what they bound: a left-out limit follows its bound (see `follow_given_limits`),
        // so the error names the key the file got wrong.
        for (key, value) in [
            ("limits.max_batch_bytes", l.max_batch_bytes),
            (
                "limits.max_batch_response_bytes",
                l.max_batch_response_bytes,
            ),
            ("limits.max_part_bytes", l.max_part_bytes),
            ("limits.max_response_bytes", l.max_response_bytes),
            ("limits.window_bytes", l.window_bytes),
        ] {
            check_size(key, value, MAX_SIZE)?;
        }
        check_size(
            "limits.max_part_header_bytes",
            l.max_part_header_bytes,
            MAX_PART_HEADER_BYTES,
        )?;
        for (small, small_value, big, big_value) in [
            (
                "limits.max_part_bytes",
                l.max_part_bytes,
                "limits.max_batch_bytes",
                l.max_batch_bytes,
            ),
            (
                "limits.max_response_bytes",
                l.max_response_bytes,
                "limits.max_batch_response_bytes",
                l.max_batch_response_bytes,
            ),
        ] {
            if small_value > big_value {
                return Err(invalid(format!(
                    "{small} ({small_value} bytes) must be at most {big} ({big_value} bytes)"
                )));
            }
        }

        for (key, value) in [
            ("limits.part_timeout", l.part_timeout),
            ("limits.batch_timeout", l.batch_timeout),
            ("limits.upload_timeout", l.upload_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.body_read_timeout", l.body_read_timeout),
            ("limits.write_timeout", l.write_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            (
                "limits.http2_keepalive_interval",
                l.http2_keepalive_interval,
            ),
            ("limits.http2_keepalive_timeout", l.http2_keepalive_timeout),
        ] {
            check_duration(key, value, MIN_TIMEOUT, MAX_DURATION)?;
        }
        // Zero is meaningful here: on a signal, stop at once.
        check_duration(
            "limits.shutdown_grace",
            l.shutdown_grace,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        if l.upload_timeout > l.batch_timeout {
            return Err(invalid(format!(
                "limits.upload_timeout ({:?}) must be at most limits.batch_timeout ({:?})",
                l.upload_timeout, l.batch_timeout
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::refused;

    #[test]
    fn durations_are_range_checked_by_key() {
        for key in [
            "part_timeout",
            "batch_timeout",
            "header_read_timeout",
            "body_read_timeout",
            "write_timeout",
            "idle_timeout",
            "http2_keepalive_interval",
            "http2_keepalive_timeout",
        ] {
            let full = format!("limits.{key}");
            refused(&format!("[limits]\n{key} = \"0s\""), &full, &["1ms"]);
            refused(&format!("[limits]\n{key} = 0"), &full, &[]);
            refused(&format!("[limits]\n{key} = \"25h\""), &full, &["86400s"]);
        }
        refused(
            "[limits]\nupload_timeout = \"0ms\"",
            "limits.upload_timeout",
            &[],
        );
        refused(
            "[limits]\nshutdown_grace = \"2w\"",
            "shutdown_grace",
            &["unknown duration unit"],
        );
        refused(
            "[limits]\nshutdown_grace = \"1000h\"",
            "limits.shutdown_grace",
            &[],
        );
        let zero_grace = Config::from_toml("[limits]\nshutdown_grace = \"0s\"").unwrap();
        assert_eq!(zero_grace.limits.shutdown_grace, Duration::ZERO);
        for key in ["connect_timeout", "pool_idle_timeout"] {
            refused(
                &format!("[upstream]\n{key} = \"0s\""),
                &format!("upstream.{key}"),
                &[],
            );
            refused(
                &format!("[upstream]\n{key} = \"48h\""),
                &format!("upstream.{key}"),
                &[],
            );
        }
        refused(
            "[compression]\nflush_delay = \"2s\"",
            "compression.flush_delay",
            &["1s"],
        );
        let no_delay = Config::from_toml("[compression]\nflush_delay = \"0ms\"").unwrap();
        assert_eq!(no_delay.compression.flush_delay, Duration::ZERO);
        let route = |timeout: &str| {
            format!(
                "[[routes]]\nprefix = \"/a/\"\nupstream = \"http://h\"\n\
                 [[routes]]\nprefix = \"/b/\"\nupstream = \"http://h\"\n\
                 [[routes]]\nprefix = \"/c/\"\nupstream = \"http://h\"\ntimeout = \"{timeout}\""
            )
        };
        refused(&route("0s"), "routes[2].timeout", &[]);
        refused(&route("2h30m"), "timeout", &["unknown duration unit"]);
        refused(&route("1000h"), "routes[2].timeout", &[]);
        Config::from_toml(&route("24h")).unwrap();
        Config::from_toml(&route("1ms")).unwrap();
    }

    #[test]
    fn counts_are_range_checked_by_key() {
        for (key, max) in [
            ("max_parts", 10_000),
            ("concurrency", 64),
            ("window", 10_000),
            ("max_part_headers", 1024),
            ("max_inflight", 1_000_000),
            ("max_inflight_per_upstream", 1_000_000),
            ("max_batches", 1_000_000),
            ("max_connections", 1_000_000),
            ("http2_max_streams", 10_000),
        ] {
            let full = format!("limits.{key}");
            refused(&format!("[limits]\n{key} = 0"), &full, &[]);
            refused(&format!("[limits]\n{key} = -1"), key, &[]);
            // `concurrency` above the default window is refused for the window it exceeds.
            if key != "concurrency" {
                refused(&format!("[limits]\n{key} = {}", max + 1), &full, &[]);
            }
            Config::from_toml(&format!("[limits]\n{key} = {max}")).unwrap();
        }
        refused(
            "[limits]\nconcurrency = 10001\nwindow = 10000",
            "limits.concurrency",
            &[],
        );
        refused(
            "[upstream]\npool_max_idle_per_host = 100001",
            "upstream.pool_max_idle_per_host",
            &[],
        );
        Config::from_toml("[upstream]\npool_max_idle_per_host = 0").unwrap();
    }

    #[test]
    fn sizes_are_range_checked_by_key() {
        for key in [
            "max_batch_bytes",
            "max_part_bytes",
            "max_response_bytes",
            "max_batch_response_bytes",
            "max_part_header_bytes",
            "window_bytes",
        ] {
            let full = format!("limits.{key}");
            refused(&format!("[limits]\n{key} = 0"), &full, &[]);
            refused(&format!("[limits]\n{key} = \"0MiB\""), &full, &[]);
            let cap = if key == "max_part_header_bytes" {
                "1MiB"
            } else {
                "16GiB"
            };
            refused(&format!("[limits]\n{key} = \"17GiB\""), &full, &[cap]);
            refused(&format!("[limits]\n{key} = -5"), key, &["negative"]);
            refused(&format!("[limits]\n{key} = 1.5"), key, &["whole number"]);
            refused(
                &format!("[limits]\n{key} = \"99999999999GiB\""),
                key,
                &["too large"],
            );
        }
        refused(
            "[limits]\nmax_part_header_bytes = \"2MiB\"",
            "limits.max_part_header_bytes",
            &["1MiB"],
        );
        refused(
            "[limits]\nmax_batch_bytes = \"1KiB\"\nmax_part_bytes = \"2KiB\"",
            "limits.max_part_bytes",
            &["limits.max_batch_bytes"],
        );
        refused(
            "[limits]\nmax_response_bytes = \"2MiB\"\nmax_batch_response_bytes = \"1MiB\"",
            "limits.max_response_bytes",
            &["limits.max_batch_response_bytes"],
        );
        let big = Config::from_toml(
            "[limits]\nmax_batch_bytes = \"16GiB\"\nmax_part_bytes = \"16GiB\"\n\
             max_batch_response_bytes = \"16GiB\"\nmax_response_bytes = \"16GiB\"",
        )
        .unwrap();
        assert_eq!(big.limits.max_part_bytes, 16 << 30);
    }

    #[test]
    fn a_limit_left_out_follows_the_one_bounding_it() {
        let c = Config::from_toml(
            "[limits]\nmax_batch_bytes = \"1KiB\"\nmax_batch_response_bytes = 10000\n\
             batch_timeout = \"300ms\"\nconcurrency = 100",
        )
        .unwrap();
        assert_eq!(c.limits.max_part_bytes, 1024);
        assert_eq!(c.limits.max_response_bytes, 10000);
        assert_eq!(c.limits.upload_timeout, Duration::from_millis(300));
        assert_eq!(c.limits.window, 100);
        // Given explicitly, they are checked as given.
        refused(
            "[limits]\nbatch_timeout = \"10s\"\nupload_timeout = \"11s\"",
            "limits.upload_timeout",
            &["limits.batch_timeout"],
        );
        // Larger bounds do not raise the defaults.
        let c = Config::from_toml("[limits]\nmax_batch_bytes = \"1GiB\"\nbatch_timeout = \"1h\"")
            .unwrap();
        assert_eq!(c.limits.max_part_bytes, Limits::default().max_part_bytes);
        assert_eq!(c.limits.upload_timeout, Limits::default().upload_timeout);
    }
}
