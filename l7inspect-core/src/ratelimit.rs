//! [`RateLimited`]: at most one log line per interval for per-connection events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval (default 10 s) and counts the rest,
/// so that a flood of refused connections writes a line every few seconds,
/// not one per connection.
#[derive(Debug)]
pub struct RateLimited {
    start: Instant,
    interval: Duration,
    /// Milliseconds since `start` of the last event let through, plus one
    /// (zero: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimited {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl RateLimited {
    /// Lets one event through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Calls `log` with the number of events suppressed since the last one,
    /// if an interval has passed; otherwise counts this event as suppressed.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval() {
        let r = RateLimited::new(Duration::from_secs(3600));
        let mut logged = Vec::new();
        for _ in 0..5 {
            r.warn(|s| logged.push(s));
        }
        assert_eq!(logged, vec![0]);
        assert_eq!(r.suppressed.load(Ordering::Relaxed), 4);
    }
}
