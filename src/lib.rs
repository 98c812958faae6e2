//! batchgate: an HTTP batch gateway. Clients send one `POST /batch` whose `multipart/mixed` body holds many
//! embedded HTTP requests; the gateway runs them against upstream services over pooled keep-alive
//! connections and streams back one embedded response per part, in request order.
//!
//! # Layout
//! The workspace: this crate is the gateway (library and the `batchgate` binary, `src/bin/batchgate/`);
//! `batchgate-wire` (`crates/wire`) is the multipart format itself, pure and without I/O; `batchgate-client`
//! (`crates/client`) is the Rust client and micro-batcher; `batchgate-transport` (`crates/transport`) is the
//! TCP/TLS connection plumbing the client and the gateway's upstream side share.
//!
//! The data path, in the order a batch takes it:
//! - [`server`]: connections (limits, idle and silent clients, the write deadline), the endpoints, graceful
//!   shutdown.
//! - [`batch`]: one batch in four stages, a module each: `admit` → `read` → `run` (the scheduler) →
//!   `respond`.
//! - [`codec`]: the batch format behind one seam (reading parts, rendering reply parts), over
//!   `batchgate_wire`.
//! - [`route`]: which route a part goes to, after normalising its target.
//! - [`stack`]: the per-route tower `Service` stack a part goes through upstream (rate limit, header policy,
//!   rewrite, timeout, retries, in-flight limits fixed or adaptive, response rules, balancing and passive
//!   health, the pools per upstream address).
//!
//! Around it: [`gateway`] (the shared state), [`headers`] (hop-by-hop, inheritance, forwarding headers),
//! [`compress`] (reply compression), [`response`] (the gateway's own responses), [`error`] (batch-level and
//! part-level errors), [`metrics`] (`/metrics`), [`observe`] (per-route windows, bottlenecks, tuning history,
//! batch timelines, trace context: `/admin/stats`), [`tls`] (certificates), [`config`], and, with the `demo`
//! feature, `demo` (the example mail service and its inbox page). With the `otel` feature, `otel` exports
//! spans over OTLP. With the `testing` feature, `testing` starts the mail service and a gateway in-process
//! for another crate's tests.
//!
//! # Features
//! - `demo` (default): `demo`, the example mail service (`batchgate --demo`, `batchgate demo-upstream`).
//! - `mimalloc` (default): the binary's allocator.
//! - `otel`: OTLP/gRPC span export (`[tracing] otlp_endpoint`).
//! - `testing`: `testing::{MailUpstream, TestGateway}`, for crates that test against batchgate.

#![forbid(unsafe_code)]

pub mod batch;
pub mod codec;
pub mod compress;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub mod observe;
#[cfg(feature = "otel")]
pub mod otel;
pub mod response;
pub mod route;
pub mod server;
pub mod stack;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

/// The checks behind the fuzz targets that reach past the public surface (`fuzz/`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::route::fuzz::route;
}

pub use config::Config;
pub use gateway::Gateway;
