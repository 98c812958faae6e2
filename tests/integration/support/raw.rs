//! Raw HTTP/1.1 over a plain TCP stream: the bytes a test chooses, the response read off the socket.

use std::io::ErrorKind;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{MP, Reply, within};

/// A response read off a raw connection.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub status: StatusCode,
    /// The status line and header lines exactly as sent, blank line included.
    pub head: String,
    pub headers: HeaderMap,
    /// The body without its chunked framing, and gunzipped if it came `Content-Encoding: gzip`.
    pub body: Bytes,
}

impl RawReply {
    /// The same reply as a `Reply`, for `parts()` and `error_message()`.
    pub(crate) fn reply(&self) -> Reply {
        Reply {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

/// Connects to `addr`, sends `bytes` as they are and reads one response. The connection is not half-closed:
/// a client that shuts its side down mid-batch is a client that went away.
pub(crate) async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    within(10, "the response", read_response(&mut stream)).await
}

/// Reads one HTTP/1.1 response: its body framed by Content-Length, chunked, or by the connection closing.
pub(crate) async fn read_response(stream: &mut TcpStream) -> RawReply {
    async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        n
    }
    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = more(stream, &mut buf).await;
        assert!(
            n > 0,
            "closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    assert!(response.parse(&buf[..head_len]).unwrap().is_complete());
    let status = StatusCode::from_u16(response.code.unwrap()).unwrap();
    let mut headers = HeaderMap::new();
    for h in response.headers.iter() {
        headers.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    let head = String::from_utf8(buf[..head_len].to_vec()).unwrap();
    let mut rest = buf.split_off(head_len);
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let length = headers
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let body = if chunked {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(i) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
                    break pos + i;
                }
                assert!(
                    more(stream, &mut rest).await > 0,
                    "closed inside a chunk size line"
                );
            };
            let line = std::str::from_utf8(&rest[pos..line_end]).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            // The data and its CRLF; after the last (empty) chunk, the CRLF that ends the (empty) trailers.
            let end = line_end + 2 + size + 2;
            while rest.len() < end {
                assert!(more(stream, &mut rest).await > 0, "closed inside a chunk");
            }
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            pos = end;
        }
        body
    } else if let Some(n) = length {
        while rest.len() < n {
            assert!(more(stream, &mut rest).await > 0, "closed inside the body");
        }
        rest.truncate(n);
        rest
    } else {
        while more(stream, &mut rest).await > 0 {}
        rest
    };
    let gzipped = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = if gzipped {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .unwrap();
        plain
    } else {
        body
    };
    RawReply {
        status,
        head,
        headers,
        body: Bytes::from(body),
    }
}

/// Opens a connection and sends a whole batch on it; the reply is left for the caller to read (or not).
pub(crate) async fn send_batch(addr: SocketAddr, body: &str) -> TcpStream {
    send_batch_from(TcpSocket::new_v4().unwrap(), addr, body).await
}

/// [`send_batch`] from a socket the test set up (a small receive buffer, say).
pub(crate) async fn send_batch_from(socket: TcpSocket, addr: SocketAddr, body: &str) -> TcpStream {
    let mut client = socket.connect(addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all((head + body).as_bytes()).await.unwrap();
    client
}

/// Reads until the peer closes the connection (EOF or reset); returns what arrived before.
pub(crate) async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return out;
            }
            Err(e) => panic!("reading failed: {e}"),
        }
    }
}
