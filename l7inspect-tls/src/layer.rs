//! [`TlsLayer`]: terminates the configured inbound TLS and watches the TLS
//! that passes through.

use crate::intercept::{Interceptor, Originate};
use crate::{
    io::{TlsIo, Watched},
    metrics::{TlsMetrics, VersionLabels},
    passthrough::{self, PassthroughSpans, SpanEnd, cipher_name},
    terminate::{Terminator, handshake_reason},
};
use l7inspect_core::{Connecting, Direction, Timeout, Upstream};
use l7inspect_detect::{
    Conn, DetectConfig, DetectLayer, Detected, Outcome, PrefixedIo, Protocol, tls_version_name,
};
use l7inspect_trace::span::TlsFields;
use pin_project::pin_project;
use rustls_pki_types::ServerName;
use std::{
    borrow::Cow,
    future::Future,
    os::fd::AsFd,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower::{BoxError, Layer, Service, ServiceExt};

/// A [`Layer`] for the TLS of each connection: it terminates the inbound
/// TLS of the ports a [`Terminator`] names, makes a span for every other
/// TLS connection (with [`PassthroughSpans`]), and hands every connection
/// on as a [`TlsIo`].
///
/// It goes after detection (it needs the [`Outcome`] and the ClientHello
/// of a [`Detected`] connection) and before HTTP: with l7inspect-core,
/// after `TrackLayer` (so the bytes counted are those on the wire) and
/// before `HttpLayer`, whose connections are then the plaintext of
/// terminated sessions as well as cleartext ones.
///
/// # Behaviour on the wire
///
/// - **A terminated port** (see [`Terminator`]): a TLS client gets the
///   proxy's handshake (TLS 1.2 or 1.3, ALPN `h2` or `http/1.1`, the
///   client's certificate verified when a client CA is configured). The
///   plaintext is detected again and handed on (HTTP is then proxied and
///   traced as cleartext is; the upstream connection, plaintext, goes where
///   [`Terminator::target_layer`] sent it). The session's details go into
///   the connection's extensions as an `Arc<TlsFields>`, for request spans.
///   A failed handshake (or one slower than the handshake timeout) closes
///   the connection, is counted by reason in
///   `l7inspect_tls_handshake_errors_total` and logged at debug. A client
///   that does not speak TLS to a terminated port is closed and counted as
///   `not_tls`: it never reaches the application in plaintext.
/// - **Any other TLS connection** passes through byte for byte; it is
///   counted by SNI in `l7inspect_tls_connections_total`, and with spans
///   on, gets one span when it closes: once its client stream is dropped
///   and the inner service's future has ended. The span is failed
///   (`error.type`: `connection_reset`, `broken_pipe`, `timeout`,
///   `connection_refused`, `io` or `other`) when a read or write of the
///   client stream failed or, for the upstream side, when the inner
///   service returned an error.
/// - **Everything else** is handed on untouched.
///
/// # Example
///
/// A span for every TLS connection passing through a TCP forwarder:
///
/// ```
/// use l7inspect_core::*;
/// use l7inspect_detect::{DetectConfig, DetectLayer};
/// use l7inspect_tls::{PassthroughSpans, TlsLayer, TlsMetrics};
/// use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig, SamplerConfig};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let resource = ResourceConfig::default().to_resource("my-proxy", "0.1.0");
/// let pipeline = ExportPipeline::start(ExportConfig::default(), resource)?;
/// let metrics = Metrics::default();
/// let tls = TlsLayer::new()
///     .with_spans(PassthroughSpans::new(pipeline.sink(), SamplerConfig::default()))
///     .with_metrics(TlsMetrics::default());
/// let stack = ServiceBuilder::new()
///     .layer(FixedTargetLayer::new("127.0.0.1:8443".parse()?))
///     .layer(ConnectLayer::new(ConnectConfig::default()))
///     .layer(DetectLayer::new(DetectConfig::default()))
///     .layer(TrackLayer::new(metrics))
///     .layer(tls)
///     .service(Passthrough::new(PassthroughConfig::default()));
/// # fn conn_service<S: tower::Service<l7inspect_detect::Conn<Accepted, tokio::net::TcpStream>, Response = ()>>(_: &S) {}
/// # conn_service(&stack);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct TlsLayer {
    terminator: Option<Terminator>,
    interceptor: Option<Interceptor>,
    spans: Option<PassthroughSpans>,
    metrics: TlsMetrics,
    detect: DetectLayer,
}

/// Terminates or watches the TLS of each connection; see [`TlsLayer`].
#[derive(Clone, Debug)]
pub struct Tls<S> {
    inner: S,
    layer: TlsLayer,
}

/// The future of [`Tls`]: the inner service's own for connections that
/// are not terminated; one box per terminated connection.
#[pin_project(project = ResponseProj)]
pub enum ResponseFuture<F> {
    /// Handed on as it came.
    Inner(#[pin] F),
    /// Passed through with a span: the inner service's future, whose
    /// outcome (an error from the upstream side) goes to the span.
    Watched {
        /// The inner service's future.
        #[pin]
        future: F,
        /// Where its outcome goes.
        end: SpanEnd,
    },
    /// Terminated: the handshake, the plaintext's detection, the inner
    /// service.
    Terminated(Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>),
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseProj::Inner(f) => f.poll(cx).map_err(Into::into),
            ResponseProj::Watched { future, end } => {
                let res = std::task::ready!(future.poll(cx)).map_err(Into::into);
                end.ended(res.as_ref().err().map(|e| &**e as _));
                Poll::Ready(res)
            }
            ResponseProj::Terminated(f) => f.as_mut().poll(cx),
        }
    }
}

impl TlsLayer {
    /// A layer that terminates nothing, makes no span, and counts TLS
    /// connections in metrics of its own (which nothing serves); see the
    /// `with_*` methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same layer, terminating what `terminator` names.
    pub fn with_termination(self, terminator: Terminator) -> Self {
        Self {
            terminator: Some(terminator),
            ..self
        }
    }

    /// The same layer, intercepting the outbound TLS that `interceptor`
    /// names.
    pub fn with_interception(self, interceptor: Interceptor) -> Self {
        Self {
            interceptor: Some(interceptor),
            ..self
        }
    }

    /// The same layer, making a span per TLS connection passed through.
    pub fn with_spans(self, spans: PassthroughSpans) -> Self {
        Self {
            spans: Some(spans),
            ..self
        }
    }

    /// The same layer, counting in `metrics`.
    pub fn with_metrics(self, metrics: TlsMetrics) -> Self {
        Self { metrics, ..self }
    }

    /// The same layer, detecting the plaintext of terminated sessions with
    /// `config` (default: `DetectConfig::default()`).
    pub fn with_detect(self, config: DetectConfig) -> Self {
        Self {
            detect: DetectLayer::new(config),
            ..self
        }
    }
}

impl<S> Layer<S> for TlsLayer {
    type Service = Tls<S>;

    fn layer(&self, inner: S) -> Tls<S> {
        Tls {
            inner,
            layer: self.clone(),
        }
    }
}

impl<S, I> Service<Detected<Connecting, I>> for Tls<S>
where
    S: Service<Detected<Connecting, TlsIo<I>>, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, d: Detected<Connecting, I>) -> Self::Future {
        let tls = d.outcome == Outcome::Protocol(Protocol::Tls);
        if let Some(terminator) = &self.layer.terminator
            && terminator.route(&d.meta.meta).is_some()
        {
            let terminator = terminator.clone();
            let layer = self.layer.clone();
            let inner = self.inner.clone();
            return ResponseFuture::Terminated(Box::pin(terminate(
                d, tls, terminator, layer, inner,
            )));
        }
        if tls
            && d.meta.meta.direction == Direction::Outbound
            && let Some(interceptor) = &self.layer.interceptor
            && let Some(sni) = d
                .client_hello
                .as_ref()
                .and_then(|h| h.server_name.as_deref())
            && interceptor.matches(sni)
        {
            let interceptor = interceptor.clone();
            let layer = self.layer.clone();
            let inner = self.inner.clone();
            return ResponseFuture::Terminated(Box::pin(intercept(d, interceptor, layer, inner)));
        }
        let (watch, end) = if tls {
            passthrough::count(&self.layer.metrics, &d.meta.meta, d.client_hello.as_ref());
            self.layer
                .spans
                .as_ref()
                .and_then(|s| s.watch(d.meta.meta, d.client_hello.clone()))
                .map_or((None, None), |(w, e)| (Some(w), Some(e)))
        } else {
            (None, None)
        };
        let Detected {
            outcome,
            client_hello,
            meta,
            io,
        } = d;
        // The bytes detection read stay in front, replayed by the outer
        // `PrefixedIo` (so the watch counts them here).
        let (prefix, io) = io.into_parts();
        let watch = watch.map(|mut w| {
            w.sent_to_server(prefix.len());
            w
        });
        let future = self.inner.call(Detected {
            outcome,
            client_hello,
            meta,
            io: PrefixedIo::new(prefix, TlsIo::Plain(Watched::new(io, watch))),
        });
        match end {
            Some(end) => ResponseFuture::Watched { future, end },
            None => ResponseFuture::Inner(future),
        }
    }
}

/// Terminates one connection: the handshake, then detection of the
/// plaintext, then the inner service.
async fn terminate<S, I>(
    d: Detected<Connecting, I>,
    tls: bool,
    terminator: Terminator,
    layer: TlsLayer,
    inner: S,
) -> Result<(), BoxError>
where
    S: Service<Detected<Connecting, TlsIo<I>>, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
{
    let Detected { mut meta, io, .. } = d;
    let client = meta.meta.client;
    if !tls {
        layer.metrics.handshake_error("not_tls");
        tracing::debug!(%client, "closing a connection to a TLS port that does not speak TLS");
        l7inspect_core::reset(io);
        return Ok(());
    }
    let accept = terminator
        .acceptor(meta.meta.upstream_addr())
        .await
        .accept(io);
    let stream = match tokio::time::timeout(terminator.handshake_timeout(), accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let reason = handshake_reason(&e);
            layer.metrics.handshake_error(reason);
            tracing::debug!(%client, reason, "TLS handshake failed: {e}");
            return Ok(());
        }
        Err(_) => {
            layer.metrics.handshake_error("timeout");
            meta.count_timeout(Timeout::TlsHandshake);
            tracing::debug!(%client, "TLS handshake timed out");
            return Ok(());
        }
    };
    let fields = session_fields(&stream);
    if let Some(v) = fields.protocol_version.as_ref() {
        let tls_version = if v == "1.3" { "1.3" } else { "1.2" };
        layer
            .metrics
            .terminated
            .get_or_create(&VersionLabels { tls_version })
            .inc();
    }
    meta.extensions.insert(Arc::new(fields));
    // The plaintext is detected again (HTTP/1, HTTP/2 or anything else).
    let detect = layer.detect.layer(Plaintext(inner));
    detect.oneshot(Conn { meta, io: stream }).await
}

/// Intercepts one outbound connection: TLS to the real destination first
/// (verified, with the client's SNI and ALPN), then the client's handshake
/// with a minted leaf and the ALPN the destination chose, then the
/// plaintext as for a terminated connection. A destination that cannot be
/// trusted gets none of the client's bytes: the client's handshake fails
/// with an alert, and a span and a log line say why.
async fn intercept<S, I>(
    d: Detected<Connecting, I>,
    interceptor: Interceptor,
    layer: TlsLayer,
    inner: S,
) -> Result<(), BoxError>
where
    S: Service<Detected<Connecting, TlsIo<I>>, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
{
    let Detected {
        mut meta,
        io,
        client_hello,
        ..
    } = d;
    let hello = client_hello.expect("interception needs the ClientHello's SNI");
    let sni = hello
        .server_name
        .clone()
        .expect("interception needs an SNI");
    let metrics = interceptor.metrics().clone();
    let count = |result: &'static str| {
        metrics
            .intercepted
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
    };
    let name = match ServerName::try_from(sni.clone()) {
        Ok(name) => name,
        Err(_) => {
            count("bad_server_name");
            l7inspect_core::reset(io);
            return Ok(());
        }
    };
    // Only what the proxy can carry: HTTP/2 and HTTP/1.1.
    let alpn: Vec<Vec<u8>> = hello
        .alpn
        .iter()
        .filter(|p| p.as_slice() == b"h2" || p.as_slice() == b"http/1.1")
        .cloned()
        .collect();
    let upstream = match meta.upstream.established().await {
        Ok(upstream) => upstream,
        Err(_) => {
            // Counted and logged by the connect; the client is reset as a
            // refused connect would be.
            l7inspect_core::reset(io);
            return Ok(());
        }
    };
    let originate = Originate {
        connector: interceptor.upstream(alpn),
        name,
        timeout: interceptor.handshake_timeout(),
    };
    let (upstream, leaf) = tokio::join!(
        originate.connect_alpn(upstream),
        interceptor.prepare_leaf(&sni)
    );
    let (upstream, chosen) = match (upstream, leaf) {
        (Ok(upstream), Ok(())) => upstream,
        (Err(e), _) => {
            count("upstream_refused");
            interceptor.warn(|suppressed| {
                tracing::warn!(
                    server_name = %sni,
                    target = %meta.meta.upstream_addr(),
                    suppressed,
                    "intercepted TLS refused, nothing sent: the destination's TLS failed: {e}"
                )
            });
            if let Some(spans) = &layer.spans {
                spans.refused(meta.meta, hello, &e.to_string());
            }
            // The client's handshake fails with an alert.
            let _ = tokio::time::timeout(
                interceptor.handshake_timeout(),
                interceptor.refuse().accept(io),
            )
            .await;
            return Ok(());
        }
        (Ok(_), Err(e)) => {
            count("leaf_error");
            interceptor.warn(|suppressed| {
                tracing::warn!(server_name = %sni, suppressed, "cannot mint a certificate: {e}")
            });
            l7inspect_core::reset(io);
            return Ok(());
        }
    };
    let accept = interceptor.acceptor(chosen.as_deref()).accept(io);
    let stream = match tokio::time::timeout(interceptor.handshake_timeout(), accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            count("client_handshake");
            let reason = handshake_reason(&e);
            metrics.handshake_error(reason);
            tracing::debug!(server_name = %sni, reason, "intercepted client's handshake failed: {e}");
            return Ok(());
        }
        Err(_) => {
            count("client_handshake");
            metrics.handshake_error("timeout");
            meta.connector
                .count_timeout(meta.meta.direction, Timeout::TlsHandshake);
            return Ok(());
        }
    };
    count("intercepted");
    meta.extensions.insert(Arc::new(session_fields(&stream)));
    meta.upstream = Upstream::ready(upstream);
    meta.connector = meta.connector.with_wrap(Arc::new(originate));
    layer
        .detect
        .layer(Plaintext(inner))
        .oneshot(Conn { meta, io: stream })
        .await
}

/// The `tls.*` attributes of a terminated session.
fn session_fields<I>(stream: &TlsStream<PrefixedIo<I>>) -> TlsFields {
    let (_, session) = stream.get_ref();
    TlsFields {
        server_name: session.server_name().map(str::to_owned),
        protocol_version: session
            .protocol_version()
            .and_then(|v| tls_version_name(u16::from(v)))
            .map(Cow::Borrowed),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| cipher_name(u16::from(s.suite()))),
        next_protocol: session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_subject: session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::certs::subject),
    }
}

/// The service after the plaintext's detection: wraps the plaintext
/// stream in [`TlsIo::Terminated`].
#[derive(Clone)]
struct Plaintext<S>(S);

impl<S, I> Service<Detected<Connecting, TlsStream<PrefixedIo<I>>>> for Plaintext<S>
where
    S: Service<Detected<Connecting, TlsIo<I>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, d: Detected<Connecting, TlsStream<PrefixedIo<I>>>) -> S::Future {
        let (prefix, session) = d.io.into_parts();
        self.0.call(Detected {
            outcome: d.outcome,
            client_hello: d.client_hello,
            meta: d.meta,
            io: PrefixedIo::new(prefix, TlsIo::Terminated(Box::new(session))),
        })
    }
}
