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
//! - [`stack`]: the per-route tower `Service` stack a part goes through upstream (header policy, in-flight
//!   limits, timeout, response rules, the connection pools).
//!
//! Around it: [`gateway`] (the shared state), [`headers`] (hop-by-hop, inheritance, forwarding headers),
//! [`compress`] (reply compression), [`response`] (the gateway's own responses), [`error`] (batch-level and
//! part-level errors), [`metrics`], [`config`], [`client`] (for client authors) and [`demo`] (the example mail
//! service).

#![forbid(unsafe_code)]

pub mod batch;
pub mod client;
pub mod codec;
pub mod compress;
pub mod config;
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
pub mod tls;
pub mod wire;

pub use config::Config;
pub use gateway::Gateway;
