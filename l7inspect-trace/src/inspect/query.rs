//! The filters of the span API, the live view and tap, from a query string.

use crate::db::DbSystem;
use crate::export::RecentSpan;
use crate::span::{HttpFields, SpanRecord};
use opentelemetry::trace::{SpanKind, Status};

/// Which spans a request to the span API or tap wants. Every field that is
/// set must match; an unset one matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanQuery {
    /// At most this many spans, the newest (the API's default: 100).
    pub limit: Option<usize>,
    /// `inbound` (SERVER spans) or `outbound` (CLIENT spans).
    pub direction: Option<Direction>,
    /// `http1`, `h2`, `grpc`, `redis`, `postgresql` or `mysql`.
    pub protocol: Option<Protocol>,
    /// The response status class (`2xx` to `5xx`) or `error` (the span's
    /// status is ERROR).
    pub status: Option<StatusClass>,
    /// The request method, exactly (`GET`).
    pub method: Option<String>,
    /// `server.address`, or `server.address:server.port`, exactly (of an
    /// HTTP request, or of a database command: the database's).
    pub authority: Option<String>,
    /// A substring of `url.path`.
    pub path: Option<String>,
    /// The span's `service.name`, exactly.
    pub service: Option<String>,
}

/// A span's direction as the proxy saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A request to the proxied service (a SERVER span).
    Inbound,
    /// A request the proxied service made (a CLIENT span).
    Outbound,
}

/// The protocol of a request's or a database command's span (more may
/// come, as the sidecar records more protocols).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 (not gRPC).
    H2,
    /// gRPC.
    Grpc,
    /// A Redis command.
    Redis,
    /// A PostgreSQL query or execution.
    Postgresql,
    /// A MySQL query or execution.
    Mysql,
}

/// A class of outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// HTTP status `N`xx (2 to 5).
    Http(u16),
    /// The span's status is ERROR.
    Error,
}

impl Direction {
    /// Of `span`, from its kind (`None` for other kinds).
    pub fn of(span: &SpanRecord) -> Option<Self> {
        match span.kind {
            SpanKind::Server => Some(Self::Inbound),
            SpanKind::Client => Some(Self::Outbound),
            _ => None,
        }
    }

    /// `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl Protocol {
    /// Every protocol, in the order the live view lists them.
    pub const ALL: [Self; 6] = [
        Self::Http1,
        Self::H2,
        Self::Grpc,
        Self::Redis,
        Self::Postgresql,
        Self::Mysql,
    ];

    /// Of `span`, from its RPC, HTTP or database fields (`None` without
    /// them).
    pub fn of(span: &SpanRecord) -> Option<Self> {
        if span.rpc.is_some() {
            return Some(Self::Grpc);
        }
        if let Some(db) = &span.db {
            return Self::named(db.system);
        }
        match span.http.as_ref()?.protocol_version {
            "2" => Some(Self::H2),
            _ => Some(Self::Http1),
        }
    }

    /// The protocol named `name` ([`as_str`](Self::as_str)).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// `http1`, `h2`, `grpc`, or the `db.system.name`: `redis`,
    /// `postgresql`, `mysql`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::Grpc => "grpc",
            Self::Redis => DbSystem::Redis.as_str(),
            Self::Postgresql => DbSystem::Postgresql.as_str(),
            Self::Mysql => DbSystem::Mysql.as_str(),
        }
    }
}

impl SpanQuery {
    /// Reads `query` (`direction=inbound&status=5xx&path=%2Fapi`). An
    /// unknown parameter or a bad value is an error naming it.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            let value = decode(raw)?;
            if value.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("{key}={value:?}: {why}");
            match key.as_str() {
                "limit" => {
                    let n: usize = value.parse().map_err(|_| bad("not a count"))?;
                    q.limit = Some(n);
                }
                "direction" => {
                    q.direction = Some(match value.as_str() {
                        "inbound" => Direction::Inbound,
                        "outbound" => Direction::Outbound,
                        _ => return Err(bad("inbound or outbound")),
                    })
                }
                "protocol" => {
                    q.protocol = Some(
                        Protocol::named(&value)
                            .ok_or_else(|| bad("http1, h2, grpc, redis, postgresql or mysql"))?,
                    )
                }
                "status" => {
                    q.status = Some(match value.as_str() {
                        "error" => StatusClass::Error,
                        c if c.len() == 3
                            && c.ends_with("xx")
                            && (b'1'..=b'5').contains(&c.as_bytes()[0]) =>
                        {
                            StatusClass::Http(u16::from(c.as_bytes()[0] - b'0'))
                        }
                        _ => return Err(bad("1xx to 5xx, or error")),
                    })
                }
                "method" => q.method = Some(value),
                "authority" => q.authority = Some(value),
                "path" => q.path = Some(value),
                "service" => q.service = Some(value),
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?} (limit, direction, protocol, status, method, authority, path, service)"
                    ));
                }
            }
        }
        Ok(q)
    }

    /// Whether `entry` matches every filter set.
    pub fn matches(&self, entry: &RecentSpan) -> bool {
        let span = &entry.span;
        if self.direction.is_some() && Direction::of(span) != self.direction {
            return false;
        }
        if self.protocol.is_some() && Protocol::of(span) != self.protocol {
            return false;
        }
        if let Some(class) = self.status {
            let ok = match class {
                StatusClass::Error => matches!(span.status, Status::Error { .. }),
                StatusClass::Http(c) => span
                    .http
                    .as_ref()
                    .and_then(|h| h.response_status_code)
                    .is_some_and(|s| s / 100 == c),
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method
            && span.http.as_ref().is_none_or(|h| method(h) != m)
        {
            return false;
        }
        if let Some(a) = &self.authority {
            let Some((host, port)) = server(span) else {
                return false;
            };
            if host != a && authority(host, port) != *a {
                return false;
            }
        }
        if let Some(p) = &self.path
            && span
                .http
                .as_ref()
                .is_none_or(|h| !h.path.contains(p.as_str()))
        {
            return false;
        }
        self.service.as_deref().is_none_or(|s| *entry.service == *s)
    }
}

/// The server a span's request or command went to: `server.address` and
/// `server.port` of its HTTP or database fields.
pub(crate) fn server(span: &SpanRecord) -> Option<(&str, u16)> {
    if let Some(h) = &span.http {
        return Some((&h.server_address, h.server_port));
    }
    span.db
        .as_ref()
        .map(|d| (&*d.server_address, d.server_port))
}

/// `host:port`, an IPv6 address in brackets (`[::1]:6379`).
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The request's method as sent (`_OTHER` spans keep the original).
pub(crate) fn method(h: &HttpFields) -> &str {
    h.method_original.as_deref().unwrap_or(h.method)
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_filter_and_names_bad_ones() {
        let q = SpanQuery::parse(
            "limit=5&direction=inbound&protocol=grpc&status=5xx&method=GET&authority=shop%3A80&path=%2Fapi+v1&service=front",
        )
        .unwrap();
        assert_eq!(
            q,
            SpanQuery {
                limit: Some(5),
                direction: Some(Direction::Inbound),
                protocol: Some(Protocol::Grpc),
                status: Some(StatusClass::Http(5)),
                method: Some("GET".into()),
                authority: Some("shop:80".into()),
                path: Some("/api v1".into()),
                service: Some("front".into()),
            }
        );
        assert_eq!(SpanQuery::parse("").unwrap(), SpanQuery::default());
        assert_eq!(
            SpanQuery::parse("direction=&path=").unwrap(),
            SpanQuery::default()
        );
        assert_eq!(
            SpanQuery::parse("status=error").unwrap().status,
            Some(StatusClass::Error)
        );
        for (bad, want) in [
            (
                "direction=sideways",
                "direction=\"sideways\": inbound or outbound",
            ),
            ("status=6xx", "1xx to 5xx, or error"),
            ("limit=-1", "limit=\"-1\": not a count"),
            ("colour=red", "unknown parameter \"colour\""),
            ("path=%zz", "bad percent-encoding"),
            ("path=%ff", "not UTF-8"),
        ] {
            let err = SpanQuery::parse(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
