//! The served certificate: loaded from PEM files, checked, and reloaded
//! when the files change ([`ReloadingCert`]).

use crate::metrics::{ResultLabels, TlsMetrics};
use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    fmt, fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock, Weak},
    thread,
    time::{Duration, SystemTime},
};

/// A certificate or key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct CertError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// A certificate chain and its key, checked: the key matches the leaf, and
/// the leaf has not expired.
#[derive(Clone)]
pub struct CertPair {
    /// The pair, as rustls serves it.
    pub key: Arc<CertifiedKey>,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertPair {
    /// Reads and checks the pair in `cert` (a PEM chain, leaf first) and
    /// `key` (a PEM private key: PKCS#8, PKCS#1 or SEC1). The error names
    /// the file at fault: missing, unreadable, not PEM, no certificate, a
    /// key of no supported type, a key that does not match the leaf, an
    /// expired leaf.
    pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Self, CertError> {
        let fail = |path: &Path, reason: String| CertError {
            path: path.to_owned(),
            reason,
        };
        let cert_pem = read(cert).map_err(|r| fail(cert, r))?;
        let key_pem = read(key).map_err(|r| fail(key, r))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(cert, format!("not a PEM certificate file: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(fail(cert, "no certificate in the file".into()));
        };
        let (not_after, serial) = leaf_facts(leaf).map_err(|r| fail(cert, r))?;
        if not_after <= SystemTime::now() {
            return Err(fail(
                cert,
                format!("the certificate expired at {}", humantime_utc(not_after)),
            ));
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| fail(key, format!("no private key in the file ({e})")))?;
        let signing = provider
            .key_provider
            .load_private_key(private)
            .map_err(|e| fail(key, format!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            fail(
                key,
                format!(
                    "the key does not match the certificate {} ({e})",
                    cert.display()
                ),
            )
        })?;
        Ok(Self {
            key: Arc::new(certified),
            not_after,
            serial,
        })
    }
}

/// The served certificate, reloaded when its files change: the
/// [`ResolvesServerCert`] of a terminating `rustls::ServerConfig`.
///
/// A thread of its own looks at both files every
/// [`interval`](Self::start) (their inode, size and modification time,
/// following symlinks: a rename over the file and a Kubernetes secret's
/// `..data` symlink swap are both seen). A changed pair is loaded and
/// checked as at startup; a good one is served to every new handshake
/// (connections already open keep their session), a bad one is logged once
/// with the file and the reason, counted, and the last good pair stays.
/// The thread ends when the `ReloadingCert` is dropped.
pub struct ReloadingCert {
    current: RwLock<CertPair>,
    cert: PathBuf,
    key: PathBuf,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl ReloadingCert {
    /// Loads the pair (an error names the file and the reason) and starts
    /// watching it every `interval`.
    pub fn start(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
        interval: Duration,
        metrics: TlsMetrics,
    ) -> Result<Arc<Self>, CertError> {
        let stamps = (stamp(&cert), stamp(&key));
        let pair = CertPair::load(&cert, &key, &provider)?;
        metrics.expiry.set(unix_seconds(pair.not_after));
        let this = Arc::new(Self {
            current: RwLock::new(pair),
            cert,
            key,
        });
        let weak = Arc::downgrade(&this);
        thread::Builder::new()
            .name("l7inspect-cert-watch".into())
            .spawn(move || watch(weak, stamps, provider, interval, metrics))
            .map_err(|e| CertError {
                path: this.cert.clone(),
                reason: format!("cannot start the thread that watches it: {e}"),
            })?;
        Ok(this)
    }

    /// The pair served now.
    pub fn current(&self) -> CertPair {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .key
                .clone(),
        )
    }
}

/// The watch loop: one `stat` of each file per interval.
fn watch(
    weak: Weak<ReloadingCert>,
    mut seen: (Option<Stamp>, Option<Stamp>),
    provider: Arc<CryptoProvider>,
    interval: Duration,
    metrics: TlsMetrics,
) {
    loop {
        thread::sleep(interval);
        let Some(this) = weak.upgrade() else { return };
        let now = (stamp(&this.cert), stamp(&this.key));
        if now == seen {
            continue;
        }
        seen = now;
        match CertPair::load(&this.cert, &this.key, &provider) {
            Ok(pair) => {
                tracing::info!(
                    cert = %this.cert.display(),
                    serial = %pair.serial,
                    expires = %humantime_utc(pair.not_after),
                    "TLS certificate reloaded; new handshakes use it"
                );
                metrics.expiry.set(unix_seconds(pair.not_after));
                *this
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = pair;
                metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "loaded" })
                    .inc();
            }
            Err(e) => {
                tracing::warn!("TLS certificate not reloaded, the previous one stays: {e}");
                metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "rejected" })
                    .inc();
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// Reads `path`; the error is the reason, for a message that names the
/// file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| io_reason(&e))
}

/// The CA certificates in the PEM file at `path` (client CAs, upstream
/// CAs); the error is the reason.
pub(crate) fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = read(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(roots)
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot read it: {e}"),
    }
}

/// The leaf's expiry and serial.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(SystemTime, String), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the first certificate is not valid X.509: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    };
    let serial = cert
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((not_after, serial))
}

/// The subject of a (verified) certificate, as RFC 4514 text
/// (`CN=client,O=Example`).
pub(crate) fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.subject().to_string())
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `t` as an RFC 3339 UTC time, to the second.
fn humantime_utc(t: SystemTime) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix_seconds(t))
        .map_or_else(|_| format!("{t:?}"), |t| t.to_string())
}
