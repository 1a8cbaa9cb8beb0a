//! Headless Chromium (Debian's `chromium`) for tests of the live view: a
//! page rendered with its JavaScript run, as a DOM dump or a screenshot.

use crate::{PATIENCE, Skip, need_tool};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `Ok` when `chromium` runs, else a [`Skip::tool`].
pub fn need_chromium() -> Result<(), Skip> {
    need_tool("chromium", "chromium")
}

/// Renders `url` headless and returns the DOM after the page's scripts
/// ran (its timers run in virtual time, up to 5 s of it; its fetches
/// complete for real). Fails the test if chromium fails or hangs.
pub fn dump_dom(url: &str) -> String {
    run(url, &["--dump-dom".to_owned()])
}

/// Renders `url` headless into the PNG file `png` (1400×900), after the
/// page's scripts ran as for [`dump_dom`]; fails the test if the file is
/// not a PNG of some substance.
pub fn screenshot(url: &str, png: &Path) {
    run(url, &[format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{}: {} bytes, a blank page?",
        png.display(),
        bytes.len()
    );
}

/// Where tests leave files for CI to keep: `$L7INSPECT_ARTIFACTS`, else
/// `fallback` (a test's `CARGO_TARGET_TMPDIR`). Created if missing.
pub fn artifacts_dir(fallback: &str) -> PathBuf {
    let dir = std::env::var_os("L7INSPECT_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(fallback));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn run(url: &str, args: &[String]) -> String {
    // A profile of its own: runs in parallel do not share Chromium's lock.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile =
        std::env::temp_dir().join(format!("l7inspect-chromium-{}-{n}", std::process::id()));
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless=new",
        // As root (CI), Chromium's sandbox will not start.
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--window-size=1400,900",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    let out = crate::output_within(&mut cmd, PATIENCE)
        .unwrap_or_else(|e| panic!("chromium {args:?} {url}: {e}"));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
