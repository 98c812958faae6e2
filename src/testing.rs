//! A testing kit for projects that test against batchgate: the example mail upstream and a gateway routed to
//! it (or to any URL), each started in-process on `127.0.0.1:0` in one line, each stopped when dropped.
//!
//! Built with the `testing` cargo feature:
//! `batchgate = { version = "0.1", features = ["testing"] }` under `[dev-dependencies]`.
//!
//! ```
//! use batchgate::testing::{MailUpstream, TestGateway};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mail = MailUpstream::start().await;
//! let gateway = TestGateway::builder().route("/mail/", mail.url()).start().await;
//! // POST batches to `gateway.batch_url()`: parts for /mail/... reach the mail upstream.
//! assert_eq!(gateway.batch_url(), format!("{}/batch", gateway.url()));
//! # }
//! ```
//!
//! Both run on the tokio runtime of the test that starts them (any flavour), so they need no process, no
//! config file and no free port chosen in advance. The binary offers the same to tests in other languages:
//! `batchgate --route PREFIX=URL --listen 127.0.0.1:0 --print-address` and `batchgate demo-upstream`.

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, RouteConfig};
use crate::demo::{self, DemoOptions};
use crate::gateway::Gateway;
use crate::server::{self, Live};

/// The example mail service ([`crate::demo`]) on a free loopback port: `GET /mail/v1/messages/unread`
/// (`{"ids":["1",...]}`, `?max=N`), `GET /mail/v1/messages/{id}`, `POST /mail/v1/messages` (201).
///
/// Dropping it stops accepting connections; connections already open end when their client closes them (a
/// gateway's pool closes its own when the gateway is dropped).
#[derive(Debug)]
pub struct MailUpstream {
    addr: SocketAddr,
    url: String,
    instance: Arc<demo::Instance>,
    task: JoinHandle<()>,
}

impl MailUpstream {
    /// Starts the mail service, answering at once.
    ///
    /// # Panics
    /// Outside a tokio runtime, or when no loopback port can be bound.
    pub async fn start() -> MailUpstream {
        MailUpstream::start_with(DemoOptions::default()).await
    }

    /// Starts the mail service as `options` say (a latency per request, a name on every answer, CORS).
    ///
    /// # Panics
    /// As [`MailUpstream::start`], and when `options` holds a name or origin that is not a header value.
    pub async fn start_with(options: DemoOptions) -> MailUpstream {
        let (listener, addr) = bind_loopback("MailUpstream").await;
        let instance = demo::Instance::new(options);
        MailUpstream {
            addr,
            url: format!("http://{addr}"),
            task: tokio::spawn(demo::serve_instance(listener, instance.clone())),
            instance,
        }
    }

    /// Requests that reached it so far: what a cache or de-duplication in front of it saved shows here.
    pub fn requests(&self) -> u64 {
        self.instance.served()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`: what a route's upstream is set to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops accepting connections and waits until the listener is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for MailUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A batchgate gateway served in-process on a free loopback port.
///
/// Dropping it starts a graceful shutdown: no new connections, batches in flight finish (for up to
/// `limits.shutdown_grace`), then its task ends. [`TestGateway::stop`] does the same and waits for it.
#[derive(Debug)]
pub struct TestGateway {
    addr: SocketAddr,
    url: String,
    batch_path: String,
    /// Dropped to shut the server down.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestGateway {
    /// A gateway on the default config (no routes) unless the builder is given a config or routes.
    pub fn builder() -> TestGatewayBuilder {
        TestGatewayBuilder::default()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `http://127.0.0.1:PORT` (`https://` with `[tls]` in the config). `/healthz`, `/readyz`
    /// and `/metrics` are under it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where batches go: [`TestGateway::url`] plus the config's `batch_path` (`/batch` by default).
    pub fn batch_url(&self) -> String {
        format!("{}{}", self.url, self.batch_path)
    }

    /// Shuts the gateway down gracefully and waits until it has finished: the listener is closed and batches
    /// in flight have their replies (or `limits.shutdown_grace` has passed).
    pub async fn stop(self) {
        let TestGateway { stop, task, .. } = self;
        drop(stop);
        task.await.expect("the gateway's server task panicked");
    }
}

/// Sets up a [`TestGateway`]: a config (TOML, as in `config.toml`) and routes on top of it.
#[derive(Debug, Default)]
pub struct TestGatewayBuilder {
    toml: Option<String>,
    routes: Vec<RouteConfig>,
}

impl TestGatewayBuilder {
    /// The config to start from, as TOML; its `listen` and `[admin]` are ignored (the gateway binds a free
    /// loopback port; no admin listener runs). Without it: the defaults.
    pub fn config_toml(mut self, toml: impl Into<String>) -> TestGatewayBuilder {
        self.toml = Some(toml.into());
        self
    }

    /// Sends paths under `prefix` (`"/mail/"`) to `upstream` (`"http://127.0.0.1:9001"`, any URL a route's
    /// `upstream` takes), replacing a route of the config with the same prefix.
    pub fn route(
        mut self,
        prefix: impl Into<String>,
        upstream: impl Into<String>,
    ) -> TestGatewayBuilder {
        self.routes.push(RouteConfig::to(prefix, upstream));
        self
    }

    /// Starts the gateway on the runtime of the caller.
    ///
    /// # Panics
    /// Outside a tokio runtime, when no loopback port can be bound, and when the config or a route is
    /// invalid (the message names the key at fault) or `[tls]`'s files cannot be used.
    pub async fn start(self) -> TestGateway {
        let mut config = match &self.toml {
            Some(toml) => {
                Config::from_toml(toml).unwrap_or_else(|e| panic!("TestGateway: config_toml: {e}"))
            }
            None => Config::default(),
        };
        for route in self.routes {
            config.put_route(route);
        }
        config
            .validate()
            .unwrap_or_else(|e| panic!("TestGateway: {e}"));
        let batch_path = config.batch_path.clone();
        let gateway = Gateway::new(config).unwrap_or_else(|e| panic!("TestGateway: {e}"));
        let live = Live::new(Arc::new(gateway)).unwrap_or_else(|e| panic!("TestGateway: {e}"));
        let scheme = if live.is_tls() { "https" } else { "http" };
        let (listener, addr) = bind_loopback("TestGateway").await;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, live, async move {
            // Sent or dropped: either way, shut down.
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            url: format!("{scheme}://{addr}"),
            batch_path,
            stop,
            task,
        }
    }
}

/// A listener on a free port of 127.0.0.1 and its address; `who` names the caller in a panic.
async fn bind_loopback(who: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{who}: cannot listen on 127.0.0.1:0: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    (listener, addr)
}
