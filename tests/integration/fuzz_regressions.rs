//! Replays the saved fuzz inputs (`tests/fixtures/fuzz/<target>/*`: crashers the fuzzers found, plus
//! hand-made hostile inputs) through the same checks the fuzz targets run. See `fuzz/README.md`.

/// Shared with the fuzz targets, which include the same file (`fuzz/fuzz_targets/*.rs`).
#[path = "../fuzz_checks/mod.rs"]
mod fuzz_checks;

use std::panic;
use std::path::{Path, PathBuf};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
}

#[test]
fn multipart_inputs() {
    replay("multipart", fuzz_checks::multipart);
}

#[test]
fn embedded_request_inputs() {
    replay("embedded_request", fuzz_checks::embedded_request);
}

#[test]
fn content_type_inputs() {
    replay("content_type", fuzz_checks::content_type);
}

/// The reference model the `multipart` target compares against agrees with the splitter's own unit tests.
#[test]
fn the_model_reads_plain_bodies_like_the_splitter() {
    let body = b"preamble\r\n--b\r\nA: 1\r\n\r\nhello\r\n--b\r\n\r\nsecond\r\n--b--\r\nepilogue";
    let split = fuzz_checks::model_split(body, "b", 1 << 20);
    assert_eq!(
        split.parts,
        vec![b"A: 1\r\n\r\nhello".to_vec(), b"\r\nsecond".to_vec()]
    );
    assert_eq!(split.result, Ok(()));
    assert_eq!(split, fuzz_checks::split(body, "b", 1 << 20, [1]));
}
