//! The client of an address that speaks only HTTP/1.1 (plain http, or TLS that offers only `http/1.1`): a
//! part takes an idle connection of the address (or makes one), writes its request and reads the whole answer
//! on its own task, then puts the connection back. There is no connection task, channel, oneshot or spawned
//! task per request, which is most of what a part cost through hyper-util's client. An address that may speak
//! HTTP/2 keeps hyper's client (`pool.rs`), which multiplexes.
//!
//! What it speaks is RFC 9112 as a client needs it: a request with `Content-Length` (a part's body is whole),
//! answers framed by `Content-Length`, `chunked` (trailers read and dropped) or the connection's end; 1xx
//! answers skipped; no body after `HEAD`, 204 or 304. A connection goes back only when its answer was read to
//! the end, nothing follows it, and neither side said `close`.

use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use batchgate_transport::MaybeTlsStream;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::connect::AddrConnector;
use crate::observe::timeline::{Mark, PartTimeline};
use crate::response::BoxError;
use crate::runtime;

/// The largest answer head, and the most read at a time where the length to come is unknown (chunks, a body
/// to the connection's end).
const READ_BUF: usize = 16 * 1024;

/// What a connection first reads into: most answers to a part fit, head and body, and an idle connection keeps
/// no more than this (a gateway may hold thousands).
const READ_FIRST: usize = 4 * 1024;

/// The most read at a time into one piece of a body of known length: a large body takes few reads and
/// pieces, and never more memory than its length.
const READ_PIECE: usize = 64 * 1024;

/// Body pieces up to this size are copied out of the read buffer, which the connection then keeps for its
/// next answer; larger ones are split off it, without a copy (the buffer is made again).
const COPY_MAX: usize = 4 * 1024;

/// A request body up to this size leaves in the same write as its head.
const WRITE_WITH_HEAD: usize = 16 * 1024;

/// At most this many header fields in an answer's head (hyper's default too).
const MAX_HEADERS: usize = 100;

/// One address's idle connections, and how to make more.
#[derive(Debug)]
pub(crate) struct H1Client {
    connector: AddrConnector,
    /// The `Host` of every request that does not name one itself.
    host: HeaderValue,
    /// Idle connections, a list per worker runtime ([`runtime::worker_index`]): a connection is driven by the
    /// reactor of the worker that made it, so only that worker takes it again (another one would be woken
    /// by it from across threads, and stall while its owner is busy). Each list has its reaper on its worker.
    idle: Box<[Arc<Mutex<Vec<Idle>>>]>,
    /// Per list: with workers, each worker keeps up to this many (`upstream.pool_max_idle_per_host`).
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection, with the buffers it keeps between requests.
#[derive(Debug)]
struct Conn {
    io: MaybeTlsStream,
    read: BytesMut,
    /// A body piece was split off `read` since it was made: its storage is shared, and made again when full
    /// (rather than grown to the size it was first made with, which `BytesMut` would do).
    shared: bool,
    write: Vec<u8>,
}

/// One whole answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<Bytes>,
    pub body_len: u64,
}

/// Why a request got no whole answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    /// No connection could be made (the connector's error: TCP or TLS).
    #[error("{0}")]
    Connect(BoxError),
    /// The connection ended, or failed, before a byte of the answer's head: the request may or may not have
    /// been read.
    #[error("{0}")]
    Closed(String),
    /// The answer's head broke the protocol, or broke off.
    #[error("{0}")]
    Broken(String),
    /// The answer's body broke the framing, or broke off.
    #[error("reading the response body: {0}")]
    Body(String),
    /// The answer's body is over the limit the request was sent with.
    #[error("the answer is over its limit")]
    TooLarge,
}

impl H1Client {
    pub(crate) fn new(
        connector: AddrConnector,
        host: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> H1Client {
        H1Client {
            connector,
            host,
            idle: (0..runtime::worker_indexes())
                .map(|_| Arc::new(Mutex::new(Vec::new())))
                .collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// Sends one request and reads its whole answer, failing with [`H1Error::TooLarge`] as soon as the body is
    /// known to be over `limit` bytes; marks the part's timeline as the request leaves and as its answer's
    /// head comes in.
    pub(crate) async fn send(
        &self,
        method: &Method,
        path: &PathAndQuery,
        headers: &HeaderMap,
        body: &Bytes,
        limit: u64,
        timeline: Option<&PartTimeline>,
    ) -> Result<Answer, H1Error> {
        let mut conn = match self.checkout() {
            Some(conn) => conn,
            None => Conn::new(self.connector.connect().await.map_err(H1Error::Connect)?),
        };
        conn.write_request(method, path, headers, &self.host, body);
        if let Some(t) = timeline {
            t.mark(Mark::Sent);
        }
        let on_head = || {
            if let Some(t) = timeline {
                t.mark(Mark::FirstByte);
            }
        };
        let (answer, reusable) = conn
            .exchange(body, *method == Method::HEAD, limit, on_head)
            .await?;
        if reusable {
            self.checkin(conn);
        }
        Ok(answer)
    }

    /// This thread's idle list. A worker started after the client was made (none is, in the binary) shares
    /// the first list.
    fn idle(&self) -> &Arc<Mutex<Vec<Idle>>> {
        self.idle
            .get(runtime::worker_index())
            .unwrap_or(&self.idle[0])
    }

    /// The most recently used idle connection of this worker that is still open, if any.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = lock(self.idle());
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if since.elapsed() >= self.idle_timeout {
                // The newest is too old: so is every other one.
                idle.clear();
                return None;
            }
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        conn.trim();
        let list = self.idle();
        let mut idle = lock(list);
        if idle.len() >= self.max_idle {
            return;
        }
        if idle.is_empty() && Arc::weak_count(list) == 0 {
            reap(Arc::downgrade(list), self.idle_timeout);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// Closes idle connections once they have been idle for `every`, until the client is gone: one task per
/// address and worker, started with its first idle connection, on that worker.
fn reap(idle: Weak<Mutex<Vec<Idle>>>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(idle) = idle.upgrade() else { return };
            lock(&idle).retain(|i| i.since.elapsed() < every);
        }
    });
}

fn lock(idle: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    fn new(io: MaybeTlsStream) -> Conn {
        Conn {
            io,
            read: BytesMut::new(),
            shared: false,
            write: Vec::new(),
        }
    }

    /// Gives back buffers grown past what most requests need, or shared with an answer's pieces (which would
    /// keep their storage alive), before the connection idles.
    fn trim(&mut self) {
        if self.read.capacity() > READ_FIRST || self.shared {
            self.read = BytesMut::new();
            self.shared = false;
        }
        if self.write.capacity() > READ_FIRST {
            self.write = Vec::new();
        }
    }

    /// Whether the upstream has neither closed the idle connection nor sent anything on it: without a wait,
    /// and without a system call unless the socket became readable.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let ready = match &mut self.io {
            MaybeTlsStream::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) => match tcp.try_read(&mut byte) {
                    Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
                    Ok(_) => return false,
                },
            },
            MaybeTlsStream::Tls(tls) => {
                std::pin::Pin::new(tls.as_mut()).poll_read(&mut cx, &mut ReadBuf::new(&mut byte))
            }
        };
        // Pending: nothing to read. Ready: the end of the stream, a byte that answers nothing, or an error.
        ready.is_pending()
    }

    /// The request into the write buffer (see [`write_head`]).
    fn write_request(
        &mut self,
        method: &Method,
        path: &PathAndQuery,
        headers: &HeaderMap,
        host: &HeaderValue,
        body: &Bytes,
    ) {
        self.write.clear();
        write_head(&mut self.write, method, path, headers, host, body);
    }

    /// Writes the request (the write buffer, and the body if it was too large for it), reads the answer;
    /// returns it and whether the connection may take another request.
    async fn exchange(
        &mut self,
        body: &Bytes,
        head_request: bool,
        limit: u64,
        on_head: impl FnOnce(),
    ) -> Result<(Answer, bool), H1Error> {
        let closed = |e: io::Error| H1Error::Closed(format!("writing the request: {e}"));
        self.io.write_all(&self.write).await.map_err(closed)?;
        if body.len() > WRITE_WITH_HEAD {
            self.io.write_all(body).await.map_err(closed)?;
        }
        let head = loop {
            let head = self.read_head().await?;
            // An interim answer (100 Continue, 103 Early Hints): the final one follows. A switch of
            // protocols is passed on as it is (the rules layer refuses it), and ends the connection's use.
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            break head;
        };
        on_head();
        let Head {
            status,
            headers,
            mut keep_alive,
        } = head;
        keep_alive &= status != StatusCode::SWITCHING_PROTOCOLS;
        let framing = if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyFraming::Length(0)
        } else {
            body_framing(&headers)?
        };
        // Both framings named: the answer is read by its chunks, and the connection is not trusted again (RFC
        // 9112 6.3: it may be an attempt at request smuggling).
        keep_alive &=
            !(headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH));
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
            body_len: 0,
        };
        match framing {
            BodyFraming::Length(length) => {
                if length > limit {
                    return Err(H1Error::TooLarge);
                }
                self.read_length(length, &mut answer).await?;
            }
            BodyFraming::Chunked => self.read_chunked(limit, &mut answer).await?,
            BodyFraming::ToEnd => {
                keep_alive = false;
                self.read_to_end(limit, &mut answer).await?;
            }
        }
        Ok((answer, keep_alive && self.read.is_empty()))
    }

    /// Reads more into the read buffer, making room for `want` bytes if it has none; false at the end of the
    /// stream.
    async fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.read.capacity() == self.read.len() {
            if self.read.is_empty() && self.shared {
                self.read = BytesMut::with_capacity(want);
                self.shared = false;
            } else {
                // Its own storage, taken back from the front where answers were read out of it.
                self.read.reserve(want);
            }
        }
        Ok(self.io.read_buf(&mut self.read).await? > 0)
    }

    /// Reads and parses one answer head, taking it off the read buffer.
    async fn read_head(&mut self) -> Result<Head, H1Error> {
        loop {
            if !self.read.is_empty() {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut fields);
                match response.parse(&self.read) {
                    Ok(httparse::Status::Complete(len)) if len <= READ_BUF => {
                        let head = Head::new(&response, &self.read[..len])?;
                        self.read.advance(len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Complete(_)) => return Err(head_too_large()),
                    Ok(httparse::Status::Partial) if self.read.len() >= READ_BUF => {
                        return Err(head_too_large());
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(H1Error::Broken(format!("an invalid answer head: {e}")));
                    }
                }
            }
            let started = !self.read.is_empty();
            let want = if started { READ_BUF } else { READ_FIRST };
            match self.fill(want).await {
                Ok(true) => {}
                Ok(false) if started => {
                    return Err(H1Error::Broken(
                        "the connection closed in the middle of the answer's head".into(),
                    ));
                }
                Ok(false) => {
                    return Err(H1Error::Closed(
                        "connection closed before message completed".into(),
                    ));
                }
                Err(e) => return Err(H1Error::Broken(format!("reading the answer's head: {e}"))),
            }
        }
    }

    /// Takes `len` bytes off the read buffer as one body piece.
    fn take(&mut self, len: usize, answer: &mut Answer) {
        let piece = if len <= COPY_MAX {
            let piece = Bytes::copy_from_slice(&self.read[..len]);
            self.read.advance(len);
            piece
        } else {
            self.shared = true;
            self.read.split_to(len).freeze()
        };
        answer.body_len += len as u64;
        answer.body.push(piece);
    }

    /// Reads `length` bytes of body (a whole body, or one chunk's data).
    async fn read_length(&mut self, length: u64, answer: &mut Answer) -> Result<(), H1Error> {
        let mut left = length;
        while left > 0 {
            let want = usize::try_from(left).map_or(READ_PIECE, |left| left.min(READ_PIECE));
            if self.read.is_empty() && !self.fill(want).await.map_err(body_error)? {
                return Err(ended_early());
            }
            let len = self
                .read
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            self.take(len, answer);
            left -= len as u64;
        }
        Ok(())
    }

    async fn read_to_end(&mut self, limit: u64, answer: &mut Answer) -> Result<(), H1Error> {
        loop {
            if self.read.is_empty() && !self.fill(READ_BUF).await.map_err(body_error)? {
                return Ok(());
            }
            if answer.body_len + self.read.len() as u64 > limit {
                return Err(H1Error::TooLarge);
            }
            self.take(self.read.len(), answer);
        }
    }

    async fn read_chunked(&mut self, limit: u64, answer: &mut Answer) -> Result<(), H1Error> {
        loop {
            let line = self.read_line().await?;
            let size = chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if answer.body_len.saturating_add(size) > limit {
                return Err(H1Error::TooLarge);
            }
            self.read_length(size, answer).await?;
            if !self.read_line().await?.is_empty() {
                return Err(H1Error::Body("a chunk is longer than its size says".into()));
            }
        }
        // Trailer fields, up to the empty line: read, bounded, and dropped (a part's answer has no trailers).
        let mut trailers = 0usize;
        loop {
            let line = self.read_line().await?;
            if line.is_empty() {
                return Ok(());
            }
            trailers += line.len();
            if trailers > READ_BUF {
                return Err(H1Error::Body(format!(
                    "its trailers are over {} KiB",
                    READ_BUF / 1024
                )));
            }
        }
    }

    /// One CRLF-ended line of the chunked framing, without its end; at most [`READ_BUF`] long.
    async fn read_line(&mut self) -> Result<Bytes, H1Error> {
        loop {
            if let Some(end) = self.read.iter().position(|&b| b == b'\n') {
                let mut line = self.read.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                return Ok(line.freeze());
            }
            if self.read.len() >= READ_BUF {
                return Err(H1Error::Body(format!(
                    "a line of its chunked framing is over {} KiB",
                    READ_BUF / 1024
                )));
            }
            if !self.fill(READ_FIRST).await.map_err(body_error)? {
                return Err(ended_early());
            }
        }
    }
}

/// The request's head, and its body when small: the headers in the map's order, then `Host` unless the map
/// has one, then `Content-Length` unless the body is empty (as hyper writes them). A `Content-Length` or
/// `Transfer-Encoding` in the map is left out: the body is whole.
fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &PathAndQuery,
    headers: &HeaderMap,
    host: &HeaderValue,
    body: &Bytes,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &HeaderName, value: &[u8]| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            field(name, value.as_bytes());
        }
    }
    if !headers.contains_key(HOST) {
        field(&HOST, host.as_bytes());
    }
    if !body.is_empty() {
        field(
            &CONTENT_LENGTH,
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    if body.len() <= WRITE_WITH_HEAD {
        out.extend_from_slice(body);
    }
}

/// What the answer's head says.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    keep_alive: bool,
}

impl Head {
    /// The parsed head; the field values share one copy of the head's bytes.
    fn new(response: &httparse::Response<'_, '_>, raw: &[u8]) -> Result<Head, H1Error> {
        let invalid = |what: String| H1Error::Broken(format!("an invalid answer head: {what}"));
        let status = StatusCode::from_u16(response.code.unwrap_or_default())
            .map_err(|e| invalid(e.to_string()))?;
        let shared = Bytes::copy_from_slice(raw);
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        let mut keep_alive = response.version == Some(1);
        let mut close = false;
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| invalid(format!("the field name {:?}", field.name)))?;
            // The value's place in the head: the parser's slices point into `raw`.
            let start = field.value.as_ptr() as usize - raw.as_ptr() as usize;
            let value = shared.slice(start..start + field.value.len());
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| invalid(format!("the value of {name}")))?;
            if name == http::header::CONNECTION {
                for token in field.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            headers.append(name, value);
        }
        Ok(Head {
            status,
            headers,
            keep_alive: keep_alive && !close,
        })
    }
}

/// How an answer's body is delimited (RFC 9112 6.3).
enum BodyFraming {
    Length(u64),
    Chunked,
    ToEnd,
}

fn body_framing(headers: &HeaderMap) -> Result<BodyFraming, H1Error> {
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::ToEnd
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = std::str::from_utf8(item.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (item, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return Err(H1Error::Broken(
                        "the answer's Content-Length is invalid".into(),
                    ));
                }
            }
        }
    }
    Ok(length.map_or(BodyFraming::ToEnd, BodyFraming::Length))
}

/// A chunk-size line's size (hex digits, then optional extensions, which are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.len() <= 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .ok_or_else(|| H1Error::Body("an invalid chunk size".into()))
}

fn head_too_large() -> H1Error {
    H1Error::Broken(format!("the answer's head is over {} KiB", READ_BUF / 1024))
}

fn body_error(e: io::Error) -> H1Error {
    H1Error::Body(e.to_string())
}

fn ended_early() -> H1Error {
    H1Error::Body("the connection closed before its end".into())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::metrics::Metrics;

    /// A raw upstream on port 0: on each connection it reads a request head (and a `Content-Length` body),
    /// then writes the next scripted answer; an answer may end its connection. Counts its connections.
    async fn scripted(answers: Vec<(&'static str, bool)>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    while read_request(&mut stream).await {
                        let Some((answer, close)) = answers.lock().unwrap().next() else {
                            return;
                        };
                        stream.write_all(answer.as_bytes()).await.unwrap();
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Reads one request; false at the end of the connection.
    async fn read_request(stream: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse().unwrap());
                while buf.len() < end + 4 + length {
                    if stream.read_buf(&mut buf).await.unwrap() == 0 {
                        return false;
                    }
                }
                return true;
            }
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return false;
            }
        }
    }

    fn client(addr: SocketAddr) -> H1Client {
        let connector = AddrConnector {
            addr,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            metrics: Arc::new(Metrics::default()),
        };
        H1Client::new(
            connector,
            HeaderValue::from_static("up"),
            8,
            Duration::from_secs(90),
        )
    }

    async fn get(client: &H1Client, method: Method) -> Result<Answer, H1Error> {
        let path = PathAndQuery::from_static("/m");
        client
            .send(
                &method,
                &path,
                &HeaderMap::new(),
                &Bytes::new(),
                1 << 20,
                None,
            )
            .await
    }

    fn body(answer: &Answer) -> String {
        String::from_utf8(answer.body.concat()).unwrap()
    }

    /// Every framing an answer may have is read whole, on one kept-alive connection: a length, chunks with
    /// an extension and a trailer, interim answers skipped, no body after HEAD or 204 whatever the length says.
    /// A connection whose answer named both a length and chunks, or ran to the connection's end, is not used
    /// again.
    #[tokio::test]
    async fn every_framing_is_read_whole_on_one_connection() {
        let (addr, accepted) = scripted(vec![
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello", false),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
                false,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", false),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\nto the end", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew", false),
        ])
        .await;
        let client = client(addr);
        let a = get(&client, Method::GET).await.unwrap();
        assert_eq!((a.status, body(&a).as_str()), (StatusCode::OK, "hello"));
        let values: Vec<_> = a.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        let a = get(&client, Method::GET).await.unwrap();
        assert_eq!((body(&a).as_str(), a.body_len), ("abc0123456789", 13));
        let a = get(&client, Method::POST).await.unwrap();
        assert_eq!((a.status, body(&a).as_str()), (StatusCode::CREATED, "ok"));
        let a = get(&client, Method::HEAD).await.unwrap();
        assert_eq!((a.status, a.body_len), (StatusCode::OK, 0));
        let a = get(&client, Method::GET).await.unwrap();
        assert_eq!((a.status, a.body_len), (StatusCode::NO_CONTENT, 0));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Both a length and chunks: read by its chunks, and the connection not used again.
        let a = get(&client, Method::GET).await.unwrap();
        assert_eq!(body(&a), "hi");
        let a = get(&client, Method::GET).await.unwrap();
        assert_eq!(body(&a), "to the end");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let a = get(&client, Method::GET).await.unwrap();
        assert_eq!(body(&a), "new");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A large body is read in few pieces of at most 64 KiB, and the connection then idles holding no more
    /// than 4 KiB of buffers, whatever it read or wrote.
    #[tokio::test]
    async fn a_large_answer_leaves_an_idle_connection_small() {
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                "y".repeat(100_000)
            )
            .into_boxed_str(),
        );
        let (addr, _) = scripted(vec![(answer, false)]).await;
        let client = client(addr);
        let body = Bytes::from(vec![b'z'; 50_000]);
        let path = PathAndQuery::from_static("/m");
        let a = client
            .send(&Method::PUT, &path, &HeaderMap::new(), &body, 1 << 20, None)
            .await
            .unwrap();
        assert_eq!(a.body_len, 100_000);
        assert!(a.body.len() <= 4, "{} pieces", a.body.len());
        let idle = lock(client.idle());
        let conn = &idle[0].conn;
        assert!(conn.read.capacity() <= READ_FIRST && conn.write.capacity() <= READ_FIRST);
    }

    /// `Connection: close`, or an HTTP/1.0 answer without keep-alive, ends the connection's use.
    #[tokio::test]
    async fn either_side_saying_close_ends_the_connection() {
        let (addr, accepted) = scripted(vec![
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nc",
                false,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd", false),
        ])
        .await;
        let client = client(addr);
        for (expected, connections) in [("a", 1), ("b", 2), ("c", 3), ("d", 3)] {
            let a = get(&client, Method::GET).await.unwrap();
            assert_eq!(body(&a), expected);
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                connections,
                "after {expected}"
            );
        }
    }

    /// An idle connection the upstream has closed is not taken: the next request, even one that may not
    /// go twice, goes on a new connection.
    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_taken() {
        let (addr, accepted) = scripted(vec![
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
        ])
        .await;
        let client = client(addr);
        assert_eq!(body(&get(&client, Method::GET).await.unwrap()), "a");
        // Wait until the upstream's end of the connection has reached the idle connection.
        let mut idle = lock(client.idle()).pop().unwrap();
        let MaybeTlsStream::Plain(tcp) = &idle.conn.io else {
            unreachable!()
        };
        tcp.readable().await.unwrap();
        idle.since = Instant::now();
        lock(client.idle()).push(idle);
        assert_eq!(body(&get(&client, Method::POST).await.unwrap()), "b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// With worker runtimes, an idle connection is taken again only by the worker that made it: each worker
    /// opens its own, then reuses it, and the other's is never handed to it.
    #[tokio::test]
    async fn an_idle_connection_is_reused_only_by_its_own_worker() {
        let answer = ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
        let (addr, accepted) = scripted(vec![answer; 6]).await;
        let workers = runtime::Workers::start(2).unwrap();
        // Made once the workers exist, as the binary makes its gateway.
        let client = Arc::new(client(addr));
        let on = |worker: usize| {
            let client = client.clone();
            workers.handle(worker).spawn(async move {
                let answer = get(&client, Method::GET).await.unwrap();
                assert_eq!(body(&answer), "ok");
                lock(client.idle()).len()
            })
        };
        for (worker, connections) in [(0, 1), (1, 2), (0, 2), (1, 2), (0, 2), (1, 2)] {
            assert_eq!(on(worker).await.unwrap(), 1, "worker {worker} keeps one");
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                connections,
                "after worker {worker}"
            );
        }
        // This thread is no worker: its list is apart from both.
        assert!(lock(client.idle()).is_empty());
    }

    /// Answers that break the protocol are errors that say so; one over the limit is refused by its length
    /// before its body is read; a connection closed before any answer may have run the request.
    #[tokio::test]
    async fn broken_answers_are_errors_naming_what_broke() {
        let long = format!(
            "HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n",
            "x".repeat(READ_BUF)
        );
        let cases: Vec<(&'static str, &str)> = vec![
            ("HTTP/1.1 2x0 OK\r\n\r\n", "an invalid answer head"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                "Content-Length is invalid",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "an invalid chunk size",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                "closed before its end",
            ),
            (Box::leak(long.into_boxed_str()), "head is over 16 KiB"),
        ];
        for (answer, expected) in cases {
            let (addr, _) = scripted(vec![(answer, true)]).await;
            let error = get(&client(addr), Method::GET).await.unwrap_err();
            assert!(error.to_string().contains(expected), "{answer:?}: {error}");
        }
        let (addr, _) = scripted(vec![(
            "HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
            false,
        )])
        .await;
        let error = get(&client(addr), Method::GET).await.unwrap_err();
        assert!(matches!(error, H1Error::TooLarge), "{error}");
        let (addr, _) = scripted(vec![]).await;
        let error = get(&client(addr), Method::GET).await.unwrap_err();
        assert!(matches!(error, H1Error::Closed(_)), "{error}");
    }

    /// The request as hyper writes it: the part's headers in order, `Host` unless it has one, and a length
    /// only for a body; a `Content-Length` or `Transfer-Encoding` of its own is not passed on.
    #[test]
    fn the_request_head_is_written_as_hyper_writes_it() {
        let mut headers = HeaderMap::new();
        headers.append("x-b", HeaderValue::from_static("1"));
        headers.append("x-b", HeaderValue::from_static("2"));
        headers.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.append(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let head = |headers: &HeaderMap, body: &'static [u8]| {
            let mut write = Vec::new();
            write_head(
                &mut write,
                &Method::PUT,
                &PathAndQuery::from_static("/m?q=1"),
                headers,
                &HeaderValue::from_static("up:8080"),
                &Bytes::from_static(body),
            );
            String::from_utf8(write).unwrap()
        };
        assert_eq!(
            head(&headers, b"abc"),
            "PUT /m?q=1 HTTP/1.1\r\nx-b: 1\r\nx-b: 2\r\nhost: up:8080\r\ncontent-length: 3\r\n\r\nabc"
        );
        headers.insert(HOST, HeaderValue::from_static("own"));
        assert_eq!(
            head(&headers, b""),
            "PUT /m?q=1 HTTP/1.1\r\nx-b: 1\r\nx-b: 2\r\nhost: own\r\n\r\n"
        );
    }
}
