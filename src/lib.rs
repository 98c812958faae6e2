//! batchgate: an HTTP batch gateway. Clients send one `POST /batch` whose `multipart/mixed` body holds many
//! embedded HTTP requests; the gateway runs them against upstream services over pooled keep-alive
//! connections and streams back one embedded response per part, in request order.
//!
//! # Layout
//! - [`wire`]: the batch format itself (multipart framing, embedded requests and responses), no I/O.
//! - [`route`]: which upstream a part goes to, after normalising its target.
//! - [`headers`]: hop-by-hop rules, what parts inherit from the batch, forwarding headers.
//! - [`upstream`]: the shared connection pools.
//! - [`fanout`]: running a batch's parts concurrently within its window, answering in order.
//! - [`compress`]: reply compression across parts, negotiated by Accept-Encoding.
//! - [`gateway`]: the batch endpoint: streaming parse, limits, the reply.
//! - [`server`]: connections, endpoints, graceful shutdown; [`io`]: the write deadline on connections.
//! - [`metrics`]: counters served at `GET /metrics`.
//! - [`error`]: the batch-level and part-level errors and how they render.
//! - [`client`]: building batches and reading replies, for client authors.
//! - [`config`]: the configuration and its defaults.
//! - [`demo`]: the example mail service used by `--demo`, the examples and the tests.

#![forbid(unsafe_code)]

pub mod client;
pub mod compress;
pub mod config;
pub mod demo;
pub mod error;
pub mod fanout;
pub mod gateway;
pub mod headers;
pub mod io;
pub mod metrics;
pub mod route;
pub mod server;
pub mod upstream;
pub mod wire;

pub use config::Config;
pub use gateway::Gateway;
