//! A runtime per core: the binary serves client connections on `N` single-threaded tokio runtimes, one per
//! thread, as nginx runs a worker process per core. A connection is served from accept to close on one
//! worker, and so are the upstream connections its parts make: nothing a request does wakes another thread,
//! where a work-stealing runtime's threads park in `epoll_wait`, wake each other and run a task woken by I/O
//! on one thread on the other (docs/performance.md, "A runtime per core").
//!
//! What stays where:
//! - The accept loop, signals, the admin listener, reloads, health checks, jobs and the span exporter run on
//!   the runtime that calls [`serve_on`](crate::server::serve_on) (the binary's control thread); their
//!   upstream connections are that thread's (index 0).
//! - Each worker runs its client connections, their batches (schedulers included) and the idle upstream
//!   connections of its own index, with their reaper tasks (`stack::h1`).
//! - Process-wide state stays shared and counted once: `max_connections`, `max_batches`, route limits, rate
//!   limits, the connection registry, metrics, the cache. hyper-util's client (addresses that may speak
//!   HTTP/2) keeps one pool: its connection tasks run on the worker that made them.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Worker indexes handed out so far: 0 is every thread that is not a worker, each worker started takes the
/// next, unique in the process (a test may start several sets of workers).
static INDEXES: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's worker index, or 0.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker index of the thread this runs on: 1 and up on a worker, 0 elsewhere (the control thread,
/// tests).
pub(crate) fn worker_index() -> usize {
    INDEX.with(Cell::get)
}

/// How many worker indexes there are so far (workers started in this process, plus one): what a list per
/// worker is sized by when it is made.
pub(crate) fn worker_indexes() -> usize {
    INDEXES.load(Ordering::Relaxed)
}

/// The worker runtimes; dropping it stops them (their tasks are cancelled) and joins their threads.
#[derive(Debug)]
pub struct Workers {
    workers: Box<[Worker]>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Client connections it serves now: the accept loop hands the next one to the worker with fewest.
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one), each a current-thread runtime on a thread of its own named
    /// `batchgate-worker-N`.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = count.max(1);
        let first = INDEXES.fetch_add(count, Ordering::Relaxed);
        let mut workers = Vec::with_capacity(count);
        for index in first..first + count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("batchgate-worker-{}", index - first))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers {
            workers: workers.into_boxed_slice(),
        })
    }

    /// Serves `stream` with `serve` on the worker with the fewest connections. The socket leaves this
    /// runtime's reactor and joins the worker's, so all its I/O wakes that worker alone.
    pub(crate) fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .expect("at least one worker");
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("cannot hand a connection to a worker: {e}");
                return;
            }
        };
        let open = Open::new(&worker.open);
        worker.handle.spawn(async move {
            let _open = open;
            // Made here, on the worker: the socket registers with the reactor of the runtime it is made on.
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!("cannot register a connection with its worker: {e}"),
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers[..] {
            drop(worker.stop.take());
        }
        for worker in &mut self.workers[..] {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// One connection counted on its worker until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Open {
        open.fetch_add(1, Ordering::Relaxed);
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
impl Workers {
    /// Worker `index`'s runtime, for a test to run something on it.
    pub(crate) fn handle(&self, index: usize) -> &Handle {
        &self.workers[index].handle
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Each connection goes to the worker serving the fewest, and is served there (the thread's index is its
    /// worker's, not the accept loop's 0); a connection that ends frees its place.
    #[tokio::test]
    async fn connections_go_to_the_worker_with_fewest_and_stay_there() {
        let workers = Workers::start(2).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, mut indexes) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let served = served.clone();
            workers.spawn(stream, move |mut stream| async move {
                served.send(worker_index()).unwrap();
                // Served until the client closes.
                let _ = stream.read(&mut [0u8; 1]).await;
            });
            // Counted as soon as it is handed over.
            assert_eq!(
                workers
                    .workers
                    .iter()
                    .map(|w| w.open.load(Ordering::Relaxed))
                    .sum::<usize>(),
                clients.len()
            );
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(indexes.recv().await.unwrap());
        }
        seen.sort_unstable();
        let first = seen[0];
        assert!(first > 0, "served off the workers: {seen:?}");
        assert_eq!(seen, [first, first, first + 1, first + 1]);
        // The first connection (on the first worker) ends: the next one goes there.
        drop(clients.remove(0));
        while workers.workers[0].open.load(Ordering::Relaxed) != 1 {
            tokio::task::yield_now().await;
        }
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        workers.spawn(stream, move |_| async move {
            served.send(worker_index()).unwrap()
        });
        assert_eq!(indexes.recv().await.unwrap(), first);
    }
}
