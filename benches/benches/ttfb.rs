//! Time to first byte from a server that speaks first (an SMTP-style
//! `220 hello\r\n` banner on accept), `direct` beside `via-sidecar`.
//!
//! One iteration is: connect, then read the first byte the server sent. The
//! client never writes, so through the sidecar the banner can only arrive
//! once detection has noticed the server spoke first (`server_first`): what
//! this measures, beyond the extra hop, is that detection adds no wait.
//!
//! The banner server and the sidecar each run on a current-thread runtime
//! on their own OS thread (the sidecar's default is one worker thread), and
//! the measured client runs on a third runtime on criterion's thread, so the
//! client does not share a scheduler with what it measures.
//!
//! The client drops each connection after its first byte, with the rest of
//! the banner unread: the kernel answers with a reset, so no connection sits
//! in TIME_WAIT and long runs do not run out of ephemeral ports. Closing is
//! outside the timed region ([`Bencher::iter_custom`]).
//!
//! ```text
//! cargo bench -p l7inspect-benches --bench ttfb
//! ```

#![forbid(unsafe_code)]

use criterion::{Bencher, Criterion, criterion_group, criterion_main};
use l7inspect_benches::Background;
use l7inspect_sidecar::TracingConfig;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    runtime::Runtime,
};

const BANNER: &[u8] = b"220 hello\r\n";

fn ttfb(c: &mut Criterion) {
    let (server, _server) = banner_server();
    let (proxy, _spans, _sidecar) = l7inspect_benches::sidecar(server, TracingConfig::default());
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    let mut group = c.benchmark_group("ttfb");
    group.bench_function("direct", |b| first_byte(b, &client, server));
    group.bench_function("via-sidecar", |b| first_byte(b, &client, proxy));
    group.finish();
}

/// Times connect + first byte read, `iters` times in a row.
fn first_byte(b: &mut Bencher<'_>, client: &Runtime, addr: SocketAddr) {
    b.iter_custom(|iters| {
        client.block_on(async {
            let mut total = Duration::ZERO;
            let mut byte = [0u8; 1];
            for _ in 0..iters {
                let start = Instant::now();
                let mut conn = TcpStream::connect(addr).await.expect("connect");
                let n = conn.read(&mut byte).await.expect("read the banner");
                total += start.elapsed();
                assert_eq!((n, byte[0]), (1, BANNER[0]), "first byte of the banner");
                drop(conn);
            }
            total
        })
    });
}

/// Writes [`BANNER`] to every connection on accept, then waits for the client
/// to go.
fn banner_server() -> (SocketAddr, Background) {
    l7inspect_benches::serve("banner-server", |mut conn: TcpStream| async move {
        if conn.write_all(BANNER).await.is_err() {
            return;
        }
        let mut sink = [0u8; 64];
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
}

criterion_group!(benches, ttfb);
criterion_main!(benches);
