#!/usr/bin/env python3
"""A proxy at its descriptor limit: silent clients against a TCP forward.

Starts a proxy under `prlimit --nofile=LIMIT:LIMIT` (soft and hard, so it
cannot raise it) forwarding 127.0.0.1 to a local backend, opens CLIENTS
silent client connections, and reports what a client and an operator see:
how many connections are held and how many refused, the proxy's descriptors
and resident memory, whether `/live` answers and how fast, how long one
more client waits before it is refused (or that it hangs), whether a normal
request goes through while the clients are held, and after they leave.

The proxies:
  sidecar  l7inspect-sidecar (--bin; default target/release), an
           --inbound-forward and its admin server's /live and /metrics;
  haproxy  /usr/sbin/haproxy, mode tcp, maxconn left to haproxy (it derives
           it from the limit), `monitor-uri /live` on a second frontend,
           `show info` on a stats socket for its own view.

Usage:
  benches/limits/descriptors.py sidecar --bin target/release/l7inspect-sidecar
  benches/limits/descriptors.py haproxy
  benches/limits/descriptors.py both --bin ... [--limit 256] [--clients 300]

Needs python3 (standard library), prlimit (util-linux) and, for haproxy,
Debian's haproxy package. Everything listens on 127.0.0.1 and stops when
the script ends.
"""

import argparse
import os
import select
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(threading.Thread):
    """Answers each request head with 200 and closes; holds silent
    connections until their client (the proxy) closes them."""

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.addr = self.listener.getsockname()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.held = 0

    def run(self):
        bufs = {}
        while True:
            for key, _ in self.sel.select():
                sock = key.fileobj
                if sock is self.listener:
                    try:
                        conn, _ = sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    bufs[conn] = b""
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    bufs[sock] += data
                    if b"\r\n\r\n" not in bufs[sock]:
                        continue
                    try:
                        sock.sendall(RESPONSE)
                    except OSError:
                        pass
                self.sel.unregister(sock)
                del bufs[sock]
                sock.close()
            self.held = len(bufs)


def http_get(addr, path, timeout=2.0):
    """(outcome, seconds): the status code, or 'reset', 'eof', 'timeout'."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        return "timeout", time.monotonic() - t0
    except ConnectionResetError:
        return "reset", time.monotonic() - t0
    except OSError as e:
        return type(e).__name__, time.monotonic() - t0
    if not data:
        return "eof", time.monotonic() - t0
    return int(data.split(b" ", 2)[1]), time.monotonic() - t0


def proc(pid):
    """(descriptors, resident KiB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return fds, rss


def client_state(s):
    """'connecting' (the handshake has not completed: the proxy's backlog is
    full), 'open', or 'closed' once the proxy reset or ended it."""
    poll = select.poll()
    poll.register(s, select.POLLOUT | select.POLLIN)
    if not poll.poll(0):
        return "connecting"
    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        return "closed"
    try:
        data = s.recv(16, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    return "closed" if not data else "open"


def connect_client(addr):
    """A non-blocking connect, left to complete (or not) on its own."""
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(addr)
    return s


def time_to_refuse(addr, wait=5.0):
    """Seconds from connect until the proxy closes a new silent client, or
    None if it is still open after `wait`."""
    t0 = time.monotonic()
    with connect_client(addr) as s:
        while time.monotonic() - t0 < wait:
            if client_state(s) == "closed":
                return time.monotonic() - t0
            time.sleep(0.001)
        return None


def start_sidecar(args, backend, forward, admin, workdir):
    log = open(os.path.join(workdir, "sidecar.log"), "w")
    cmd = ["prlimit", f"--nofile={args.limit}:{args.limit}", "--", args.bin,
           "--no-transparent", "--admin-listen", f"127.0.0.1:{admin}",
           "--inbound-forward", f"127.0.0.1:{forward}=127.0.0.1:{backend[1]}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log), log.name


def start_haproxy(args, backend, forward, admin, workdir):
    cfg = os.path.join(workdir, "haproxy.cfg")
    sock = os.path.join(workdir, "haproxy.sock")
    with open(cfg, "w") as f:
        f.write(f"""global
    nbthread 1
    stats socket {sock}
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend fwd
    bind 127.0.0.1:{forward}
    default_backend be
backend be
    server s1 127.0.0.1:{backend[1]}
frontend admin
    mode http
    timeout client 10s
    bind 127.0.0.1:{admin}
    monitor-uri /live
""")
    log = open(os.path.join(workdir, "haproxy.log"), "w")
    cmd = ["prlimit", f"--nofile={args.limit}:{args.limit}", "--", args.haproxy, "-db", "-f", cfg]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), sock


def haproxy_info(sock):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        return f"(stats socket: {e})"
    info = dict(l.split(": ", 1) for l in data.decode().splitlines() if ": " in l)
    return ", ".join(f"{k}={info.get(k)}" for k in ("Ulimit-n", "Maxsock", "Maxconn", "CurrConns"))


def sidecar_metrics(admin):
    try:
        with socket.create_connection(("127.0.0.1", admin), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        return f"(/metrics: {e})"
    want = ("l7inspect_tcp_open_connections{", "l7inspect_connections_refused_total{",
            "process_open_fds", "process_max_fds")
    lines = [l for l in data.decode(errors="replace").splitlines()
             if l.startswith(want) and not l.endswith(" 0")]
    return "; ".join(lines)


def probes(admin, n=10):
    """(answered, n, median seconds of the answered)."""
    results = [http_get(("127.0.0.1", admin), "/live") for _ in range(n)]
    ok = [t for r, t in results if r == 200]
    return len(ok), n, statistics.median(ok) if ok else None, {r for r, _ in results}


def fmt_ms(s):
    return "-" if s is None else f"{s * 1000:.1f} ms"


def run(name, args):
    backend = Backend()
    backend.start()
    forward, admin = free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix=f"limits-{name}-")
    start = start_sidecar if name == "sidecar" else start_haproxy
    p, extra = start(args, backend.addr, forward, admin, workdir)
    try:
        for _ in range(200):
            if http_get(("127.0.0.1", admin), "/live", timeout=0.5)[0] == 200:
                break
            time.sleep(0.05)
        else:
            sys.exit(f"{name} did not answer /live")
        view = (lambda: sidecar_metrics(admin)) if name == "sidecar" else (lambda: haproxy_info(extra))
        print(f"## {name} (RLIMIT_NOFILE {args.limit}:{args.limit}, {args.clients} silent clients)")
        fds, rss = proc(p.pid)
        print(f"idle:     {fds} descriptors, {rss / 1024:.1f} MiB resident; {view()}")

        fwd = ("127.0.0.1", forward)
        clients = [connect_client(fwd) for _ in range(args.clients)]
        # Settle: until the states stop changing (at most 10 s).
        last, stable = None, 0
        for _ in range(100):
            states = [client_state(c) for c in clients]
            now = (states.count("open"), states.count("closed"), states.count("connecting"))
            stable = stable + 1 if now == last else 0
            last = now
            if stable >= 5:
                break
            time.sleep(0.1)
        fds, rss = proc(p.pid)
        print(f"held:     {last[0]} clients open, {last[1]} closed by the proxy, {last[2]} not even connected; "
              f"{fds} descriptors, {rss / 1024:.1f} MiB resident; backend holds {backend.held}")
        print(f"          {view()}")
        answered, n, median, outcomes = probes(admin)
        print(f"/live:    {answered}/{n} answered, median {fmt_ms(median)} (outcomes {sorted(map(str, outcomes))})")
        refusals = [time_to_refuse(fwd) for _ in range(args.late)]
        closed = [t for t in refusals if t is not None]
        print(f"one more: {len(closed)}/{args.late} closed by the proxy, median {fmt_ms(statistics.median(closed) if closed else None)}"
              f"{'' if len(closed) == args.late else f'; {args.late - len(closed)} still open after 5 s'}")
        r, t = http_get(fwd, "/", timeout=3)
        print(f"request:  {r} in {fmt_ms(t)} while the clients are held")

        for c in clients:
            c.close()
        time.sleep(1)
        for _ in range(100):
            if backend.held == 0:
                break
            time.sleep(0.1)
        fds, rss = proc(p.pid)
        r, t = http_get(fwd, "/", timeout=3)
        live, tl = http_get(("127.0.0.1", admin), "/live")
        print(f"after:    {fds} descriptors, {rss / 1024:.1f} MiB resident; request {r} in {fmt_ms(t)}; /live {live} in {fmt_ms(tl)}")
        if name == "sidecar":
            with open(extra) as f:
                log = f.read()
            print(f"log:      {log.count('connection refused')} 'connection refused' lines, "
                  f"{log.count('accept failed')} 'accept failed' lines, {len(log.splitlines())} lines in all")
        print()
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    # The proxies are stopped (finally, below) on Ctrl-C and on SIGTERM too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("proxy", choices=["sidecar", "haproxy", "both"])
    ap.add_argument("--bin", default="target/release/l7inspect-sidecar")
    ap.add_argument("--haproxy", default="/usr/sbin/haproxy")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--late", type=int, default=5, help="late clients timed to their refusal")
    args = ap.parse_args()
    for name in (["sidecar", "haproxy"] if args.proxy == "both" else [args.proxy]):
        run(name, args)


if __name__ == "__main__":
    main()
