#![no_main]

// The checks live in the crate (`src/codec/fuzz.rs`), which replays every saved input through them in `cargo test`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| batchgate::fuzzing::json(data));
