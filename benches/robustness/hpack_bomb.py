#!/usr/bin/env python3
"""HPACK bombs against an HTTP/2 proxy: what two reconnecting attackers cost
a normal client, the proxy's CPU and its memory.

    python3 benches/robustness/hpack_bomb.py                       # l7inspect (release) and haproxy
    python3 benches/robustness/hpack_bomb.py --only l7inspect --duration 5
    python3 benches/robustness/hpack_bomb.py --sidecar /path/to/old/l7inspect-sidecar --label before

Per target (one proxy process in front of l7bench's gRPC h2c server, all on
127.0.0.1):
  1. quiet: `l7bench grpc` unary calls, open loop at --rate calls/s over one
     connection, for --duration s: median and p99 latency; the proxy's CPU
     (utime+stime from /proc, as % of one core) and resident memory.
  2. attack: the same, while --attackers processes (at nice 19: attackers
     are remote in life) each open a connection, send HPACK bombs (--bombs
     per write, on new streams, reading and discarding the answers) until
     the proxy closes it, and reconnect, as fast as they can. A bomb is one
     HEADERS frame (END_HEADERS, END_STREAM). --shape table (the default):
     the first block on each connection puts a --entry-byte header in the
     dynamic table (literal with incremental indexing), then each names it
     --refs times, one byte per reference (4000 bytes × 14: 56 KB decoded).
     --shape small: --refs one-byte references to a static-table field
     (accept-encoding, 60 bytes decoded × 1000: 60 KB), the most decoding
     work per byte. Either way each block is over a 16 KiB header-list limit
     (answered 431) and under four times it (h2's own bound, which closes
     the connection at the first). --shape none: the control, connections
     that send the preface and SETTINGS and close (what reconnecting alone
     costs).
The attackers report connections made and bombs written (not all of which
the proxy reads before it closes the connection).

Targets: `l7inspect` (the release sidecar: --sidecar, default
target/release/l7inspect-sidecar, --threads 1) and `haproxy`
(/usr/sbin/haproxy, nbthread 1, an h2c frontend with `proto h2` to the
backend). The bar (issue 14): the normal client's median under attack stays
under 4x its quiet value. The machine is shared: figures are medians of one
run each; run it twice before trusting a difference under ~20%.
"""

import argparse
import json
import multiprocessing as mp
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def hpack_int(first, n, v):
    mx = (1 << n) - 1
    if v < mx:
        return bytes([first | v])
    out = [first | mx]
    v -= mx
    while v >= 128:
        out.append((v % 128) | 0x80)
        v //= 128
    out.append(v)
    return bytes(out)


def head():
    # :method GET, :scheme http, :path / (static), :authority literal.
    return bytes([0x82, 0x86, 0x84, 0x01]) + hpack_int(0, 7, 10) + b"proxy.test"


def bomb_block(shape, entry, refs, first):
    """One bomb's header block: `refs` one-byte references to a large entry
    (`table`: the dynamic entry, put in the table by the first block), or to
    a static-table field (`small`)."""
    block = head()
    if shape == "table":
        if first:
            block += b"\x40" + hpack_int(0, 7, 6) + b"x-bomb" + hpack_int(0, 7, entry) + b"a" * entry
        return block + bytes([0x80 | 62]) * refs
    # Static index 16: accept-encoding: gzip, deflate (60 bytes decoded).
    return block + bytes([0x80 | 16]) * refs


def attacker(addr, args, stop, counts):
    """Connects and sends bombs, --bombs per write, on new streams, reading
    and discarding the answers, until the proxy closes the connection; then
    reconnects."""
    # Attackers are remote in life: here they yield the shared cores to
    # the proxy and the normal client (nice 19), so that the latency
    # measured is the proxy's doing, not the attackers' own CPU.
    os.nice(19)
    first = bomb_block(args.shape, args.entry, args.refs, True)
    later = bomb_block(args.shape, args.entry, args.refs, False)
    conns = 0
    sent = 0
    while not stop.is_set():
        try:
            s = socket.create_connection(addr, timeout=5)
        except OSError:
            time.sleep(0.01)
            continue
        conns += 1
        if args.shape == "none":
            # The control: a connection with no bomb (preface, SETTINGS,
            # close), what reconnecting alone costs.
            try:
                s.sendall(PREFACE + frame(0x4, 0, 0, b""))
                s.recv(1 << 16)
            except OSError:
                pass
            s.close()
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = 1
        out = [PREFACE, frame(0x4, 0, 0, b"")]
        try:
            while not stop.is_set() and stream < 2**31 - 2 * args.bombs:
                for _ in range(args.bombs):
                    out.append(frame(0x1, 0x5, stream, first if stream == 1 else later))
                    stream += 2
                s.sendall(b"".join(out))
                sent += len(out) - (2 if out[0] is PREFACE else 0)
                out = []
                while select.select([s], [], [], 0)[0]:
                    if not s.recv(1 << 20):
                        raise OSError("closed")
        except OSError:
            pass
        s.close()
    counts.put((conns, sent))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what):
    for _ in range(500):
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} never listened on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load(args, port):
    out = subprocess.run(
        [args.l7bench, "grpc", "--addr", f"127.0.0.1:{port}", "--conns", "1",
         "--rate", str(args.rate), "--duration", str(args.duration), "--warmup", "1"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def phase(args, proxy, port, attack):
    stop = mp.Event()
    counts = mp.Queue()
    procs = []
    if attack:
        for _ in range(args.attackers):
            p = mp.Process(target=attacker, args=(("127.0.0.1", port), args, stop, counts))
            p.start()
            procs.append(p)
        time.sleep(1)
    cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
    res = load(args, port)
    cpu1, t1 = cpu_seconds(proxy.pid), time.monotonic()
    rss = rss_mib(proxy.pid)
    stop.set()
    conns = sent = 0
    for p in procs:
        c, s = counts.get(timeout=30)
        conns += c
        sent += s
        p.join()
    elapsed = t1 - t0 + (1 if attack else 0)
    return {
        "p50_ms": res["p50_us"] / 1000,
        "p99_ms": res["p99_us"] / 1000,
        "errors": res.get("errors", 0),
        "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mib": rss,
        "attacker_conns_per_s": conns / elapsed if attack else 0,
        "bombs_per_s": sent / elapsed if attack else 0,
    }


HAPROXY_CFG = """global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend h2c
    bind 127.0.0.1:{port} proto h2
    default_backend be
backend be
    server s1 127.0.0.1:{backend} proto h2
"""


def start_proxy(args, name, port, backend, tmp):
    if name == "l7inspect":
        cmd = [args.sidecar, "--no-transparent", "--threads", "1",
               "--inbound-forward", f"127.0.0.1:{port}=127.0.0.1:{backend}",
               "--outbound-listen", f"127.0.0.1:{free_port()}",
               "--admin-listen", f"127.0.0.1:{free_port()}", "--log-level", "error"]
        cmd += args.sidecar_args.split()
    else:
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(port=port, backend=backend))
        cmd = ["/usr/sbin/haproxy", "-db", "-f", cfg]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p, name)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="l7inspect,haproxy")
    ap.add_argument("--sidecar", default=os.path.join(TARGET, "release", "l7inspect-sidecar"))
    ap.add_argument("--label", default="", help="a name for the sidecar build in the output")
    ap.add_argument("--sidecar-args", default="", help="more flags for the sidecar, e.g. '--http2-max-rejected-header-blocks 2'")
    ap.add_argument("--l7bench", default=os.path.join(TARGET, "release", "l7bench"))
    ap.add_argument("--attackers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--rate", type=float, default=200, help="normal calls per second")
    ap.add_argument("--shape", choices=["table", "small", "none"], default="table")
    ap.add_argument("--entry", type=int, default=4000, help="bytes of the dynamic-table entry")
    ap.add_argument("--refs", type=int, help="references per bomb (default: 14 for table, 1000 for small)")
    ap.add_argument("--bombs", type=int, default=20, help="bombs per write")
    args = ap.parse_args()
    if args.shape == "none":
        args.refs = 0
    if args.refs is None:
        args.refs = 14 if args.shape == "table" else 1000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backend = free_port()
        be = subprocess.Popen([args.l7bench, "serve", "--grpc", f"127.0.0.1:{backend}"])
        try:
            wait_port(backend, be, "l7bench serve")
            for name in args.only.split(","):
                port = free_port()
                proxy = start_proxy(args, name, port, backend, tmp)
                try:
                    quiet = phase(args, proxy, port, attack=False)
                    attack = phase(args, proxy, port, attack=True)
                    after = rss_mib(proxy.pid)
                finally:
                    proxy.send_signal(signal.SIGTERM)
                    proxy.wait(timeout=30)
                label = name + (f" ({args.label})" if args.label and name == "l7inspect" else "")
                row = {"target": label, "quiet": quiet, "attack": attack, "rss_after_mib": after,
                       "ratio": attack["p50_ms"] / quiet["p50_ms"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            be.terminate()
            be.wait(timeout=10)
    print()
    print(f"shape={args.shape} entry={args.entry} refs={args.refs} bombs/write={args.bombs} "
          f"attackers={args.attackers} rate={args.rate}/s duration={args.duration}s")
    print("| target | quiet p50 | attack p50 | ratio | attack p99 | proxy CPU quiet → attack | RSS quiet → attack → after | attacker conns/s | bombs written/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, a = r["quiet"], r["attack"]
        print(f"| {r['target']} | {q['p50_ms']:.2f} ms | {a['p50_ms']:.2f} ms | {r['ratio']:.1f}x | "
              f"{a['p99_ms']:.2f} ms | {q['cpu_pct']:.0f}% → {a['cpu_pct']:.0f}% | "
              f"{q['rss_mib']:.1f} → {a['rss_mib']:.1f} → {r['rss_after_mib']:.1f} MiB | "
              f"{a['attacker_conns_per_s']:.0f} | {a['bombs_per_s']:.0f} |")


if __name__ == "__main__":
    main()
