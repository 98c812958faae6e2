//! Which HTTP a plain (cleartext) connection speaks, told from its first bytes, so that an HTTP/1.1 connection
//! is handed to hyper's HTTP/1 server with those bytes and whatever else has arrived in one read.
//!
//! hyper-util's version detection (`auto::Builder` without a fixed version) reads up to the HTTP/2 preface's
//! 24 bytes and gives them back to hyper's first read alone. hyper's HTTP/1 read buffer (8 KiB) then held
//! 24 bytes and wanted 8 KiB free for its next read, so it grew to 16 KiB on every connection, for the
//! connection's life: 8 KiB per client connection for nothing (docs/performance.md, "What holds the memory").
//! Here the first bytes come back together with a read of what follows them, as one read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113, 3.4), which a cleartext HTTP/2 client with prior knowledge sends
/// first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Speaks {
    /// Anything that is not the HTTP/2 preface: HTTP/1 (or garbage, which hyper's HTTP/1 server answers).
    Http1,
    /// The HTTP/2 preface, whole.
    Http2,
}

/// A connection's I/O with its first bytes read and given back, ahead of the rest, to the next read.
#[derive(Debug)]
pub(super) struct Sniffed<I> {
    inner: I,
    first: [u8; H2_PREFACE.len()],
    /// `first[start..end]` is still to be read.
    start: usize,
    end: usize,
    /// The error of the read that followed the first bytes, for the next read: that one returned bytes.
    failed: Option<io::Error>,
}

/// Reads a connection's first bytes until they are the whole HTTP/2 preface, differ from it, or end (as
/// hyper-util's detection does), and says what it speaks.
pub(super) async fn sniff<I: AsyncRead + Unpin>(mut inner: I) -> io::Result<(Speaks, Sniffed<I>)> {
    let mut first = [0u8; H2_PREFACE.len()];
    let mut end = 0;
    let speaks = loop {
        let read = inner.read(&mut first[end..]).await?;
        let was = end;
        end += read;
        if read == 0 || first[was..end] != H2_PREFACE[was..end] {
            break Speaks::Http1;
        }
        if end == H2_PREFACE.len() {
            break Speaks::Http2;
        }
    };
    let sniffed = Sniffed {
        inner,
        first,
        start: 0,
        end,
        failed: None,
    };
    Ok((speaks, sniffed))
}

impl<I: AsyncRead + Unpin> AsyncRead for Sniffed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Err(error));
        }
        if this.start == this.end {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let given = (this.end - this.start).min(buf.remaining());
        buf.put_slice(&this.first[this.start..this.start + given]);
        this.start += given;
        if this.start == this.end && buf.remaining() > 0 {
            // What arrived after the first bytes, in the same read. Nothing yet (pending) is for the next read
            // to wait for, an error for it to return: this one has bytes to return.
            if let Poll::Ready(Err(error)) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                this.failed = Some(error);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Sniffed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads `sniffed` once into a buffer of hyper's first size.
    async fn first_read<I: AsyncRead + Unpin>(sniffed: &mut Sniffed<I>) -> Vec<u8> {
        let mut buf = vec![0u8; 8192];
        let n = sniffed.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn an_http1_request_comes_back_whole_in_the_first_read() {
        let request = b"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(request).await.unwrap();
        let (speaks, mut sniffed) = sniff(server).await.unwrap();
        assert_eq!(speaks, Speaks::Http1);
        assert_eq!(first_read(&mut sniffed).await, request);
        // Later reads and writes are the connection's own.
        client.write_all(b"more").await.unwrap();
        assert_eq!(first_read(&mut sniffed).await, b"more");
        sniffed.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut answer = [0u8; 17];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn the_http2_preface_in_pieces_is_http2_and_is_read_again() {
        let (mut client, server) = tokio::io::duplex(1024);
        let sniffing = tokio::spawn(sniff(server));
        client.write_all(&H2_PREFACE[..7]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(&H2_PREFACE[7..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let (speaks, mut sniffed) = sniffing.await.unwrap().unwrap();
        assert_eq!(speaks, Speaks::Http2);
        let mut read = Vec::new();
        while read.len() < H2_PREFACE.len() + 6 {
            read.extend(first_read(&mut sniffed).await);
        }
        assert_eq!(read, [&H2_PREFACE[..], b"frames"].concat());
    }

    #[tokio::test]
    async fn a_prefix_of_the_preface_then_the_end_is_http1_with_its_bytes() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PRI").await.unwrap();
        client.shutdown().await.unwrap();
        let (speaks, mut sniffed) = sniff(server).await.unwrap();
        assert_eq!(speaks, Speaks::Http1);
        assert_eq!(first_read(&mut sniffed).await, b"PRI");
        assert_eq!(first_read(&mut sniffed).await, b"");
    }
}
