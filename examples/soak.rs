//! A bounded load and soak run: thousands of batches, good and hostile, against upstreams that misbehave,
//! with every reply part checked. Not a test: it runs for `--secs`, reports, and exits non-zero if any part
//! was lost or answered wrongly.
//!
//! ```text
//! cargo run --release --example soak                       # 20 s, 16 connections
//! cargo run --release --example soak -- --secs 60 --conns 32 --seed 7
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use batchgate::wire::{PartSplitter, ReplyPart, boundary_from_content_type};
use batchgate::{Config, Gateway, server};
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);

    // 1. Start the three upstreams and the gateway in front of them, all on free loopback ports.
    let seen = Arc::new(Seen::default());
    let good = start_http_upstream(seen.clone(), false).await;
    let slow = start_http_upstream(seen.clone(), true).await;
    let faulty = start_faulty_upstream(seen.clone()).await;
    let config = Config::from_toml(&format!(
        r#"
[limits]
max_parts = {MAX_PARTS}
concurrency = 8
window = 16
max_inflight = 512
max_inflight_per_upstream = 256
max_batches = {max_batches}
part_timeout = "{part_timeout}ms"
batch_timeout = "5s"
max_batch_bytes = "1MiB"
max_part_bytes = "64KiB"
max_part_headers = 32
max_part_header_bytes = {MAX_PART_HEADER_BYTES}
max_response_bytes = "64KiB"
max_batch_response_bytes = "1MiB"
body_read_timeout = "2s"
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
        // Every client connection can have a batch in flight; none may be refused as overload.
        max_batches = args.conns + 8,
        part_timeout = PART_TIMEOUT.as_millis(),
    ))
    .expect("the soak's own config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway_addr = listener.local_addr().expect("bound");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(server::run(
        listener,
        Arc::new(Gateway::new(config).expect("a valid soak config")),
        async move {
            let _ = stopped.await;
        },
    ));
    println!(
        "soak: {}s, {} connections, seed {seed}; gateway http://{gateway_addr}/batch",
        args.secs, args.conns
    );
    println!(
        "limits: max_parts {MAX_PARTS}, concurrency 8, window 16, part_timeout {PART_TIMEOUT:?}, \
batch_timeout 5s, max_part_header_bytes {MAX_PART_HEADER_BYTES}, max_part_bytes 64KiB"
    );

    // 2. Drive batches from every connection until the deadline; each client returns what it saw.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let clients: Vec<_> = (0..args.conns)
        .map(|i| {
            let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            tokio::spawn(client(i, gateway_addr, deadline, rng))
        })
        .collect();
    let mut stats = Stats::default();
    for client in clients {
        stats.merge(client.await.expect("client task"));
    }
    let elapsed = started.elapsed();

    // 3. Stop the gateway gracefully and time it: with every client gone it should not need its grace period.
    let _ = stop.send(());
    let stopping = Instant::now();
    let _ = gateway.await;
    let shutdown = stopping.elapsed();

    // 4. Report and judge.
    let failed = report(&stats, &seen, elapsed, shutdown);
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
    /// Batches that got no readable answer, by reason.
    failures: BTreeMap<String, u64>,
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
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
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
        let (status, content_type, body) = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                stats.failure(format!("transport: {e}"));
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

/// Sends one batch and reads the whole reply.
async fn send(
    conn: &mut SendRequest<Full<Bytes>>,
    gateway: SocketAddr,
    planned: &Planned,
) -> Result<(StatusCode, String, Bytes), String> {
    let request = Request::post("/batch")
        .header(HOST, gateway.to_string())
        .header(CONTENT_TYPE, &planned.content_type)
        .body(Full::new(planned.body.clone()))
        .map_err(|e| e.to_string())?;
    conn.ready().await.map_err(|e| e.to_string())?;
    let response = conn
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| format!("reading the reply: {e}"))?
        .to_bytes();
    Ok((status, content_type, body))
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
}

impl Seen {
    fn count(&self, path: &str) {
        let counter = if path.contains("hostile") {
            &self.hostile
        } else if path.starts_with("/good/refused/") {
            &self.refused
        } else if path.starts_with("/good/") {
            &self.good
        } else if path.starts_with("/slow/") {
            &self.slow
        } else {
            &self.faulty
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A well-behaved HTTP/1.1 upstream that echoes method, path and body length as JSON. The slow one first
/// waits for the milliseconds named in the path (`/slow/{ms}/...`).
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
                        let echo = serde_json::json!({
                            "method": method,
                            "path": path,
                            "body_len": body_len,
                        });
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
        "batches: sent {}, answered {} ({} well-formed, {} hostile as a whole)",
        stats.batches_sent,
        stats.batches_answered,
        stats.batches_answered - stats.hostile_batches,
        stats.hostile_batches
    );
    println!(
        "parts:   sent {}, answered {}, lost {}, mismatched {}",
        stats.parts_sent, stats.parts_answered, stats.parts_lost, stats.mismatched
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
    if stats.failures.is_empty() {
        println!("batches without a readable answer: none");
    } else {
        println!("batches without a readable answer:");
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
