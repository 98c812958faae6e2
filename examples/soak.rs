//! A bounded load and soak run: thousands of batches, good and hostile, against upstreams that misbehave,
//! with every reply part checked. Not a test: it runs for `--secs`, reports, and exits non-zero if any part
//! was lost or answered wrongly.
//!
//! A batch refused before anything ran is not lost: answered 503, or its connection closed before any byte of
//! an answer (the gateway closes a connection unanswered only before reading a byte of a request). The report
//! counts those apart, and checks with the upstreams that no part of them ran.
//!
//! ```text
//! cargo run --release --example soak                       # 20 s, 16 connections
//! cargo run --release --example soak -- --secs 60 --conns 32 --seed 7
//! cargo run --release --example soak -- --slow-readers 4 --silent 16 --drips 4   # the defaults
//! ```
//!
//! Everything runs in this process, on loopback:
//! - a well-behaved upstream (`/good/`) that echoes what it received as JSON;
//! - a slow upstream (`/slow/{ms}/`) that waits `ms` before answering, often longer than `part_timeout`;
//! - a faulty upstream (`/faulty/{mode}/`) speaking raw TCP: it resets the connection mid-response, answers
//!   garbage bytes, answers 500, or hangs;
//! - the gateway, with small limits so that every limit is reached many times.
//!
//! `--conns` clients each hold one keep-alive connection (a raw `hyper::client::conn`) and send batches
//! back to back. A batch mixes good, slow and faulty parts with hostile ones (path traversal, an absolute
//! URL naming an unknown host, `Transfer-Encoding` smuggling, a bad method token, a header over the limit,
//! a path no route serves); about one batch in forty is hostile as a whole (bad boundary, truncated body,
//! one part too many).
//!
//! Alongside them, for the whole run, three kinds of hostile clients on raw sockets:
//! - `--slow-readers`: each pipelines a few batches of large answers (more than the socket buffers hold),
//!   then stops reading; the gateway must cut the connection mid-reply after `write_timeout`;
//! - `--silent`: each connects and sends nothing, or half a request head; the gateway must close it after
//!   `header_read_timeout`, or (one that sent nothing) sooner to make room: `max_connections` leaves room for
//!   every other client and the half heads (which are mid-request, and never closed to make room) but only
//!   half of those that send nothing, so the gateway is full and evicts them all the time
//!   (`--max-connections` overrides it, e.g. to run without eviction);
//! - `--drips`: each sends a batch body a few bytes at a time, slower in total than `upload_timeout` (but
//!   each pause shorter than `body_read_timeout`); the gateway must answer 408 with a JSON error.
//!
//! Besides the batch figures, the report gives what each hostile kind saw, the resident set sampled every
//! 500 ms (first 5 s against last 5 s), and the gateway's in-flight gauges once every client has stopped,
//! which must fall back to 0 within 10 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use batchgate::{Config, Gateway, server};
use batchgate_wire::{PartSplitter, ReplyPart, boundary_from_content_type};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs a bounded soak against an in-process gateway and misbehaving upstreams.
#[derive(Debug, Parser)]
struct Args {
    /// How long to keep sending batches, in seconds (in-flight batches are then finished).
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Client connections sending batches at once.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Seed for the batch mix (printed, so a run can be repeated); random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Clients that pipeline batches of large answers and then stop reading them.
    #[arg(long, default_value_t = 4)]
    slow_readers: usize,
    /// Sockets that send nothing (or half a request head) and wait to be closed.
    #[arg(long, default_value_t = 16)]
    silent: usize,
    /// Clients that upload a batch body a few bytes at a time, slower than `upload_timeout`.
    #[arg(long, default_value_t = 4)]
    drips: usize,
    /// The gateway's `max_connections`. By default room for every client but half the silent sockets that
    /// send nothing, so that the gateway is full, and evicts, all run long.
    #[arg(long)]
    max_connections: Option<usize>,
}

/// The gateway's limits in this run. Small on purpose: each of them is hit many times.
const MAX_PARTS: usize = 50;
const PART_TIMEOUT: Duration = Duration::from_millis(300);
const MAX_PART_HEADER_BYTES: usize = 4096;
/// Longer than the gateway's `batch_timeout` (5 s): a reply later than this is counted lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A slow part whose upstream waits this long must be answered 504. Twice `part_timeout`, because a starved
/// runtime may see the response and the expired timer in the same poll, and then the response wins.
const SURELY_LATE: Duration = Duration::from_millis(600);
/// A connection that has not sent a whole request head within this is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// A reply write that makes no progress for this long cuts the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch body must be in within this of its arrival, or the batch gets 408.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause allowed inside a body: several drips long, so that drips hit `upload_timeout` and not this.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The gauges must be back to 0 this soon after the last client stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);

    // 1. Start the three upstreams and the gateway in front of them, all on free loopback ports.
    let seen = Arc::new(Seen::default());
    let good = start_http_upstream(seen.clone(), false).await;
    let slow = start_http_upstream(seen.clone(), true).await;
    let faulty = start_faulty_upstream(seen.clone()).await;
    // Room for every client but half the silent sockets that send nothing (the other half of them send half a
    // head): the gateway is full, and evicts, all run long.
    let max_connections = args
        .max_connections
        .unwrap_or(args.conns + args.slow_readers + args.drips + args.silent / 2 + args.silent / 4)
        .max(1);
    let config = Config::from_toml(&format!(
        r#"
[limits]
max_parts = {MAX_PARTS}
concurrency = 8
window = 16
max_inflight = 512
max_inflight_per_upstream = 256
max_batches = {max_batches}
max_connections = {max_connections}
part_timeout = "{part_timeout}ms"
batch_timeout = "5s"
upload_timeout = "{upload_timeout}ms"
max_batch_bytes = "1MiB"
max_part_bytes = "64KiB"
max_part_headers = 32
max_part_header_bytes = {MAX_PART_HEADER_BYTES}
max_response_bytes = "64KiB"
max_batch_response_bytes = "1MiB"
header_read_timeout = "{header_read_timeout}ms"
body_read_timeout = "{body_read_timeout}ms"
write_timeout = "{write_timeout}ms"
shutdown_grace = "2s"

# Good parts must never time out, however loaded the machine: their route waits longer.
[[routes]]
prefix = "/good/"
upstream = "http://{good}"
timeout = "5s"

[[routes]]
prefix = "/slow/"
upstream = "http://{slow}"

[[routes]]
prefix = "/faulty/"
upstream = "http://{faulty}"
"#,
        // Every client connection, hostile or not, can have a batch in flight; none may be refused as
        // overload.
        max_batches = args.conns + args.slow_readers + args.drips + 8,
        part_timeout = PART_TIMEOUT.as_millis(),
        upload_timeout = UPLOAD_TIMEOUT.as_millis(),
        header_read_timeout = HEADER_READ_TIMEOUT.as_millis(),
        body_read_timeout = BODY_READ_TIMEOUT.as_millis(),
        write_timeout = WRITE_TIMEOUT.as_millis(),
    ))
    .expect("the soak's own config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway_addr = listener.local_addr().expect("bound");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shared = Arc::new(Gateway::new(config).expect("the soak's own config builds"));
    let gateway = tokio::spawn(server::run(listener, shared.clone(), async move {
        let _ = stopped.await;
    }));
    println!(
        "soak: {}s, {} connections, {} slow readers, {} silent sockets, {} drip uploads, seed {seed}; \
gateway http://{gateway_addr}/batch",
        args.secs, args.conns, args.slow_readers, args.silent, args.drips
    );
    println!(
        "limits: max_parts {MAX_PARTS}, concurrency 8, window 16, part_timeout {PART_TIMEOUT:?}, \
batch_timeout 5s, max_part_header_bytes {MAX_PART_HEADER_BYTES}, max_part_bytes 64KiB, \
max_connections {max_connections}, header_read_timeout {HEADER_READ_TIMEOUT:?}, write_timeout {WRITE_TIMEOUT:?}, \
upload_timeout {UPLOAD_TIMEOUT:?}, body_read_timeout {BODY_READ_TIMEOUT:?}"
    );

    // 2. Drive batches from every connection until the deadline, with the hostile clients alongside; each
    //    client returns what it saw. The resident set is sampled meanwhile, on a thread of its own so that a
    //    busy runtime cannot skew it.
    let rss = RssSampler::start(Duration::from_millis(500));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let clients: Vec<_> = (0..args.conns)
        .map(|i| {
            let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            tokio::spawn(client(i, gateway_addr, deadline, rng))
        })
        .collect();
    // Seeded apart from the batch clients, so that adding hostile clients does not change the batch mix.
    let hostile_seed = seed ^ 0x5eed_0f40_5711_1e55;
    let mut hostile: Vec<tokio::task::JoinHandle<Hostile>> = Vec::new();
    for i in 0..args.slow_readers {
        let rng = StdRng::seed_from_u64(hostile_seed.wrapping_add(i as u64));
        hostile.push(tokio::spawn(slow_reader(i, gateway_addr, deadline, rng)));
    }
    for i in 0..args.silent {
        hostile.push(tokio::spawn(silent_socket(i, gateway_addr, deadline)));
    }
    for i in 0..args.drips {
        let rng = StdRng::seed_from_u64(hostile_seed.wrapping_add(1000 + i as u64));
        hostile.push(tokio::spawn(drip_upload(i, gateway_addr, deadline, rng)));
    }
    let mut stats = Stats::default();
    for client in clients {
        stats.merge(client.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    let mut seen_hostile = Hostile::default();
    for client in hostile {
        seen_hostile.merge(client.await.expect("hostile client task"));
    }
    let all_stopped = Instant::now();
    let rss = rss.stop();

    // 3. With every client gone, nothing may stay in flight: wait (bounded) for both gauges to reach 0.
    let settled = loop {
        let (subs, batches) = (shared.sub_requests_in_flight(), shared.batches_in_flight());
        if (subs, batches) == (0, 0) || all_stopped.elapsed() >= SETTLE_TIMEOUT {
            break Settled {
                sub_requests: subs,
                batches,
                after: all_stopped.elapsed(),
                hostile_tail: all_stopped.duration_since(started).saturating_sub(elapsed),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // 4. Stop the gateway gracefully and time it: with every client gone it should not need its grace period.
    let _ = stop.send(());
    let stopping = Instant::now();
    let _ = gateway.await;
    let shutdown = stopping.elapsed();

    // 5. Report and judge.
    let mut failed = report(&stats, &seen, elapsed, shutdown);
    failed |= report_hostile(&seen_hostile, &seen);
    failed |= report_memory(&rss);
    failed |= report_settled(&settled);
    if failed {
        println!("RESULT: FAIL");
        std::process::ExitCode::FAILURE
    } else {
        println!("RESULT: PASS");
        std::process::ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------------------------------------
// What a batch is made of, and what each part must get back.

/// What a part asks for, which decides the statuses it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Good,
    Slow,
    Faulty(Fault),
    Traversal,
    UnknownHost,
    Smuggling,
    BadMethod,
    HugeHeader,
    NoRoute,
}

/// How the faulty upstream misbehaves for a part (named in the part's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Reset,
    Garbage,
    Status500,
    Hang,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Reset, Fault::Garbage, Fault::Status500, Fault::Hang];

    fn path_name(self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::Garbage => "garbage",
            Fault::Status500 => "500",
            Fault::Hang => "hang",
        }
    }
}

impl Kind {
    const HOSTILE: [Kind; 6] = [
        Kind::Traversal,
        Kind::UnknownHost,
        Kind::Smuggling,
        Kind::BadMethod,
        Kind::HugeHeader,
        Kind::NoRoute,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::Slow => "slow",
            Kind::Faulty(Fault::Reset) => "faulty: reset mid-response",
            Kind::Faulty(Fault::Garbage) => "faulty: garbage bytes",
            Kind::Faulty(Fault::Status500) => "faulty: 500",
            Kind::Faulty(Fault::Hang) => "faulty: hangs",
            Kind::Traversal => "hostile: path traversal",
            Kind::UnknownHost => "hostile: unknown host",
            Kind::Smuggling => "hostile: TE + CL smuggling",
            Kind::BadMethod => "hostile: bad method token",
            Kind::HugeHeader => "hostile: header over limit",
            Kind::NoRoute => "hostile: no route",
        }
    }

    /// The statuses this part may be answered with. Any fault may also end in a 504, since a loaded machine
    /// can take longer than `part_timeout` even to read a reset.
    fn expected(self, slow_for: Duration) -> &'static [u16] {
        match self {
            Kind::Good => &[200],
            Kind::Slow if slow_for >= SURELY_LATE => &[504],
            Kind::Slow => &[200, 504],
            Kind::Faulty(Fault::Reset | Fault::Garbage) => &[502, 504],
            Kind::Faulty(Fault::Status500) => &[500, 504],
            Kind::Faulty(Fault::Hang) => &[504],
            _ => &[400, 404],
        }
    }
}

/// The Content-ID a part is sent with, in the forms real clients use.
#[derive(Debug, Clone)]
enum Cid {
    /// google-cloud-storage: none; replies are matched by order.
    None,
    /// Google's form, `<id>`.
    Bracketed(String),
    /// batchelor's form, a bare token.
    Bare(String),
}

impl Cid {
    fn header(&self) -> Option<String> {
        match self {
            Cid::None => None,
            Cid::Bracketed(id) => Some(format!("<{id}>")),
            Cid::Bare(id) => Some(id.clone()),
        }
    }

    /// The reply's `Content-ID` value, exactly.
    fn expected_reply(&self) -> Option<String> {
        match self {
            Cid::None => None,
            Cid::Bracketed(id) => Some(format!("<response-{id}>")),
            Cid::Bare(id) => Some(format!("response-{id}")),
        }
    }
}

/// One part as sent, kept to check its reply.
#[derive(Debug)]
struct Sent {
    kind: Kind,
    cid: Cid,
    /// For parts that reach an upstream: the method, path and body length it must echo.
    method: &'static str,
    path: String,
    body_len: usize,
    slow_for: Duration,
}

/// Batches that are wrong as a whole; the gateway must refuse them with one JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WholeBatch {
    BadBoundary,
    Truncated,
    TooManyParts,
}

impl WholeBatch {
    fn name(self) -> &'static str {
        match self {
            WholeBatch::BadBoundary => "bad boundary",
            WholeBatch::Truncated => "truncated body",
            WholeBatch::TooManyParts => "one part too many",
        }
    }

    fn expected(self) -> u16 {
        match self {
            WholeBatch::BadBoundary | WholeBatch::Truncated => 400,
            WholeBatch::TooManyParts => 413,
        }
    }
}

/// A batch ready to send.
struct Planned {
    /// Names the batch in mismatch reports (and in every target it holds).
    tag: String,
    content_type: String,
    body: Bytes,
    /// `None` for a well-formed batch, whose parts are in `parts`.
    hostile: Option<WholeBatch>,
    parts: Vec<Sent>,
}

/// Writes batch bodies in one client's style: its line endings and boundary.
struct Writer {
    nl: &'static str,
    boundary: String,
    body: String,
}

impl Writer {
    fn new(rng: &mut StdRng, tag: &str) -> Writer {
        // Half the batches LF-only (google-api-python-client), half CRLF; some boundaries need quoting.
        let nl = if rng.random_bool(0.5) { "\n" } else { "\r\n" };
        let boundary = if rng.random_bool(0.3) {
            format!("==============={tag}==")
        } else {
            format!("soak_{tag}")
        };
        Writer {
            nl,
            boundary,
            body: String::with_capacity(8192),
        }
    }

    fn content_type(&self) -> String {
        if self.boundary.contains('=') {
            format!("multipart/mixed; boundary=\"{}\"", self.boundary)
        } else {
            format!("multipart/mixed; boundary={}", self.boundary)
        }
    }

    /// Appends one part: delimiter, MIME headers, the embedded request as given (its lines joined by `nl`).
    fn part(&mut self, cid: &Cid, request: &str) {
        let nl = self.nl;
        self.body.push_str(&format!(
            "--{}{nl}Content-Type: application/http{nl}",
            self.boundary
        ));
        if let Some(id) = cid.header() {
            self.body.push_str(&format!("Content-ID: {id}{nl}"));
        }
        self.body.push_str(nl);
        self.body.push_str(&request.replace('\n', nl));
        self.body.push_str(nl);
    }

    fn close(&mut self) {
        self.body
            .push_str(&format!("--{}--{}", self.boundary, self.nl));
    }
}

/// Chooses the next batch: mostly well-formed mixes, about one in forty hostile as a whole.
fn plan(rng: &mut StdRng, tag: &str) -> Planned {
    if rng.random_ratio(1, 40) {
        return plan_hostile(rng, tag);
    }
    let mut w = Writer::new(rng, tag);
    // Three batches in four hold only good and hostile parts, which come back fast and keep the load up;
    // the rest also wait on the slow and faulty upstreams, for up to `part_timeout` per round of
    // `concurrency` parts.
    let clean = rng.random_bool(0.75);
    let n = rng.random_range(1..=MAX_PARTS);
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let cid = match rng.random_range(0..10) {
            0 => Cid::None,
            1 => Cid::Bare(format!("Batchelor_{tag}_{i}")),
            _ => Cid::Bracketed(format!("{tag}.{i} + {i}")),
        };
        let roll = rng.random_range(0..100);
        let kind = if roll < 15 {
            Kind::HOSTILE[rng.random_range(0..Kind::HOSTILE.len())]
        } else if clean || roll < 60 {
            Kind::Good
        } else if roll < 80 {
            Kind::Slow
        } else {
            Kind::Faulty(Fault::ALL[rng.random_range(0..Fault::ALL.len())])
        };
        let (sent, request) = part_request(rng, kind, cid, tag, i);
        w.part(&sent.cid, &request);
        parts.push(sent);
    }
    w.close();
    Planned {
        tag: tag.to_owned(),
        content_type: w.content_type(),
        body: Bytes::from(w.body),
        hostile: None,
        parts,
    }
}

/// The embedded request for a part of this kind. Hostile targets all contain `hostile`, so that an upstream
/// can tell if one ever reached it.
fn part_request(rng: &mut StdRng, kind: Kind, cid: Cid, tag: &str, i: usize) -> (Sent, String) {
    let mut sent = Sent {
        kind,
        cid,
        method: "GET",
        path: String::new(),
        body_len: 0,
        slow_for: Duration::ZERO,
    };
    let request = match kind {
        Kind::Good if rng.random_bool(0.2) => {
            let body = format!(
                "{{\"draft\":\"{}\"}}",
                "x".repeat(rng.random_range(0..2000))
            );
            sent.method = "POST";
            sent.path = format!("/good/{tag}/{i}");
            sent.body_len = body.len();
            format!(
                "POST {} HTTP/1.1\nContent-Type: application/json\nContent-Length: {}\n\n{body}",
                sent.path,
                body.len()
            )
        }
        Kind::Good => {
            sent.path = format!("/good/{tag}/{i}");
            // Google documents the version as optional; half the parts leave it out.
            if rng.random_bool(0.5) {
                format!(
                    "GET {}?alt=json HTTP/1.1\nAccept: application/json\n",
                    sent.path
                )
            } else {
                format!("GET {}?alt=json\n", sent.path)
            }
        }
        Kind::Slow => {
            sent.slow_for = Duration::from_millis(rng.random_range(0..=700));
            sent.path = format!("/slow/{}/{tag}/{i}", sent.slow_for.as_millis());
            format!("GET {} HTTP/1.1\n", sent.path)
        }
        Kind::Faulty(fault) => {
            sent.path = format!("/faulty/{}/{tag}/{i}", fault.path_name());
            format!("GET {} HTTP/1.1\n", sent.path)
        }
        Kind::Traversal => format!("GET /good/../../hostile/{tag}/etc/passwd HTTP/1.1\n"),
        Kind::UnknownHost => {
            format!("GET http://unknown.invalid:8080/good/hostile/{tag}/{i} HTTP/1.1\n")
        }
        Kind::Smuggling => format!(
            "POST /good/hostile/{tag}/{i} HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 5\n\n\
0\n\nGET /good/hostile/smuggled HTTP/1.1\n"
        ),
        Kind::BadMethod => format!("GE(T /good/hostile/{tag}/{i} HTTP/1.1\n"),
        Kind::HugeHeader => format!(
            "GET /good/hostile/{tag}/{i} HTTP/1.1\nX-Huge: {}\n",
            "h".repeat(2 * MAX_PART_HEADER_BYTES)
        ),
        Kind::NoRoute => format!("GET /nowhere/hostile/{tag}/{i} HTTP/1.1\n"),
    };
    (sent, request)
}

/// A batch the gateway must refuse whole. Its parts target `/good/refused/`, so that the good upstream can
/// tell them apart: a refused batch's early parts may already have run.
fn plan_hostile(rng: &mut StdRng, tag: &str) -> Planned {
    let which = [
        WholeBatch::BadBoundary,
        WholeBatch::Truncated,
        WholeBatch::TooManyParts,
    ][rng.random_range(0..3)];
    let mut w = Writer::new(rng, tag);
    let n = match which {
        WholeBatch::TooManyParts => MAX_PARTS + 1,
        _ => rng.random_range(1..=10),
    };
    for i in 0..n {
        w.part(
            &Cid::Bracketed(format!("{tag}.{i}")),
            &format!("GET /good/refused/{tag}/{i} HTTP/1.1\n"),
        );
    }
    let content_type = match which {
        WholeBatch::BadBoundary => {
            w.close();
            match rng.random_range(0..3) {
                // The body's delimiters are not the declared boundary's.
                0 => "multipart/mixed; boundary=not_the_one".to_owned(),
                1 => "multipart/mixed".to_owned(),
                _ => "multipart/mixed; boundary=\"unterminated".to_owned(),
            }
        }
        WholeBatch::Truncated => {
            // No close delimiter, and often cut mid-part as well.
            let keep = rng.random_range(w.body.len() / 2..=w.body.len());
            w.body.truncate(keep);
            w.content_type()
        }
        WholeBatch::TooManyParts => {
            w.close();
            w.content_type()
        }
    };
    Planned {
        tag: tag.to_owned(),
        content_type,
        body: Bytes::from(w.body),
        hostile: Some(which),
        parts: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The clients.

/// What one client saw; merged across clients for the report.
#[derive(Debug, Default)]
struct Stats {
    batches_sent: u64,
    batches_answered: u64,
    hostile_batches: u64,
    parts_sent: u64,
    parts_answered: u64,
    parts_lost: u64,
    mismatched: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// Part statuses by part kind.
    by_kind: BTreeMap<Kind, BTreeMap<u16, u64>>,
    /// Outer statuses of batches refused whole, by what was wrong with them.
    by_batch: BTreeMap<WholeBatch, BTreeMap<u16, u64>>,
    /// Batches that got no readable answer, by reason: lost.
    failures: BTreeMap<String, u64>,
    /// Batches refused before anything ran (a 503, or the connection closed before any byte of an answer:
    /// the gateway closes a connection unanswered only before it has read a byte of the request), by reason.
    refused: BTreeMap<String, u64>,
    /// Their tags, to check with the upstreams that none of their parts ran; and their parts.
    refused_tags: Vec<String>,
    parts_refused: u64,
    /// The first few mismatches, to show what went wrong.
    examples: Vec<String>,
    /// Wall time of each well-formed batch, in microseconds.
    latencies: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.batches_sent += other.batches_sent;
        self.batches_answered += other.batches_answered;
        self.hostile_batches += other.hostile_batches;
        self.parts_sent += other.parts_sent;
        self.parts_answered += other.parts_answered;
        self.parts_lost += other.parts_lost;
        self.mismatched += other.mismatched;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        for (kind, counts) in other.by_kind {
            let mine = self.by_kind.entry(kind).or_default();
            for (status, n) in counts {
                *mine.entry(status).or_default() += n;
            }
        }
        for (which, counts) in other.by_batch {
            let mine = self.by_batch.entry(which).or_default();
            for (status, n) in counts {
                *mine.entry(status).or_default() += n;
            }
        }
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
        for (reason, n) in other.refused {
            *self.refused.entry(reason).or_default() += n;
        }
        self.refused_tags.extend(other.refused_tags);
        self.parts_refused += other.parts_refused;
        for example in other.examples {
            if self.examples.len() < 10 {
                self.examples.push(example);
            }
        }
        self.latencies.extend(other.latencies);
    }

    fn mismatch(&mut self, what: String) {
        self.mismatched += 1;
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    fn failure(&mut self, reason: String) {
        *self.failures.entry(reason).or_default() += 1;
    }

    fn refusal(&mut self, planned: &Planned, reason: String) {
        *self.refused.entry(reason).or_default() += 1;
        self.refused_tags.push(planned.tag.clone());
        self.parts_refused += planned.parts.len() as u64;
    }
}

/// One client connection: sends batches back to back until the deadline and checks every reply.
async fn client(id: usize, gateway: SocketAddr, deadline: Instant, mut rng: StdRng) -> Stats {
    let mut stats = Stats::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let planned = plan(&mut rng, &format!("c{id}b{n}"));

        // (Re)connect when the last connection is gone: after a refused batch the gateway may close it.
        let fresh = sender.as_ref().is_none_or(|s| s.is_closed());
        if fresh {
            match connect(gateway).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stats.failure(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let conn = sender.as_mut().expect("connected above");
        stats.batches_sent += 1;
        stats.bytes_sent += planned.body.len() as u64;
        stats.parts_sent += planned.parts.len() as u64;
        let started = Instant::now();
        let reply = tokio::time::timeout(REPLY_TIMEOUT, send(conn, gateway, &planned)).await;
        let elapsed = started.elapsed();
        let on = if fresh {
            "first batch on a new connection"
        } else {
            "batch on a reused connection"
        };
        let (status, content_type, body) = match reply {
            Ok(Ok(reply)) if reply.0 == StatusCode::SERVICE_UNAVAILABLE => {
                stats.refusal(&planned, format!("503 ({on})"));
                sender = None;
                // Retry-After says 1 s; a tenth of it keeps the load up without spinning.
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            Ok(Ok(reply)) => reply,
            Ok(Err(Failed::Unanswered(e))) => {
                stats.refusal(&planned, format!("closed before any answer ({on}): {e}"));
                sender = None;
                continue;
            }
            Ok(Err(Failed::Answering(e))) => {
                stats.failure(format!("transport ({on}): {e}"));
                stats.parts_lost += planned.parts.len() as u64;
                sender = None;
                continue;
            }
            Err(_) => {
                stats.failure(format!("no reply within {REPLY_TIMEOUT:?}"));
                stats.parts_lost += planned.parts.len() as u64;
                sender = None;
                continue;
            }
        };
        stats.batches_answered += 1;
        stats.bytes_received += body.len() as u64;
        match planned.hostile {
            Some(which) => {
                stats.hostile_batches += 1;
                check_refusal(&mut stats, &planned.tag, which, status, &body);
                // The gateway may not have read the rest of a refused body; start clean.
                sender = None;
            }
            None => {
                stats
                    .latencies
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                check_batch(&mut stats, &planned, status, &content_type, &body);
            }
        }
    }
    stats
}

async fn connect(gateway: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(gateway)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Why a batch got no whole reply.
enum Failed {
    /// The connection ended before any byte of an answer: the gateway read nothing of the batch.
    Unanswered(String),
    /// It ended in the middle of the answer.
    Answering(String),
}

/// Sends one batch and reads the whole reply.
async fn send(
    conn: &mut SendRequest<Full<Bytes>>,
    gateway: SocketAddr,
    planned: &Planned,
) -> Result<(StatusCode, String, Bytes), Failed> {
    let request = Request::post("/batch")
        .header(HOST, gateway.to_string())
        .header(CONTENT_TYPE, &planned.content_type)
        .body(Full::new(planned.body.clone()))
        .expect("a valid request");
    conn.ready()
        .await
        .map_err(|e| Failed::Unanswered(error_chain(&e)))?;
    let response = conn
        .send_request(request)
        .await
        .map_err(|e| Failed::Unanswered(error_chain(&e)))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failed::Answering(format!("reading the reply: {}", error_chain(&e))))?
        .to_bytes();
    Ok((status, content_type, body))
}

/// An error and its sources, `outer: inner: ...` (hyper's own messages say little without them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// A batch refused whole: the expected status, and a JSON error whose code is that status.
fn check_refusal(stats: &mut Stats, tag: &str, which: WholeBatch, status: StatusCode, body: &[u8]) {
    *stats
        .by_batch
        .entry(which)
        .or_default()
        .entry(status.as_u16())
        .or_default() += 1;
    if status.as_u16() != which.expected() {
        stats.mismatch(format!(
            "batch {tag} ({}): got {status}, expected {}",
            which.name(),
            which.expected()
        ));
        return;
    }
    match json_error(status, body) {
        Ok(message) => {
            let named = format!("Received: {}, Limit: {MAX_PARTS}", MAX_PARTS + 1);
            if which == WholeBatch::TooManyParts && !message.contains(&named) {
                stats.mismatch(format!(
                    "batch {tag} (too many parts): message {message:?} lacks {named:?}"
                ));
            }
        }
        Err(why) => stats.mismatch(format!("batch {tag} ({}): {why}", which.name())),
    }
}

/// A well-formed batch: 200, one reply part per request part in order, each one right for its kind.
fn check_batch(
    stats: &mut Stats,
    planned: &Planned,
    status: StatusCode,
    content_type: &str,
    body: &[u8],
) {
    let (tag, sent) = (&planned.tag, &planned.parts);
    if status != StatusCode::OK {
        stats.failure(format!("well-formed batch refused with {status}"));
        stats.mismatch(format!(
            "batch {tag}: {status} {}",
            String::from_utf8_lossy(body)
        ));
        stats.parts_lost += sent.len() as u64;
        return;
    }
    // Written strictly: one space, an unquoted boundary, the boundary last.
    if !content_type.starts_with("multipart/mixed; boundary=") || content_type.contains('"') {
        stats.mismatch(format!("batch {tag}: reply Content-Type {content_type:?}"));
    }
    let raw = match split_reply(content_type, body) {
        Ok(raw) => raw,
        Err((raw, why)) => {
            stats.failure(format!("unreadable reply: {why}"));
            raw
        }
    };
    stats.parts_answered += raw.len().min(sent.len()) as u64;
    stats.parts_lost += sent.len().saturating_sub(raw.len()) as u64;
    if raw.len() > sent.len() {
        stats.mismatch(format!(
            "batch {tag}: {} reply parts for {} request parts",
            raw.len(),
            sent.len()
        ));
    }
    for (index, (part, raw)) in sent.iter().zip(&raw).enumerate() {
        if let Err(why) = check_part(stats, part, raw, index) {
            stats.mismatch(format!(
                "batch {tag} part {index} ({}): {why}",
                part.kind.name()
            ));
        }
    }
}

/// Cuts the reply into raw parts; on a framing error, also returns the parts cut before it.
fn split_reply(content_type: &str, body: &[u8]) -> Result<Vec<Bytes>, (Vec<Bytes>, String)> {
    let boundary =
        boundary_from_content_type(content_type).map_err(|e| (Vec::new(), e.to_string()))?;
    let mut splitter = PartSplitter::new(&boundary, u64::MAX);
    splitter.push(body);
    let mut parts = Vec::new();
    loop {
        match splitter.next_part() {
            Ok(Some(part)) => parts.push(part),
            Ok(None) => break,
            Err(e) => return Err((parts, e.to_string())),
        }
    }
    match splitter.finish() {
        Ok(()) => Ok(parts),
        Err(e) => Err((parts, e.to_string())),
    }
}

/// Checks one reply part against the part it answers.
fn check_part(stats: &mut Stats, sent: &Sent, raw: &[u8], index: usize) -> Result<(), String> {
    let reply = ReplyPart::parse(raw, index).map_err(|e| e.to_string())?;
    let status = reply.status.as_u16();
    *stats
        .by_kind
        .entry(sent.kind)
        .or_default()
        .entry(status)
        .or_default() += 1;

    // The Content-ID exactly as written, not as the lenient reader understood it.
    let echoed = reply_content_id(raw);
    if echoed != sent.cid.expected_reply() {
        return Err(format!(
            "Content-ID {echoed:?}, expected {:?}",
            sent.cid.expected_reply()
        ));
    }
    let expected = sent.kind.expected(sent.slow_for);
    if !expected.contains(&status) {
        let body = String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]);
        let waited = match sent.kind {
            Kind::Slow => format!(" (upstream waits {:?})", sent.slow_for),
            _ => String::new(),
        };
        return Err(format!(
            "status {status}, expected one of {expected:?}{waited}: {body}"
        ));
    }
    if status >= 400 {
        json_error(reply.status, &reply.body)?;
        return Ok(());
    }
    // A 200 must be this part's own answer: the upstream echoes what it received.
    let echo: serde_json::Value =
        serde_json::from_slice(&reply.body).map_err(|e| format!("200 body is not JSON: {e}"))?;
    if echo["path"] != sent.path.as_str()
        || echo["method"] != sent.method
        || echo["body_len"] != sent.body_len
    {
        return Err(format!(
            "got the answer to {} {} ({} body bytes), sent {} {} ({})",
            echo["method"], echo["path"], echo["body_len"], sent.method, sent.path, sent.body_len
        ));
    }
    Ok(())
}

/// The value of the part's `Content-ID` header, if it has one.
fn reply_content_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n")
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-id")
                .then(|| value.trim().to_owned())
        })
}

/// An error body must be `{"error":{"code":<status>,"message":...}}`; returns the message.
fn json_error(status: StatusCode, body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{status} body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    if value["error"]["code"] != status.as_u16() {
        return Err(format!("{status} body has the wrong code: {value}"));
    }
    Ok(value["error"]["message"].as_str().unwrap_or("").to_owned())
}

// ---------------------------------------------------------------------------------------------------------
// The hostile clients, on raw sockets.

/// Batches a slow reader pipelines before it stops reading. Together far more than the socket buffers hold:
/// on loopback the gateway's send buffer grows to about 3 MiB even with a tiny receive buffer at the client,
/// and hyper buffers some more.
const SLOW_BATCHES: usize = 6;
/// Parts in each of them, each answered with `BIG_ANSWER` padding bytes: about 1 MiB a batch, within
/// `max_batch_response_bytes`, each answer within `max_response_bytes`.
const SLOW_PARTS: usize = 16;
const BIG_ANSWER: usize = 60 * 1024;
/// How long a slow reader reads nothing: long enough for a stalled write to time out, with room to spare.
const SLOW_HOLD: Duration = Duration::from_millis(2 * WRITE_TIMEOUT.as_millis() as u64 + 1000);
/// Every third round is a control, holding only a quarter of `write_timeout`: its replies should all arrive,
/// which shows that the other rounds are cut by the write deadline and not by something sooner. (The
/// deadline counts from the write's stall, a little before the hold begins; once reading resumes, the
/// gateway's send buffer must drain by half before its write can go on.)
const CONTROL_HOLD: Duration = Duration::from_millis(WRITE_TIMEOUT.as_millis() as u64 / 4);
/// A silent socket closed this soon after connecting was closed on arrival, not as the one idle longest.
const AT_ONCE: Duration = Duration::from_millis(50);
/// A silent socket still open this long after connecting was never closed.
const SILENT_BOUND: Duration = Duration::from_secs(10);
/// A drip upload sends its next piece this often: well within `body_read_timeout`.
const DRIP_EVERY: Duration = Duration::from_millis(200);
/// Parts in a drip upload: at the pace above it would take far longer than `upload_timeout` to send.
const DRIP_PARTS: usize = 12;
/// A drip upload with no answer this long after its head was sent got none.
const DRIP_BOUND: Duration = Duration::from_secs(10);
/// Pause before a hostile client opens its next connection, so that closures do not become a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What the hostile clients saw; merged across clients for the report.
#[derive(Debug, Default)]
struct Hostile {
    slow_rounds: u64,
    /// The reply broke off mid-body: the gateway cut the stalled write.
    slow_cut: u64,
    /// The connection ended between two replies (closed while idle, to make room).
    slow_between: u64,
    /// Every reply arrived whole: the buffers held it all and no write ever stalled.
    slow_whole: u64,
    /// Answered 503 on connecting: every connection was busy.
    slow_refused: u64,
    /// Control rounds (a hold shorter than `write_timeout`): every reply whole, or not.
    slow_control_whole: u64,
    slow_control_cut: u64,
    /// Whole replies read after the hold, all checked, and the bytes read then.
    slow_replies: u64,
    slow_bytes: u64,
    silent_rounds: u64,
    /// Closed once `header_read_timeout` was over.
    silent_timed_out: u64,
    /// Closed sooner, to make room for another connection.
    silent_evicted: u64,
    /// Of those, closed within `AT_ONCE` of connecting.
    silent_at_once: u64,
    /// What the gateway wrote to silent sockets before closing them, by its first line.
    silent_answers: BTreeMap<String, u64>,
    drip_rounds: u64,
    /// Answered 408 with a JSON error naming `upload_timeout`.
    drip_refused: u64,
    /// Answered 503 on connecting: every connection was busy.
    drip_busy: u64,
    /// Closed unanswered before a byte of the body went out: closed to make room before the head was read.
    drip_closed_unread: u64,
    /// From the head sent to the 408, in milliseconds.
    drip_waits: Vec<u32>,
    /// Outcomes that must not happen, by what happened.
    anomalies: BTreeMap<String, u64>,
}

impl Hostile {
    fn merge(&mut self, other: Hostile) {
        self.slow_rounds += other.slow_rounds;
        self.slow_cut += other.slow_cut;
        self.slow_between += other.slow_between;
        self.slow_whole += other.slow_whole;
        self.slow_refused += other.slow_refused;
        self.slow_control_whole += other.slow_control_whole;
        self.slow_control_cut += other.slow_control_cut;
        self.slow_replies += other.slow_replies;
        self.slow_bytes += other.slow_bytes;
        self.silent_rounds += other.silent_rounds;
        self.silent_timed_out += other.silent_timed_out;
        self.silent_evicted += other.silent_evicted;
        self.silent_at_once += other.silent_at_once;
        for (line, n) in other.silent_answers {
            *self.silent_answers.entry(line).or_default() += n;
        }
        self.drip_rounds += other.drip_rounds;
        self.drip_refused += other.drip_refused;
        self.drip_busy += other.drip_busy;
        self.drip_closed_unread += other.drip_closed_unread;
        self.drip_waits.extend(other.drip_waits);
        for (what, n) in other.anomalies {
            *self.anomalies.entry(what).or_default() += n;
        }
    }

    fn anomaly(&mut self, what: String) {
        *self.anomalies.entry(what).or_default() += 1;
    }
}

/// Connects a raw socket, with a small receive buffer if asked (so that less of a reply fits in it).
async fn raw_connect(gateway: SocketAddr, recv_buffer: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(gateway))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads until the peer closes (`Ok`) or resets (`Err`) the connection.
async fn read_until_closed(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        buf.reserve(64 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return Ok(());
        }
    }
}

/// The request head of a batch sent on a raw socket.
fn batch_head(gateway: SocketAddr, content_type: &str, body_len: usize) -> String {
    format!(
        "POST /batch HTTP/1.1\r\nHost: {gateway}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n\r\n"
    )
}

/// Pipelines batches of large answers, stops reading for longer than `write_timeout`, then reads what is
/// there: the gateway must have cut the connection in the middle of a reply. Whole replies are checked.
/// Control rounds stop reading for less than `write_timeout`, and should get every reply.
async fn slow_reader(
    id: usize,
    gateway: SocketAddr,
    deadline: Instant,
    mut rng: StdRng,
) -> Hostile {
    let mut seen = Hostile::default();
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let control = round.is_multiple_of(3);
        if !control {
            seen.slow_rounds += 1;
        }
        let mut requests = Vec::new();
        for b in 0..SLOW_BATCHES {
            let tag = format!("s{id}r{round}b{b}");
            let mut w = Writer::new(&mut rng, &tag);
            for i in 0..SLOW_PARTS {
                w.part(
                    &Cid::Bracketed(format!("{tag}.{i}")),
                    &format!("GET /good/big/{BIG_ANSWER}/{tag}/{i} HTTP/1.1\n"),
                );
            }
            w.close();
            requests
                .extend_from_slice(batch_head(gateway, &w.content_type(), w.body.len()).as_bytes());
            requests.extend_from_slice(w.body.as_bytes());
        }
        let mut stream = match raw_connect(gateway, Some(4096)).await {
            Ok(stream) => stream,
            Err(e) => {
                seen.anomaly(format!("slow reader: connect: {e}"));
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        if let Err(e) = stream.write_all(&requests).await {
            seen.anomaly(format!("slow reader: sending the batches: {e}"));
            continue;
        }
        tokio::time::sleep(if control { CONTROL_HOLD } else { SLOW_HOLD }).await;

        // Read until the connection ends, checking whole replies as they come (and letting them go, so that
        // the soak's own buffers do not blur the gateway's memory use).
        let mut buf = Vec::new();
        let mut whole = 0usize;
        let mut refused = false;
        let read = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                buf.reserve(64 * 1024);
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.slow_bytes += n as u64,
                }
                let (replies, used, _) = parse_responses(&buf);
                for reply in &replies {
                    if whole == 0 && reply.status == 503 {
                        refused = true;
                        continue;
                    }
                    whole += 1;
                    if let Err(why) = check_big_reply(reply) {
                        seen.anomaly(format!("slow reader: a whole reply is wrong: {why}"));
                    }
                }
                buf.drain(..used);
            }
        })
        .await;
        seen.slow_replies += whole as u64;
        if read.is_err() {
            seen.anomaly(format!(
                "slow reader: connection still open {REPLY_TIMEOUT:?} after reading resumed"
            ));
            continue;
        }
        if let Some(status) = parse_responses(&buf).2.filter(|&status| status != 200) {
            seen.anomaly(format!("slow reader: a reply began with status {status}"));
        }
        if refused {
            seen.slow_refused += 1;
            if whole > 0 || !buf.is_empty() {
                seen.anomaly("slow reader: more after a 503".to_owned());
            }
        } else if control {
            if whole == SLOW_BATCHES {
                seen.slow_control_whole += 1;
            } else {
                seen.slow_control_cut += 1;
            }
        } else if whole == SLOW_BATCHES {
            seen.slow_whole += 1;
        } else if !buf.is_empty() {
            seen.slow_cut += 1;
        } else {
            seen.slow_between += 1;
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    seen
}

/// A whole reply to a slow reader's batch: 200, every part 200 with its large answer.
fn check_big_reply(reply: &RawResponse) -> Result<(), String> {
    if reply.status != 200 {
        return Err(format!(
            "status {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
        ));
    }
    let parts = split_reply(&reply.content_type, &reply.body).map_err(|(_, why)| why)?;
    if parts.len() != SLOW_PARTS {
        return Err(format!("{} parts, expected {SLOW_PARTS}", parts.len()));
    }
    for (index, raw) in parts.iter().enumerate() {
        let part = ReplyPart::parse(raw, index).map_err(|e| e.to_string())?;
        if part.status != StatusCode::OK || part.body.len() < BIG_ANSWER {
            return Err(format!(
                "part {index}: status {}, {} body bytes",
                part.status,
                part.body.len()
            ));
        }
    }
    Ok(())
}

/// Connects and sends nothing, or half a request head, then waits for the gateway to close the connection:
/// after `header_read_timeout`, or sooner to make room for another client.
async fn silent_socket(id: usize, gateway: SocketAddr, deadline: Instant) -> Hostile {
    let mut seen = Hostile::default();
    let mut round = 0usize;
    while Instant::now() < deadline {
        round += 1;
        seen.silent_rounds += 1;
        let mut stream = match raw_connect(gateway, None).await {
            Ok(stream) => stream,
            Err(e) => {
                seen.anomaly(format!("silent socket: connect: {e}"));
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let opened = Instant::now();
        if (id + round) % 2 == 1 {
            let half =
                format!("POST /batch HTTP/1.1\r\nHost: {gateway}\r\nContent-Type: multipart/mi");
            if let Err(e) = stream.write_all(half.as_bytes()).await {
                seen.anomaly(format!("silent socket: sending half a head: {e}"));
                continue;
            }
        }
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(SILENT_BOUND, read_until_closed(&mut stream, &mut buf)).await;
        if read.is_err() {
            seen.anomaly(format!("silent socket: still open after {SILENT_BOUND:?}"));
            continue;
        }
        // Measured from the client's side, so never shorter than the gateway's own count.
        let lived = opened.elapsed();
        if lived >= HEADER_READ_TIMEOUT {
            seen.silent_timed_out += 1;
        } else {
            seen.silent_evicted += 1;
            if lived < AT_ONCE {
                seen.silent_at_once += 1;
            }
        }
        if !buf.is_empty() {
            let text = String::from_utf8_lossy(&buf);
            let first = text.lines().next().unwrap_or("").to_owned();
            *seen.silent_answers.entry(first).or_default() += 1;
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    seen
}

/// Sends a batch's head at once and its body a few bytes at a time, each pause short of
/// `body_read_timeout` but the whole far longer than `upload_timeout`: the gateway must answer 408. Half
/// the parts are safe (GET) and may run before the refusal; the other half (POST) must not run at all.
async fn drip_upload(
    id: usize,
    gateway: SocketAddr,
    deadline: Instant,
    mut rng: StdRng,
) -> Hostile {
    let mut seen = Hostile::default();
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        seen.drip_rounds += 1;
        let tag = format!("d{id}r{round}");
        let mut w = Writer::new(&mut rng, &tag);
        for i in 0..DRIP_PARTS {
            let request = if i % 2 == 0 {
                format!("GET /good/drip/get/{tag}/{i} HTTP/1.1\n")
            } else {
                let body = format!("{{\"drip\":{i}}}");
                format!(
                    "POST /good/drip/post/{tag}/{i} HTTP/1.1\nContent-Type: application/json\nContent-Length: {}\n\n{body}",
                    body.len()
                )
            };
            w.part(&Cid::Bracketed(format!("{tag}.{i}")), &request);
        }
        w.close();
        let head = batch_head(gateway, &w.content_type(), w.body.len());
        let body = w.body.into_bytes();
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let n = rng.random_range(16..=48).min(body.len() - at);
            pieces.push(&body[at..at + n]);
            at += n;
        }

        let stream = match raw_connect(gateway, None).await {
            Ok(stream) => stream,
            Err(e) => {
                seen.anomaly(format!("drip upload: connect: {e}"));
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let (mut reader, mut writer) = stream.into_split();
        if let Err(e) = writer.write_all(head.as_bytes()).await {
            seen.anomaly(format!("drip upload: sending the head: {e}"));
            continue;
        }
        let sent = Instant::now();
        let body_sent = std::sync::atomic::AtomicBool::new(false);
        let drip = async {
            for piece in &pieces {
                tokio::time::sleep(DRIP_EVERY).await;
                body_sent.store(true, Ordering::Relaxed);
                if writer.write_all(piece).await.is_err() {
                    break;
                }
            }
            // Everything sent, or the gateway stopped reading: only the answer is left to wait for.
            std::future::pending::<()>().await;
        };
        let answer = async {
            let mut buf = Vec::new();
            loop {
                buf.reserve(4096);
                match reader.read_buf(&mut buf).await {
                    Ok(0) => return Err("closed without an answer".to_owned()),
                    Ok(_) => {
                        if let Some(reply) = parse_responses(&buf).0.into_iter().next() {
                            return Ok(reply);
                        }
                    }
                    Err(e) => return Err(format!("reset without an answer: {e}")),
                }
            }
        };
        let outcome = tokio::time::timeout(DRIP_BOUND, async {
            tokio::select! {
                () = drip => unreachable!("the drip never ends"),
                answer = answer => answer,
            }
        })
        .await;
        let waited = sent.elapsed();
        match outcome {
            Err(_) => seen.anomaly(format!("drip upload: no answer within {DRIP_BOUND:?}")),
            // `DRIP_EVERY` after the head, the gateway has read it: closing now would be closing mid-request.
            Ok(Err(_)) if !body_sent.load(Ordering::Relaxed) => seen.drip_closed_unread += 1,
            Ok(Err(why)) => seen.anomaly(format!(
                "drip upload: {why}, {:.1} s after the head",
                waited.as_secs_f64()
            )),
            Ok(Ok(reply)) => {
                let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::IM_A_TEAPOT);
                match json_error(status, &reply.body) {
                    Ok(message)
                        if status == StatusCode::SERVICE_UNAVAILABLE
                            && message.contains("limits.max_connections") =>
                    {
                        seen.drip_busy += 1;
                    }
                    Ok(message)
                        if status == StatusCode::REQUEST_TIMEOUT
                            && message.contains("upload_timeout") =>
                    {
                        seen.drip_refused += 1;
                        seen.drip_waits
                            .push(u32::try_from(waited.as_millis()).unwrap_or(u32::MAX));
                    }
                    Ok(message) => {
                        seen.anomaly(format!("drip upload: answered {status}: {message}"))
                    }
                    Err(why) => seen.anomaly(format!("drip upload: answered {status}: {why}")),
                }
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    seen
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// The whole responses at the start of `buf`, the bytes they take, and the status of a response begun after
/// them whose head is in.
fn parse_responses(buf: &[u8]) -> (Vec<RawResponse>, usize, Option<u16>) {
    let mut responses = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(head_len)) = response.parse(&buf[at..]) else {
            break;
        };
        let status = response.code.unwrap_or(0);
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let rest = &buf[at + head_len..];
        let body =
            if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
                dechunk(rest)
            } else {
                let len = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (rest.len() >= len).then(|| (rest[..len].to_vec(), len))
            };
        let Some((body, body_len)) = body else {
            return (responses, at, Some(status));
        };
        responses.push(RawResponse {
            status,
            content_type,
            body,
        });
        at += head_len + body_len;
    }
    (responses, at, None)
}

/// A whole chunked body at the start of `buf`, decoded, and the bytes it takes; `None` if it is not all in.
/// Called on every read while a reply comes in, so it copies nothing until the body is whole.
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let line_end = |from: usize| {
        buf[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
    };
    let mut chunks = Vec::new();
    let mut at = 0;
    loop {
        let end = line_end(at)?;
        let size = std::str::from_utf8(&buf[at..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        at = end + 2;
        if size == 0 {
            // Trailers, if any, up to an empty line.
            loop {
                let end = line_end(at)?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    let body = chunks
                        .iter()
                        .flat_map(|&(from, len)| &buf[from..from + len])
                        .copied()
                        .collect();
                    return Some((body, at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        chunks.push((at, size));
        at += size + 2;
    }
}

// ---------------------------------------------------------------------------------------------------------
// The upstreams.

/// Requests the upstreams received, counted by what they were.
#[derive(Debug, Default)]
struct Seen {
    good: AtomicU64,
    /// Parts of batches the gateway refused whole, run before the refusal.
    refused: AtomicU64,
    slow: AtomicU64,
    faulty: AtomicU64,
    /// Requests from hostile parts: there must be none.
    hostile: AtomicU64,
    /// Large answers asked for by the slow readers.
    big: AtomicU64,
    /// Safe (GET) parts of drip uploads, which may run before the body is in and the batch refused.
    drip_safe: AtomicU64,
    /// Unsafe (POST) parts of drip uploads: they wait for the whole body, so there must be none.
    drip_unsafe: AtomicU64,
    /// The batch clients' batches (`c{client}b{n}`) of which some part reached an upstream.
    batches: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Seen {
    fn count(&self, path: &str) {
        let counter = if path.contains("hostile") {
            &self.hostile
        } else if path.starts_with("/good/refused/") {
            &self.refused
        } else if path.starts_with("/good/big/") {
            &self.big
        } else if path.starts_with("/good/drip/get/") {
            &self.drip_safe
        } else if path.starts_with("/good/drip/") {
            &self.drip_unsafe
        } else if path.starts_with("/good/") {
            &self.good
        } else if path.starts_with("/slow/") {
            &self.slow
        } else {
            &self.faulty
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let tag = path.split('/').find(|segment| {
            segment.strip_prefix('c').is_some_and(|rest| {
                rest.split_once('b').is_some_and(|(client, n)| {
                    [client, n]
                        .iter()
                        .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                })
            })
        });
        if let Some(tag) = tag {
            let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
            batches.insert(tag.to_owned());
        }
    }
}

/// A well-behaved HTTP/1.1 upstream that echoes method, path and body length as JSON. The slow one first
/// waits for the milliseconds named in the path (`/slow/{ms}/...`); `/good/big/{bytes}/...` pads the echo
/// with that many bytes.
async fn start_http_upstream(seen: Arc<Seen>, slow: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let method = request.method().to_string();
                        let path = request.uri().path().to_owned();
                        seen.count(&path);
                        let body_len = match request.into_body().collect().await {
                            Ok(body) => body.to_bytes().len(),
                            Err(_) => usize::MAX,
                        };
                        if slow {
                            let ms = path
                                .split('/')
                                .nth(2)
                                .and_then(|ms| ms.parse().ok())
                                .unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let mut echo = serde_json::json!({
                            "method": method,
                            "path": path,
                            "body_len": body_len,
                        });
                        if let Some(bytes) = path
                            .strip_prefix("/good/big/")
                            .and_then(|rest| rest.split('/').next()?.parse::<usize>().ok())
                        {
                            echo["pad"] = "p".repeat(bytes).into();
                        }
                        let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
                        response.headers_mut().insert(
                            CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream speaking raw TCP so that it can break HTTP. The mode is the path's second segment.
async fn start_faulty_upstream(seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(faulty_connection(stream, seen.clone()));
        }
    });
    addr
}

/// Serves one connection: requests answered 500 keep it open; every other mode ends it.
async fn faulty_connection(mut stream: TcpStream, seen: Arc<Seen>) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let Some(path) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.count(&path);
        match path.split('/').nth(2).unwrap_or("") {
            "500" => {
                let body =
                    r#"{"error":{"code":500,"message":"the faulty upstream failed, as asked"}}"#;
                let head = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
            "reset" => {
                // A head promising 1000 bytes, 10 of them, then RST instead of FIN.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"partial\"")
                    .await;
                let _ = stream.flush().await;
                let _ = stream.set_zero_linger();
                return;
            }
            "garbage" => {
                let garbage: Vec<u8> = {
                    let mut rng = rand::rng();
                    let len = rng.random_range(1..512);
                    // A NUL first, so the bytes can never happen to read as a status line.
                    std::iter::once(0)
                        .chain((1..len).map(|_| rng.random::<u8>()))
                        .collect()
                };
                let _ = stream.write_all(&garbage).await;
                return;
            }
            _ => {
                // Hang: answer nothing, until the gateway gives up and closes (or 30 s, to stay bounded).
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
        }
    }
}

/// Reads one request (head and Content-Length body) from `buf` and the stream; returns its path.
async fn read_request(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<String> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut slots);
        if let httparse::Status::Complete(head_len) = request.parse(buf).ok()? {
            let path = request.path?.to_owned();
            let body_len: usize = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + body_len {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            let _ = buf.split_to(head_len + body_len);
            return Some(path);
        }
        if buf.len() > 64 * 1024 || stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The report.

/// Prints the report; returns whether the run failed.
fn report(stats: &Stats, seen: &Seen, elapsed: Duration, shutdown: Duration) -> bool {
    let secs = elapsed.as_secs_f64();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let good_ok = stats
        .by_kind
        .get(&Kind::Good)
        .and_then(|c| c.get(&200))
        .copied()
        .unwrap_or(0);
    let good_seen = seen.good.load(Ordering::Relaxed);
    let hostile_seen = seen.hostile.load(Ordering::Relaxed);

    println!();
    println!(
        "batches: sent {}, answered {} ({} well-formed, {} hostile as a whole), refused before anything ran {}",
        stats.batches_sent,
        stats.batches_answered,
        stats.batches_answered - stats.hostile_batches,
        stats.hostile_batches,
        stats.refused_tags.len()
    );
    println!(
        "parts:   sent {}, answered {}, refused before anything ran {}, lost {}, mismatched {}",
        stats.parts_sent,
        stats.parts_answered,
        stats.parts_refused,
        stats.parts_lost,
        stats.mismatched
    );
    println!(
        "throughput over {secs:.1}s: {:.0} batches/s, {:.0} parts/s, {:.1} MiB/s sent, {:.1} MiB/s received",
        stats.batches_answered as f64 / secs,
        stats.parts_answered as f64 / secs,
        mib(stats.bytes_sent) / secs,
        mib(stats.bytes_received) / secs
    );
    let mut latencies = stats.latencies.clone();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    println!(
        "batch wall time: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    println!(
        "peak RSS (VmHWM, the whole process: gateway, upstreams, clients): {}",
        peak_rss()
    );
    println!("graceful shutdown took {shutdown:?}");

    println!("\nreply part statuses by part kind:");
    for (kind, counts) in &stats.by_kind {
        println!("  {:<30} {}", kind.name(), counts_line(counts));
    }
    println!("batches refused whole, by what was wrong:");
    for (which, counts) in &stats.by_batch {
        println!("  {:<30} {}", which.name(), counts_line(counts));
    }
    println!(
        "upstreams received: good {good_seen} (good parts answered 200: {good_ok}), slow {}, faulty {}, \
from refused batches {}, hostile {hostile_seen}",
        seen.slow.load(Ordering::Relaxed),
        seen.faulty.load(Ordering::Relaxed),
        seen.refused.load(Ordering::Relaxed),
    );
    if stats.refused.is_empty() {
        println!("batches refused before anything ran: none");
    } else {
        println!("batches refused before anything ran (the client may send them again):");
        for (reason, n) in &stats.refused {
            println!("  {n:>6}  {reason}");
        }
    }
    // A refusal is only one if it is true: no part of a refused batch may have reached an upstream.
    let ran = {
        let batches = seen.batches.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .refused_tags
            .iter()
            .filter(|tag| batches.contains(*tag))
            .cloned()
            .collect::<Vec<_>>()
    };
    if !ran.is_empty() {
        println!(
            "FAIL: {} batches counted as refused had parts that ran: {}",
            ran.len(),
            ran.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if stats.failures.is_empty() {
        println!("batches without a readable answer (lost): none");
    } else {
        println!("batches without a readable answer (lost):");
        for (reason, n) in &stats.failures {
            println!("  {n:>6}  {reason}");
        }
    }
    if !stats.examples.is_empty() {
        println!("first mismatches:");
        for example in &stats.examples {
            println!("  {example}");
        }
    }

    // Each good part must have run exactly once: not dropped, not retried.
    let exactly_once = good_seen == good_ok;
    if !exactly_once {
        println!(
            "FAIL: the good upstream received {good_seen} requests for {good_ok} good parts answered"
        );
    }
    if hostile_seen > 0 {
        println!("FAIL: {hostile_seen} hostile parts reached an upstream");
    }
    stats.parts_lost > 0
        || stats.mismatched > 0
        || !stats.failures.is_empty()
        || !ran.is_empty()
        || hostile_seen > 0
        || !exactly_once
}

fn counts_line(counts: &BTreeMap<u16, u64>) -> String {
    counts
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The process's peak resident set size, from `/proc/self/status`.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown (no /proc/self/status)".to_owned())
}

/// Prints what the hostile clients saw; returns whether the run failed: a kind that never got its expected
/// outcome, any outcome that must not happen, or an unsafe part of a refused upload that ran.
fn report_hostile(h: &Hostile, seen: &Seen) -> bool {
    let mut failed = false;
    println!("\nhostile clients:");
    println!(
        "  slow readers:   {} rounds holding {SLOW_HOLD:?}: cut mid-reply {}, closed between replies {}, \
never stalled {}, answered 503 {}; {} control rounds holding {CONTROL_HOLD:?}: all replies {}, cut {}; {} whole replies \
checked, {:.1} MiB read after the holds",
        h.slow_rounds,
        h.slow_cut,
        h.slow_between,
        h.slow_whole,
        h.slow_refused,
        h.slow_control_whole + h.slow_control_cut,
        h.slow_control_whole,
        h.slow_control_cut,
        h.slow_replies,
        h.slow_bytes as f64 / (1024.0 * 1024.0)
    );
    let answers = if h.silent_answers.is_empty() {
        "nothing".to_owned()
    } else {
        h.silent_answers
            .iter()
            .map(|(line, n)| format!("{line:?} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  silent sockets: {} rounds; closed {} ({} after header_read_timeout, {} sooner to make room, {} of \
them within {AT_ONCE:?} of connecting); the gateway wrote them {answers}",
        h.silent_rounds,
        h.silent_timed_out + h.silent_evicted,
        h.silent_timed_out,
        h.silent_evicted,
        h.silent_at_once
    );
    let (fastest, slowest) = (
        h.drip_waits.iter().min().copied().unwrap_or(0),
        h.drip_waits.iter().max().copied().unwrap_or(0),
    );
    println!(
        "  drip uploads:   {} rounds; refused with 408 (upload_timeout) {}, {fastest}..{slowest} ms after the head; \
answered 503 on connecting {}, closed unanswered before the body began {}",
        h.drip_rounds, h.drip_refused, h.drip_busy, h.drip_closed_unread
    );
    let drip_unsafe = seen.drip_unsafe.load(Ordering::Relaxed);
    println!(
        "  upstreams received: large answers {}, safe parts of drip uploads {} (run before the 408), \
unsafe parts of drip uploads {drip_unsafe}",
        seen.big.load(Ordering::Relaxed),
        seen.drip_safe.load(Ordering::Relaxed),
    );
    if !h.anomalies.is_empty() {
        println!("  outcomes that must not happen:");
        for (what, n) in &h.anomalies {
            println!("    {n:>6}  {what}");
        }
        failed = true;
    }
    for (kind, rounds, hits) in [
        ("slow reader was cut", h.slow_rounds, h.slow_cut),
        (
            "silent socket was closed",
            h.silent_rounds,
            h.silent_timed_out + h.silent_evicted,
        ),
        (
            "drip upload was refused with 408",
            h.drip_rounds,
            h.drip_refused,
        ),
    ] {
        if rounds > 0 && hits == 0 {
            println!("FAIL: no {kind}");
            failed = true;
        }
    }
    if drip_unsafe > 0 {
        println!("FAIL: {drip_unsafe} unsafe parts of refused drip uploads reached the upstream");
        failed = true;
    }
    failed
}

/// Samples the process's resident set (`VmRSS`) on a thread of its own.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, u64)>>,
}

impl RssSampler {
    fn start(every: Duration) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = proc_status_kib("VmRSS:") {
                        samples.push((started.elapsed(), kib));
                    }
                    std::thread::sleep(every);
                }
                samples
            })
        };
        RssSampler { stop, thread }
    }

    /// Stops sampling; returns the samples, in KiB by time since the start.
    fn stop(self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

/// A `/proc/self/status` field given in kB.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Prints the resident set over the run, first 5 s against last 5 s. Informational: it does not fail the run.
fn report_memory(samples: &[(Duration, u64)]) -> bool {
    let Some(&(end, _)) = samples.last() else {
        println!("\nresident set: unknown (no /proc/self/status)");
        return false;
    };
    let window = Duration::from_secs(5);
    let max_in = |keep: &dyn Fn(Duration) -> bool| {
        samples
            .iter()
            .filter(|(at, _)| keep(*at))
            .map(|&(_, kib)| kib)
            .max()
            .unwrap_or(0)
    };
    let series = (0..=end.as_secs() / 5)
        .map(|i| {
            let from = window * i as u32;
            format!(
                "{:.1}",
                max_in(&|at| at >= from && at < from + window) as f64 / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let first = max_in(&|at| at <= window);
    let last = max_in(&|at| at + window >= end);
    let peak = max_in(&|_| true);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\nresident set (VmRSS every 500 ms, {} samples over {:.1}s): first 5 s max {:.1} MiB, last 5 s max \
{:.1} MiB ({:+.1}%), peak {:.1} MiB",
        samples.len(),
        end.as_secs_f64(),
        mib(first),
        mib(last),
        (last as f64 / first.max(1) as f64 - 1.0) * 100.0,
        mib(peak)
    );
    println!("  max by 5 s window, MiB: {series}");
    false
}

/// The gateway's gauges once every client had stopped.
#[derive(Debug)]
struct Settled {
    sub_requests: usize,
    batches: usize,
    /// How long they took to get there (or the wait, if they never did).
    after: Duration,
    /// How much longer than the batch clients the hostile clients ran, finishing their last round.
    hostile_tail: Duration,
}

/// Prints the gauges after the run; returns whether the run failed (either is not back to 0).
fn report_settled(s: &Settled) -> bool {
    println!(
        "in flight after every client stopped (the hostile ones {:.1}s after the batch clients): \
sub-requests {}, batches {}, {:.0} ms after the last client",
        s.hostile_tail.as_secs_f64(),
        s.sub_requests,
        s.batches,
        s.after.as_secs_f64() * 1000.0
    );
    let stuck = s.sub_requests != 0 || s.batches != 0;
    if stuck {
        println!(
            "FAIL: the gauges did not return to 0 within {SETTLE_TIMEOUT:?} after the clients stopped"
        );
    }
    stuck
}
