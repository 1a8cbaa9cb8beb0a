//! Time for open-loop schedules: CLOCK_MONOTONIC in nanoseconds and a sleep
//! on a timerfd.
//!
//! Why not `tokio::time::sleep_until`: tokio's timer wheel ticks in whole
//! milliseconds and rounds deadlines up, so every paced send would leave up
//! to 1 ms late. An open-loop run times requests from their intended send
//! time, so that lateness would be added to latencies of 0.1-0.3 ms. A
//! timerfd armed with an absolute CLOCK_MONOTONIC deadline wakes within the
//! kernel's timer slack, which [`tighten_timer_slack`] lowers from its
//! default of 50 µs to 1 ns.

use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, clock_gettime,
    timerfd_create, timerfd_settime,
};
use std::{io, num::NonZeroU64, os::fd::OwnedFd};
use tokio::io::{Interest, unix::AsyncFd};

/// Nanoseconds on CLOCK_MONOTONIC, the clock the [`Pacer`] sleeps on.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Lets this thread's timers fire on time instead of up to 50 µs late (the
/// default slack, by which the kernel batches wake-ups): against a direct
/// backend answering in 60 µs, 50 µs would be most of the figure.
pub fn tighten_timer_slack() -> io::Result<()> {
    Ok(rustix::thread::set_current_timer_slack(NonZeroU64::new(1))?)
}

/// Seconds (from a flag) to nanoseconds.
pub fn secs_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// One timerfd: sleeps until an absolute [`now_ns`] deadline.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // tokio 1.54 deprecates the safe constructors because an `AsRawFd`
        // value may not own its descriptor; an `OwnedFd` moved in does, so
        // nothing can close it while it is registered. The replacement is
        // `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Self { fd })
    }

    /// Returns at `deadline_ns` (at once if it has passed).
    pub async fn sleep_until(&self, deadline_ns: u64) -> io::Result<()> {
        if now_ns() >= deadline_ns {
            return Ok(());
        }
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let at = Timespec {
            tv_sec: (deadline_ns / 1_000_000_000) as _,
            tv_nsec: (deadline_ns % 1_000_000_000) as _,
        };
        // Re-arming resets the expiration count, so a read below can only
        // report this deadline.
        timerfd_settime(
            self.fd.get_ref(),
            TimerfdTimerFlags::ABSTIME,
            &Itimerspec {
                it_interval: zero,
                it_value: at,
            },
        )?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8];
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut buf)?)) {
                Ok(r) => return r.map(drop),
                // Stale readiness from an earlier deadline: wait again.
                Err(_would_block) => continue,
            }
        }
    }
}
