//! Hop-by-hop header handling (RFC 9110 7.6.1), and the checks of `Host`
//! that hyper's server does not make (RFC 9112 3.2).

use http::{
    Request, Uri,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    uri::Authority,
};

/// What the removed `Connection` header asked of this hop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `Connection: upgrade`: the sender asks to switch protocols.
    pub upgrade: bool,
    /// `Connection: close`: the sender closes the connection after this message.
    pub close: bool,
}

const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes the hop-by-hop headers from `headers`: `Connection` and every
/// header it names, `Proxy-Connection`, `Keep-Alive`, `Transfer-Encoding`,
/// `Upgrade`, and `TE` unless it is exactly `trailers` (which gRPC needs and
/// HTTP/2 allows). Returns what `Connection` asked for, so the caller can
/// carry an upgrade or a close over to the next hop in that hop's own terms.
///
/// ```
/// use http::HeaderMap;
/// use l7inspect_core::remove_hop_by_hop;
///
/// let mut h = HeaderMap::new();
/// h.insert("connection", "close, x-secret".parse().unwrap());
/// h.insert("x-secret", "1".parse().unwrap());
/// h.insert("x-kept", "1".parse().unwrap());
/// let opts = remove_hop_by_hop(&mut h);
/// assert!(opts.close);
/// assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
/// assert!(h.get("x-kept").is_some());
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> ConnectionOptions {
    // Per request, twice: one pass over the names finds which hop-by-hop
    // headers are present (standard names compare as one byte each), so the
    // common message pays no hash lookup for the absent ones.
    let mut present = Present::default();
    for name in headers.keys() {
        if *name == header::CONNECTION {
            present.connection = true;
        } else if *name == header::TRANSFER_ENCODING {
            present.transfer_encoding = true;
        } else if *name == header::UPGRADE {
            present.upgrade = true;
        } else if *name == header::TE {
            present.te = true;
        } else if *name == KEEP_ALIVE {
            present.keep_alive = true;
        } else if *name == PROXY_CONNECTION {
            present.proxy_connection = true;
        }
    }
    let mut opts = ConnectionOptions::default();
    if present.connection {
        // Headers named by `Connection` other than the ones handled here;
        // allocated only when a message lists one.
        let mut listed = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            // Most responses' whole value, answered without tokenizing.
            if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("upgrade") {
                    opts.upgrade = true;
                } else if token.eq_ignore_ascii_case("close") {
                    opts.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    // A `Keep-Alive` header is removed below whether or
                    // not this names it (the pass above saw it if present).
                } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
        for name in listed {
            headers.remove(name);
        }
    }
    if present.proxy_connection {
        headers.remove(PROXY_CONNECTION);
    }
    if present.keep_alive {
        headers.remove(KEEP_ALIVE);
    }
    if present.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present.upgrade {
        headers.remove(header::UPGRADE);
    }
    if present.te {
        let te_is_trailers = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !te_is_trailers {
            headers.remove(header::TE);
        }
    }
    opts
}

/// Why a request's `Host` makes it one the proxy refuses (`400`, never
/// forwarded): a server and the proxy could each take a different one for
/// the target, which is how requests are smuggled past a proxy's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostRefusal {
    /// More than one `Host` field line (RFC 9112 3.2: "more than one Host
    /// header field line" gets 400), even with the same value twice.
    Duplicate,
    /// The request-target names an authority (absolute form, or HTTP/2's
    /// `:authority`) and `Host` names another (RFC 9112 3.2.2, RFC 9113
    /// 8.3.1), or one that is not an authority at all.
    AuthorityMismatch,
}

impl HostRefusal {
    /// The words of the `400`'s body.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::Duplicate => "more than one Host header",
            Self::AuthorityMismatch => "request-target authority differs from Host",
        }
    }
}

/// Checks the request's `Host` fields: at most one, and, when the target
/// has an authority of its own, the same one. Two lookups per request; an
/// allocation only when the target has an authority (absolute form, or an
/// HTTP/2 request that also sends `Host`). (A request without `Host`
/// passes: hyper's server lets it in, and so did the proxy before; the
/// server decides.)
pub(crate) fn check_host<B>(req: &Request<B>) -> Result<(), HostRefusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(HostRefusal::Duplicate);
    }
    let uri = req.uri();
    // Absolute form (HTTP/1) or `:scheme` + `:authority` (HTTP/2); not the
    // authority form of CONNECT, whose Host often leaves the port out.
    match (uri.scheme(), uri.authority()) {
        (Some(_), Some(authority)) if !same_authority(uri, authority, host) => {
            Err(HostRefusal::AuthorityMismatch)
        }
        _ => Ok(()),
    }
}

/// Whether `host` names `authority` (of `uri`): the same host, ignoring
/// case, and the same port once the scheme's default fills in a missing one.
/// A `Host` with userinfo (`user@host`) is not an authority `Host` may
/// carry (RFC 9110 7.2), so it never matches.
fn same_authority(uri: &Uri, authority: &Authority, host: &HeaderValue) -> bool {
    if host.as_bytes().contains(&b'@') {
        return false;
    }
    let Ok(host) = Authority::try_from(host.as_bytes()) else {
        return false;
    };
    let default = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
        Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
        _ => None,
    };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().or(default) == host.port_u16().or(default)
}

/// Which hop-by-hop headers a message carries.
#[derive(Default)]
struct Present {
    connection: bool,
    proxy_connection: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    upgrade: bool,
    te: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn removes_listed_and_fixed_hop_headers() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-end-to-end", "1"),
            ("host", "example.com"),
        ]);
        let opts = remove_hop_by_hop(&mut h);
        assert_eq!(opts, ConnectionOptions::default());
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-end-to-end"]);
    }

    #[test]
    fn host_checks() {
        let req = |target: &str, hosts: &[&'static str]| {
            let mut b = Request::get(target);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        use HostRefusal::*;
        for (target, hosts, want) in [
            ("/", &["a.example"][..], Ok(())),
            ("/", &[][..], Ok(())),
            ("/", &["a.example", "b.example"][..], Err(Duplicate)),
            ("/", &["a.example", "a.example"][..], Err(Duplicate)),
            ("http://a.example/x", &["a.example"][..], Ok(())),
            ("http://A.Example/x", &["a.example:80"][..], Ok(())),
            ("https://a.example:443/", &["a.example"][..], Ok(())),
            ("http://a.example/x", &[][..], Ok(())),
            (
                "http://a.example/x",
                &["b.example"][..],
                Err(AuthorityMismatch),
            ),
            (
                "http://a.example:8080/",
                &["a.example"][..],
                Err(AuthorityMismatch),
            ),
            (
                "http://a.example/",
                &["a.example:8080"][..],
                Err(AuthorityMismatch),
            ),
            (
                "http://a.example/",
                &["a example"][..],
                Err(AuthorityMismatch),
            ),
            ("http://u@a.example/", &["a.example"][..], Ok(())),
            (
                "http://a.example/",
                &["x@a.example"][..],
                Err(AuthorityMismatch),
            ),
        ] {
            assert_eq!(check_host(&req(target, hosts)), want, "{target} {hosts:?}");
        }
        // CONNECT's authority form: Host may leave the port out.
        let connect = Request::connect("a.example:443")
            .header(header::HOST, "a.example")
            .body(())
            .unwrap();
        assert_eq!(check_host(&connect), Ok(()));
    }

    #[test]
    fn keeps_te_trailers_and_reports_upgrade_and_close() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let opts = remove_hop_by_hop(&mut h);
        assert!(opts.upgrade && !opts.close);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("upgrade").is_none());
        let mut h = map(&[("connection", "close")]);
        assert!(remove_hop_by_hop(&mut h).close);
    }
}
