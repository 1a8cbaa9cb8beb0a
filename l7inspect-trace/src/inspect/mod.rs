//! The live view of recent requests, served from the ring of recent spans
//! ([`RecentSpans`]): a web page, a JSON span API and a tap stream, for an
//! admin server to mount.
//!
//! | path | answer |
//! |------|--------|
//! | `GET /` | the live view: one self-contained page (HTML, CSS and JavaScript in the binary; nothing fetched from elsewhere) |
//! | `GET /api/spans` | recent spans, newest first, as a JSON array ([`span_json`] says what each has); `limit` (default 100) and the [`SpanQuery`] filters as query parameters |
//! | `GET /api/traces/{trace_id}` | the spans of one trace this process saw, oldest first; 404 when it saw none |
//! | `GET /api/tap` | server-sent events, one per span as it reaches the ring, with the same filters |
//!
//! A bad parameter is a 400 naming it; another method, a 405.
//!
//! These show request details (paths, addresses): an admin server should
//! answer them only to clients it trusts (l7inspect's answers loopback
//! clients only, unless told otherwise).
//!
//! # Example
//! ```
//! use l7inspect_trace::export::RecentSpans;
//! use l7inspect_trace::inspect::Inspect;
//!
//! let inspect = Inspect::new(RecentSpans::new(1000));
//! let resp = inspect
//!     .respond(&http::Method::GET, "/api/spans", Some("direction=inbound&limit=10"))
//!     .expect("a path of the span API");
//! assert_eq!(resp.status(), 200);
//! assert!(inspect.respond(&http::Method::GET, "/metrics", None).is_none());
//! ```

mod json;
mod query;
mod tap;

pub use json::span_json;
pub use query::{Direction, Protocol, SpanQuery, StatusClass};
pub use tap::TapBody;

use crate::export::RecentSpans;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use std::convert::Infallible;

/// What the live view's answers carry: a whole body, or the tap's stream.
pub type InspectBody = UnsyncBoxBody<Bytes, Infallible>;

/// The page, embedded: no file to deploy, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// How many spans `/api/spans` returns without a `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// The live view over a ring of recent spans. Cloning shares the ring.
#[derive(Clone, Debug)]
pub struct Inspect {
    ring: RecentSpans,
}

impl Inspect {
    /// A view of `ring` (for the sidecar, its pipelines' ring).
    pub fn new(ring: RecentSpans) -> Self {
        Self { ring }
    }

    /// Answers a request for `path` (with its raw `query`), or `None` when
    /// the path is not one of the live view's, for the admin server to
    /// answer otherwise.
    pub fn respond(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Option<Response<InspectBody>> {
        let ours = path == "/" || path == "/api" || path.starts_with("/api/");
        if !ours {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(resp);
        }
        let query = match SpanQuery::parse(query.unwrap_or("")) {
            Ok(q) => q,
            Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &e)),
        };
        Some(match path {
            "/" => page(),
            "/api/spans" => self.spans(&query),
            "/api/tap" => self.tap(query),
            _ => match path.strip_prefix("/api/traces/") {
                Some(id) => self.trace(id),
                None => json_error(StatusCode::NOT_FOUND, &format!("no such endpoint {path}")),
            },
        })
    }

    /// The newest spans that match `query`, at most its limit.
    fn spans(&self, query: &SpanQuery) -> Response<InspectBody> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        let entries = self.ring.entries();
        let list: Vec<serde_json::Value> = entries
            .iter()
            .rev()
            .filter(|e| query.matches(e))
            .take(limit)
            .map(|e| span_json(&e.service, &e.span))
            .collect();
        json(StatusCode::OK, &serde_json::Value::Array(list))
    }

    fn trace(&self, id: &str) -> Response<InspectBody> {
        let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let Some(trace_id) = valid
            .then(|| opentelemetry::trace::TraceId::from_hex(id).ok())
            .flatten()
        else {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("{id:?} is not a trace id (32 hex digits)"),
            );
        };
        let mut entries: Vec<_> = self
            .ring
            .entries()
            .into_iter()
            .filter(|e| e.span.trace_id == trace_id)
            .collect();
        if entries.is_empty() {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("no span of trace {id} among the recent spans"),
            );
        }
        entries.sort_by_key(|e| e.span.start);
        let list = entries
            .iter()
            .map(|e| span_json(&e.service, &e.span))
            .collect();
        json(StatusCode::OK, &serde_json::Value::Array(list))
    }

    fn tap(&self, query: SpanQuery) -> Response<InspectBody> {
        let mut resp = Response::new(TapBody::new(self.ring.clone(), query).boxed_unsync());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<InspectBody> {
    let mut resp = Response::new(Full::new(body).boxed_unsync());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<InspectBody> {
    full(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<InspectBody> {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    full(status, "application/json", Bytes::from(body))
}

fn json_error(status: StatusCode, message: &str) -> Response<InspectBody> {
    json(status, &serde_json::json!({ "error": message }))
}

fn page() -> Response<InspectBody> {
    let mut resp = full(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    );
    // Everything the page uses is in it or from this origin.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    resp
}

#[cfg(test)]
mod tests;
