//! `GET /log-level` and `PUT /log-level` on the admin port: the log filter
//! now, and changing it at runtime (as linkerd2-proxy's admin does).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use l7inspect_core::AdminBody;
use std::sync::Mutex;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The process's log filter, changeable through the admin port.
pub(crate) struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter as it was last given (EnvFilter's Display reorders it).
    current: Mutex<String>,
}

impl LogLevel {
    pub(crate) fn new(handle: reload::Handle<EnvFilter, Registry>, current: String) -> Self {
        Self {
            handle,
            current: Mutex::new(current),
        }
    }

    /// Answers `/log-level`; `None` for other paths.
    pub(crate) fn respond(&self, req: &Request<Bytes>) -> Option<Response<AdminBody>> {
        if req.uri().path() != "/log-level" {
            return None;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        Some(match *req.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, format!("{current}\n")),
            Method::PUT => {
                let Ok(wanted) = std::str::from_utf8(req.body()).map(str::trim) else {
                    return Some(text(
                        StatusCode::BAD_REQUEST,
                        "the filter is not UTF-8\n".into(),
                    ));
                };
                if wanted.is_empty() {
                    return Some(text(
                        StatusCode::BAD_REQUEST,
                        "empty filter: send one in the body, e.g. `info` or `warn,l7inspect_core=debug`\n".into(),
                    ));
                }
                match EnvFilter::try_new(wanted) {
                    Err(e) => text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "invalid log filter {wanted:?}: {e}; the filter stays {current:?}\n"
                        ),
                    ),
                    Ok(filter) => match self.handle.reload(filter) {
                        Ok(()) => {
                            tracing::info!(from = %current, to = %wanted, "log level changed");
                            *current = wanted.to_owned();
                            text(StatusCode::OK, format!("{wanted}\n"))
                        }
                        Err(e) => text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("cannot change the log filter: {e}\n"),
                        ),
                    },
                }
            }
            _ => {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT\n".into());
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
                resp
            }
        })
    }
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut resp = Response::new(Full::from(body).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
