//! Unit tests of interception: [`SniPattern`] parsing and matching,
//! [`make_ca`], the errors of [`Interceptor::new`] (each naming its file) and
//! the bounded cache of minted leaves.

use super::*;
use l7inspect_test_support::{TempDir, pki::TestCa};

fn pattern(s: &str) -> SniPattern {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

#[test]
fn exact_names_match_in_any_case_and_with_a_trailing_dot() {
    let p = pattern("API.Example.com.");
    assert_eq!(p.to_string(), "api.example.com");
    assert_eq!(p, pattern(" api.example.com "));
    for name in ["api.example.com", "API.EXAMPLE.COM", "api.example.com."] {
        assert!(p.matches(name), "{name}");
    }
    for name in [
        "example.com",
        "x.api.example.com",
        "api.example.co",
        "api.example.com.x",
        "",
    ] {
        assert!(!p.matches(name), "{name}");
    }
    assert!(pattern("localhost").matches("localhost"));
}

#[test]
fn a_wildcard_matches_one_label_only() {
    let p = pattern("*.Example.com");
    assert_eq!(p.to_string(), "*.example.com");
    for name in ["a.example.com", "API.EXAMPLE.COM", "a-b.example.com."] {
        assert!(p.matches(name), "{name}");
    }
    for name in [
        "example.com",
        ".example.com",
        "a.b.example.com",
        "aexample.com",
        "a.example.com.x",
        "a.example.co",
        "",
        // Where the suffix would start falls inside `é`: no match, and
        // no panic slicing there.
        "aéexample.com",
    ] {
        assert!(!p.matches(name), "{name}");
    }
}

#[test]
fn invalid_patterns_are_refused() {
    for bad in [
        "",
        " ",
        ".",
        "*",
        "*.",
        "**.example.com",
        "*example.com",
        "a.*.example.com",
        "*.*.example.com",
        "ex*mple.com",
        "a..example.com",
        ".example.com",
        "example.com:443",
        "exa mple.com",
        "https://example.com",
        "é.example.com",
    ] {
        let err = bad
            .parse::<SniPattern>()
            .expect_err(&format!("{bad:?} should be refused"));
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

fn config(cert: &Path, key: &Path, upstream_ca: Option<&Path>) -> InterceptConfig {
    InterceptConfig {
        upstream_ca: upstream_ca.map(Path::to_owned),
        ..InterceptConfig::new(cert.to_owned(), key.to_owned(), vec![pattern("*.test")])
    }
}

fn new_err(config: InterceptConfig) -> InterceptError {
    match Interceptor::new(config, TlsMetrics::default()) {
        Ok(i) => panic!("built {i:?}"),
        Err(e) => e,
    }
}

#[test]
fn make_ca_writes_a_ca_whose_key_is_private_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("make_ca_writes_a_ca");
    let out = dir.path().join("new");
    let (cert, key) = make_ca(&out, "unit test CA", 2).unwrap();
    assert_eq!(
        (cert.as_path(), key.as_path()),
        (&*out.join("ca.pem"), &*out.join("ca.key"))
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(parsed.is_ca());
    assert!(parsed.subject().to_string().contains("unit test CA"));
    let interceptor =
        Interceptor::new(config(&cert, &key, Some(&cert)), TlsMetrics::default()).unwrap();
    assert!(interceptor.matches("a.test") && !interceptor.matches("a.b.test"));

    // A second run changes nothing and names the file in the way.
    let before = (fs::read(&cert).unwrap(), fs::read(&key).unwrap());
    let err = make_ca(&out, "unit test CA", 2).unwrap_err();
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert_eq!(before, (fs::read(&cert).unwrap(), fs::read(&key).unwrap()));

    // A ca.pem of someone else's: refused, and no ca.key left beside it.
    let theirs = dir.path().join("theirs");
    fs::create_dir_all(&theirs).unwrap();
    fs::write(theirs.join("ca.pem"), "their certificate").unwrap();
    let err = make_ca(&theirs, "unit test CA", 2).unwrap_err();
    assert!(
        err.contains(&theirs.join("ca.pem").display().to_string()),
        "{err}"
    );
    assert!(!theirs.join("ca.key").exists(), "a stray ca.key was left");
    assert_eq!(
        fs::read_to_string(theirs.join("ca.pem")).unwrap(),
        "their certificate"
    );
}

#[test]
fn bad_files_are_named() {
    let dir = TempDir::new("intercept_bad_files_are_named");
    let d = dir.path();
    let (cert, key) = make_ca(&d.join("a"), "CA a", 1).unwrap();
    let (_, other_key) = make_ca(&d.join("b"), "CA b", 1).unwrap();
    let (leaf_cert, leaf_key) = TestCa::new("leaf CA")
        .server(&["localhost"])
        .write(d, "leaf");
    let missing = d.join("missing.pem");
    let garbage = d.join("garbage.pem");
    fs::write(&garbage, "not PEM at all").unwrap();
    let cases: [(InterceptConfig, &Path, &str); 8] = [
        (config(&missing, &key, None), &missing, "no such file"),
        (config(&cert, &missing, None), &missing, "no such file"),
        (
            config(&cert, &other_key, None),
            &other_key,
            "does not match",
        ),
        (
            config(&leaf_cert, &leaf_key, None),
            &leaf_cert,
            "not a CA certificate",
        ),
        (
            config(&cert, &garbage, None),
            &garbage,
            "not a PKCS#8 private key",
        ),
        (
            config(&garbage, &key, None),
            &garbage,
            "not a PEM certificate",
        ),
        (
            config(&cert, &key, Some(&garbage)),
            &garbage,
            "no certificate in the file",
        ),
        (
            config(&cert, &key, Some(&missing)),
            &missing,
            "no such file",
        ),
    ];
    for (config, named, reason) in cases {
        let err = new_err(config);
        assert_eq!(err.path, named);
        let text = err.to_string();
        assert!(
            text.starts_with("TLS interception: ")
                && text.contains(&named.display().to_string())
                && text.contains(reason),
            "{text:?} should name {} and say {reason:?}",
            named.display()
        );
        assert!(!text.contains('\n'), "one line: {text:?}");
    }
}

#[test]
fn leaves_are_minted_per_name_and_bounded() {
    let dir = TempDir::new("leaves_are_minted_per_name");
    let (cert, key) = make_ca(dir.path(), "minting CA", 1).unwrap();
    let mut config = config(&cert, &key, Some(&cert));
    config.max_leaves = 2;
    let interceptor = Interceptor::new(config, TlsMetrics::default()).unwrap();
    let shared = &interceptor.shared;
    let a = shared.mint("a.test").unwrap();
    assert!(Arc::ptr_eq(&a, &shared.mint("a.test").unwrap()), "cached");
    let der = &a.cert[0];
    let (_, leaf) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(!leaf.is_ca());
    let ca_der = CertificateDer::from_pem_file(&cert).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", sans.value.general_names),
        "[DNSName(\"a.test\")]"
    );
    shared.mint("b.test").unwrap();
    shared.mint("c.test").unwrap();
    let leaves = shared.leaves.lock().unwrap();
    assert_eq!(leaves.len(), 2);
    assert!(leaves.contains_key("c.test"));
}
