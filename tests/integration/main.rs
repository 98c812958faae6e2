//! The integration tests: one binary, one module per area, every server real and bound on port 0.
//!
//! Run one area with `cargo test --test integration AREA::` (e.g. `gateway::`), one test by its name.
//! The modules run in one process, on parallel threads: a test keeps its state to itself (no global
//! subscriber, no environment variables set, no working-directory change); the real binary is spawned as a
//! child process when a test needs signals or its command line.

mod support;

// The core: the batch endpoint, upstreams, field masks, and what operators configure and see.
mod cache;
mod cache_conformance;
mod cache_redis;
mod dedup;
mod direct;
mod fields;
mod gateway;
mod identity;
mod jobs;
mod json_batch;
mod observability;
mod operations;
mod readiness;
mod smoke;
mod upstreams;

// Faults and hostile peers.
mod compression_runtime;
mod goaway;
mod hardening;
mod hostile_connections;
mod hostile_parts;

// Listeners beside the batch endpoint, and changes while running.
mod admin;
mod cors;
mod reload;
mod tls;

// Clients: the Rust client and its batcher, the byte-exact requests of real clients, the binary's commands
// and runtimes.
mod batcher;
mod cli;
mod real_clients;
mod rust_client;
mod send;
mod workers;

// Headless Chromium (skipped, saying so, when it is not installed).
mod browser_cors;
mod browser_dashboard;
mod browser_inbox;

// The wire format: properties, and the saved fuzz inputs replayed through the fuzz targets' checks.
mod fuzz_regressions;
mod proptest_wire;
