//! The saved inputs of the in-crate fuzz targets (`tests/fixtures/fuzz/<target>/`: crashers the fuzzer found
//! and hand-made hostile inputs), replayed through the target's checks by a unit test of each.

use std::path::Path;

/// Runs every saved input of `target` (at least `at_least` of them) through `check`; a failing input's path
/// is printed before its panic goes on.
pub(crate) fn replay(target: &str, at_least: usize, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
        "too few inputs in {}",
        dir.display()
    );
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("{}", file.display());
            std::panic::resume_unwind(panic);
        }
    }
}
