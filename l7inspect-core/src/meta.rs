//! What the proxy knows about a connection: [`Accepted`], [`ConnMeta`], [`Direction`].

use std::{fmt, net::SocketAddr};

/// Which side of the workload a connection crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the workload: a remote client calls the local service.
    Inbound,
    /// Out of the workload: the local service calls something remote.
    Outbound,
}

/// A connection as the listener accepted it, before its target is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The client's address (the connection's peer).
    pub client: SocketAddr,
    /// The local address the connection was accepted on. For a redirected
    /// connection this is the proxy's listener, not the original destination.
    pub local: SocketAddr,
    /// Which side of the workload the listener serves.
    pub direction: Direction,
}

/// A connection whose target is known: what every later layer receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    /// The client's address.
    pub client: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// Where the connection goes: the original destination of a redirected
    /// connection, or an explicit listener's fixed target.
    pub target: SocketAddr,
    /// Where the upstream connection is dialled when not to `target`: set
    /// by a layer that sends a connection elsewhere (TLS termination sends
    /// the plaintext to the application's port on loopback). `None` for
    /// every connection that goes where it was addressed.
    pub connect_to: Option<SocketAddr>,
    /// Which side of the workload the connection crosses.
    pub direction: Direction,
}

// === impl Direction ===

impl Direction {
    /// `inbound` or `outbound`: the metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

// === impl ConnMeta ===

impl ConnMeta {
    /// The metadata of an accepted connection going to `target`.
    pub fn new(accepted: Accepted, target: SocketAddr) -> Self {
        Self {
            client: accepted.client,
            local: accepted.local,
            target,
            connect_to: None,
            direction: accepted.direction,
        }
    }

    /// The address the upstream connection is dialled to:
    /// [`connect_to`](Self::connect_to), else the target.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.connect_to.unwrap_or(self.target)
    }
}
