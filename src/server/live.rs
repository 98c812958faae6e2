//! The gateway being served, swappable while the server runs (reload).
//!
//! [`Live`] holds one [`Served`]: a gateway and what the server derives from its config (the CORS rules, the
//! TLS server configuration with the certificate read from disk). Each request reads the current one and
//! keeps it (its `Arc`) until its reply is done; each TLS handshake reads the current certificate. A reload
//! builds a whole new `Served` and swaps it in: new batches and handshakes get it, batches in flight finish
//! on the gateway they started with, and no connection is dropped.
//!
//! A reloaded gateway ([`Gateway::succeeding`]) keeps the previous one's limits: `max_batches`,
//! `max_inflight` and each route's in-flight limit (for a route with the same prefix and upstreams) are the
//! same permits, resized as the new gateway is swapped in, so batches still running on the old config count
//! against the new limits; and the rate limit keeps every client's bucket unless `key` or `ipv6_prefix`
//! changed. A route whose limit switches between fixed and adaptive starts a new one.
//!
//! What is fixed for the life of the listener and cannot change by a reload: `listen`, `limits.max_connections`,
//! `[admin]`'s `listen` and `log_format` (logged as needing a restart, otherwise ignored), and whether `[tls]` is on (a reload that turns it on or
//! off is refused). Other connection limits (timeouts, HTTP/2 settings) apply to connections accepted after
//! the reload.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

use super::cors::Cors;
use crate::config::{Config, ConfigError, LogFormat};
#[cfg(feature = "demo")]
use crate::demo::DemoSite;
use crate::gateway::Gateway;
use crate::jobs::Jobs;

/// A gateway and what the server derives from its config, swapped together.
#[derive(Debug)]
pub struct Served {
    /// The gateway new batches are served by.
    pub gateway: Arc<Gateway>,
    /// `[cors]`, if set.
    pub cors: Option<Cors>,
    /// `[tls]`'s certificate and key, read when this was built.
    pub tls: Option<Arc<ServerConfig>>,
    /// `--demo`'s pages (`/`, `/batchgate.js`), when served; kept across reloads.
    #[cfg(feature = "demo")]
    pub demo_site: Option<Arc<DemoSite>>,
}

impl Served {
    /// Reads `[tls]`'s certificate and key (errors name `tls.cert` or `tls.key`).
    pub fn new(gateway: Arc<Gateway>) -> Result<Served, ConfigError> {
        let tls = gateway
            .config
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let cors = gateway.config.cors.as_ref().map(Cors::new);
        Ok(Served {
            gateway,
            cors,
            tls,
            #[cfg(feature = "demo")]
            demo_site: None,
        })
    }
}

/// Why a reload was refused; the gateway served before stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config cannot be read, is invalid, or cannot be built (certificates); the admin reload says 422.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The reload would turn `[tls]` on or off (the word says which); the admin reload says 409.
    #[error(
        "[tls] cannot be turned {0} by a reload: whether the listener speaks HTTPS is fixed at startup; \
         restart to change it"
    )]
    TlsToggled(&'static str),
    /// The blocking task that builds the new gateway panicked or was cancelled.
    #[error("reload failed: {0}")]
    Task(String),
}

/// What a reload did not apply because it takes a restart, one message each (already logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// A line per changed key that only a restart applies (`listen`, `limits.max_connections`,
    /// `admin.listen`, `log_format`), saying the new value and the one still in use.
    pub needs_restart: Vec<String>,
}

/// The gateway being served, swapped by [`Live::replace`].
#[derive(Debug)]
pub struct Live {
    current: RwLock<Arc<Served>>,
    /// What the listener was started with, fixed until a restart.
    listen: SocketAddr,
    max_connections: usize,
    tls: bool,
    /// `[admin]`'s address, and the log format: the process set them up at startup.
    admin: Option<SocketAddr>,
    log_format: LogFormat,
    /// Served with every gateway (`--demo`).
    #[cfg(feature = "demo")]
    demo_site: Option<Arc<DemoSite>>,
    /// `[jobs]` as the server started it (its store and workers): fixed until a restart.
    jobs: tokio::sync::OnceCell<Option<Arc<Jobs>>>,
}

impl Live {
    /// Serves `gateway`, reading `[tls]`'s certificate and key now.
    pub fn new(gateway: Arc<Gateway>) -> Result<Arc<Live>, ConfigError> {
        Ok(Arc::new(Live::serving(Served::new(gateway)?)))
    }

    /// Serves `gateway`, and `demo_site`'s pages (`batchgate --demo`) with it and every gateway that
    /// replaces it.
    #[cfg(feature = "demo")]
    pub fn with_demo_site(
        gateway: Arc<Gateway>,
        demo_site: Option<Arc<DemoSite>>,
    ) -> Result<Arc<Live>, ConfigError> {
        let mut served = Served::new(gateway)?;
        served.demo_site = demo_site.clone();
        Ok(Arc::new(Live {
            demo_site,
            ..Live::serving(served)
        }))
    }

    fn serving(served: Served) -> Live {
        let config = &served.gateway.config;
        Live {
            listen: config.listen,
            max_connections: config.limits.max_connections,
            tls: config.tls.is_some(),
            admin: config.admin.as_ref().map(|a| a.listen),
            log_format: config.log_format,
            #[cfg(feature = "demo")]
            demo_site: None,
            jobs: tokio::sync::OnceCell::new(),
            current: RwLock::new(Arc::new(served)),
        }
    }

    /// What a new request or connection is served with now.
    pub fn current(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The gateway new batches are served by now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current().gateway.clone()
    }

    /// Opens `[jobs]`'s store (creating or migrating its tables) and starts this instance's workers, once;
    /// nothing without `[jobs]`. [`serve`](super::serve) calls it; a program calls it before, to fail at
    /// startup on a store it cannot open.
    pub async fn start_jobs(self: &Arc<Self>) -> Result<(), String> {
        self.jobs
            .get_or_try_init(|| async {
                let Some(config) = self.gateway().config.jobs.clone() else {
                    return Ok(None);
                };
                Jobs::start(&config, self).await.map(Some)
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The jobs, once started with `[jobs]`.
    pub(crate) fn jobs(&self) -> Option<&Arc<Jobs>> {
        self.jobs.get().and_then(Option::as_ref)
    }

    /// Moves the job store's clock forward by `by`: retention and leases as if that time had passed. For
    /// tests, which must not wait for them.
    #[doc(hidden)]
    pub fn advance_job_clock(&self, by: std::time::Duration) {
        if let Some(jobs) = self.jobs() {
            jobs.store.clock.advance(by);
        }
    }

    /// Whether the listener speaks HTTPS (fixed at startup).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Serves new batches and connections with `gateway` from now on, reading `[tls]`'s certificate and key
    /// again. Refused (the current gateway stays) when `[tls]` is turned on or off, or the certificate or key
    /// cannot be used. A changed `listen`, `limits.max_connections`, `admin.listen` or `log_format` is logged as
    /// needing a restart and otherwise ignored.
    pub fn replace(&self, gateway: impl Into<Arc<Gateway>>) -> Result<Replaced, ReloadError> {
        let gateway = gateway.into();
        let config = &gateway.config;
        match (self.tls, config.tls.is_some()) {
            (false, true) => return Err(ReloadError::TlsToggled("on")),
            (true, false) => return Err(ReloadError::TlsToggled("off")),
            _ => {}
        }
        let mut replaced = Replaced::default();
        if config.listen != self.listen {
            replaced.needs_restart.push(format!(
                "listen changed to {} (still listening on {}): needs a restart",
                config.listen, self.listen
            ));
        }
        if config.limits.max_connections != self.max_connections {
            replaced.needs_restart.push(format!(
                "limits.max_connections changed to {} (still {}): needs a restart",
                config.limits.max_connections, self.max_connections
            ));
        }
        let admin = config.admin.as_ref().map(|a| a.listen);
        if admin != self.admin {
            let show = |a: Option<SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
            replaced.needs_restart.push(format!(
                "admin.listen changed to {} (still {}): needs a restart",
                show(admin),
                show(self.admin)
            ));
        }
        if config.log_format != self.log_format {
            let show = |f: LogFormat| match f {
                LogFormat::Pretty => "pretty",
                LogFormat::Json => "json",
            };
            replaced.needs_restart.push(format!(
                "log_format changed to {} (still {}): needs a restart",
                show(config.log_format),
                show(self.log_format)
            ));
        }
        // `[jobs]` as started (once `start_jobs` has run): its store and workers stay until a restart.
        if let Some(started) = self.jobs.get()
            && format!("{:?}", config.jobs) != format!("{:?}", started.as_ref().map(|j| &j.config))
        {
            replaced.needs_restart.push(
                "[jobs] changed (still as at startup): its store and workers need a restart"
                    .to_owned(),
            );
        }
        let served = Served::new(gateway)?;
        #[cfg(feature = "demo")]
        let served = Served {
            demo_site: self.demo_site.clone(),
            ..served
        };
        let served = Arc::new(served);
        for note in &replaced.needs_restart {
            tracing::warn!("reload: {note}");
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Under the lock: of two reloads at once, the limits are those of the one served.
        served.gateway.take_over_limits();
        if let Some(jobs) = self.jobs() {
            jobs.resize_share(served.gateway.config.limits.max_inflight);
        }
        *current = served;
        Ok(replaced)
    }

    /// Reloads from the config file at `path`: reads and validates it, lets `adjust` apply what the command
    /// line overrides (then validates again), builds the new gateway and swaps it in. All of it on a blocking
    /// thread: building may resolve upstream names and reads certificate files.
    pub async fn reload_file(
        self: &Arc<Self>,
        path: &Path,
        adjust: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Result<Replaced, ReloadError> {
        let live = self.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut config = Config::from_file(&path)?;
            adjust(&mut config);
            config.validate()?;
            // The new gateway goes on counting into the old one's metrics and observations.
            let gateway = Gateway::succeeding(config, &live.gateway())?;
            live.replace(gateway)
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))?
    }
}
