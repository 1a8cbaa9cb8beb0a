//! Inbound termination: which connections ([`TerminatePort`]), with what
//! ([`TerminateConfig`], [`Terminator`]), and where their plaintext goes
//! ([`TerminateTargetLayer`]).

use crate::{
    certs::{CertError, CertPair, ReloadingCert, read_roots},
    metrics::TlsMetrics,
};
use l7inspect_core::{ConnMeta, Direction};
use l7inspect_detect::Conn;
use rustls::{
    ServerConfig,
    crypto::{CryptoProvider, ring},
    server::WebPkiClientVerifier,
};
use std::{
    collections::HashMap,
    fmt, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, Service};

/// A port whose inbound TLS the proxy terminates, and where the plaintext
/// goes: `PORT` or `PORT=APP_PORT` (`--tls-terminate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminatePort {
    /// The port clients connect to with TLS: a redirected connection's
    /// original destination port, or an explicit listener's own port.
    pub port: u16,
    /// The application's plaintext port; `None`: the same port.
    pub app_port: Option<u16>,
}

/// A [`TerminatePort`] could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not PORT or PORT=APP_PORT (ports 1-65535)")]
pub struct ParsePortError(String);

/// Settings of inbound termination.
#[derive(Clone, Debug)]
pub struct TerminateConfig {
    /// The ports terminated.
    pub ports: Vec<TerminatePort>,
    /// The certificate chain served (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Require client certificates signed by these CAs (PEM); `None`: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    /// Default 1 s.
    pub reload_interval: Duration,
    /// How long a client may take to complete its handshake. Default 10 s.
    pub handshake_timeout: Duration,
}

/// Termination could not be set up: one line naming the file and reason.
#[derive(Debug, thiserror::Error)]
pub enum TerminateError {
    /// The certificate or key.
    #[error("TLS certificate: {0}")]
    Cert(#[from] CertError),
    /// The client CA file.
    #[error("TLS client CA {}: {reason}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Terminates the inbound TLS of the configured ports: the acceptor with
/// the reloading certificate, and the port table. Cheap to clone.
#[derive(Clone)]
pub struct Terminator {
    shared: Arc<Shared>,
}

struct Shared {
    ports: Vec<TerminatePort>,
    /// ALPN `h2` and `http/1.1`: for applications that speak HTTP/2.
    acceptor_h2: TlsAcceptor,
    /// ALPN `http/1.1` only.
    acceptor_h1: TlsAcceptor,
    cert: Arc<ReloadingCert>,
    handshake_timeout: Duration,
    /// What the applications' ports speak, as last probed.
    probes: Mutex<HashMap<SocketAddr, (bool, Instant)>>,
}

/// How long a probe's answer (does the application speak HTTP/2?) is kept.
const PROBE_TTL: Duration = Duration::from_secs(30);

/// How long a probe may take: connecting, and the application's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PROBE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Where a terminated connection's plaintext goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// Dial this instead of the target.
    pub connect_to: Option<SocketAddr>,
}

// === impl TerminatePort ===

impl FromStr for TerminatePort {
    type Err = ParsePortError;

    fn from_str(s: &str) -> Result<Self, ParsePortError> {
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let err = || ParsePortError(s.to_owned());
        match s.split_once('=') {
            None => Ok(Self {
                port: port(s).ok_or_else(err)?,
                app_port: None,
            }),
            Some((p, app)) => Ok(Self {
                port: port(p).ok_or_else(err)?,
                app_port: Some(port(app).ok_or_else(err)?),
            }),
        }
    }
}

impl fmt::Display for TerminatePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.app_port {
            Some(app) => write!(f, "{}={app}", self.port),
            None => write!(f, "{}", self.port),
        }
    }
}

// === impl TerminateConfig ===

impl TerminateConfig {
    /// Terminates `ports` with the pair in `cert` and `key`, no client
    /// certificates, default reload interval and handshake timeout.
    pub fn new(ports: Vec<TerminatePort>, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            ports,
            cert,
            key,
            client_ca: None,
            reload_interval: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

// === impl Terminator ===

impl fmt::Debug for Terminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminator")
            .field("ports", &self.shared.ports)
            .field("cert", &self.shared.cert)
            .finish_non_exhaustive()
    }
}

impl Terminator {
    /// Loads and checks the certificate, key and client CA (an error names
    /// the file and what is wrong), starts watching the pair for changes,
    /// and builds the acceptor: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
    /// Reloads and the certificate's expiry go to `metrics`.
    pub fn new(config: TerminateConfig, metrics: TlsMetrics) -> Result<Self, TerminateError> {
        let provider = Arc::new(ring::default_provider());
        let cert = ReloadingCert::start(
            config.cert,
            config.key,
            provider.clone(),
            config.reload_interval,
            metrics,
        )?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CertError {
                path: PathBuf::new(),
                reason: e.to_string(),
            })?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier = client_verifier(path, provider)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut h1 = builder.with_cert_resolver(cert.clone());
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2 = h1.clone();
        h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            shared: Arc::new(Shared {
                ports: config.ports,
                acceptor_h2: TlsAcceptor::from(Arc::new(h2)),
                acceptor_h1: TlsAcceptor::from(Arc::new(h1)),
                cert,
                handshake_timeout: config.handshake_timeout,
                probes: Mutex::default(),
            }),
        })
    }

    /// The pair served now (its serial, its expiry).
    pub fn certificate(&self) -> CertPair {
        self.shared.cert.current()
    }

    /// The layer that sends a terminated connection's upstream connection
    /// to the application's plaintext port. It goes before
    /// `l7inspect_core::ConnectLayer`, which dials.
    pub fn target_layer(&self) -> TerminateTargetLayer {
        TerminateTargetLayer {
            terminator: self.clone(),
        }
    }

    /// The acceptor for a connection whose plaintext goes to `app`: ALPN
    /// `h2` is offered only when the application speaks HTTP/2 in
    /// cleartext (prior knowledge, as gRPC servers do), since requests are
    /// forwarded in the version the client chose; an HTTP/1-only
    /// application gets `http/1.1` clients.
    ///
    /// Whether it does is learnt by a probe (a connection that sends the
    /// HTTP/2 preface and waits for the server's SETTINGS), once per
    /// application address and [`PROBE_TTL`].
    pub(crate) async fn acceptor(&self, app: SocketAddr) -> &TlsAcceptor {
        let s = &*self.shared;
        let known = {
            let probes = s.probes.lock().unwrap_or_else(PoisonError::into_inner);
            probes
                .get(&app)
                .filter(|(_, at)| at.elapsed() < PROBE_TTL)
                .map(|(h2, _)| *h2)
        };
        let h2 = match known {
            Some(h2) => h2,
            None => {
                let h2 = speaks_h2(app).await;
                tracing::debug!(%app, h2, "probed the application's HTTP/2 support");
                s.probes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(app, (h2, Instant::now()));
                h2
            }
        };
        if h2 { &s.acceptor_h2 } else { &s.acceptor_h1 }
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.shared.handshake_timeout
    }

    /// Whether `meta`'s connection is terminated, and where its plaintext
    /// goes: inbound only; an explicit listener whose own port is
    /// configured goes to its target (on `APP_PORT` when given); a
    /// redirected connection whose original port is configured goes to
    /// loopback, on `APP_PORT` or the same port.
    pub(crate) fn route(&self, meta: &ConnMeta) -> Option<Route> {
        if meta.direction != Direction::Inbound {
            return None;
        }
        let ports = &self.shared.ports;
        if let Some(p) = ports.iter().find(|p| p.port == meta.local.port()) {
            return Some(Route {
                connect_to: p.app_port.map(|app| SocketAddr::new(meta.target.ip(), app)),
            });
        }
        let p = ports.iter().find(|p| p.port == meta.target.port())?;
        let loopback = match meta.target {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        Some(Route {
            connect_to: Some(SocketAddr::new(loopback, p.app_port.unwrap_or(p.port))),
        })
    }
}

/// Whether the server at `addr` answers the HTTP/2 preface with a
/// SETTINGS frame.
async fn speaks_h2(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(H2_PROBE).await?;
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await?;
        // A frame header whose type is SETTINGS (4).
        Ok::<_, io::Error>(header[3] == 4)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TerminateError> {
    let fail = |reason: String| TerminateError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let roots = read_roots(path).map_err(fail)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| fail(e.to_string()))
}

/// A [`Layer`] that dials a terminated connection's application port
/// instead of its original destination (see [`Terminator::target_layer`]).
#[derive(Clone, Debug)]
pub struct TerminateTargetLayer {
    terminator: Terminator,
}

/// Sets [`ConnMeta::connect_to`] on the connections [`Terminator`]
/// terminates.
#[derive(Clone, Debug)]
pub struct TerminateTarget<S> {
    inner: S,
    terminator: Terminator,
}

impl<S> Layer<S> for TerminateTargetLayer {
    type Service = TerminateTarget<S>;

    fn layer(&self, inner: S) -> TerminateTarget<S> {
        TerminateTarget {
            inner,
            terminator: self.terminator.clone(),
        }
    }
}

impl<S, I> Service<Conn<ConnMeta, I>> for TerminateTarget<S>
where
    S: Service<Conn<ConnMeta, I>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut conn: Conn<ConnMeta, I>) -> S::Future {
        if let Some(route) = self.terminator.route(&conn.meta) {
            conn.meta.connect_to = route.connect_to;
        }
        self.inner.call(conn)
    }
}

/// Why a termination failed: the `reason` label of
/// `l7inspect_tls_handshake_errors_total`.
pub(crate) fn handshake_reason(e: &io::Error) -> &'static str {
    use rustls::Error as E;
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        return match tls {
            E::NoCertificatesPresented | E::InvalidCertificate(_) => "client_certificate",
            E::NoApplicationProtocol => "no_common_alpn",
            E::PeerIncompatible(_) => "incompatible",
            E::AlertReceived(_) => "alert",
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_) => "invalid_message",
            _ => "other",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "eof",
        io::ErrorKind::TimedOut => "timeout",
        _ => "io",
    }
}
