//! Tests on first bytes captured from real clients (`testdata/`, see its
//! README for how each was captured) and on ClientHellos made by rustls.

use crate::{
    Conn, Detect, DetectConfig, Detected, Detection, Outcome, ParsedHello, Protocol, detect,
    detect_server_greeting, parse_client_hello,
};
use std::sync::Arc;
use tower::{BoxError, ServiceExt, service_fn};

macro_rules! fixture {
    ($name:literal) => {
        ($name, &include_bytes!(concat!("../testdata/", $name))[..])
    };
}

/// Every captured fixture and the protocol it must be detected as (`None`:
/// unknown).
fn fixtures() -> Vec<(&'static str, &'static [u8], Option<Protocol>)> {
    use Protocol::*;
    let table = [
        (fixture!("http1_curl_get.bin"), Some(Http1)),
        (fixture!("http1_curl_post.bin"), Some(Http1)),
        (fixture!("http2_curl_prior_knowledge.bin"), Some(Http2)),
        (fixture!("tls_openssl_sni_alpn.bin"), Some(Tls)),
        (fixture!("tls_openssl_tls12_only.bin"), Some(Tls)),
        (fixture!("tls_curl_https.bin"), Some(Tls)),
        (fixture!("redis_cli_ping.bin"), Some(Redis)),
        (fixture!("postgres_psql_sslrequest.bin"), Some(Postgres)),
        (fixture!("postgres_psql_startup.bin"), Some(Postgres)),
        (fixture!("postgres_gssencrequest.bin"), Some(Postgres)),
        (fixture!("postgres_cancelrequest.bin"), Some(Postgres)),
        (fixture!("kafka_kcat_apiversions.bin"), Some(Kafka)),
        (fixture!("memcached_text_get.bin"), Some(Memcached)),
        (fixture!("mongodb_hello.bin"), Some(MongoDb)),
        (fixture!("cassandra_options.bin"), Some(Cassandra)),
        (fixture!("cassandra_options_v4.bin"), Some(Cassandra)),
        (fixture!("amqp_pika.bin"), Some(Amqp)),
        (fixture!("thrift_binary_framed.bin"), Some(Thrift)),
        (fixture!("thrift_binary_unframed.bin"), Some(Thrift)),
        (fixture!("thrift_compact_framed.bin"), Some(Thrift)),
        (fixture!("ssh_client_banner.bin"), Some(Ssh)),
        (fixture!("garbage_random.bin"), None),
    ];
    table
        .into_iter()
        .map(|((name, bytes), p)| (name, bytes, p))
        .collect()
}

/// Every captured server's first bytes and the protocol
/// [`detect_server_greeting`] must find in them (`None`: unknown).
fn server_fixtures() -> Vec<(&'static str, &'static [u8], Option<Protocol>)> {
    let table = [
        (
            fixture!("mysql_mariadb_greeting.bin"),
            Some(Protocol::Mysql),
        ),
        (fixture!("server_hello_openssl_tls13_h2.bin"), None),
        (fixture!("server_hello_openssl_tls12_http11.bin"), None),
        (fixture!("server_hello_openssl_tls13_no_alpn.bin"), None),
    ];
    table
        .into_iter()
        .map(|((name, bytes), p)| (name, bytes, p))
        .collect()
}

#[test]
fn server_greetings() {
    for (name, bytes, p) in server_fixtures() {
        assert_eq!(detect_server_greeting(bytes), expected(p), "{name}");
        for n in 0..bytes.len() {
            let got = detect_server_greeting(&bytes[..n]);
            assert!(
                got == Detection::NeedMore || got == expected(p),
                "{name}: prefix of {n} bytes gave {got:?}"
            );
        }
        // A server's greeting sent by a client is no client protocol.
        assert_eq!(detect(bytes), Detection::Unknown, "{name} from a client");
    }
    // Nor is any client's first flight a server greeting (the SSH client's
    // banner is the same line an SSH server sends).
    for (name, bytes, _) in fixtures() {
        assert_eq!(detect_server_greeting(bytes), Detection::Unknown, "{name}");
    }
}

fn expected(p: Option<Protocol>) -> Detection {
    p.map_or(Detection::Unknown, Detection::Found)
}

#[test]
fn whole_fixtures() {
    for (name, bytes, p) in fixtures() {
        assert_eq!(detect(bytes), expected(p), "{name}");
    }
}

/// Every strict prefix answers NeedMore or the final answer, never another.
#[test]
fn every_prefix_is_consistent() {
    for (name, bytes, p) in fixtures() {
        for n in 0..bytes.len() {
            let got = detect(&bytes[..n]);
            assert!(
                got == Detection::NeedMore || got == expected(p),
                "{name}: prefix of {n} bytes gave {got:?}"
            );
        }
    }
}

#[test]
fn captured_client_hellos() {
    let cases = [
        (
            fixture!("tls_openssl_sni_alpn.bin"),
            "example.com",
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ),
        (
            fixture!("tls_openssl_tls12_only.bin"),
            "legacy.example",
            vec![],
        ),
        (
            fixture!("tls_curl_https.bin"),
            "foo.test",
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ),
    ];
    for ((name, bytes), sni, alpn) in cases {
        let ParsedHello::Complete(hello) = parse_client_hello(bytes) else {
            panic!("{name}: not parsed");
        };
        assert_eq!(hello.server_name.as_deref(), Some(sni), "{name}");
        assert_eq!(hello.alpn, alpn, "{name}");
        for n in 0..bytes.len() {
            assert_eq!(
                parse_client_hello(&bytes[..n]),
                ParsedHello::NeedMore,
                "{name} {n}"
            );
        }
    }
    let (_, tls12) = fixture!("tls_openssl_tls12_only.bin");
    let ParsedHello::Complete(hello) = parse_client_hello(tls12) else {
        unreachable!()
    };
    assert_eq!(hello.versions, vec![0x0303], "TLS 1.2 only offers 1.2");
    let (_, tls13) = fixture!("tls_openssl_sni_alpn.bin");
    let ParsedHello::Complete(hello) = parse_client_hello(tls13) else {
        unreachable!()
    };
    assert!(hello.versions.contains(&0x0304), "{:?}", hello.versions);
}

/// The first flight of a real rustls client, produced in-process.
fn rustls_client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn rustls_client_hello_sni_alpn() {
    let bytes = rustls_client_hello("api.example.org", &[b"h2", b"http/1.1"]);
    assert_eq!(detect(&bytes), Detection::Found(Protocol::Tls));
    let ParsedHello::Complete(hello) = parse_client_hello(&bytes) else {
        panic!("not parsed");
    };
    assert_eq!(hello.server_name.as_deref(), Some("api.example.org"));
    assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert!(hello.versions.contains(&0x0304), "{:?}", hello.versions);
}

/// Runs the layer on `bytes` delivered in chunks of `chunk` bytes.
async fn layer_outcome(bytes: &[u8], chunk: usize) -> (Outcome, Option<String>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut b = tokio_test::io::Builder::new();
    for c in bytes.chunks(chunk) {
        b.read(c);
    }
    let inner = service_fn(|mut d: Detected<(), tokio_test::io::Mock>| async move {
        let mut all = Vec::new();
        d.io.read_to_end(&mut all).await?;
        let sni = d.client_hello.and_then(|h| h.server_name);
        Ok::<_, BoxError>((d.outcome, sni, all))
    });
    Detect::new(inner, DetectConfig::default())
        .oneshot(Conn {
            meta: (),
            io: b.build(),
        })
        .await
        .unwrap()
}

/// The layer gives the same answer whether a prefix arrives whole or one
/// byte at a time, and replays every byte either way.
#[tokio::test]
async fn layer_split_reads_give_the_same_answer() {
    let mut cases = fixtures();
    let hello = rustls_client_hello("split.example", &[b"h2"]);
    let hello: &'static [u8] = Box::leak(hello.into_boxed_slice());
    cases.push(("rustls", hello, Some(Protocol::Tls)));
    for (name, bytes, p) in cases {
        let whole = layer_outcome(bytes, bytes.len()).await;
        let split = layer_outcome(bytes, 1).await;
        let want = p.map_or(Outcome::Unknown, Outcome::Protocol);
        assert_eq!(whole.0, want, "{name}");
        assert_eq!(split, whole, "{name}");
        assert_eq!(whole.2, bytes, "{name}: bytes replayed");
        if p == Some(Protocol::Tls) {
            assert!(whole.1.is_some(), "{name}: SNI parsed");
        }
    }
}
