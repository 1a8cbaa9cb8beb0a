//! [`LoopGuard`]: keeps the proxy from forwarding connections to itself.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Knows the proxy's own listeners and the local ends of its own upstream
/// connections, so that a redirected connection that would loop is refused.
///
/// Two kinds of loop exist. Without an iptables rule, a connection reaches a
/// transparent listener directly and its original destination is the
/// listener itself. With a rule that does not exempt the proxy's own traffic,
/// the proxy's upstream connection is redirected back to the proxy; its
/// original destination is then a real service, but its client address is
/// the local end of a socket the proxy just opened. The guard catches both.
#[derive(Clone, Debug, Default)]
pub struct LoopGuard {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    listeners: Mutex<Vec<SocketAddr>>,
    upstream_locals: Mutex<HashSet<SocketAddr>>,
    /// Dials between `connect(2)` and their registration.
    pending: AtomicUsize,
}

/// Marks a dial whose local address is not registered yet; see
/// [`LoopGuard::begin_dial`].
#[derive(Debug)]
pub struct PendingDial {
    guard: LoopGuard,
}

/// Why a connection would loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// Its target is one of the proxy's listeners.
    TargetIsListener,
    /// Its client is one of the proxy's own upstream connections.
    ClientIsProxy,
}

/// Removes an upstream connection's local address from the guard when the
/// connection is dropped.
#[derive(Debug)]
pub struct Registration {
    guard: LoopGuard,
    local: SocketAddr,
}

// === impl LoopGuard ===

impl LoopGuard {
    /// Records a bound listener address.
    pub fn add_listener(&self, addr: SocketAddr) {
        lock(&self.inner.listeners).push(addr);
    }

    /// Whether a connection accepted on `local` from `client`, going to
    /// `target`, would loop back into the proxy.
    pub fn check(&self, client: SocketAddr, local: SocketAddr, target: SocketAddr) -> Option<Loop> {
        let is_listener = target == local
            || lock(&self.inner.listeners).iter().any(|l| {
                l.port() == target.port()
                    && (l.ip() == target.ip()
                        || l.ip().is_unspecified() && target.ip() == local.ip())
            });
        if is_listener {
            return Some(Loop::TargetIsListener);
        }
        if self.is_own_upstream(client) {
            return Some(Loop::ClientIsProxy);
        }
        None
    }

    /// Whether `client` is the local end of one of the proxy's upstream
    /// connections. A dial registers right after `connect(2)`, but on a
    /// multi-thread runtime another worker can accept the redirected copy in
    /// between; so while dials are pending, wait (briefly: the window is two
    /// system calls) for them to register before answering no.
    fn is_own_upstream(&self, client: SocketAddr) -> bool {
        const PATIENCE: Duration = Duration::from_millis(1);
        let start = Instant::now();
        loop {
            if lock(&self.inner.upstream_locals).contains(&client) {
                return true;
            }
            if self.inner.pending.load(Ordering::Acquire) == 0 || start.elapsed() > PATIENCE {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Marks a dial as under way until the returned value is dropped, which
    /// the dialler does once the dial is registered (or failed).
    pub fn begin_dial(&self) -> PendingDial {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        PendingDial {
            guard: self.clone(),
        }
    }

    /// Records the local address of an upstream connection the proxy opened,
    /// until the returned registration is dropped.
    pub fn register_upstream(&self, local: SocketAddr) -> Registration {
        lock(&self.inner.upstream_locals).insert(local);
        Registration {
            guard: self.clone(),
            local,
        }
    }
}

/// The sets stay consistent even if a holder panicked: every update is a
/// single insert or remove.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for PendingDial {
    fn drop(&mut self) {
        self.guard.inner.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.guard.inner.upstream_locals).remove(&self.local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn target_is_a_listener() {
        let g = LoopGuard::default();
        g.add_listener(a("0.0.0.0:4143"));
        g.add_listener(a("127.0.0.1:4140"));
        let client = a("10.0.0.9:5555");
        // Not redirected: the original destination is the listener itself.
        assert_eq!(
            g.check(client, a("10.0.0.5:4143"), a("10.0.0.5:4143")),
            Some(Loop::TargetIsListener)
        );
        // Redirected to another of the proxy's listeners.
        assert_eq!(
            g.check(client, a("10.0.0.5:4143"), a("127.0.0.1:4140")),
            Some(Loop::TargetIsListener)
        );
        assert_eq!(
            g.check(client, a("10.0.0.5:4143"), a("10.0.0.5:8080")),
            None
        );
    }

    #[test]
    fn client_is_an_upstream_of_the_proxy() {
        let g = LoopGuard::default();
        let local = a("10.0.0.5:40000");
        let reg = g.register_upstream(local);
        let check = || g.check(local, a("127.0.0.1:4140"), a("10.0.0.7:80"));
        assert_eq!(check(), Some(Loop::ClientIsProxy));
        drop(reg);
        assert_eq!(check(), None);
    }
}
