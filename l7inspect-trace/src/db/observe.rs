//! [`DbObserver`], [`DbLayer`] / [`Db`] and [`DbIo`]: a parser beside the
//! bytes of each database connection, its commands turned into spans and
//! histogram entries.

use std::{
    borrow::Cow,
    collections::VecDeque,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use l7inspect_detect::{Detected, Outcome, PrefixedIo};
use opentelemetry::trace::SpanKind;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::{Layer, Service};

use super::{Clock, Command, DbConfig, DbLabels, DbMetrics, DbSystem, Parser};
use crate::{
    ParentInference, Peer,
    export::{SamplerConfig, SpanSink},
    infer::{InFlight, InferStats, Inference, PARENT_INFERRED},
    sampling::{Sampler, new_span_id, new_trace_id},
    span::{DbFields, NetworkFields, SpanRecord},
};

/// The database spans and metrics of one direction's connections, shared
/// by all of them. Cheap to clone.
///
/// A command is a CLIENT span on outbound connections and a SERVER span on
/// inbound ones (`kind`), a root sampled as a request without a parent
/// would be, named after its operation (`GET`; `SELECT orders` when the
/// statement's table is certain). Its duration, sampled or not, goes in
/// the `db_*_operation_duration_seconds` histogram of its side.
///
/// # Example
/// ```
/// use l7inspect_trace::db::{DbConfig, DbMetrics, DbObserver};
/// use l7inspect_trace::export::{ExportConfig, ExportPipeline, ResourceConfig, SamplerConfig};
/// use opentelemetry::trace::SpanKind;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pipeline = ExportPipeline::start(ExportConfig::default(), ResourceConfig::default().to_resource("my-proxy", "0.1"))?;
/// let metrics = DbMetrics::default();
/// let outbound = DbObserver::new(SpanKind::Client, DbConfig::default(), SamplerConfig::default(), pipeline.sink(), Some(metrics));
/// // Per listener: `outbound.layer(|meta: &MyMeta| peer)` below detection.
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DbObserver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    kind: SpanKind,
    config: DbConfig,
    sampler: Sampler,
    sink: SpanSink,
    metrics: DbMetrics,
    /// Outbound: where commands' parents are inferred from.
    infer: Option<Infer>,
}

/// [`ParentInference::Infer`]'s parts.
#[derive(Debug)]
struct Infer {
    inflight: InFlight,
    max_links: usize,
    stats: InferStats,
}

impl DbObserver {
    /// Commands of `kind`'s connections, parsed as `config` says, sampled
    /// by `sampler` into `sink`, timed in `metrics` (none: a set of its
    /// own, which nothing serves).
    pub fn new(
        kind: SpanKind,
        config: DbConfig,
        sampler: SamplerConfig,
        sink: SpanSink,
        metrics: Option<DbMetrics>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                kind,
                config,
                sampler: Sampler::new(sampler),
                sink,
                metrics: metrics.unwrap_or_default(),
                infer: None,
            }),
        }
    }

    /// The same observer, with the parents of its commands inferred as
    /// `inference` says (`Infer`, for outbound commands: a command that
    /// starts while exactly one inbound request is in flight is its child,
    /// marked `l7inspect.parent.inferred`; with two or more, a root with
    /// links; see [`crate::infer`]). `Register` changes nothing: database
    /// commands are not requests others are inferred from.
    pub fn with_inference(self, inference: ParentInference) -> Self {
        let s = &self.shared;
        let infer = match inference {
            ParentInference::Infer {
                inflight,
                max_links,
                stats,
            } => Some(Infer {
                inflight,
                max_links,
                stats,
            }),
            ParentInference::Register(_) => None,
        };
        Self {
            shared: Arc::new(Shared {
                kind: s.kind.clone(),
                config: s.config,
                sampler: Sampler::new(s.sampler.config()),
                sink: s.sink.clone(),
                metrics: s.metrics.clone(),
                infer,
            }),
        }
    }

    /// The layer that watches the connections below detection; `peer`
    /// tells a connection's two ends from its metadata.
    pub fn layer<F>(&self, peer: F) -> DbLayer<F> {
        DbLayer {
            observer: self.clone(),
            peer,
        }
    }

    /// The database system of a connection detected as `outcome`, when
    /// this observer parses it.
    pub fn parses(&self, outcome: Outcome) -> Option<DbSystem> {
        match outcome {
            Outcome::Protocol(p) => DbSystem::of(p).filter(|s| self.shared.config.parses(*s)),
            _ => None,
        }
    }

    /// `io`, a connection of `system` between `peer`'s ends, watched;
    /// `prefix` are the bytes the client sent that detection read (and
    /// that reach the server before anything read from `io`).
    pub fn watch<I>(&self, system: DbSystem, peer: Peer, prefix: &[u8], io: I) -> DbIo<I> {
        let mut watch = Box::new(Watch {
            shared: self.shared.clone(),
            system,
            parser: Parser::new(system, &self.shared.config),
            done: Vec::new(),
            peer,
            network: None,
            last: None,
            stop_counted: false,
            reads: 0,
            inferred: VecDeque::new(),
        });
        watch.client_sent(prefix);
        DbIo { io, watch }
    }
}

/// A [`Layer`] that gives the stream of each connection detected as Redis,
/// PostgreSQL or MySQL (whose parser is on) a [`DbIo`]. Made by
/// [`DbObserver::layer`].
///
/// It goes below detection, above the service that relays the bytes
/// (l7inspect-core's `Passthrough`): that service copies the client's
/// stream as it always did, and the reads and writes it makes are what the
/// parser sees. Other connections reach the inner service as they came, on
/// its own path for their stream type: they cost nothing more.
#[derive(Clone, Debug)]
pub struct DbLayer<F> {
    observer: DbObserver,
    peer: F,
}

impl<S, F: Clone> Layer<S> for DbLayer<F> {
    type Service = Db<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Db {
            inner,
            observer: self.observer.clone(),
            peer: self.peer.clone(),
        }
    }
}

/// Watches database connections for their commands; see [`DbLayer`].
#[derive(Clone, Debug)]
pub struct Db<S, F> {
    inner: S,
    observer: DbObserver,
    peer: F,
}

/// The inner service takes both streams: a database connection's
/// [`DbIo`], and any other as it came (the same future for both; it is
/// readied once, through the `DbIo` kind, for either).
impl<S, F, M, I> Service<Detected<M, I>> for Db<S, F>
where
    S: Service<Detected<M, DbIo<I>>>
        + Service<
            Detected<M, I>,
            Response = <S as Service<Detected<M, DbIo<I>>>>::Response,
            Error = <S as Service<Detected<M, DbIo<I>>>>::Error,
            Future = <S as Service<Detected<M, DbIo<I>>>>::Future,
        >,
    F: Fn(&M) -> Peer,
{
    type Response = <S as Service<Detected<M, DbIo<I>>>>::Response;
    type Error = <S as Service<Detected<M, DbIo<I>>>>::Error;
    type Future = <S as Service<Detected<M, DbIo<I>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <S as Service<Detected<M, DbIo<I>>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, d: Detected<M, I>) -> Self::Future {
        let Some(system) = self.observer.parses(d.outcome) else {
            return <S as Service<Detected<M, I>>>::call(&mut self.inner, d);
        };
        let Detected {
            outcome,
            client_hello,
            meta,
            io,
        } = d;
        let (prefix, io) = io.into_parts();
        let peer = (self.peer)(&meta);
        let io = self.observer.watch(system, peer, &prefix, io);
        self.inner.call(Detected {
            outcome,
            client_hello,
            meta,
            io: PrefixedIo::new(prefix, io),
        })
    }
}

/// A client stream whose bytes a database parser sees pass: what is read
/// from it went to the server (commands), what is written to it came from
/// the server (replies). The bytes themselves pass unchanged, and are
/// never copied or held. Made by [`DbObserver::watch`].
pub struct DbIo<I> {
    io: I,
    watch: Box<Watch>,
}

impl<I> DbIo<I> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The database system it carries.
    pub fn system(&self) -> DbSystem {
        self.watch.system
    }
}

impl<I: std::fmt::Debug> std::fmt::Debug for DbIo<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbIo")
            .field("io", &self.io)
            .field("system", &self.watch.system)
            .finish()
    }
}

/// Lets socket options (a reset on abort) reach the wrapped socket.
#[cfg(unix)]
impl<I: std::os::fd::AsFd> std::os::fd::AsFd for DbIo<I> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for DbIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            this.watch.client_sent(&buf.filled()[before..]);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for DbIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            this.watch.server_sent(&buf[..*n]);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<I> Drop for DbIo<I> {
    fn drop(&mut self) {
        self.watch.closed();
    }
}

/// One watched connection: its parser, and what its spans share.
struct Watch {
    shared: Arc<Shared>,
    system: DbSystem,
    parser: Parser,
    /// Commands the parser finished, recorded at once (kept for its
    /// allocation).
    done: Vec<Command>,
    peer: Peer,
    /// The spans' network fields, made for the first sampled command.
    network: Option<(Arc<NetworkFields>, Arc<str>)>,
    /// The last command's histogram series: a connection's commands often
    /// repeat one operation, and finding a series hashes its labels under
    /// a lock.
    last: Option<(DbLabels, Histogram)>,
    stop_counted: bool,
    /// Client reads numbered (when inferring parents).
    reads: u32,
    /// What was in flight when commands started, by client read (only
    /// reads that started commands, while something was in flight);
    /// commands end in order, so the front is the oldest still needed.
    inferred: VecDeque<(u32, Inference)>,
}

impl Watch {
    fn client_sent(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let Some(infer) = &self.shared.infer else {
            let mut clock = Clock::new();
            self.parser.client_sent(bytes, &mut clock, &mut self.done);
            return self.record();
        };
        // Numbered from 1: 0 is "not numbered".
        self.reads = self.reads.checked_add(1).unwrap_or(1);
        let mut clock = Clock::numbered(self.reads);
        self.parser.client_sent(bytes, &mut clock, &mut self.done);
        if clock.started() {
            let inference = infer.inflight.infer(infer.max_links);
            if inference != Inference::None {
                // Bounded as the commands waiting are (each read that
                // started some holds one entry at most).
                if self.inferred.len() > self.shared.config.max_pending {
                    self.inferred.pop_front();
                }
                self.inferred.push_back((self.reads, inference));
            }
        }
        self.record();
    }

    /// What was in flight when the command that started in client read
    /// `read` started; counted by outcome (`context` when the command
    /// carried one: then nothing is inferred).
    fn inference(&mut self, read: u32, has_context: bool) -> Inference {
        let Some(infer) = &self.shared.infer else {
            return Inference::None;
        };
        // Reads before this one: their commands have all ended.
        while let Some((r, _)) = self.inferred.front()
            && *r < read
        {
            self.inferred.pop_front();
        }
        if has_context {
            infer.stats.count(crate::infer::Outcome::context);
            return Inference::None;
        }
        let inference = match self.inferred.front() {
            Some((r, i)) if *r == read => i.clone(),
            _ => Inference::None,
        };
        infer.stats.count(inference.outcome());
        inference
    }

    fn server_sent(&mut self, bytes: &[u8]) {
        let mut clock = Clock::new();
        self.parser.server_sent(bytes, &mut clock, &mut self.done);
        self.record();
    }

    fn closed(&mut self) {
        let mut clock = Clock::new();
        self.parser.close(&mut clock, &mut self.done);
        self.record();
    }

    /// Records the finished commands, and counts a stop and untracked
    /// commands.
    fn record(&mut self) {
        if !self.done.is_empty() {
            let mut done = std::mem::take(&mut self.done);
            for cmd in done.drain(..) {
                self.command(cmd);
            }
            self.done = done;
        }
        let metrics = &self.shared.metrics;
        let untracked = self.parser.take_untracked();
        if untracked > 0 {
            metrics.untracked(self.system, untracked);
        }
        if !self.stop_counted
            && let Some(reason) = self.parser.stopped()
        {
            self.stop_counted = true;
            metrics.stopped(self.system, reason);
        }
    }

    fn command(&mut self, mut cmd: Command) {
        let shared = &*self.shared;
        let server = shared.kind == SpanKind::Server;
        let duration = cmd.end.duration_since(cmd.start.time).unwrap_or_default();
        let error = cmd.error_type.as_deref();
        let same = self.last.as_ref().is_some_and(|(l, _)| {
            l.db_operation_name == cmd.operation
                && match error {
                    None => l.error_type.is_empty(),
                    Some(e) => *l.error_type == *e,
                }
        });
        if !same {
            self.last = Some(
                shared
                    .metrics
                    .histogram(server, self.system, cmd.operation, error),
            );
        }
        if let Some((_, h)) = &self.last {
            h.observe(duration.as_secs_f64());
        }

        // A context the statement carried (sqlcommenter) is its parent;
        // else one inferred from the requests in flight.
        let context = cmd.context.take();
        let inference = self.inference(cmd.start.read(), context.is_some());
        let shared = &*self.shared;
        let inferred = match &inference {
            Inference::Parent(p) => Some(p),
            _ => None,
        };
        let parent = context.as_deref().or(inferred);
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id());
        if !shared.sampler.should_sample(parent, None, trace_id) {
            return;
        }
        let peer = self.peer;
        let (network, server_address) = self.network.get_or_insert_with(|| {
            let network = if server {
                NetworkFields::new(peer.client, Some(peer.client.ip()))
            } else {
                NetworkFields::new(peer.server, None)
            };
            let address: Arc<str> = if server {
                peer.server.ip().to_string().into()
            } else {
                network.peer_address.clone()
            };
            (Arc::new(network), address)
        });
        let name: Cow<'static, str> = match &cmd.collection {
            Some(c) => Cow::Owned(format!("{} {c}", cmd.operation)),
            None => Cow::Borrowed(cmd.operation),
        };
        let mut span = SpanRecord::new(
            trace_id,
            new_span_id(),
            shared.kind.clone(),
            name,
            cmd.start.time,
        );
        span.end = cmd.end;
        span.network = Some(network.clone());
        if let Some(p) = parent {
            span.parent_span_id = p.span_id();
            span.trace_flags = p.trace_flags().with_sampled(true);
        }
        if inferred.is_some() {
            span.attributes
                .push(opentelemetry::KeyValue::new(PARENT_INFERRED, true));
        }
        span.db = Some(Box::new(DbFields {
            system: self.system.as_str(),
            operation: cmd.operation,
            namespace: cmd.namespace,
            collection: cmd.collection,
            query_text: cmd.query_text,
            status_code: cmd.status_code,
            returned_rows: cmd.rows,
            server_address: server_address.clone(),
            server_port: peer.server.port(),
        }));
        if let Some(e) = cmd.error_type {
            span.set_error(e);
        }
        if let Inference::Ambiguous(links) = inference {
            span.links = links;
        }
        shared.sink.record(span);
    }
}
