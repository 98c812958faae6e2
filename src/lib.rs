//! batchgate: an HTTP batch gateway. Clients send one `POST /batch` whose `multipart/mixed` body holds many
//! embedded HTTP requests; the gateway runs them against upstream services over pooled keep-alive
//! connections and streams back one embedded response per part, in request order.
//!
//! # Layout
//! The data path, in the order a batch takes it:
//! - [`server`]: connections (limits, idle and silent clients, the write deadline), the endpoints, graceful
//!   shutdown.
//! - [`batch`]: one batch in four stages, a module each: `admit` → `read` → `run` (the scheduler) →
//!   `respond`.
//! - [`codec`]: the batch format behind one seam (reading parts, rendering reply parts); [`wire`] is the
//!   multipart format itself, pure and without I/O.
//! - [`route`]: which route a part goes to, after normalising its target.
//! - [`stack`]: the per-route tower `Service` stack a part goes through upstream (rate limit, header policy,
//!   rewrite, timeout, retries, in-flight limits fixed or adaptive, response rules, balancing and passive
//!   health, the pools per upstream address).
//!
//! Around it: [`gateway`] (the shared state), [`headers`] (hop-by-hop, inheritance, forwarding headers),
//! [`compress`] (reply compression), [`response`] (the gateway's own responses), [`error`] (batch-level and
//! part-level errors), [`metrics`] (`/metrics`), [`observe`] (per-route windows, bottlenecks, tuning history,
//! batch timelines, trace context: `/admin/stats`), [`tls`] and [`transport`] (certificates, TCP/TLS
//! connections), [`config`], [`client`] (for client authors) and [`demo`] (the example mail service and its
//! inbox page). With the `otel` feature, `otel` exports spans over OTLP. With the `testing` feature,
//! `testing` starts the mail service and a gateway in-process for another crate's tests.
//!
//! # Features
//! - `server` (default): the gateway, its configuration, compression, metrics and the demo service.
//! - `client` (default): [`client`], the Rust batch client and micro-batcher. On its own
//!   (`default-features = false, features = ["client"]`) it builds none of the server's dependencies.
//! - `otel`: OTLP/gRPC span export (`[tracing] otlp_endpoint`).
//! - `testing`: `testing::{MailUpstream, TestGateway}`, for crates that test against batchgate.
//!
//! [`wire`] is always there.

#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod batch;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod codec;
#[cfg(feature = "server")]
pub mod compress;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod demo;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod gateway;
#[cfg(feature = "server")]
pub mod headers;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod observe;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "server")]
pub mod response;
#[cfg(feature = "server")]
pub mod route;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod stack;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(any(feature = "client", feature = "server"))]
pub mod transport;
pub mod wire;

/// The checks behind the fuzz targets that reach past the public surface (`fuzz/`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::route::fuzz::route;
}

#[cfg(feature = "server")]
pub use config::Config;
#[cfg(feature = "server")]
pub use gateway::Gateway;
