//! Shared pieces of l7inspect's criterion benches (`benches/benches/`); the
//! end-to-end benchmark's load tool is the `l7bench` binary.

use l7inspect_sidecar::{Forward, SidecarConfig, TracingConfig, build};
use l7inspect_trace::export::RecentSpans;
use std::{future::Future, net::SocketAddr, sync::mpsc, thread::JoinHandle, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

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

/// A TCP server on `127.0.0.1:0` in the [`Background`]: each accepted
/// connection (with `TCP_NODELAY`) goes to `handle`, on a task of its own.
/// Returns the server's address.
pub fn serve<H, Fut>(name: &str, handle: H) -> (SocketAddr, Background)
where
    H: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (addr_tx, addr_rx) = mpsc::channel();
    let bg = Background::spawn(name, move |stop| async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a bench server");
        let _ = addr_tx.send(listener.local_addr().expect("bench server address"));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((conn, _)) = accepted else { continue };
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(handle(conn));
                }
            }
        }
    });
    let addr = addr_rx.recv().expect("the bench server started");
    (addr, bg)
}

/// An in-process sidecar in the [`Background`] with one explicit inbound
/// forward to `target` and no transparent listeners, tracing as `tracing`
/// says; its forward listener's address and its ring of recent spans.
pub fn sidecar(
    target: SocketAddr,
    tracing: TracingConfig,
) -> (SocketAddr, RecentSpans, Background) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let bg = Background::spawn("sidecar", move |stop| async move {
        let sidecar = build(SidecarConfig {
            transparent: false,
            admin_listen: vec!["127.0.0.1:0".parse().expect("address")],
            inbound_forwards: vec![Forward {
                listen: "127.0.0.1:0".parse().expect("address"),
                target,
            }],
            shutdown_grace: Duration::from_secs(1),
            tracing,
            ..SidecarConfig::default()
        })
        .await
        .expect("bind the sidecar");
        let _ = addr_tx.send((
            sidecar.addrs().inbound_forwards[0].listen,
            sidecar.recent_spans(),
        ));
        sidecar
            .run(async {
                let _ = stop.await;
            })
            .await;
    });
    let (addr, spans) = addr_rx.recv().expect("the sidecar started");
    (addr, spans, bg)
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
