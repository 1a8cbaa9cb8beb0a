//! [`WakeFlag`]: a waker that remembers it was woken.

use futures_util::task::AtomicWaker;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Wake, Waker},
};

/// A waker for one of the things a task waits on, that notes it was woken
/// before waking the task. A task that waits on several things polls this
/// one only when [`take`](Self::take) says it asked to be, instead of on
/// every wake-up of the task: an HTTP/2 connection's task is woken for each
/// of its streams, and polling the connection (or the drain signal) each
/// time is work for nothing.
pub(crate) struct WakeFlag {
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl WakeFlag {
    /// A flag that starts set, so that the first poll happens.
    pub(crate) fn new() -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }

    /// The task to wake: call on every poll of the task.
    pub(crate) fn register(&self, task: &Waker) {
        self.shared.task.register(task);
    }

    /// Whether the flag was set since the last call; clears it.
    pub(crate) fn take(&self) -> bool {
        self.shared.woken.swap(false, Ordering::AcqRel)
    }

    /// Sets the flag (there is more to do without a wake-up).
    pub(crate) fn set(&self) {
        self.shared.woken.store(true, Ordering::Release);
    }

    /// A context whose waker sets the flag, to poll the thing with.
    pub(crate) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}
