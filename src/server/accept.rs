//! The accept loop both listeners (the gateway's and the admin one) share: connections accepted until
//! shutdown, a slot each up to the listener's limit, and a bounded number turned away with an answer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A listener being served until its shutdown future resolves.
pub(super) struct Acceptor<S> {
    listener: TcpListener,
    shutdown: Pin<Box<S>>,
    /// One per open connection: `max_connections` of them.
    slots: Arc<Semaphore>,
    /// Connections being turned away because every slot is taken, as many at once as there are slots; past
    /// that they are closed unanswered.
    refusing: Arc<Semaphore>,
    /// Starts its log lines: `""` or `"admin: "`.
    log_prefix: &'static str,
}

impl<S: Future<Output = ()>> Acceptor<S> {
    pub(super) fn new(
        listener: TcpListener,
        shutdown: S,
        max_connections: usize,
        log_prefix: &'static str,
    ) -> Acceptor<S> {
        Acceptor {
            listener,
            shutdown: Box::pin(shutdown),
            slots: Arc::new(Semaphore::new(max_connections)),
            refusing: Arc::new(Semaphore::new(max_connections)),
            log_prefix,
        }
    }

    /// The next connection, or `None` once shutdown has come.
    pub(super) async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => return Some(pair),
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!("{}accept failed: {e}", self.log_prefix);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut self.shutdown => return None,
            }
        }
    }

    /// A free slot for a connection, if there is one.
    pub(super) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The next slot to come free, or `None` once shutdown has come.
    pub(super) async fn slot(&mut self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            slot = self.slots.clone().acquire_owned() => Some(slot.expect("never closed")),
            () = &mut self.shutdown => None,
        }
    }

    /// Leave to turn one connection away with an answer, if not too many are being turned away already.
    pub(super) fn refusal(&self) -> Option<OwnedSemaphorePermit> {
        self.refusing.clone().try_acquire_owned().ok()
    }
}
