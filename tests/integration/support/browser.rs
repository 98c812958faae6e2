//! Headless Chromium, for the tests that drive a real browser.

use super::{TempDir, within};

/// Flags for a headless Chromium that talks to nothing but the pages it is given.
pub(crate) const HEADLESS_CHROMIUM: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Whether `chromium` is on PATH (browser tests skip, saying so, when it is not).
pub(crate) fn chromium_installed() -> bool {
    std::process::Command::new("sh")
        .args(["-c", "command -v chromium"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs headless Chromium on `url` with `args` besides the usual ones (no sandbox, GPU, QUIC or background
/// traffic; a fresh profile), failing the test if it does not succeed within 90 s. Returns its stdout.
pub(crate) async fn chromium(url: &str, args: &[String]) -> String {
    let profile = TempDir::new("chromium");
    let mut command = tokio::process::Command::new("chromium");
    command
        .args(HEADLESS_CHROMIUM)
        .arg("--hide-scrollbars")
        .arg(format!("--user-data-dir={}", profile.path.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = within(90, "chromium", command.output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({:?}); stdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The DOM of `url` once its scripts have had `virtual_ms` of (virtual) time: timers fire, fetches complete.
pub(crate) async fn dump_dom(url: &str, virtual_ms: u64) -> String {
    let dom = chromium(
        url,
        &[
            format!("--virtual-time-budget={virtual_ms}"),
            "--dump-dom".to_owned(),
        ],
    )
    .await;
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    dom
}

/// A PNG of `url` in a `width` x `height` window, after `virtual_ms` of (virtual) time.
pub(crate) async fn screenshot(
    url: &str,
    path: &std::path::Path,
    size: (u32, u32),
    virtual_ms: u64,
) {
    chromium(
        url,
        &[
            format!("--virtual-time-budget={virtual_ms}"),
            format!("--window-size={},{}", size.0, size.1),
            format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {path:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {path:?}");
}
