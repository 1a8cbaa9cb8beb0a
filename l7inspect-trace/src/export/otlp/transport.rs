//! The OTLP exporter: sends encoded batches over OTLP/HTTP (a protobuf
//! body) or OTLP/gRPC (unary `TraceService/Export` over h2: h2c for
//! `http://`, TLS with ALPN `h2` for `https://`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::HttpClient;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_sdk::Resource;

use super::OtlpEncoder;
use crate::export::config::{Compression, OtlpConfig, OtlpProtocol};
use crate::export::tls::{self, ALPN_H2, ALPN_HTTP11};
use crate::export::{ExportBuildError, ExporterKind};
use crate::span::SpanRecord;

/// The gRPC method OTLP/gRPC exports call.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The connector under both clients: plain TCP for `http://`, TLS over
/// it for `https://` (see [`tls`]).
type Connector = HttpsConnector<HttpConnector>;

/// Sends encoded batches to an OTLP collector over the configured protocol.
#[derive(Debug)]
pub(crate) struct OtlpExporter {
    encoder: OtlpEncoder,
    gzip: bool,
    /// The protobuf message, reused across batches (its allocation comes
    /// back once the previous request body has been dropped).
    buf: BytesMut,
    /// The gzip-compressed body, reused likewise.
    zbuf: BytesMut,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Http {
        client: HyperClient<Connector>,
        endpoint: Uri,
        headers: HeaderMap,
    },
    Grpc {
        /// `None` after a transport failure or a cancelled export: the
        /// next export dials a new connection instead of reusing one that
        /// may be stuck.
        client: Option<Client<Connector, Full<Bytes>>>,
        /// What a new client dials with (cheap to clone: the TLS
        /// configuration is shared).
        connector: Connector,
        uri: Uri,
        headers: HeaderMap,
        timeout: Duration,
    },
}

// === impl OtlpExporter ===

impl OtlpExporter {
    /// Checks `cfg` (an `http://` or `https://` endpoint, valid header
    /// names and values), reads the files its TLS settings name, and builds
    /// the client; it connects on the first export.
    pub(crate) fn new(cfg: &OtlpConfig, resource: &Resource) -> Result<Self, ExportBuildError> {
        let fail = |reason: String| ExportBuildError::Otlp {
            endpoint: cfg.endpoint.clone(),
            reason,
        };
        let endpoint = cfg
            .endpoint
            .parse::<Uri>()
            .map_err(|e| fail(format!("not a valid URL: {e}")))?;
        let https = match endpoint.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(fail(
                    "the endpoint must be an http:// or https:// URL".into(),
                ));
            }
        };
        let Some(authority) = endpoint.authority().cloned() else {
            return Err(fail("the endpoint has no host".into()));
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("l7inspect/", env!("CARGO_PKG_VERSION"))),
        );
        for (k, v) in &cfg.headers {
            // `HeaderName` lower-cases, as gRPC metadata keys must be.
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| fail(format!("header {k:?} has an invalid name")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| fail(format!("header {k:?} has an invalid value")))?;
            if name == USER_AGENT {
                headers.remove(USER_AGENT);
            }
            headers.append(name, value);
        }
        let gzip = cfg.compression == Some(Compression::Gzip);
        let transport = match cfg.protocol {
            OtlpProtocol::HttpProtobuf => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if gzip {
                    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                let connector = tls::connector(&cfg.tls, https, ALPN_HTTP11, HttpConnector::new())
                    .map_err(|e| {
                        ExportBuildError::from_tls(ExporterKind::Otlp, &cfg.endpoint, e)
                    })?;
                Transport::Http {
                    client: HyperClient::new(connector, cfg.timeout, None),
                    endpoint,
                    headers,
                }
            }
            OtlpProtocol::Grpc => {
                // As tonic does, only the scheme and authority of the
                // endpoint count; the path is the method's.
                let uri = Uri::builder()
                    .scheme(if https { "https" } else { "http" })
                    .authority(authority)
                    .path_and_query(GRPC_EXPORT_PATH)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(TE, HeaderValue::from_static("trailers"));
                headers.insert(
                    HeaderName::from_static("grpc-timeout"),
                    grpc_timeout(cfg.timeout),
                );
                if gzip {
                    headers.insert(
                        HeaderName::from_static("grpc-encoding"),
                        HeaderValue::from_static("gzip"),
                    );
                }
                let connector = tls::connector(&cfg.tls, https, ALPN_H2, grpc_connector())
                    .map_err(|e| {
                        ExportBuildError::from_tls(ExporterKind::Otlp, &cfg.endpoint, e)
                    })?;
                Transport::Grpc {
                    client: None,
                    connector,
                    uri,
                    headers,
                    timeout: cfg.timeout,
                }
            }
        };
        Ok(Self {
            encoder: OtlpEncoder::new(resource),
            gzip,
            buf: BytesMut::new(),
            zbuf: BytesMut::new(),
            transport,
        })
    }

    /// Encodes and sends one batch; `Err` says why it was not accepted.
    pub(crate) async fn export(&mut self, spans: &[Arc<SpanRecord>]) -> Result<(), String> {
        let grpc = matches!(self.transport, Transport::Grpc { .. });
        let body = self.encode_body(spans, grpc)?;
        match &mut self.transport {
            Transport::Http {
                client,
                endpoint,
                headers,
            } => {
                let mut req = http::Request::post(endpoint.clone())
                    .body(body)
                    .map_err(|e| e.to_string())?;
                *req.headers_mut() = headers.clone();
                let res = client
                    .send_bytes(req)
                    .await
                    .map_err(|e| crate::export::error_chain(e.as_ref()))?;
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("collector answered {}", res.status()))
                }
            }
            Transport::Grpc {
                client,
                connector,
                uri,
                headers,
                timeout,
            } => {
                // Taken for the call and put back only when the collector
                // answered: after an error, a timeout or a cancelled export
                // the connection is dropped and the next export dials anew.
                let c = client.take().unwrap_or_else(|| {
                    Client::builder(TokioExecutor::new())
                        .http2_only(true)
                        .build(connector.clone())
                });
                let mut req = http::Request::post(uri.clone())
                    .body(Full::new(body))
                    .map_err(|e| e.to_string())?;
                *req.headers_mut() = headers.clone();
                let answered = tokio::time::timeout(*timeout, grpc_call(&c, req))
                    .await
                    .map_err(|_| "timed out".to_owned())?;
                match answered {
                    Ok(status) => {
                        *client = Some(c);
                        status
                    }
                    Err(transport) => Err(transport),
                }
            }
        }
    }

    /// The request body: the message, gRPC-framed for gRPC, gzipped if
    /// configured. Reuses `buf` and `zbuf`.
    fn encode_body(&mut self, spans: &[Arc<SpanRecord>], grpc: bool) -> Result<Bytes, String> {
        let buf = &mut self.buf;
        buf.clear();
        // Room for the last batch's size, reclaiming the old allocation
        // when the request that held it is gone.
        buf.reserve(spans.len() * 512);
        if self.gzip {
            self.encoder.encode(spans, buf);
            let z = &mut self.zbuf;
            z.clear();
            z.reserve(buf.len() / 4 + 64);
            if grpc {
                z.put_bytes(0, 5);
            }
            let mut gz = flate2::write::GzEncoder::new(z.writer(), flate2::Compression::default());
            gz.write_all(buf).map_err(|e| format!("gzip: {e}"))?;
            gz.finish().map_err(|e| format!("gzip: {e}"))?;
            if grpc {
                frame_header(z, true)?;
            }
            Ok(z.split().freeze())
        } else {
            if grpc {
                buf.put_bytes(0, 5);
            }
            self.encoder.encode(spans, buf);
            if grpc {
                frame_header(buf, false)?;
            }
            Ok(buf.split().freeze())
        }
    }
}

/// The gRPC client's connector: plain TCP with `TCP_NODELAY`, as tonic
/// (and so `opentelemetry-otlp`), grpc-go and gRPC C core set it.
///
/// Without it, Nagle's algorithm stalled exports: h2 writes a batch (about
/// 230 KB for 512 spans) as one write per DATA frame, 16 KiB each by the
/// peer's default `SETTINGS_MAX_FRAME_SIZE`. Each write ends in a partial
/// segment (on loopback the whole write is one, its MSS being larger), so
/// Nagle held the next write until that segment was ACKed, and a
/// collector with nothing to send back yet (no answer before the whole
/// message, no WINDOW_UPDATE before half of a 1 MiB window is used) delays
/// its ACKs, up to 40 ms on Linux. Measured against `l7bench serve --otlp`:
/// 17 ms per 512-span export back to back instead of 2.7, and 23% of spans
/// dropped as `queue_full` at 38,000 spans/s. OTLP/HTTP/1.1 writes the
/// whole request in one `writev`, where Nagle holds nothing back.
fn grpc_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// Fills in the 5-byte gRPC message prefix at the start of `frame`:
/// compressed flag, then the message length (big-endian u32).
fn frame_header(frame: &mut BytesMut, compressed: bool) -> Result<(), String> {
    let len = u32::try_from(frame.len() - 5)
        .map_err(|_| "batch too large for one gRPC message".to_owned())?;
    frame[0] = u8::from(compressed);
    frame[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// `grpc-timeout`: at most 8 digits and a unit.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis();
    let value = if millis <= 99_999_999 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// One unary call. The outer `Err` is a transport failure (the connection
/// is not reused); `Ok(Err)` is an answer other than OK.
async fn grpc_call(
    client: &Client<Connector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Result<Result<(), String>, String> {
    // The legacy client's Display is terse; its sources say why.
    let res = client
        .request(req)
        .await
        .map_err(|e| crate::export::error_chain(&e))?;
    if res.status() != http::StatusCode::OK {
        return Ok(Err(format!("collector answered HTTP {}", res.status())));
    }
    // Trailers-only: the status is in the headers.
    if let Some(status) = grpc_status(res.headers()) {
        return Ok(status);
    }
    let collected = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    Ok(match collected.trailers().and_then(grpc_status) {
        Some(status) => status,
        None => Err("the response carried no grpc-status".to_owned()),
    })
}

/// `grpc-status` (and `grpc-message`) in `headers`, if there.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), String>> {
    let status = headers.get("grpc-status")?;
    if status == "0" {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(Err(format!(
        "collector answered grpc-status {}: {message}",
        String::from_utf8_lossy(status.as_bytes())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "checkout")])
            .build()
    }

    /// The connection the gRPC client dials has Nagle's algorithm off
    /// (see [`grpc_connector`]).
    #[tokio::test]
    async fn grpc_connections_set_nodelay() {
        use tower::Service as _;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (dialled, accepted) = tokio::join!(grpc_connector().call(uri), listener.accept());
        let (_peer, _) = accepted.unwrap();
        assert!(dialled.unwrap().inner().nodelay().unwrap());
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000m");
        assert_eq!(grpc_timeout(Duration::from_millis(1)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn endpoints_must_be_http_or_https() {
        let resource = resource();
        for (endpoint, why) in [
            (
                "ftp://collector:4317",
                "the endpoint must be an http:// or https:// URL",
            ),
            (
                "collector:4317",
                "the endpoint must be an http:// or https:// URL",
            ),
            ("http://", "not a valid URL"),
        ] {
            for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
                let err = OtlpExporter::new(&OtlpConfig::new(endpoint, protocol), &resource)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(why), "{endpoint}: {err}");
                assert!(err.contains(endpoint), "{endpoint}: {err}");
            }
        }
        let mut cfg = OtlpConfig::new("http://c:4318/v1/traces", OtlpProtocol::HttpProtobuf);
        cfg.headers = vec![("bad name".into(), "v".into())];
        let err = OtlpExporter::new(&cfg, &resource).unwrap_err().to_string();
        assert!(
            err.contains("header \"bad name\" has an invalid name"),
            "{err}"
        );
    }

    /// A collector whose certificate no configured root signed: the export
    /// fails at the handshake, and the reason says so.
    #[tokio::test]
    async fn untrusted_collector_fails_with_rustls_reason() {
        use l7inspect_test_support::TempDir;
        use l7inspect_test_support::collector::{Collector, Receiver, ServerTls};
        use l7inspect_test_support::pki::TestCa;

        let dir = TempDir::new("otlp-untrusted");
        let trusted = TestCa::new("trusted CA");
        let other = TestCa::new("other CA");
        let collector = Collector::start_tls(ServerTls::new(&other.server(&["127.0.0.1"])));
        let span = Arc::new(crate::span::SpanRecord::new(
            opentelemetry::trace::TraceId::from(1u128),
            opentelemetry::trace::SpanId::from(2u64),
            opentelemetry::trace::SpanKind::Server,
            "GET",
            std::time::SystemTime::now(),
        ));
        for (receiver, protocol) in [
            (Receiver::OtlpGrpc, OtlpProtocol::Grpc),
            (Receiver::OtlpHttp, OtlpProtocol::HttpProtobuf),
        ] {
            let mut cfg = OtlpConfig::new(collector.endpoint(receiver), protocol);
            cfg.tls.ca = Some(crate::export::PemFile::new(trusted.write_cert(dir.path())));
            let mut exporter = OtlpExporter::new(&cfg, &resource()).unwrap();
            let err = exporter
                .export(std::slice::from_ref(&span))
                .await
                .unwrap_err();
            assert!(
                err.contains("invalid peer certificate: UnknownIssuer"),
                "{protocol:?}: {err}"
            );
        }
        assert!(collector.otlp_spans(Receiver::OtlpGrpc).is_empty());
        assert!(collector.otlp_spans(Receiver::OtlpHttp).is_empty());
    }
}
