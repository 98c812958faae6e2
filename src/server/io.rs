//! Connection I/O with a write deadline: a client that stops reading its reply cannot pin a batch's memory
//! and tasks forever. Reads are not timed here (hyper times the request head; the gateway times body reads).
//!
//! It also tells a [`Watch`] when writes block and when they move again (a reply the service is done with may
//! still sit in the connection's write buffer, and the connection is not idle until it is out), and what each
//! read brought: whether a client has begun a request is known here, before any parser has a whole head, and
//! a connection closed to make room must be closed before it reads a byte of one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Told when a connection's writes block (the client is not reading fast enough) and when they move again,
/// and asked before each read.
pub(crate) trait Watch: std::fmt::Debug + Send + Sync {
    fn blocked(&self, blocked: bool);
    /// A read is about to be tried; `false` ends the stream instead (the connection was closed to make room).
    fn before_read(&self) -> bool;
    /// The read was tried: whether it brought bytes, and whether it is pending (nothing there yet).
    fn after_read(&self, bytes: bool, pending: bool);
}

/// Fails a write (or flush) that has made no progress for `timeout`.
#[derive(Debug)]
pub(crate) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write is blocked; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    watch: Option<Arc<dyn Watch>>,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
            watch: None,
        }
    }

    /// Reports to `watch` each time writes block and each time they move again, and asks it before each read.
    pub(crate) fn watched(mut self, watch: Arc<dyn Watch>) -> WriteDeadline<S> {
        self.watch = Some(watch);
        self
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            if self.stalled.take().is_some()
                && let Some(watch) = &self.watch
            {
                watch.blocked(false);
            }
            return polled;
        }
        if self.stalled.is_none()
            && let Some(watch) = &self.watch
        {
            watch.blocked(true);
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client read nothing for {timeout:?} (limits.write_timeout)"),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(watch) = &this.watch else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if !watch.before_read() {
            return Poll::Ready(Ok(()));
        }
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        watch.after_read(buf.filled().len() > filled, polled.is_pending());
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
