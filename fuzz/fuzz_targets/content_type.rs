#![no_main]

// The checks live with the regression tests, so `cargo test` replays every saved input through them.
#[allow(dead_code)]
#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::content_type(data));
