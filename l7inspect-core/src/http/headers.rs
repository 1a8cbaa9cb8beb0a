//! Hop-by-hop header handling (RFC 9110 7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
    let mut opts = ConnectionOptions::default();
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::CONNECTION);
        for value in &listed {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("upgrade") {
                    opts.upgrade = true;
                } else if token.eq_ignore_ascii_case("close") {
                    opts.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    // Removed below.
                } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in [
        PROXY_CONNECTION,
        KEEP_ALIVE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let te_is_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_is_trailers {
        headers.remove(header::TE);
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

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
