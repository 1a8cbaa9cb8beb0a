#!/usr/bin/env python3
"""Soak: the release sidecar in front of real backends, every kind of
traffic at once plus a few hostile clients, for --duration seconds.

    python3 benches/robustness/soak.py --duration 600   # the documented soak (10 min)
    python3 benches/robustness/soak.py --duration 60    # CI's (.ci/run)
    python3 benches/robustness/soak.py --duration 20 --no-build   # a smoke run

One l7inspect-sidecar (explicit --inbound-forward listeners, no iptables)
in front of an nginx backend (HTTP/1.1 and h2c), `l7bench serve` (gRPC
unary and bidirectional streaming, and the OTLP sink the sidecar exports
every span to) and redis-server, with at once:

  normal clients (each must see no error at all)
    h1       l7bench http1: HTTP/1.1 keep-alive, open loop
    h1new    l7bench http1 --new-conn: a new connection per request
    h2       h2load: h2c (prior knowledge), fixed rate
    grpc     l7bench grpc: gRPC unary, open loop, every answer checked
    stream   l7bench grpc-stream: gRPC bidirectional streams, every echo checked
    redis    redis-benchmark in a loop, through the proxy (opaque TCP: no
             protocol detected, passed through), plus a checker that SETs
             random values up to 64 KiB and GETs them back byte for byte
    tls-h1   h2load --h1 over TLS (the sidecar terminates it: --tls-terminate,
             a certificate from `openssl req`), fixed rate
    tls-h2   h2load over TLS, h2 by ALPN, fixed rate
    tls-new  a Python client: a new TLS connection (full handshake) per GET
  hostile clients (what they get is reported, not judged)
    slow     HTTP/1 heads trickled one byte every 5 s, reconnecting when cut
    idle     connections that never send a byte, reconnecting when cut
    garbage  2 KiB of random bytes on a new connection every second
    reset    every 5 s an h2 connection opening and resetting 200 streams

The proxy's RSS, descriptors and CPU are sampled every second from /proc.
Checks: no error for any normal client; the proxy alive; after the load
stops and every hostile connection is closed, a --settle s pause, then
descriptors back to the idle baseline (+ --fd-slack) and RSS no more than
--rss-slack-mib above the RSS at 10% of the run (after warm-up). Exit 0
when all hold, else 1 with one line `FAIL: <cause>` at the end.

Output: a table per client and a summary on stdout, one JSON object on the
line starting `SOAKJSON ` and in --out (default
benches/robustness/results/soak.json). Everything listens on 127.0.0.1 (in
a private network namespace as root: unshare -n, as run.py); every process
it starts is stopped by PID; every client has a time limit. Standard
library only; it imports benches/e2e/run.py's helpers.
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

import common
from common import e2e

TAG = "soak"
OFFSETS = {"backend_h1": 0, "backend_h2": 1, "backend_grpc": 2, "redis": 3, "otlp": 4,
           "h1": 10, "h2": 11, "grpc": 12, "redis_proxy": 13, "tls_h1": 14, "tls_h2": 15, "admin": 19}


def log(*a):
    common.log(TAG, *a)


class Counter:
    """Thread-safe tallies of a Python client: ok, errors by kind."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = {}

    def good(self, n=1):
        with self.lock:
            self.ok += n

    def bad(self, why):
        with self.lock:
            why = str(why)[:100]
            self.errors[why] = self.errors.get(why, 0) + 1

    def result(self):
        with self.lock:
            return {"ok": self.ok, "errors": sum(self.errors.values()), "error_kinds": dict(self.errors)}


# ------------------------------------------------------------ normal clients


def spawn_load(cmd, cpu):
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + [str(c) for c in cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    p._e2e_name = os.path.basename(str(cmd[0]))
    e2e.CHILDREN.append(p)
    return p


def collect_l7bench(p, budget):
    try:
        out, err = p.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        e2e.stop(p)
        return {"errors": 1, "error_kinds": {"did not finish in time": 1}}
    e2e.stop(p)
    if p.returncode != 0 or not out.strip():
        return {"errors": 1, "error_kinds": {f"exit {p.returncode}: {err.strip()[-160:]}": 1}}
    return json.loads(out.strip().splitlines()[-1])


def collect_h2load(p, budget):
    try:
        out, err = p.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        e2e.stop(p)
        return {"errors": 1, "error_kinds": {"did not finish in time": 1}}
    e2e.stop(p)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not codes:
        return {"errors": 1, "error_kinds": {f"h2load output: {(out + err).strip()[-160:]}": 1}}
    failed, errored, timeout = int(m.group(5)), int(m.group(6)), int(m.group(7))
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    kinds = {k: v for k, v in (("failed", failed), ("errored", errored), ("timeout", timeout),
                               ("non-2xx", non2xx)) if v}
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    r = {"requests": int(m.group(4)), "errors": failed + errored + timeout + non2xx, "error_kinds": kinds}
    if lat:
        r["mean"] = lat.group(3)
        r["max"] = lat.group(2)
    tls = re.search(r"^Application protocol: (\S+)", out, re.M)
    if tls:
        r["alpn"] = tls.group(1)
    return r


def redis_loop(port, stop, counter, cpu):
    """redis-benchmark runs one after another through the proxy (opaque
    TCP), 4 connections, a mix of commands; any error line or non-zero exit
    counts. A short pause between runs keeps the rate moderate."""
    while not stop.is_set():
        try:
            o = subprocess.run(["taskset", "-c", str(cpu), "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
                                "-c", "4", "-n", "2000", "-t", "ping,set,get,incr,lpush,lpop", "-q"],
                               capture_output=True, text=True, timeout=60)
            text = o.stdout + o.stderr
            bad = [ln for ln in text.splitlines() if re.search(r"(?i)error|refused|reset", ln)]
            if o.returncode != 0 or bad:
                counter.bad(f"exit {o.returncode}: {(bad or [text.strip()[-80:]])[0]}")
            else:
                counter.good(6 * 2000)
        except subprocess.TimeoutExpired:
            counter.bad("redis-benchmark did not finish in 60 s")
        stop.wait(0.5)


def resp(*parts):
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


def read_resp(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    if line[:1] == b"$":
        n = int(line[1:])
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if line[:1] == b"-":
        raise RuntimeError(line.strip().decode()[:80])
    return line.strip()


def redis_exact(port, stop, counter):
    """SET random values (1 B - 64 KiB) then GET them back, through the
    proxy, on one connection (a new one after a failure): every byte must
    come back as sent."""
    rng = random.Random(14)
    s = f = None
    while not stop.is_set():
        try:
            if s is None:
                s = socket.create_connection(("127.0.0.1", port), 5)
                s.settimeout(10)
                f = s.makefile("rb")
            key = b"soak:%d" % rng.randrange(100)
            val = rng.randbytes(rng.choice((1, 100, 4096, 65536)))
            s.sendall(resp(b"SET", key, val) + resp(b"GET", key))
            set_answer = read_resp(f)
            got = read_resp(f)
            if set_answer != b"+OK":
                counter.bad(f"SET answered {set_answer!r:.40}")
            elif got != val:
                counter.bad(f"GET returned {len(got or b'')} bytes, not the {len(val)} SET")
            else:
                counter.good()
        except Exception as e:  # noqa: BLE001
            counter.bad(f"{type(e).__name__}: {e}")
            if s is not None:
                s.close()
            s = None
            stop.wait(0.5)
        stop.wait(0.02)
    if s is not None:
        s.close()


def tls_new_conns(port, stop, counter, rate):
    """A GET on a new TLS connection (a full handshake) `rate` times a
    second; the certificate is not verified (self-signed)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    while not stop.is_set():
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
            c.request("GET", "/", headers={"Host": "bench.local"})
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200 and body == common.BODY:
                counter.good()
            else:
                counter.bad(f"status {r.status}, {len(body)} bytes")
        except Exception as e:  # noqa: BLE001
            counter.bad(f"{type(e).__name__}: {e}")
        stop.wait(1.0 / rate)


# ------------------------------------------------------------ hostile clients


class Hostiles(threading.Thread):
    """The hostile clients, all on one thread with non-blocking sockets:
    `slow` connections trickling a request head one byte every 5 s, `idle`
    connections sending nothing, each replaced when the proxy closes it; a
    garbage connection every second; an h2 rapid-reset burst every 5 s.
    What the proxy did to them is counted (closed after how long, what it
    answered)."""

    def __init__(self, ports, slow, idle, stop):
        super().__init__(daemon=True)
        self.ports, self.n_slow, self.n_idle, self.halt = ports, slow, idle, stop
        self.conns = {}  # socket -> [kind, opened at, bytes sent]
        self.tally = {"slow": {"opened": 0, "cut": 0, "cut_after_s": [], "answers": {}},
                      "idle": {"opened": 0, "cut": 0, "cut_after_s": [], "answers": {}},
                      "garbage": {"sent": 0, "answers": {}},
                      "reset": {"bursts": 0, "answers": {}}}
        self.lock = threading.Lock()

    def open(self, kind):
        try:
            s = socket.create_connection(("127.0.0.1", self.ports["h1"]), 5)
        except OSError as e:
            self.count(kind, f"connect: {e.strerror}")
            return
        s.setblocking(False)
        self.conns[s] = [kind, time.monotonic(), 0]
        self.tally[kind]["opened"] += 1
        if kind == "slow":
            self.send(s, b"GET / HTTP/1.1\r\nHost: bench.local\r\nX-Slow: ")

    def count(self, kind, answer):
        with self.lock:
            a = self.tally[kind]["answers"]
            a[answer] = a.get(answer, 0) + 1

    def send(self, s, data):
        try:
            s.send(data)
            self.conns[s][2] += len(data)
        except (BlockingIOError, OSError):
            pass

    def reap(self):
        """Connections the proxy answered or closed: counted and replaced."""
        for s in list(self.conns):
            kind, opened, _ = self.conns[s]
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = None
            if data:
                self.count(kind, common.first_line(data) or "bytes")
                continue  # an answer; the close (if any) comes next
            self.tally[kind]["cut"] += 1
            self.tally[kind]["cut_after_s"].append(round(time.monotonic() - opened, 1))
            self.count(kind, "closed" if data == b"" else "reset")
            del self.conns[s]
            s.close()

    def garbage(self, rng):
        try:
            s = socket.create_connection(("127.0.0.1", self.ports["h1"]), 5)
            s.sendall(rng.randbytes(2048))
            got, how = common.drain(s, until=time.monotonic() + 3)
            s.close()
            self.count("garbage", (common.first_line(got) or "") + f" ({how})")
            self.tally["garbage"]["sent"] += 1
        except OSError as e:
            self.count("garbage", f"{type(e).__name__}")

    def rapid_reset(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.ports["h2"]), 5)
            block = common.request_block()
            burst = [common.PREFACE, common.frame(common.SETTINGS, 0, 0)]
            for i in range(200):
                sid = 2 * i + 1
                burst.append(common.frame(common.HEADERS, common.END_HEADERS | common.END_STREAM, sid, block))
                burst.append(common.frame(common.RST_STREAM, 0, sid, (8).to_bytes(4, "big")))  # CANCEL
            s.sendall(b"".join(burst))
            reader = common.H2Reader()
            _, how = common.drain(s, reader, until=time.monotonic() + 2)
            s.close()
            self.count("reset", reader.answer() + f" ({how})")
            self.tally["reset"]["bursts"] += 1
        except OSError as e:
            self.count("reset", f"{type(e).__name__}")

    def run(self):
        rng = random.Random(1414)
        last_drip = last_garbage = last_reset = time.monotonic()
        while not self.halt.is_set():
            now = time.monotonic()
            kinds = [c[0] for c in self.conns.values()]
            for kind, want in (("slow", self.n_slow), ("idle", self.n_idle)):
                for _ in range(want - kinds.count(kind)):
                    self.open(kind)
            if now - last_drip >= 5:
                last_drip = now
                for s, (kind, _, _) in list(self.conns.items()):
                    if kind == "slow":
                        self.send(s, b"a")
            if now - last_garbage >= 1:
                last_garbage = now
                self.garbage(rng)
            if now - last_reset >= 5:
                last_reset = now
                self.rapid_reset()
            self.reap()
            self.halt.wait(0.2)
        for s in list(self.conns):
            s.close()
        self.conns.clear()

    def result(self):
        out = json.loads(json.dumps(self.tally))
        for kind in ("slow", "idle"):
            cuts = out[kind].pop("cut_after_s")
            out[kind]["cut_after_s_median"] = sorted(cuts)[len(cuts) // 2] if cuts else None
        return out


# ------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=600, help="seconds of load (default 600; CI: 60)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every normal client's rate")
    ap.add_argument("--slow", type=int, default=10, help="hostile slow-header connections held at once")
    ap.add_argument("--idle", type=int, default=10, help="hostile silent connections held at once")
    ap.add_argument("--no-hostile", action="store_true", help="normal clients only")
    ap.add_argument("--trace", choices=("off", "ring", "otlp"), default="otlp",
                    help="the sidecar's tracing: every request exported over OTLP/HTTP to the l7bench sink "
                         "(default), recorded only into the ring, or off")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the load before the final reading")
    ap.add_argument("--fd-slack", type=int, default=4, help="descriptors allowed over the idle baseline at the end")
    ap.add_argument("--rss-slack-mib", type=float, default=16.0,
                    help="MiB of RSS allowed at the end over the RSS at 10%% of the run")
    ap.add_argument("--proxy-cpu", type=int, default=0, help="CPU the sidecar is pinned to (taskset)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU of the backends and clients")
    ap.add_argument("--port-base", type=int, default=18600, help="ports BASE..BASE+19 on 127.0.0.1")
    ap.add_argument("--netns", choices=("auto", "yes", "no"), default="auto",
                    help="run in a private network namespace (unshare -n; root): auto (default), yes, no")
    ap.add_argument("--bin-dir", default="", help="directory with l7inspect-sidecar and l7bench (release); "
                    "default $CARGO_TARGET_DIR/release, else target/release, built first")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--out", default=os.path.join(common.HERE, "results", "soak.json"))
    args = ap.parse_args()
    if args.duration < 10:
        sys.exit("FAIL: --duration must be at least 10 s")

    if os.environ.get(common.NETNS_ENV) != "1":
        common.need_tools({"nginx": "nginx", "h2load": "nghttp2-client", "redis-server": "redis-server",
                           "redis-benchmark": "redis-tools", "openssl": "openssl", "taskset": "util-linux"}, TAG)
        common.build(args, TAG)
    common.enter_netns(args.netns, __file__, TAG)
    bins = common.binaries(args)
    P = {k: args.port_base + v for k, v in OFFSETS.items()}
    common.ports_free(P.values())
    tmp = common.prepare(TAG)
    started = common.now_utc()
    m = common.machine()
    lc = args.load_cpu

    # Backends.
    common.start_nginx_backend(tmp, P["backend_h1"], P["backend_h2"], lc)
    serve = e2e.start([bins["l7bench"], "serve", "--grpc", f"127.0.0.1:{P['backend_grpc']}",
                       "--otlp", f"127.0.0.1:{P['otlp']}"], lc, "l7bench-serve", tmp)
    e2e.wait_port(P["backend_grpc"], serve)
    e2e.wait_port(P["otlp"], serve)
    common.start_redis(tmp, P["redis"], lc)

    # The sidecar.
    certs = e2e.make_cert(tmp)
    cmd = common.sidecar_base(bins, P["admin"], args.trace, P["otlp"])
    for lp, tp in (("h1", "backend_h1"), ("h2", "backend_h2"), ("grpc", "backend_grpc"),
                   ("redis_proxy", "redis"), ("tls_h1", "backend_h1"), ("tls_h2", "backend_h2")):
        cmd += ["--inbound-forward", f"127.0.0.1:{P[lp]}=127.0.0.1:{P[tp]}"]
    cmd += ["--tls-terminate", str(P["tls_h1"]), "--tls-terminate", str(P["tls_h2"]),
            "--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    proxy = e2e.start(cmd, args.proxy_cpu, "sidecar", tmp, e2e.sidecar_env())
    for k in ("h1", "h2", "grpc", "redis_proxy", "tls_h1", "tls_h2", "admin"):
        e2e.wait_port(P[k], proxy)
    pids = [proxy.pid]

    # Warm-up: one of each kind, then the idle baseline.
    st, body = common.http_get(P["h1"])
    if st != 200 or body != common.BODY:
        sys.exit(f"FAIL: warm-up GET through the proxy: {st}")
    e2e.https_get_ok(P["tls_h1"])
    warm = subprocess.run(["h2load", "-n", "20", "-c", "1", f"http://127.0.0.1:{P['h2']}/"],
                          capture_output=True, text=True, timeout=30)
    if "20 succeeded" not in warm.stdout:
        sys.exit("FAIL: warm-up h2c through the proxy: " + warm.stdout[-200:])
    time.sleep(2.0)
    sampler = common.Sampler(pids)
    base = sampler.read()
    log(f"sidecar up: RSS {base[1] / 1024:.1f} MiB, {base[2]} descriptors; load for {args.duration} s")
    sampler.start()

    d, sc = args.duration, args.scale
    budget = d + 60
    stop = threading.Event()
    loads = {
        "h1": spawn_load([bins["l7bench"], "http1", "--addr", f"127.0.0.1:{P['h1']}", "--rate", 400 * sc,
                          "--conns", 8, "--duration", d, "--warmup", 0, "--expect-len", len(common.BODY)], lc),
        "h1new": spawn_load([bins["l7bench"], "http1", "--addr", f"127.0.0.1:{P['h1']}", "--new-conn",
                             "--rate", 40 * sc, "--duration", d, "--warmup", 0,
                             "--expect-len", len(common.BODY)], lc),
        "h2": spawn_load(["h2load", "-t1", "-c2", "-m10", f"--rps={max(1, round(100 * sc))}", f"-D{d}",
                          f"http://127.0.0.1:{P['h2']}/"], lc),
        "grpc": spawn_load([bins["l7bench"], "grpc", "--addr", f"127.0.0.1:{P['grpc']}", "--conns", 2,
                            "--rate", 200 * sc, "--duration", d, "--warmup", 0], lc),
        "stream": spawn_load([bins["l7bench"], "grpc-stream", "--addr", f"127.0.0.1:{P['grpc']}", "--conns", 2,
                              "--streams", 4, "--rate", 20 * sc, "--stream-secs", 10, "--duration", d], lc),
        "tls-h1": spawn_load(["h2load", "-t1", "-c2", "-m1", "--h1", f"--rps={max(1, round(50 * sc))}", f"-D{d}",
                              f"https://127.0.0.1:{P['tls_h1']}/"], lc),
        "tls-h2": spawn_load(["h2load", "-t1", "-c2", "-m10", f"--rps={max(1, round(50 * sc))}", f"-D{d}",
                              f"https://127.0.0.1:{P['tls_h2']}/"], lc),
    }
    py = {"redis": Counter(), "redis-exact": Counter(), "tls-new": Counter()}
    threads = [threading.Thread(target=redis_loop, args=(P["redis_proxy"], stop, py["redis"], lc), daemon=True),
               threading.Thread(target=redis_exact, args=(P["redis_proxy"], stop, py["redis-exact"]), daemon=True),
               threading.Thread(target=tls_new_conns, args=(P["tls_h1"], stop, py["tls-new"], 5 * sc), daemon=True)]
    hostile = None
    if not args.no_hostile:
        hostile = Hostiles(P, args.slow, args.idle, stop)
        threads.append(hostile)
    for t in threads:
        t.start()

    t_load = sampler.now()
    died = None
    end = time.monotonic() + d
    last_report = time.monotonic()
    while time.monotonic() < end:
        time.sleep(1.0)
        if proxy.poll() is not None:
            died = f"the sidecar exited with {proxy.returncode} at {sampler.now() - t_load:.0f} s"
            break
        if time.monotonic() - last_report >= 60:
            last_report = time.monotonic()
            s = sampler.samples[-1]
            log(f"{s[0] - t_load:.0f} s: RSS {s[1] / 1024:.1f} MiB, {s[2]} descriptors")
    stop.set()
    results = {}
    for name, p in loads.items():
        results[name] = (collect_h2load if name.startswith(("h2", "tls-")) else collect_l7bench)(
            p, max(5, budget - (sampler.now() - t_load)))
    for t in threads:
        t.join(70)
    for name, c in py.items():
        results[name] = c.result()
    t_end = sampler.now()
    time.sleep(args.settle)
    after = sampler.read()
    sampler.stop()

    # Readings.
    run = sampler.window(t_load, t_end)
    warm_t = t_load + 0.1 * (t_end - t_load)
    warm_rss = next((s[1] for s in run if s[0] >= warm_t), base[1])
    tail = [s for s in run if s[0] >= t_load + 0.5 * (t_end - t_load)]
    rss = common.summary(run, 1)
    fds = common.summary(run, 2)
    out = {
        "started": started, "finished": common.now_utc(), "machine": m,
        "params": {k: getattr(args, k) for k in ("duration", "scale", "slow", "idle", "no_hostile", "trace",
                                                  "settle", "fd_slack", "rss_slack_mib")},
        "clients": results,
        "hostile": hostile.result() if hostile else None,
        "proxy": {
            "rss_idle_kib": base[1], "rss_at_10pct_kib": warm_rss, "rss_kib": rss, "rss_after_kib": after[1],
            "rss_slope_kib_per_min_second_half": common.slope_per_min(tail, 1),
            "fds_idle": base[2], "fds": fds, "fds_after": after[2],
            "cpu_pct": common.cpu_pct(run), "samples": run,
        },
    }

    # Checks.
    unexpected = {n: r.get("errors", 0) + r.get("unfinished", 0) + r.get("grpc_not_ok", 0)
                  for n, r in results.items()}
    fail = []
    if died:
        fail.append(died)
    bad = {n: v for n, v in unexpected.items() if v}
    if bad:
        first = next(iter(bad))
        kinds = results[first].get("error_kinds") or {}
        fail.append("unexpected errors: " + ", ".join(f"{n} {v}" for n, v in bad.items())
                    + (f" ({first}: {next(iter(kinds))})" if kinds else ""))
    if after[2] > base[2] + args.fd_slack:
        fail.append(f"descriptors not back: {after[2]} open {args.settle:g} s after the load, "
                    f"{base[2]} before it")
    if after[1] > warm_rss + args.rss_slack_mib * 1024:
        fail.append(f"RSS not flat: {after[1] / 1024:.1f} MiB after the load, "
                    f"{warm_rss / 1024:.1f} MiB at 10% of it")
    out["unexpected_errors"] = unexpected
    out["ok"] = not fail
    out["failures"] = fail

    # Tables.
    rows = []
    for n, r in results.items():
        ok = r.get("requests", r.get("messages", r.get("ok")))
        p50 = r.get("p50_us")
        p99 = r.get("p99_us")
        rows.append([n, ok, unexpected[n], "—" if p50 is None else f"{p50 / 1000:.2f}",
                     "—" if p99 is None else f"{p99 / 1000:.2f}",
                     ", ".join(f"{k}: {v}" for k, v in (r.get("error_kinds") or {}).items())[:70] or "—"])
    print("== normal clients")
    print(common.table(["client", "ok", "errors", "p50 ms", "p99 ms", "error kinds"], rows))
    if hostile:
        print("\n== hostile clients (what the proxy did to them)")
        hr = out["hostile"]
        for kind in ("slow", "idle"):
            k = hr[kind]
            print(f"{kind}: opened {k['opened']}, cut by the proxy {k['cut']} "
                  f"(median after {k['cut_after_s_median']} s); answers {k['answers']}")
        print(f"garbage: {hr['garbage']['sent']} sent; answers {hr['garbage']['answers']}")
        print(f"reset: {hr['reset']['bursts']} bursts of 200; answers {hr['reset']['answers']}")
    px = out["proxy"]
    print("\n== the sidecar, sampled every second")
    print(common.table(
        ["", "idle", "at 10%", "median", "max", "after (+settle)"],
        [["RSS MiB", common.mib(base[1]), common.mib(warm_rss), common.mib(rss["median"]), common.mib(rss["max"]),
          common.mib(after[1])],
         ["descriptors", base[2], "—", fds["median"], fds["max"], after[2]]]))
    slope = px["rss_slope_kib_per_min_second_half"]
    print(f"CPU {px['cpu_pct']:.0f}% of a core over the load; RSS slope over the second half "
          f"{'—' if slope is None else f'{slope:.0f}'} KiB/min; load average {m['load_average']}")
    common.write_json(args.out, out)
    print("SOAKJSON " + json.dumps({k: v for k, v in out.items() if k != "proxy"} |
                                   {"proxy": {k: v for k, v in px.items() if k != "samples"}}, default=str))
    print(f"written: {args.out}")
    if fail:
        print("FAIL: " + "; ".join(fail))
        return 1
    print(f"OK: {args.duration} s soak, no unexpected error, descriptors and RSS back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
