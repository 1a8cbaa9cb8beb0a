//! The process's panic hook: panics are written to the log, rate-limited,
//! instead of Rust's default report on stderr for every one.
//!
//! A panic in a connection's task ends that connection only
//! (`l7inspect_core::CatchPanicLayer` counts it in
//! `l7inspect_connection_panics_total`), so a bug that a request can reach
//! could otherwise be made to write a multi-line report per request. The
//! first panic of the process is logged in full, with a backtrace (the
//! material of a bug report); later ones are rate-limited like our other
//! per-connection warnings: one line per 10 s, with the count of those
//! suppressed. In the `json` log format each is one JSON object.

use l7inspect_core::RateLimited;
use std::{
    backtrace::Backtrace,
    cell::Cell,
    panic::PanicHookInfo,
    sync::atomic::{AtomicBool, Ordering},
};

/// Replaces the panic hook; call once logging is set up.
pub(crate) fn install() {
    std::panic::set_hook(hook());
}

/// A hook with its own state: the next panic is the first.
fn hook() -> Box<dyn Fn(&PanicHookInfo<'_>) + Send + Sync> {
    let first = AtomicBool::new(true);
    let later = RateLimited::default();
    Box::new(move |info| report(info, &first, &later))
}

fn report(info: &PanicHookInfo<'_>, first: &AtomicBool, later: &RateLimited) {
    thread_local! {
        /// Set while this thread reports a panic: a panic inside the log
        /// itself must not recurse into it.
        static REPORTING: Cell<bool> = const { Cell::new(false) };
    }
    if REPORTING.with(|r| r.replace(true)) {
        eprintln!("panic while logging a panic: {info}");
        return;
    }
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let location = info
        .location()
        .map_or_else(|| "?".to_owned(), ToString::to_string);
    let current = std::thread::current();
    let thread = current.name().unwrap_or("<unnamed>");
    if first.swap(false, Ordering::Relaxed) {
        let backtrace = Backtrace::force_capture();
        // The backtrace last: in the text format, the line starts with the
        // message, thread and location, and the frames follow.
        tracing::error!(
            thread,
            location,
            backtrace = %format_args!("\n{backtrace}"),
            "panicked: {message} (the first panic; later ones are rate-limited)"
        );
    } else {
        later.warn(|suppressed| {
            tracing::error!(thread, location, suppressed, "panicked: {message}")
        });
    }
    REPORTING.with(|r| r.set(false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// Three panics on threads logging to memory: the first in full with
    /// its backtrace, the second as one line, the third (within 10 s)
    /// suppressed. The hook is the process's only while this test runs;
    /// the previous one is put back.
    #[test]
    fn the_first_panic_in_full_then_rate_limited_lines() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .with_writer(buf.clone())
            .finish();
        let dispatch = tracing::Dispatch::new(subscriber);
        let previous = std::panic::take_hook();
        std::panic::set_hook(hook());
        for i in 1..=3 {
            let dispatch = dispatch.clone();
            let joined = std::thread::Builder::new()
                .name(format!("conn-{i}"))
                .spawn(move || tracing::dispatcher::with_default(&dispatch, || panic!("boom {i}")))
                .unwrap()
                .join();
            assert!(joined.is_err());
        }
        std::panic::set_hook(previous);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let reports: Vec<&str> = text.lines().filter(|l| l.contains("panicked:")).collect();
        assert_eq!(reports.len(), 2, "{text}");
        assert!(
            reports[0].contains("panicked: boom 1 (the first panic"),
            "{text}"
        );
        assert!(reports[0].ends_with("backtrace="), "{text}");
        assert!(text.contains("panic_hook::tests"), "the frames: {text}");
        assert!(reports[0].contains("thread=\"conn-1\""), "{text}");
        assert!(reports[0].contains("panic_hook.rs"), "{text}");
        assert!(reports[1].contains("panicked: boom 2"), "{text}");
        assert!(reports[1].contains("suppressed=0"), "{text}");
        assert!(!text.contains("boom 3"), "{text}");
    }
}
