//! batchgate: an HTTP batch gateway. Clients send one `POST /batch` whose `multipart/mixed` body holds many
//! embedded HTTP requests; the gateway runs them against upstream services over pooled keep-alive
//! connections and streams back one embedded response per part, in request order.
//!
//! # What a program uses
//! - [`Config`] (and [`config`]): the configuration, read from TOML ([`Config::from_file`],
//!   [`Config::from_toml`]) and range-checked ([`Config::validate`]); the shipped `config.toml` documents every
//!   key.
//! - [`Gateway`]: the state one config makes; [`server::run`] serves it on a bound listener until a shutdown
//!   future resolves, [`server::serve`] does the same for a [`server::Live`] gateway that reloads, and
//!   [`server::serve_on`] serves each connection on one of [`server::Workers`], a runtime per core (how the
//!   binary runs).
//! - [`server::admin`]: the operators' listener (metrics, stats, dashboard, reload).
//! - With the `testing` feature, `testing`: the example mail service and a gateway in-process on port 0, for
//!   another crate's tests. With the `demo` feature (default), `demo`: that mail service and its inbox page.
//!
//! Clients use the `batchgate-client` crate, the format alone is `batchgate-wire`.
//!
//! # Layout
//! The workspace: this crate is the gateway (library and the `batchgate` binary, `src/bin/batchgate/`);
//! `batchgate-wire` (`crates/wire`) is the multipart format itself, pure and without I/O; `batchgate-client`
//! (`crates/client`) is the Rust client and micro-batcher; `batchgate-transport` (`crates/transport`) is the
//! TCP/TLS connection plumbing the client and the gateway's upstream side share.
//!
//! Inside this crate (internal modules, `pub(crate)`), the data path in the order a batch takes it:
//! - `server`: connections (limits, idle and silent clients, the write deadline), the endpoints, graceful
//!   shutdown.
//! - `batch`: one batch in four stages, a module each: `admit` → `read` → `run` (the scheduler) → `respond`.
//! - `codec`: the batch format behind one seam (reading parts, rendering reply parts), over `batchgate_wire`.
//! - `direct`: with `direct = true` on a route, a plain request proxied through the route's stack and
//!   answered as an ordinary response (the endpoints hand it over; no batch stages).
//! - `route`: which route a part goes to, after normalising its target.
//! - `jobs`: with `[jobs]`, batches that outlive their connection: `/jobs` (api), a store (SQLite or
//!   Postgres) and workers that feed the parts into the same route stacks at a lower priority.
//! - `stack`: the per-route tower `Service` stack a part goes through upstream (rate limit, header policy,
//!   rewrite, field masks, the HTTP cache and coalescing, timeout, retries, in-flight limits fixed or adaptive,
//!   response rules, balancing and passive health, the pools per upstream address), built per route as one
//!   `RouteStack`.
//!
//! Around it: `runtime` (the worker runtimes, one per core, and which one a thread is), `gateway` (the
//! shared state), `headers` (hop-by-hop, inheritance, forwarding headers), `cache` (the HTTP cache's entries
//! and stores: memory, Redis), `compress` (reply compression), `response` (the gateway's own responses),
//! `error` (batch-level and part-level errors), `metrics` (`/metrics`), `observe` (per-route windows,
//! bottlenecks, tuning history, batch timelines, trace context: `/admin/stats`), `tls` (certificates),
//! `config` (a file per section). With the `otel` feature, `otel` exports spans over OTLP.
//! `docs/architecture.md` draws the whole.
//!
//! # Features
//! - `demo` (default): `demo`, the example mail service (`batchgate --demo`, `batchgate demo-upstream`).
//! - `mimalloc` (default): the binary's allocator.
//! - `otel`: OTLP/gRPC span export (`[tracing] otlp_endpoint`).
//! - `testing`: `testing::{MailUpstream, TestGateway}`, for crates that test against batchgate.

#![forbid(unsafe_code)]

pub(crate) mod batch;
pub(crate) mod cache;
pub(crate) mod codec;
pub(crate) mod compress;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub(crate) mod direct;
pub(crate) mod error;
pub(crate) mod fields;
#[cfg(test)]
mod fuzz_inputs;
pub(crate) mod gateway;
pub(crate) mod headers;
pub(crate) mod jobs;
pub(crate) mod metrics;
pub(crate) mod observe;
#[cfg(feature = "otel")]
pub mod otel;
pub(crate) mod response;
pub(crate) mod route;
pub(crate) mod runtime;
pub mod server;
pub(crate) mod stack;
#[cfg(feature = "testing")]
pub mod testing;
pub(crate) mod tls;

/// The checks behind the fuzz targets that reach past the public surface (`fuzz/`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// The `route` target: routing one target never panics and keeps its invariants (`src/route/fuzz.rs`).
    pub fn route(data: &[u8]) {
        crate::route::fuzz::route(data);
    }

    /// The `fields` target: parsing a field mask and cutting JSON with it never panics and keeps its
    /// invariants (`src/fields/fuzz.rs`).
    pub fn fields(data: &[u8]) {
        crate::fields::fuzz::fields(data);
    }

    /// The `json` target: reading a JSON batch never panics, reads the same in any pieces, and what it
    /// accepts round-trips through the reply writer (`src/codec/fuzz.rs`).
    pub fn json(data: &[u8]) {
        crate::codec::fuzz::json(data);
    }
}

pub use config::Config;
pub use gateway::Gateway;
