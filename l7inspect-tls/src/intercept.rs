//! Opt-in interception of outbound TLS: [`InterceptConfig`],
//! [`Interceptor`] (the CA, the leaves it mints, the upstream trust) and
//! [`make_ca`] for development CAs.

use crate::metrics::TlsMetrics;
use l7inspect_core::{UpstreamIo, UpstreamStream, WrapUpstream};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use std::{
    collections::HashMap,
    fmt, fs, io,
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

/// How long a minted leaf is valid (it starts an hour back, for clocks
/// behind ours).
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a minted leaf is served before a new one is made.
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);

/// Server names whose outbound TLS is intercepted: `api.example.com`
/// exactly, or `*.example.com`: any name one label under `example.com`
/// (as a certificate's wildcard; not `example.com` itself, nor
/// `a.b.example.com`). Case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniPattern(Pattern);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// The suffix after `*`, with its dot: `.example.com`.
    Wildcard(String),
}

/// An [`SniPattern`] could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a host name or *.domain pattern")]
pub struct ParseSniPatternError(String);

/// Settings of outbound interception.
#[derive(Clone, Debug)]
pub struct InterceptConfig {
    /// The CA certificate the minted leaves are signed with (PEM).
    pub ca_cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub ca_key: PathBuf,
    /// The server names intercepted; nothing is intercepted without one.
    pub sni: Vec<SniPattern>,
    /// Trust these CAs (PEM) for the real destinations instead of the
    /// system's roots.
    pub upstream_ca: Option<PathBuf>,
    /// The most leaves kept (one per server name). Default 1000.
    pub max_leaves: usize,
    /// How long either handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
}

/// Interception could not be set up: one line naming the file and reason.
#[derive(Debug, thiserror::Error)]
#[error("TLS interception: {}: {reason}", path.display())]
pub struct InterceptError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Intercepts the outbound TLS of the configured server names: mints a
/// leaf per name signed by the configured CA (a bounded cache), and opens
/// TLS to the real destination, verified. Cheap to clone.
#[derive(Clone)]
pub struct Interceptor {
    shared: Arc<Shared>,
}

struct Shared {
    sni: Vec<SniPattern>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
    max_leaves: usize,
    provider: Arc<CryptoProvider>,
    /// To the real destination: trusted roots, per ALPN list.
    upstream: ClientConfig,
    handshake_timeout: Duration,
    /// Towards the client, by the ALPN the destination chose.
    accept_h2: TlsAcceptor,
    accept_h1: TlsAcceptor,
    accept_none: TlsAcceptor,
    /// Answers every handshake with a failure alert (the destination
    /// could not be trusted).
    refuse: TlsAcceptor,
    metrics: TlsMetrics,
    /// The refusals' warnings: a peer can cause them.
    log: l7inspect_core::RateLimited,
}

// === impl SniPattern ===

impl FromStr for SniPattern {
    type Err = ParseSniPatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = |name: &str| {
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        match lower.strip_prefix("*.") {
            Some(rest) if valid(rest) => Ok(Self(Pattern::Wildcard(format!(".{rest}")))),
            None if valid(&lower) => Ok(Self(Pattern::Exact(lower))),
            _ => Err(ParseSniPatternError(s.to_owned())),
        }
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl SniPattern {
    /// Whether `name` (an SNI) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match &self.0 {
            Pattern::Exact(exact) => name.eq_ignore_ascii_case(exact),
            Pattern::Wildcard(suffix) => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !name[..name.len() - suffix.len()].contains('.')
            }
        }
    }
}

// === impl InterceptConfig ===

impl InterceptConfig {
    /// Intercepts `sni` with the CA in `ca_cert` and `ca_key`, trusting the
    /// system's roots for the destinations.
    pub fn new(ca_cert: PathBuf, ca_key: PathBuf, sni: Vec<SniPattern>) -> Self {
        Self {
            ca_cert,
            ca_key,
            sni,
            upstream_ca: None,
            max_leaves: 1000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

// === impl Interceptor ===

impl fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interceptor")
            .field("sni", &self.shared.sni)
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// Loads the CA (its key must match its certificate) and the upstream
    /// trust (the file given, else the system's roots); an error names the
    /// file and what is wrong.
    pub fn new(config: InterceptConfig, metrics: TlsMetrics) -> Result<Self, InterceptError> {
        let fail = |path: &Path, reason: String| InterceptError {
            path: path.to_owned(),
            reason,
        };
        let read = |path: &Path| {
            let bytes = crate::certs::read(path).map_err(|r| fail(path, r))?;
            String::from_utf8(bytes).map_err(|_| fail(path, "not a PEM file (not text)".into()))
        };
        let cert_pem = read(&config.ca_cert)?;
        let key_pem = read(&config.ca_key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            fail(
                &config.ca_key,
                format!("not a PKCS#8 private key (\"BEGIN PRIVATE KEY\"): {e}"),
            )
        })?;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| fail(&config.ca_cert, format!("not a PEM certificate: {e}")))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| fail(&config.ca_cert, format!("not valid X.509: {e}")))?;
        if !ca.is_ca() {
            return Err(fail(&config.ca_cert, "not a CA certificate".into()));
        }
        if ca.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(fail(
                &config.ca_key,
                format!(
                    "the key does not match the CA certificate {}",
                    config.ca_cert.display()
                ),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| fail(&config.ca_cert, format!("cannot sign with it: {e}")))?;

        let roots = match &config.upstream_ca {
            Some(path) => crate::certs::read_roots(path).map_err(|r| fail(path, r))?,
            None => system_roots(),
        };
        let provider = Arc::new(ring::default_provider());
        let upstream = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&config.ca_cert, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let resolver = Arc::new(LeafResolver(weak.clone()));
            let server = |alpn: &[&[u8]], resolver: Arc<dyn ResolvesServerCert>| {
                let mut c = ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_no_client_auth()
                    .with_cert_resolver(resolver);
                c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                TlsAcceptor::from(Arc::new(c))
            };
            Shared {
                sni: config.sni,
                issuer,
                leaves: Mutex::default(),
                max_leaves: config.max_leaves.max(1),
                accept_h2: server(&[b"h2"], resolver.clone()),
                accept_h1: server(&[b"http/1.1"], resolver.clone()),
                accept_none: server(&[], resolver),
                refuse: server(&[], Arc::new(Refuse)),
                provider: provider.clone(),
                upstream,
                handshake_timeout: config.handshake_timeout,
                metrics,
                log: l7inspect_core::RateLimited::default(),
            }
        });
        Ok(Self { shared })
    }

    /// Whether a connection to `sni` is intercepted.
    pub fn matches(&self, sni: &str) -> bool {
        self.shared.sni.iter().any(|p| p.matches(sni))
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.shared.handshake_timeout
    }

    pub(crate) fn metrics(&self) -> &TlsMetrics {
        &self.shared.metrics
    }

    /// Logs a warning, rate-limited (the count of those suppressed since
    /// the last one is passed on).
    pub(crate) fn warn(&self, log: impl FnOnce(u64)) {
        self.shared.log.warn(log);
    }

    /// The leaf for `sni`, from the cache or minted now (off the runtime's
    /// threads: key generation and signing take a millisecond or so).
    pub(crate) async fn prepare_leaf(&self, sni: &str) -> Result<(), String> {
        if self.shared.cached(sni).is_some() {
            return Ok(());
        }
        let this = self.clone();
        let name = sni.to_owned();
        tokio::task::spawn_blocking(move || this.shared.mint(&name).map(drop))
            .await
            .map_err(|e| e.to_string())?
    }

    /// A TLS connector to the real destination, offering `alpn`.
    pub(crate) fn upstream(&self, alpn: Vec<Vec<u8>>) -> TlsConnector {
        let mut config = self.shared.upstream.clone();
        config.alpn_protocols = alpn;
        TlsConnector::from(Arc::new(config))
    }

    /// The acceptor for the client once the destination chose `alpn`.
    pub(crate) fn acceptor(&self, alpn: Option<&[u8]>) -> &TlsAcceptor {
        match alpn {
            Some(b"h2") => &self.shared.accept_h2,
            Some(b"http/1.1") => &self.shared.accept_h1,
            _ => &self.shared.accept_none,
        }
    }

    /// The acceptor that refuses the client's handshake with an alert.
    pub(crate) fn refuse(&self) -> &TlsAcceptor {
        &self.shared.refuse
    }
}

impl Shared {
    fn cached(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        leaves
            .get(sni)
            .filter(|(_, made)| made.elapsed() < LEAF_REUSE)
            .map(|(leaf, _)| leaf.clone())
    }

    fn mint(&self, sni: &str) -> Result<Arc<CertifiedKey>, String> {
        if let Some(leaf) = self.cached(sni) {
            return Ok(leaf);
        }
        let mut params = CertificateParams::new(vec![sni.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, sni);
        params.subject_alt_names = vec![SanType::DnsName(
            sni.to_owned()
                .try_into()
                .map_err(|e: rcgen::Error| e.to_string())?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(LEAF_VALIDITY.as_secs() as i64);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let private = PrivateKeyDer::try_from(key.serialize_der()).map_err(str::to_owned)?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(private)
            .map_err(|e| e.to_string())?;
        let leaf = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if leaves.len() >= self.max_leaves {
            // Bounded: the oldest goes.
            if let Some(oldest) = leaves
                .iter()
                .min_by_key(|(_, (_, made))| *made)
                .map(|(name, _)| name.clone())
            {
                leaves.remove(&oldest);
            }
        }
        leaves.insert(sni.to_owned(), (leaf.clone(), Instant::now()));
        Ok(leaf)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The system's trusted roots (what `rustls-native-certs` finds: the
/// distribution's bundle, `SSL_CERT_FILE`, `SSL_CERT_DIR`). Unreadable
/// entries are skipped with a log line; none at all leaves every
/// destination untrusted, which the first refused connection's log says.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("system CA certificates: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(
            added,
            ignored,
            "system CA certificates: some could not be used"
        );
    }
    roots
}

/// Serves the minted leaf of the name the client asked for.
#[derive(Debug)]
struct LeafResolver(std::sync::Weak<Shared>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let shared = self.0.upgrade()?;
        let sni = hello.server_name()?;
        // Minted before the handshake (`prepare_leaf`); minted here only if
        // the cache let it go in between.
        shared.cached(sni).or_else(|| shared.mint(sni).ok())
    }
}

/// Serves no certificate: the handshake fails with an alert.
#[derive(Debug)]
struct Refuse;

impl ResolvesServerCert for Refuse {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

// === TLS origination ===

/// A TLS client session over an upstream connection's TCP stream.
pub(crate) struct UpstreamTls(pub(crate) TlsStream<TcpStream>);

impl UpstreamStream for UpstreamTls {
    fn tcp(&self) -> &TcpStream {
        self.0.get_ref().0
    }
}

impl AsyncRead for UpstreamTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Wraps each further upstream connection of an intercepted client
/// connection (HTTP/1 keep-alive reconnections) in TLS to the same name,
/// with the ALPN the first one chose: never plaintext.
#[derive(Clone)]
pub(crate) struct Originate {
    pub(crate) connector: TlsConnector,
    pub(crate) name: ServerName<'static>,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for Originate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Originate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Originate {
    /// `io` in a verified TLS session to `name`.
    pub(crate) async fn connect(&self, io: UpstreamIo) -> io::Result<UpstreamIo> {
        Ok(self.connect_alpn(io).await?.0)
    }

    /// `io` in a verified TLS session to `name`, and the ALPN protocol the
    /// destination chose.
    pub(crate) async fn connect_alpn(
        &self,
        io: UpstreamIo,
    ) -> io::Result<(UpstreamIo, Option<Vec<u8>>)> {
        let mut chosen = None;
        let handshake = io.wrap(|tcp| async {
            let tls = self.connector.connect(self.name.clone(), tcp).await?;
            chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Ok(UpstreamTls(tls))
        });
        let io = tokio::time::timeout(self.timeout, handshake)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake with the destination timed out",
                ))
            })?;
        Ok((io, chosen))
    }
}

impl WrapUpstream for Originate {
    fn wrap(&self, io: UpstreamIo) -> Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>> {
        let this = self.clone();
        Box::pin(async move { this.connect(io).await })
    }
}

// === make_ca ===

/// Writes a new CA for interception to `dir/ca.pem` and `dir/ca.key`
/// (the key readable by its owner only), valid for `days`, with `name` as
/// its common name: for development and staging. Whoever trusts it trusts
/// every certificate this proxy mints with it, for any name. Either file
/// already there is an error naming it, and then neither is written.
pub fn make_ca(dir: &Path, name: &str, days: u32) -> Result<(PathBuf, PathBuf), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time_now();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    let open = |path: &Path, mode: u32| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    // Both files are created (never overwritten) before either is written:
    // a `ca.pem` already there must not get a new `ca.key` beside it, nor
    // the other way round.
    let key_file = open(&key_path, 0o600)?;
    let cert_file = open(&cert_path, 0o644).inspect_err(|_| {
        let _ = fs::remove_file(&key_path);
    })?;
    let write = |mut file: fs::File, path: &Path, text: &str| {
        use std::io::Write;
        file.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(key_file, &key_path, &key.serialize_pem())
        .and_then(|()| write(cert_file, &cert_path, &cert.pem()))
        .inspect_err(|_| {
            // Half a CA is of no use: neither stays.
            let _ = fs::remove_file(&key_path);
            let _ = fs::remove_file(&cert_path);
        })?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests;
