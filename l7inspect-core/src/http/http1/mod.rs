//! HTTP/1 towards the server: reading its responses ([`decode`]) and the
//! client connection driven by the requests themselves ([`client`]). The
//! client side of HTTP/1 is hyper's server.

pub(crate) mod client;
pub(crate) mod decode;
