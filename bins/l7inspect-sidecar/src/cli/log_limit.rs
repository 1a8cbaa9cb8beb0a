//! [`LogLimit`]: a `tracing-subscriber` layer that rate-limits the log
//! events of dependencies, per call site, and summarises what it dropped.
//!
//! Our own per-connection warnings go through `l7inspect_core::RateLimited`
//! (one line per 10 s with a count). A dependency's do not: h2 warns once
//! per connection that exceeds its reset limits (about 3,400 lines in 15 s
//! of rapid-reset attack) and once per unsolicited PING acknowledgement, a
//! 17-byte frame any client can repeat. This layer lets the first
//! [`BURST`] events of each call site through per [`WINDOW`], counts the
//! rest, and then writes one line at the same level, e.g.
//!
//! ```text
//! WARN l7inspect_sidecar::log: 3391 similar messages from h2::proto::streams::recv suppressed source="h2::proto::streams::recv" location="…/recv.rs:913" suppressed=3391
//! ```
//!
//! when the call site next logs after its window, or at the latest one
//! window later ([`LogLimit::flush_every`]).
//!
//! Only events at `info` and above from targets outside `l7inspect*` are
//! limited: ours are rate-limited where they are written, and `debug` and
//! `trace` are what an operator asks for on purpose (`/log-level`). The
//! layer sits after the filter, so it sees only events the filter lets
//! through, and changing the filter at runtime works as before.
//!
//! Why not simply default dependencies to a higher level (`h2=error`)? A
//! default directive lives only in the default filter: an operator's own
//! `--log-level warn` or `/log-level` would bring the flood back. And the
//! warnings are the only sign of some attacks (h2's reset limits); a
//! bounded sample of them with a count keeps that sign.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};
use tracing::{Event, Level, Metadata, Subscriber, callsite::Identifier};
use tracing_subscriber::layer::{Context, Layer};

/// Events of one call site let through per [`WINDOW`].
pub(crate) const BURST: u32 = 5;

/// The window of [`BURST`]: the interval of our own rate-limited lines.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// The target of the summary lines.
const SUMMARY_TARGET: &str = "l7inspect_sidecar::log";

/// The layer; clones share their counts (one goes into the subscriber, one
/// to the task that flushes summaries).
#[derive(Clone, Debug, Default)]
pub(crate) struct LogLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

/// One call site's window.
#[derive(Debug)]
struct Site {
    meta: &'static Metadata<'static>,
    start: Instant,
    passed: u32,
    suppressed: u64,
}

/// A summary to write: how many events of `meta`'s call site were dropped.
struct Summary {
    meta: &'static Metadata<'static>,
    suppressed: u64,
}

impl LogLimit {
    /// Whether an event of `meta` at `now` may be written; a summary of the
    /// call site's last window, if it dropped any and is over.
    fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> (bool, Option<Summary>) {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let site = sites.entry(meta.callsite()).or_insert(Site {
            meta,
            start: now,
            passed: 0,
            suppressed: 0,
        });
        let mut summary = None;
        if now.saturating_duration_since(site.start) >= WINDOW {
            summary = site.take_summary();
            site.start = now;
            site.passed = 0;
        }
        let pass = site.passed < BURST;
        if pass {
            site.passed += 1;
        } else {
            site.suppressed += 1;
        }
        (pass, summary)
    }

    /// Writes the summaries of the windows that ended by `now`.
    pub(crate) fn flush(&self, now: Instant) {
        let summaries: Vec<Summary> = {
            let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
            sites
                .values_mut()
                .filter(|s| now.saturating_duration_since(s.start) >= WINDOW)
                .filter_map(Site::take_summary)
                .collect()
        };
        // Written without the lock: each summary is an event of its own.
        summaries.iter().for_each(Summary::write);
    }

    /// Writes every summary due, windows over or not: at shutdown.
    pub(crate) fn flush_all(&self) {
        self.flush(Instant::now() + WINDOW);
    }

    /// Flushes every [`WINDOW`], so that a flood that stopped still gets
    /// its summary. Runs until the runtime stops.
    pub(crate) async fn flush_every(self) {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush(Instant::now());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogLimit {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        // (A record of the `log` crate, bridged by tracing-log, has one call
        // site per level, so such records would share one budget; no
        // dependency of the sidecar logs through `log` today.)
        let meta = event.metadata();
        if *meta.level() > Level::INFO || meta.target().starts_with("l7inspect") {
            return true;
        }
        let (pass, summary) = self.admit(meta, Instant::now());
        // Before the event it precedes, and outside the lock (it is an event
        // itself, of our own target, which passes straight through).
        if let Some(summary) = summary {
            summary.write();
        }
        pass
    }
}

impl Site {
    /// The summary of the dropped events so far, if any; resets the count.
    fn take_summary(&mut self) -> Option<Summary> {
        let suppressed = std::mem::take(&mut self.suppressed);
        (suppressed > 0).then_some(Summary {
            meta: self.meta,
            suppressed,
        })
    }
}

impl Summary {
    /// One line at the level of the events dropped.
    fn write(&self) {
        let source = self.meta.target();
        let location = format!(
            "{}:{}",
            self.meta.file().unwrap_or("?"),
            self.meta.line().unwrap_or(0)
        );
        let suppressed = self.suppressed;
        macro_rules! summary {
            ($level:ident) => {
                tracing::$level!(
                    target: SUMMARY_TARGET,
                    source,
                    location,
                    suppressed,
                    "{suppressed} similar messages from {source} suppressed"
                )
            };
        }
        match *self.meta.level() {
            Level::ERROR => summary!(error),
            Level::WARN => summary!(warn),
            _ => summary!(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt};

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    /// Runs `f` under a subscriber like the sidecar's (`filter`, the limit,
    /// plain text without time or colour) writing to memory.
    fn logged(filter: &str, f: impl FnOnce(&LogLimit)) -> Vec<String> {
        let lines = Lines::default();
        let limit = LogLimit::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(filter))
            .with(limit.clone())
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_writer(lines.clone()),
            );
        tracing::subscriber::with_default(subscriber, || f(&limit));
        lines.lines()
    }

    fn dependency_warning(i: u32) {
        tracing::warn!(target: "h2::proto::streams::recv", "too many resets ({i})");
    }

    #[test]
    fn a_flood_from_one_call_site_is_cut_to_a_burst_then_summarised() {
        let lines = logged("info", |limit| {
            for i in 0..1000 {
                dependency_warning(i);
            }
            // The window is over: the summary, once.
            limit.flush(Instant::now() + WINDOW);
            limit.flush(Instant::now() + WINDOW);
        });
        assert_eq!(lines.len(), BURST as usize + 1, "{lines:#?}");
        for (i, line) in lines[..BURST as usize].iter().enumerate() {
            assert!(line.ends_with(&format!("too many resets ({i})")), "{line}");
        }
        let summary = lines[BURST as usize].trim_start();
        assert!(
            summary.starts_with(
                "WARN l7inspect_sidecar::log: 995 similar messages from h2::proto::streams::recv suppressed"
            ),
            "{summary}"
        );
        assert!(summary.contains("suppressed=995"), "{summary}");
    }

    #[test]
    fn each_call_site_has_its_own_budget_and_ours_and_debug_are_not_limited() {
        let lines = logged("debug", |_| {
            for i in 0..20 {
                dependency_warning(i);
                tracing::warn!(target: "h2::proto::ping_pong", "recv PING ack that we never sent");
                tracing::warn!(target: "l7inspect_core::connect", "ours ({i})");
                tracing::debug!(target: "h2::codec", "a frame ({i})");
            }
        });
        let count = |s: &str| lines.iter().filter(|l| l.contains(s)).count();
        assert_eq!(count("too many resets"), BURST as usize);
        assert_eq!(count("PING ack"), BURST as usize);
        assert_eq!(count("ours ("), 20);
        assert_eq!(count("a frame ("), 20);
    }

    #[test]
    fn the_next_window_starts_with_the_summary_then_a_new_burst() {
        let limit = LogLimit::default();
        let meta = {
            // Any call site's metadata will do: capture one.
            struct Grab(Mutex<Option<&'static Metadata<'static>>>);
            impl Subscriber for Grab {
                fn enabled(&self, _: &Metadata<'_>) -> bool {
                    true
                }
                fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                    tracing::span::Id::from_u64(1)
                }
                fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
                fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
                fn event(&self, e: &Event<'_>) {
                    *self.0.lock().unwrap() = Some(e.metadata());
                }
                fn enter(&self, _: &tracing::span::Id) {}
                fn exit(&self, _: &tracing::span::Id) {}
            }
            let grab = Arc::new(Grab(Mutex::new(None)));
            tracing::subscriber::with_default(grab.clone(), || dependency_warning(0));
            grab.0.lock().unwrap().unwrap()
        };
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(matches!(limit.admit(meta, t0), (true, None)));
        }
        for _ in 0..7 {
            assert!(matches!(limit.admit(meta, t0), (false, None)));
        }
        let (pass, summary) = limit.admit(meta, t0 + WINDOW);
        assert!(pass);
        assert_eq!(summary.map(|s| s.suppressed), Some(7));
        // A window that dropped nothing has no summary.
        let (pass, summary) = limit.admit(meta, t0 + WINDOW * 2);
        assert!(pass && summary.is_none());
    }
}
