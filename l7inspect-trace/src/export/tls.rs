//! TLS to collectors: the connector under the exporters' HTTP clients, and
//! the rustls client configuration behind it, built once from a
//! [`TlsConfig`] when the pipeline starts.
//!
//! One connector serves both schemes (hyper-rustls's `https_or_http`):
//! `http://` dials plain TCP, `https://` adds a TLS handshake that checks
//! the collector's certificate against the configured CA file, else the
//! system's roots, and the name in the endpoint (a DNS name or an IP
//! address). ALPN offers exactly the protocol the client speaks: `h2` for
//! OTLP/gRPC, `http/1.1` for OTLP/HTTP and Zipkin.
//!
//! A collector whose certificate does not verify fails each export at the
//! handshake, with rustls's reason in the error ("invalid peer
//! certificate: UnknownIssuer"), which the pipeline counts and logs like
//! any other failed export; nothing here runs on the traffic path.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{PemFile, TlsConfig};

/// The ALPN protocol id of HTTP/2, which OTLP/gRPC needs.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1 (OTLP/HTTP, Zipkin).
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why the TLS settings cannot be used.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// A file they name: missing, unreadable, or without usable PEM.
    File {
        /// What the file was to hold.
        role: &'static str,
        /// The file.
        file: PemFile,
        /// Why it cannot be used.
        reason: String,
    },
    /// Anything else (no system roots, a certificate without its key).
    Other(String),
}

/// A connector for `http://` and `https://` URLs: `http` dials, and TLS as
/// `tls` says runs over it for `https://`, offering `alpn`.
///
/// The files `tls` names are read now. The system's roots are loaded only
/// when `https` is true and no CA file is configured (a plaintext
/// exporter must not fail on a machine without a CA bundle).
pub(crate) fn connector(
    tls: &TlsConfig,
    https: bool,
    alpn: &[u8],
    mut http: HttpConnector,
) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    let config = client_config(tls, https, alpn)?;
    // HttpConnector refuses any scheme but http unless told otherwise; the
    // HTTPS connector around it checks the scheme.
    http.enforce_http(false);
    Ok(HttpsConnector::from((http, Arc::new(config))))
}

/// The rustls client configuration for `tls` (see [`connector`]).
pub(crate) fn client_config(
    tls: &TlsConfig,
    https: bool,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    // The named files first, so that a broken one is reported even on a
    // machine without system roots.
    let ca = tls.ca.as_ref().map(load_roots).transpose()?;
    let client = match (&tls.client_cert, &tls.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((
            cert,
            load_certs(cert, "client certificate")?,
            key,
            load_key(key)?,
        )),
        (Some(file), None) | (None, Some(file)) => {
            return Err(TlsError::Other(format!(
                "a client certificate and a client key go together, but only {} is set",
                describe(file)
            )));
        }
    };
    let roots = match ca {
        Some(roots) => roots,
        None if https => system_roots()?,
        // Never used: the endpoint is http://.
        None => RootCertStore::empty(),
    };
    // The provider named rather than taken from the process default: the
    // workspace builds rustls with `ring` only, but a dependency enabling
    // `aws-lc-rs` as well would make the default ambiguous (a panic).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, chain, key, key_der)) => builder
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| TlsError::File {
                role: "client certificate",
                file: cert.clone(),
                reason: format!("unusable with its key {:?}: {e}", key.path),
            })?,
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// `"path" (VARIABLE)`, or `"path"` when named in code.
pub(crate) fn describe(file: &PemFile) -> String {
    match file.named_by {
        Some(by) => format!("{:?} ({by})", file.path),
        None => format!("{:?}", file.path),
    }
}

/// The CA certificates in `file`, every one of which must parse.
fn load_roots(file: &PemFile) -> Result<RootCertStore, TlsError> {
    let role = "CA certificates";
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(file, role)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::File {
            role,
            file: file.clone(),
            reason: format!("certificate {}: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

/// Every `CERTIFICATE` section of `file`, at least one.
fn load_certs(
    file: &PemFile,
    role: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |e: pem::Error| TlsError::File {
        role,
        file: file.clone(),
        reason: pem_reason(e, "CERTIFICATE"),
    };
    let certs = CertificateDer::pem_file_iter(&file.path)
        .map_err(fail)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    if certs.is_empty() {
        return Err(fail(pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The first private key in `file`.
fn load_key(file: &PemFile) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(&file.path).map_err(|e| TlsError::File {
        role: "client key",
        file: file.clone(),
        reason: pem_reason(e, "PRIVATE KEY"),
    })
}

fn pem_reason(e: pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        pem::Error::NoItemsFound => format!("no PEM {what} section in it"),
        other => format!("not valid PEM: {other}"),
    }
}

/// The roots the system trusts, as `rustls-native-certs` finds them.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(TlsError::Other(format!(
            "no trusted root certificates found on this system{}; name a CA file \
             (OTEL_EXPORTER_OTLP_CERTIFICATE for OTLP)",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use l7inspect_test_support::TempDir;
    use l7inspect_test_support::pki::TestCa;

    fn file(path: std::path::PathBuf) -> Option<PemFile> {
        Some(PemFile {
            path,
            named_by: Some("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        })
    }

    fn reason(tls: &TlsConfig) -> String {
        match client_config(tls, true, ALPN_H2) {
            Err(TlsError::File { reason, .. }) | Err(TlsError::Other(reason)) => reason,
            Ok(_) => panic!("accepted {tls:?}"),
        }
    }

    #[test]
    fn ca_file_trusted_alpn_set() {
        let dir = TempDir::new("trace-tls");
        let ca = TestCa::new("collector CA");
        let config = client_config(
            &TlsConfig {
                ca: file(ca.write_cert(dir.path())),
                ..TlsConfig::default()
            },
            true,
            ALPN_H2,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn bad_files_say_why() {
        let dir = TempDir::new("trace-tls");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        let with_ca = |p: &std::path::Path| TlsConfig {
            ca: file(p.to_owned()),
            ..TlsConfig::default()
        };
        assert!(
            reason(&with_ca(&missing)).starts_with("cannot read it: "),
            "{}",
            reason(&with_ca(&missing))
        );
        assert_eq!(
            reason(&with_ca(&garbage)),
            "no PEM CERTIFICATE section in it"
        );
        assert!(
            reason(&with_ca(&broken)).starts_with("certificate 1: "),
            "{}",
            reason(&with_ca(&broken))
        );
        // A key file without a key; a certificate without its key.
        let ca = TestCa::new("client CA");
        let (cert, _key) = ca.client("exporter").write(dir.path(), "client");
        let tls = TlsConfig {
            client_cert: Some(PemFile::new(&cert)),
            client_key: Some(PemFile::new(&cert)),
            ..TlsConfig::default()
        };
        assert_eq!(reason(&tls), "no PEM PRIVATE KEY section in it");
        let tls = TlsConfig {
            client_cert: Some(PemFile::new(&cert)),
            ..TlsConfig::default()
        };
        assert!(reason(&tls).contains("only \""), "{}", reason(&tls));
    }

    #[test]
    fn client_certificate_with_the_wrong_key_is_refused() {
        let dir = TempDir::new("trace-tls");
        let ca = TestCa::new("client CA");
        let (cert, _) = ca.client("one").write(dir.path(), "one");
        let (_, other_key) = ca.client("two").write(dir.path(), "two");
        let tls = TlsConfig {
            client_cert: Some(PemFile::new(&cert)),
            client_key: Some(PemFile::new(&other_key)),
            ..TlsConfig::default()
        };
        assert!(
            reason(&tls).starts_with("unusable with its key"),
            "{}",
            reason(&tls)
        );
    }
}
