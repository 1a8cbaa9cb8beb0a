//! An unsampled request allocates nothing for its observation: the
//! allocations of a whole exchange through `Observe` (call, response, body
//! to its end, histogram entry) equal those of the same exchange without
//! it. A sampled one allocates its span.
//!
//! Allocations are counted by a global allocator, on this thread only,
//! while a flag is set: the test harness's other threads do not count.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    future::{Ready, ready},
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Empty, Full};
use l7inspect_trace::{
    ObserveConfig, Observer, Peer, Propagators, RequestMetrics,
    export::{ExportConfig, ExportPipeline, ResourceConfig, SamplerConfig},
};
use opentelemetry::trace::SpanKind;
use tower::{Layer, Service, service_fn};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: thread-local storage may be gone while a thread exits.
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

type Answer = Result<Response<Full<Bytes>>, Infallible>;

/// A service that answers at once and allocates nothing.
fn backend() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Ready<Answer>,
> + Clone {
    service_fn(|_req: Request<Empty<Bytes>>| {
        ready(Ok(Response::new(Full::new(Bytes::from_static(b"hello")))))
    })
}

/// One whole exchange, polled by hand: call, response, body to its end.
fn exchange<S, B>(svc: &mut S, req: Request<Empty<Bytes>>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let Poll::Ready(Ok(resp)) = pin!(svc.call(req)).poll(&mut cx) else {
        panic!("the backend answers at once");
    };
    let mut body = pin!(resp.into_body());
    let mut n = 0;
    while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
        n += frame.data_ref().map_or(0, |d| d.remaining());
    }
    assert_eq!(n, 5);
}

fn request() -> Request<Empty<Bytes>> {
    Request::get("/orders/7")
        .header("host", "shop.example:8080")
        .header("user-agent", "curl/8")
        .body(Empty::new())
        .unwrap()
}

/// Allocations of one exchange through an observer with `sampler`, after a
/// first exchange has created the histogram series (once per label set).
fn observed(sampler: SamplerConfig, kind: SpanKind) -> (u64, usize) {
    let pipeline = ExportPipeline::start(
        ExportConfig::default(),
        ResourceConfig::default().to_resource("test", "0"),
    )
    .unwrap();
    let config = ObserveConfig {
        sampler,
        // No injection: a propagated header is the request's, not the
        // observation's (its value is built whether or not the request
        // is sampled).
        propagators: Propagators::new([]),
        ..ObserveConfig::new(kind)
    };
    let observer = Observer::new(config, pipeline.sink(), Some(RequestMetrics::default()));
    let peer = Peer {
        client: "10.0.0.9:40000".parse().unwrap(),
        server: "10.0.0.5:8080".parse().unwrap(),
    };
    let mut svc = observer.layer(peer).layer(backend());
    exchange(&mut svc, request());
    let req = request();
    let n = allocations(|| exchange(&mut svc, req));
    (n, pipeline.recent().len())
}

#[test]
fn an_unsampled_request_allocates_nothing_for_its_observation() {
    let mut plain = backend();
    exchange(&mut plain, request());
    let req = request();
    let baseline = allocations(|| exchange(&mut plain, req));

    for kind in [SpanKind::Server, SpanKind::Client] {
        let (unsampled, spans) = observed(SamplerConfig::ParentBasedAlwaysOff, kind.clone());
        assert_eq!(spans, 0, "{kind:?}");
        assert_eq!(
            unsampled, baseline,
            "{kind:?}: an unsampled observation allocated"
        );
        // The counter sees allocations: a sampled request makes its span.
        let (sampled, spans) = observed(SamplerConfig::ParentBasedAlwaysOn, kind.clone());
        assert_eq!(spans, 2, "{kind:?}");
        assert!(sampled > baseline, "{kind:?}: {sampled} vs {baseline}");
    }
}
