//! [`RequestClass`]: what a request is, read once from its head. The span
//! and the request histograms both read it, so they cannot disagree.

use std::borrow::Cow;

use http::{HeaderMap, Method, Request, Version};

/// gRPC status CANCELLED: what a call whose response was dropped before
/// its status arrived is recorded as.
pub const GRPC_CANCELLED: i64 = 1;
/// gRPC status 14, UNAVAILABLE: what the proxy answers for a server it
/// could not reach (or a request layer that failed).
pub const GRPC_UNAVAILABLE: i64 = 14;

/// What a request is, from its head.
///
/// The cheap facts every request needs (method, version, gRPC call, the
/// server the client named) are read when it is built; the ones only a
/// recorded span needs (user agent, body size, scheme) are read when
/// asked, from the same head.
#[derive(Clone, Copy, Debug)]
pub struct RequestClass<'a> {
    head: Head<'a>,
    /// The method's semantic-convention value (`GET`...), or `_OTHER`.
    pub method: &'static str,
    /// Whether the method is one of the known ones (RFC 9110, PATCH, QUERY).
    pub method_known: bool,
    /// `network.protocol.version`: `1.0`, `1.1`, `2`, `3`.
    pub version: &'static str,
    /// The gRPC service and method, for a gRPC call (`content-type:
    /// application/grpc...` and a `/package.Service/Method` path).
    pub grpc: Option<GrpcCall<'a>>,
    /// The server as the client named it: the authority (HTTP/2, absolute
    /// form) or the `Host` header, with its port if it had one.
    pub server: Option<(&'a str, Option<u16>)>,
    /// The longest any string read from the head may be, in bytes
    /// ([`with_limit`](Self::with_limit); unbounded by default).
    limit: usize,
}

/// The parts of a request head a class reads.
#[derive(Clone, Copy, Debug)]
struct Head<'a> {
    method: &'a Method,
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
}

/// A gRPC call's service and method (`/shop.Orders/Get` → `shop.Orders`, `Get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    /// `package.Service`.
    pub service: &'a str,
    /// The method.
    pub method: &'a str,
}

// === impl RequestClass ===

impl<'a> RequestClass<'a> {
    /// Classifies `req` from its head.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        let headers = req.headers();
        let (method, method_known) = method_name(req.method());
        let grpc = is_grpc(headers)
            .then(|| grpc_service_method(req.uri().path()))
            .flatten();
        let server = match req.uri().authority() {
            Some(a) => Some((a.host(), a.port_u16())),
            None => headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .and_then(split_host_port),
        };
        Self {
            head: Head {
                method: req.method(),
                uri: req.uri(),
                headers,
            },
            method,
            method_known,
            version: match req.version() {
                Version::HTTP_10 => "1.0",
                Version::HTTP_2 => "2",
                Version::HTTP_3 => "3",
                _ => "1.1",
            },
            grpc,
            server,
            limit: usize::MAX,
        }
    }

    /// The same class with every string it gives (path, query, scheme,
    /// host, user agent, method, gRPC names) cut to at most `limit` bytes, at a
    /// character boundary: what a client sends cannot make a span, a
    /// label or the ring of recent spans large.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self.grpc = self.grpc.map(|call| GrpcCall {
            service: truncate(call.service, limit),
            method: truncate(call.method, limit),
        });
        self.server = self
            .server
            .map(|(host, port)| (truncate(host, limit), port));
        self
    }

    /// The span's name: `{rpc.service}/{rpc.method}` for a gRPC call, else
    /// the method, or `HTTP` for a method outside the known ones (the
    /// semantic conventions' rule, so that names stay few). Built from the
    /// class's strings, so with [`with_limit`](Self::with_limit) it is at
    /// most twice the limit plus one byte long.
    ///
    /// ```
    /// use l7inspect_trace::RequestClass;
    ///
    /// let req = http::Request::post("/shop.Orders/Get")
    ///     .header("content-type", "application/grpc")
    ///     .body(())?;
    /// assert_eq!(RequestClass::of(&req).span_name(), "shop.Orders/Get");
    /// let req = http::Request::builder().method("PROPFIND").uri("/").body(())?;
    /// assert_eq!(RequestClass::of(&req).span_name(), "HTTP");
    /// # Ok::<(), http::Error>(())
    /// ```
    pub fn span_name(&self) -> Cow<'static, str> {
        match self.grpc {
            Some(call) => format!("{}/{}", call.service, call.method).into(),
            None if self.method_known => self.method.into(),
            None => "HTTP".into(),
        }
    }

    /// The method as sent, for `http.request.method_original`.
    pub fn method_original(&self) -> &'a str {
        truncate(self.head.method.as_str(), self.limit)
    }

    /// `url.path`.
    pub fn path(&self) -> &'a str {
        truncate(self.head.uri.path(), self.limit)
    }

    /// `url.query`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.head.uri.query().map(|q| truncate(q, self.limit))
    }

    /// `url.scheme`: the request's, `http` when it names none.
    pub fn scheme(&self) -> &'a str {
        self.scheme_or("http")
    }

    /// `url.scheme`: the request's, `default` when it names none (an
    /// HTTP/1 request in origin form: the connection's).
    pub fn scheme_or(&self, default: &'static str) -> &'a str {
        match self.head.uri.scheme_str() {
            // An absolute-form target's scheme is the client's: up to 64
            // bytes of anything the URI grammar allows.
            Some(scheme) => truncate(scheme, self.limit),
            None => default,
        }
    }

    /// `user_agent.original`.
    pub fn user_agent(&self) -> Option<&'a str> {
        self.head
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| truncate(ua, self.limit))
    }

    /// `http.request.body.size`, from `Content-Length`.
    pub fn request_body_size(&self) -> Option<u64> {
        self.head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    }
}

/// `s`, cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `headers` say gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| l7inspect_detect::is_grpc_content_type(v.as_bytes()))
}

/// `grpc-status` in `headers` (a trailers-only response's headers, or the
/// trailers), if there and numeric.
pub fn grpc_status(headers: &HeaderMap) -> Option<i64> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The method's semantic-convention value and whether it is a known one
/// (unknown methods are `_OTHER`, so label values stay bounded).
pub fn method_name(method: &Method) -> (&'static str, bool) {
    use http::Method as M;
    let known = match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::CONNECT => "CONNECT",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::PATCH => "PATCH",
        _ if method.as_str() == "QUERY" => "QUERY",
        _ => return ("_OTHER", false),
    };
    (known, true)
}

/// `/package.Service/Method` → (`package.Service`, `Method`); anything
/// else (`/a/b/c`, `/a/`, `//m`) is not a gRPC method path.
fn grpc_service_method(path: &str) -> Option<GrpcCall<'_>> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some(GrpcCall { service, method })
}

/// `host[:port]` or `[v6]:port` from a `Host` header, without allocating
/// (unlike parsing it as a URI authority). `None` when it is not one.
fn split_host_port(value: &str) -> Option<(&str, Option<u16>)> {
    // Per request: one pass over the bytes finds the port's colon and any
    // byte an authority's host cannot hold (every one of them ASCII, so
    // `host` stays valid UTF-8 where it is cut).
    let bytes = value.as_bytes();
    let host_end = if bytes.first() == Some(&b'[') {
        // An IPv6 literal: the brackets belong to the authority, as in
        // http::uri::Authority::host.
        let close = bytes.iter().position(|&b| b == b']')?;
        if bytes[..close].iter().any(|&b| not_in_host(b)) {
            return None;
        }
        match bytes.get(close + 1) {
            None | Some(b':') => close + 1,
            Some(_) => return None,
        }
    } else {
        let mut colon = None;
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                // A second colon: an IPv6 address without brackets, or
                // not an authority.
                b':' if colon.is_some() => return None,
                b':' => colon = Some(i),
                b if not_in_host(b) => return None,
                _ => {}
            }
        }
        colon.unwrap_or(bytes.len())
    };
    let host = &value[..host_end];
    if host.is_empty() {
        return None;
    }
    match value.get(host_end + 1..) {
        None => Some((host, None)),
        Some(port) => Some((host, Some(parse_port(port.as_bytes())?))),
    }
}

/// Whitespace and controls (a header value holds no other byte under
/// `b' '`), userinfo, a path: bytes an authority's host cannot hold.
fn not_in_host(b: u8) -> bool {
    b <= b' ' || b == b'@' || b == b'/'
}

/// A port: 1-5 ASCII digits, at most 65535 (no sign, unlike `u16`'s
/// `FromStr`).
fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut port: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(d - b'0');
    }
    u16::try_from(port).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_bounds_every_string_a_class_gives() {
        let long = "x".repeat(5000);
        let req = Request::post(format!("/shop.{long}/Get{long}?q={long}"))
            .header(http::header::HOST, format!("{long}.example:8080"))
            .header(http::header::USER_AGENT, format!("agent/{long}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(())
            .unwrap();
        let class = RequestClass::of(&req);
        assert!(class.path().len() > 10_000, "unbounded by default");
        let class = class.with_limit(64);
        assert_eq!(class.path().len(), 64);
        assert_eq!(class.query().unwrap().len(), 64);
        assert_eq!(class.server.unwrap().0.len(), 64);
        assert_eq!(class.server.unwrap().1, Some(8080));
        let call = class.grpc.unwrap();
        assert_eq!((call.service.len(), call.method.len()), (64, 64));
        // Cut at a character boundary: `é` is two bytes.
        assert_eq!(truncate("éé", 3), "é");
        assert_eq!(class.user_agent().unwrap().len(), 64);
        assert_eq!(RequestClass::of(&req).with_limit(1).user_agent(), Some("a"));
        assert_eq!(truncate("short", 64), "short");
    }

    /// Found by fuzzing (fuzz/fuzz_targets/classify.rs, the method and
    /// target of its input): the scheme of an absolute-form target, which
    /// the client chooses, escaped the limit and went into `url.scheme`
    /// whole.
    #[test]
    fn a_limit_bounds_the_scheme_the_client_sent() {
        let req = Request::builder()
            .method("ptE")
            .uri("TGht://api.example.com:8080/v1/items?limit=10yyyyy&cursor=abc")
            .body(())
            .unwrap();
        assert_eq!(RequestClass::of(&req).scheme(), "TGht");
        let class = RequestClass::of(&req).with_limit(3);
        assert_eq!(class.scheme(), "TGh");
        assert_eq!(class.method_original(), "ptE");
        assert_eq!(class.server, Some(("api", Some(8080))));
        // The connection's scheme, when the request names none, is ours
        // and not cut.
        let req = Request::get("/").body(()).unwrap();
        assert_eq!(
            RequestClass::of(&req).with_limit(3).scheme_or("https"),
            "https"
        );
    }

    #[test]
    fn split_host_port_reads_host_headers_as_authorities_do() {
        for (value, want) in [
            ("example.com", Some(("example.com", None))),
            ("example.com:8080", Some(("example.com", Some(8080)))),
            ("10.0.0.1:80", Some(("10.0.0.1", Some(80)))),
            ("[::1]", Some(("[::1]", None))),
            ("[::1]:9000", Some(("[::1]", Some(9000)))),
            ("example.com:http", None),
            ("example.com:70000", None),
            ("[::1", None),
            ("[::1]x", None),
            ("", None),
            ("user@example.com", None),
            ("example.com:", None),
            ("example.com:+80", None),
            ("example.com:065535", None),
            ("example.com:65535", Some(("example.com", Some(65535)))),
            ("a b:80", None),
            ("[::1]:80x", None),
            ("[::1]:", None),
            ("host:1:2", None),
        ] {
            assert_eq!(split_host_port(value), want, "{value:?}");
            // Where both accept the value, they agree.
            if let (Some((host, port)), Ok(a)) = (want, value.parse::<http::uri::Authority>()) {
                assert_eq!((host, port), (a.host(), a.port_u16()), "{value:?}");
            }
        }
    }

    #[test]
    fn grpc_paths() {
        let call = |service, method| Some(GrpcCall { service, method });
        assert_eq!(
            grpc_service_method("/shop.Orders/Get"),
            call("shop.Orders", "Get")
        );
        for path in ["/a/b/c", "/a/", "//m", "/a", "a/b", "/"] {
            assert_eq!(grpc_service_method(path), None, "{path}");
        }
    }

    #[test]
    fn methods() {
        assert_eq!(method_name(&Method::GET), ("GET", true));
        assert_eq!(
            method_name(&Method::from_bytes(b"QUERY").unwrap()),
            ("QUERY", true)
        );
        assert_eq!(
            method_name(&Method::from_bytes(b"PROPFIND").unwrap()),
            ("_OTHER", false)
        );
    }
}
