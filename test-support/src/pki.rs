//! Certificates for TLS tests, made per test with rcgen: a [`TestCa`] and
//! the leaves it signs ([`Leaf`]), as PEM text and as files. No key is
//! checked in, and every run has fresh serials.
//!
//! ```
//! use l7inspect_test_support::pki::TestCa;
//!
//! let ca = TestCa::new("test CA");
//! let server = ca.server(&["localhost", "127.0.0.1"]);
//! assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert_ne!(server.serial, ca.server(&["localhost"]).serial);
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// A certificate authority for one test.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate signed by a [`TestCa`], with its key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key (PKCS#8), PEM.
    pub key_pem: String,
    /// Its serial number, as lowercase hex without separators (as
    /// `openssl x509 -serial` prints it, lowercased).
    pub serial: String,
}

impl TestCa {
    /// A new CA whose subject's common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate a CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let key_pem = key.serialize_pem();
        Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), its
    /// common name the first of them.
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose subject's common name is `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate for `names` that expired in 2001.
    pub fn expired_server(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, ExtendedKeyUsagePurpose::ServerAuth, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_with(names, usage, |_| {})
    }

    fn leaf_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.extended_key_usages = vec![usage];
        let serial: [u8; 16] = rand_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        adjust(&mut params);
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: hex(&serial),
        }
    }

    /// A rustls client configuration that trusts only this CA, offers
    /// `alpn`, presents `client` when given, and makes a full handshake on
    /// every connection (a resumed session would not show the server's
    /// certificate again).
    pub fn client_config(&self, alpn: &[&[u8]], client: Option<&Leaf>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).expect("a usable CA certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS 1.2 and 1.3 with ring")
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.der()], leaf.key_der())
                .expect("a usable client certificate"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        config
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("our own PEM")
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_cert(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write ca.pem");
        path
    }
}

impl Leaf {
    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("our own PEM")
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("our own PEM")
    }

    /// Writes the certificate and key to `dir/{name}.crt` and
    /// `dir/{name}.key`, returning both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }
}

/// 16 random bytes with the top bit clear (a positive DER integer) and
/// the first byte non-zero (so the hex form has no leading zeros to trim).
fn rand_serial() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
        );
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    out[0] = (out[0] & 0x7f).max(1);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
