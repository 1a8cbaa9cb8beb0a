//! The upstream side: requests sent on an HTTP/2 connection to the server.

use super::{RecvBody, SendBody};
use crate::http::body::RequestBody;
use bytes::Bytes;
use h2::client::{Connection, ResponseFuture, SendRequest};
use http::{Method, Request, Response, header};
use http_body::Body;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite};

// hyper's HTTP/2 client defaults (hyper 1.x `proto::h2::client`).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// Starts an HTTP/2 client connection over `io`: the handle that opens
/// streams, and the connection future that must be polled to completion.
pub(crate) async fn handshake<T>(
    io: T,
) -> Result<(SendRequest<Bytes>, Connection<T, Bytes>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
        .enable_push(false)
        .handshake(io)
        .await
}

/// Opens a stream for `req` on `sender` (which must be ready) and returns
/// the exchange: a future of the response that also sends the request body.
pub(crate) fn send(
    sender: &mut SendRequest<Bytes>,
    req: Request<RequestBody>,
) -> Result<Exchange, h2::Error> {
    let (parts, body) = req.into_parts();
    let mut head = Request::from_parts(parts, ());
    let eos = body.is_end_stream();
    // As hyper's client does: a body known to be empty is announced as
    // such where the method gives a body meaning.
    if eos
        && !matches!(
            *head.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        )
        && !head.headers().contains_key(header::CONTENT_LENGTH)
    {
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    }
    let (response, stream) = sender.send_request(head, eos)?;
    let body = (!eos).then(|| SendBody::new(body, stream, "request body"));
    Ok(Exchange { response, body })
}

/// A request in flight: resolves to the response once its head arrives,
/// sending the request body meanwhile. A body not all sent by then (a
/// streaming call) goes on on a task of its own, as hyper's does, so that it
/// never waits for the client to read the response.
pub(crate) struct Exchange {
    response: ResponseFuture,
    body: Option<SendBody<RequestBody>>,
}

impl Future for Exchange {
    type Output = Result<Response<RecvBody>, h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(body) = &mut this.body
            && Pin::new(body).poll(cx).is_ready()
        {
            this.body = None;
        }
        let resp = ready!(Pin::new(&mut this.response).poll(cx))?;
        if let Some(body) = this.body.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(body);
        }
        let (parts, recv) = resp.into_parts();
        let body = RecvBody::new(recv, &parts.headers);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
