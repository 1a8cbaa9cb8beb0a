//! Shared pieces of l7inspect's criterion benches (`benches/benches/`); the
//! end-to-end benchmark's load tool is the `l7bench` binary.

use std::{future::Future, thread::JoinHandle};
use tokio::sync::oneshot;

/// A runtime on its own thread, stopped and joined on drop: servers and
/// sidecars that a bench measures against, off the measuring thread.
pub struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `task` on a current-thread runtime on a new thread. The future
    /// `task` is given completes when the [`Background`] is dropped.
    pub fn spawn<F, Fut>(name: &str, task: F) -> Self
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(task(stopped));
            })
            .expect("spawn a thread");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
