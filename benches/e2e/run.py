#!/usr/bin/env python3
"""End-to-end benchmark: l7inspect beside direct, haproxy and nginx on loopback.

    python3 benches/e2e/run.py            # full run (about 15 minutes)
    python3 benches/e2e/run.py --duration 2 --only direct,l7-1hop-off --soak 0   # smoke test

Installs its tools with apt-get when missing (haproxy, nginx and its stream
module, wrk, h2load), builds the sidecar and the load tool (cargo build
--release -p l7inspect-sidecar; -p l7inspect-benches --bin l7bench), then for
each target in turn: starts it, measures, stops it. Traffic: HTTP/1.1
keep-alive (open-loop latency, saturating throughput), HTTP/1.1 with a new
connection per request, HTTP/2, gRPC unary, opaque TCP bulk, time to first
byte from a server that speaks first; memory idle, with idle connections,
peak, and over a long run at constant load (--soak). Everything listens on
127.0.0.1; every process it starts is stopped by PID when it exits (also on
Ctrl-C). Results: tables on stdout, and benches/e2e/results/latest.{json,md}.

Standard library only. `otlp-receiver PORT` (a tiny OTLP/HTTP receiver:
200 to POST /v1/traces, counts requests and bytes, GET /stats) is a
subcommand of this file, run as a child process; the gRPC, TCP sink and
banner servers and the open-loop/gRPC/TCP load are `l7bench` subcommands
(benches/src/bin/l7bench/).
"""

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b"l7inspect e2e benchmark: a small static response.\n" * 2  # 104 bytes
BANNER = "SSH-2.0-l7bench\r\n"
STREAM_MODULES = ["/usr/lib/nginx/modules/ngx_stream_module.so",
                  "/usr/share/nginx/modules/ngx_stream_module.so"]

# Port offsets from --port-base (default 18400), all on 127.0.0.1. Each
# target (and the backend) has five: h1, h2 (h2c), grpc (h2c), tcp (opaque
# bulk) and banner (a server that speaks first).
KINDS = ("h1", "h2", "grpc", "tcp", "banner")
OFFSETS = {"otlp": 60}
for _prefix, _base in (("backend", 0), ("l7off", 10), ("l7tr", 20), ("l7hop", 30),
                       ("haproxy", 40), ("nginx", 50), ("l7hop_in", 70)):
    for _i, _kind in enumerate(KINDS):
        OFFSETS[f"{_prefix}_{_kind}"] = _base + _i
for _prefix, _base in (("l7off", 10), ("l7tr", 20), ("l7hop", 30), ("l7hop_in", 70)):
    OFFSETS[f"{_prefix}_admin"] = _base + 9
P = {}  # filled in main() from --port-base

# ---------------------------------------------------------------- processes

CHILDREN = []  # Popen objects this script started; stopped by PID only


def log(*a):
    print("[e2e]", *a, file=sys.stderr, flush=True)


def start(cmd, cpu, name, logdir, env=None):
    full = ["taskset", "-c", str(cpu)] + cmd  # taskset execs: same PID
    out = open(os.path.join(logdir, name + ".log"), "ab")
    p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env)
    p._e2e_name = name
    CHILDREN.append(p)
    return p


def stop(p, timeout=10):
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    for p in list(reversed(CHILDREN)):
        try:
            stop(p, timeout=5)
        except Exception:
            pass


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def wait_port(port, proc, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc._e2e_name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()

# ----------------------------------------------------------- /proc readings


def tree(pids):
    """The given PIDs and all their descendants (nginx master + worker)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK_TCK


def open_fds(pids):
    total = 0
    for p in tree(pids):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def mem_kib(pids, key):
    total = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total

# ----------------------------------------------------------------- traffic


def http_get_ok(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/", headers={"Host": "bench.local"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or body != BODY:
        raise RuntimeError(f"GET through port {port}: {r.status}, {len(body)} bytes")


def open_idle(port, n):
    """n keep-alive connections, each has done one GET and now sits idle."""
    req = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), 5)
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed during idle-connection setup")
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
        socks.append(s)
    return socks


def load_cmd(cmd):
    return ["taskset", "-c", str(ARGS.load_cpu)] + cmd


def wrk(port, conns, duration, close=False):
    """wrk, closed loop at full speed; close: a new connection per request."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           "-H", "Host: bench.local", "-s", os.path.join(HERE, "wrk-report.lua")]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(load_cmd(cmd + [f"http://127.0.0.1:{port}/"]),
                         capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError("wrk: " + out.stdout[-500:] + out.stderr[-500:])
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def h2load(port, conns, streams, duration, logfile, rps_per_conn=0):
    cmd = ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{duration}",
           "--warm-up-time=1", f"--log-file={logfile}"]
    if rps_per_conn:
        cmd.append(f"--rps={rps_per_conn}")
    out = subprocess.run(load_cmd(cmd + [f"http://127.0.0.1:{port}/"]),
                         capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out.stdout)
    m2 = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out.stdout)
    if not m or not m2:
        raise RuntimeError("h2load: " + out.stdout[-800:] + out.stderr[-500:])
    lat = []
    with open(logfile) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]))
    os.unlink(logfile)
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q / 100.0 * len(lat)))] if lat else None
    return {"requests": int(m.group(4)), "failed": int(m.group(5)) + int(m.group(6)),
            "rps": float(m2.group(2)), "p50_us": pct(50), "p99_us": pct(99),
            "p999_us": pct(99.9)}


def l7bench(args, budget):
    """An l7bench load subcommand on the load CPU; its one JSON line."""
    out = subprocess.run(load_cmd([L7BENCH] + [str(a) for a in args]),
                         capture_output=True, text=True, timeout=budget + 60)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"l7bench {args[0]}: exit {out.returncode}: " + out.stderr[-500:])
    return json.loads(out.stdout.strip().splitlines()[-1])

# ----------------------------------------------------------- repetitions


def median_of(runs):
    """Median of each numeric field over the runs; the runs themselves kept."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for k, v in runs[0].items():
        vals = [r.get(k) for r in runs]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            out[k] = statistics.median(vals)
    out["runs"] = runs
    return out


def repeated(fn, pids, per=None):
    """fn() --repeat times, each with the proxy CPU it cost; the medians.

    per: "requests" adds cpu_s_per_100k, "bytes" cpu_s_per_gib."""
    runs = []
    for _ in range(ARGS.repeat):
        c0 = cpu_seconds(pids) if pids else None
        r = fn()
        if pids and per:
            r["proxy_cpu_s"] = cpu_seconds(pids) - c0
            if per == "requests":
                r["cpu_s_per_100k"] = r["proxy_cpu_s"] / max(1, r["requests"]) * 1e5
            else:
                r["cpu_s_per_gib"] = r["proxy_cpu_s"] / max(1, r["bytes"]) * (1 << 30)
        runs.append(r)
    return median_of(runs)

# ----------------------------------------------------------------- targets


def render(template, out, **kw):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in kw.items():
        text = text.replace("@" + k + "@", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def sidecar_cmd(admin, inbound=(), outbound=(), otlp=False, tracing=True):
    cmd = [SIDECAR, "--no-transparent", "--admin-listen", f"127.0.0.1:{admin}",
           "--log-level", "warn", "--service-name", "e2e-bench"]
    for lp, tp in inbound:
        cmd += ["--inbound-forward", f"127.0.0.1:{lp}=127.0.0.1:{tp}"]
    for lp, tp in outbound:
        cmd += ["--outbound-forward", f"127.0.0.1:{lp}=127.0.0.1:{tp}"]
    if not tracing:
        # Tracing off: no span is recorded (the trace context is still
        # propagated, as a sidecar at sample ratio 0 does).
        cmd += ["--sample-ratio", "0"]
    if otlp:
        cmd += ["--sample-ratio", "1.0", "--otlp-protocol", "http/protobuf",
                "--otlp-endpoint", f"http://127.0.0.1:{P['otlp']}/v1/traces"]
    return cmd


def forwards(frm, to):
    """(listen, target) port pairs for every kind of traffic."""
    return [(P[f"{frm}_{k}"], P[f"{to}_{k}"]) for k in KINDS]


def sidecar_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "L7INSPECT_"))}
    return env


TARGETS = [
    # name, description, port prefix
    ("direct", "the backends, no proxy", "backend"),
    ("haproxy", "haproxy 1 hop, nbthread 1; HTTP mode with keep-alive to the backend (h2 and gRPC: proto h2 both sides); TCP mode for tcp/banner", "haproxy"),
    ("nginx", "nginx 1 hop, 1 worker; upstream keepalive (h2c in, HTTP/1.1 upstream); grpc_pass (h2c both sides); stream module for tcp/banner", "nginx"),
    ("l7-1hop-off", "l7inspect 1 hop, inbound forward, tracing off (--sample-ratio 0: no spans recorded, context still propagated)", "l7off"),
    ("l7-1hop-otlp", "l7inspect 1 hop, 100% sampled, OTLP/HTTP to a live local receiver", "l7tr"),
    ("l7-2hop-otlp", "l7inspect 2 hops (outbound forward -> inbound forward), both 100% sampled to OTLP", "l7hop"),
]


def start_target(name, tmp):
    """Start a target's processes; return (PIDs to measure, admin ports)."""
    c = ARGS.proxy_cpu
    if name == "direct":
        return [], []
    if name == "haproxy":
        kw = {f"{k.upper()}_PORT": P[f"haproxy_{k}"] for k in KINDS}
        kw.update({f"BACKEND_{k.upper()}_PORT": P[f"backend_{k}"] for k in KINDS})
        cfg = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"), **kw)
        p = start(["haproxy", "-db", "-f", cfg], c, "haproxy", tmp)
        return [p], []
    if name == "nginx":
        kw = {f"{k.upper()}_PORT": P[f"nginx_{k}"] for k in KINDS}
        kw.update({f"BACKEND_{k.upper()}_PORT": P[f"backend_{k}"] for k in KINDS})
        cfg = render("nginx-proxy.conf", os.path.join(tmp, "nginx-proxy.conf"),
                     DIR=tmp, STREAM_MODULE=stream_module(), **kw)
        p = start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], c, "nginx-proxy", tmp)
        return [p], []
    env = sidecar_env()
    if name == "l7-1hop-off":
        p = start(sidecar_cmd(P["l7off_admin"], inbound=forwards("l7off", "backend"), tracing=False),
                  c, "l7-1hop-off", tmp, env)
        return [p], [P["l7off_admin"]]
    if name == "l7-1hop-otlp":
        p = start(sidecar_cmd(P["l7tr_admin"], inbound=forwards("l7tr", "backend"), otlp=True),
                  c, "l7-1hop-otlp", tmp, env)
        return [p], [P["l7tr_admin"]]
    if name == "l7-2hop-otlp":
        pin = start(sidecar_cmd(P["l7hop_in_admin"], inbound=forwards("l7hop_in", "backend"), otlp=True),
                    c, "l7-2hop-inbound", tmp, env)
        for k in KINDS:
            wait_port(P[f"l7hop_in_{k}"], pin)
        pout = start(sidecar_cmd(P["l7hop_admin"], outbound=forwards("l7hop", "l7hop_in"), otlp=True),
                     c, "l7-2hop-outbound", tmp, env)
        return [pout, pin], [P["l7hop_admin"], P["l7hop_in_admin"]]
    raise ValueError(name)


def stream_module():
    for path in STREAM_MODULES:
        if os.path.exists(path):
            return path
    raise RuntimeError("nginx stream module not found (Debian: apt-get install libnginx-mod-stream)")


def span_counters(admin_ports):
    exported = dropped = 0.0
    for port in admin_ports:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("l7inspect_spans_exported_total"):
                exported += float(line.split()[-1])
            elif line.startswith("l7inspect_spans_dropped_total"):
                dropped += float(line.split()[-1])
    return exported, dropped


def otlp_stats():
    try:
        c = http.client.HTTPConnection("127.0.0.1", P["otlp"], timeout=5)
        c.request("GET", "/stats")
        s = json.loads(c.getresponse().read())
        c.close()
        return s
    except OSError:
        return None


def soak(pids, port):
    """Constant load for --soak seconds, RSS sampled every second.

    Load: open-loop HTTP/1.1 keep-alive at --soak-rate plus --soak-conn-rate
    requests/s each on a new connection, so that both per-request and
    per-connection state would show up as growth. The slope is a least-squares
    fit over the samples after the first 10% (warm-up)."""
    d = ARGS.soak
    common = ["--addr", f"127.0.0.1:{port}", "--duration", d, "--warmup", 0,
              "--expect-len", len(BODY)]
    procs = []
    for extra in (["--rate", ARGS.soak_rate, "--conns", ARGS.lat_conns],
                  ["--rate", ARGS.soak_conn_rate, "--new-conn"]):
        procs.append(subprocess.Popen(load_cmd([L7BENCH, "http1"] + [str(a) for a in common + extra]),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.time()
    samples = []
    try:
        while any(p.poll() is None for p in procs) and time.time() - t0 < d + 30:
            samples.append((time.time() - t0, mem_kib(pids, "VmRSS")))
            time.sleep(1.0)
        outs = []
        for p in procs:
            o, e = p.communicate(timeout=30)
            if p.returncode != 0 or not o.strip():
                raise RuntimeError(f"soak load: exit {p.returncode}: {e[-300:]}")
            outs.append(json.loads(o.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    fit = [(t, kib) for t, kib in samples if t >= d * 0.1]
    slope = None
    if len(fit) >= 3:
        mt = statistics.fmean(t for t, _ in fit)
        mk = statistics.fmean(k for _, k in fit)
        den = sum((t - mt) ** 2 for t, _ in fit)
        slope = sum((t - mt) * (k - mk) for t, k in fit) / den * 60 if den else None
    return {"seconds": d, "rss_first_kib": fit[0][1] if fit else None,
            "rss_last_kib": samples[-1][1] if samples else None,
            "rss_max_kib": max(k for _, k in samples) if samples else None,
            "slope_kib_per_min": slope, "samples": samples,
            "keep_alive": outs[0], "new_conn": outs[1]}


def measure(name, desc, prefix, tmp):
    res = {"target": name, "description": desc, "ok": True, "error": None, "notes": []}
    port = {k: P[f"{prefix}_{k}"] for k in KINDS}
    tests = set(ARGS.tests.split(","))
    procs, admins = [], []

    def step(key, fn):
        """One measurement; a failure is noted and the others still run."""
        if key.split("_")[0] not in tests:
            return
        try:
            res[key] = fn()
        except Exception as e:
            res[key] = {"error": str(e)[:300]}
            res["notes"].append(f"{key} failed: {str(e)[:200]}")
            log(f"{name}: {key} failed: {e}")

    try:
        procs, admins = start_target(name, tmp)
        for p in procs:
            for k in KINDS:
                wait_port(port[k], p)
        if not procs:
            wait_port(port["h1"], None)
        pids = [p.pid for p in procs]
        http_get_ok(port["h1"])
        time.sleep(1.0)
        if pids:
            res["rss_idle_kib"] = mem_kib(pids, "VmRSS")
            if "mem" in tests:
                def idle_conns():
                    socks = open_idle(port["h1"], ARGS.idle_conns)
                    time.sleep(1.0)
                    kib = mem_kib(pids, "VmRSS")
                    for s in socks:
                        s.close()
                    time.sleep(1.0)
                    return {"kib": kib}
                res["rss_1k_idle_conns_kib"] = repeated(idle_conns, [])["kib"]
        d = ARGS.duration
        otlp0 = otlp_stats() if admins else None
        h1 = ["--addr", f"127.0.0.1:{port['h1']}", "--expect-len", len(BODY)]
        # HTTP/1.1 keep-alive: open loop at a moderate fixed rate for latency
        # (its own 1 s warm-up), then saturating (wrk) for throughput and CPU.
        step("h1_lat", lambda: repeated(lambda: l7bench(
            ["http1", "--rate", ARGS.h1_rate, "--conns", ARGS.lat_conns, "--duration", d, "--warmup", 1] + h1,
            d + 7), pids))

        def h1_sat():
            wrk(port["h1"], ARGS.sat_conns, 1)  # warm-up
            return repeated(lambda: wrk(port["h1"], ARGS.sat_conns, d), pids, "requests")
        step("h1_sat", h1_sat)

        # HTTP/2 (h2c prior knowledge): a fixed-rate run for latency, then a
        # saturating multiplexed run for throughput and CPU.
        log_file = os.path.join(tmp, "h2load.log")
        step("h2_rate", lambda: repeated(lambda: h2load(
            port["h2"], ARGS.h2_conns, 100, d, log_file,
            rps_per_conn=max(1, ARGS.h2_rate // ARGS.h2_conns)), pids))
        step("h2_sat", lambda: repeated(lambda: h2load(
            port["h2"], ARGS.h2_conns, ARGS.h2_streams, d, log_file), pids, "requests"))

        # gRPC unary: open loop at a fixed rate, then closed loop (saturating).
        grpc = ["grpc", "--addr", f"127.0.0.1:{port['grpc']}", "--conns", ARGS.h2_conns]
        step("grpc_rate", lambda: repeated(lambda: l7bench(
            grpc + ["--rate", ARGS.grpc_rate, "--duration", d, "--warmup", 1], d + 7), pids))

        def grpc_sat():
            l7bench(grpc + ["--streams", ARGS.h2_streams, "--duration", 1, "--warmup", 0], 7)  # warm-up
            return repeated(lambda: l7bench(
                grpc + ["--streams", ARGS.h2_streams, "--duration", d, "--warmup", 0], d + 7), pids, "requests")
        step("grpc_sat", grpc_sat)

        # Opaque TCP bulk upload into the sink.
        tcp = ["bulk", "--addr", f"127.0.0.1:{port['tcp']}", "--streams", ARGS.tcp_streams]

        def tcp_bulk():
            l7bench(tcp + ["--duration", 1, "--warmup", 0], 3)  # warm-up
            return repeated(lambda: l7bench(tcp + ["--duration", d, "--warmup", 0], d + 3), pids, "bytes")
        step("tcp_bulk", tcp_bulk)

        # Time to first byte from a server that speaks first.
        step("ttfb", lambda: repeated(lambda: l7bench(
            ["ttfb", "--addr", f"127.0.0.1:{port['banner']}", "--count", ARGS.ttfb_count,
             "--expect", BANNER], 120), pids))

        # HTTP/1.1, a new connection per request (Connection: close),
        # saturating. Last, with the proxy's open descriptors counted before
        # and 2 s after: connections a proxy fails to close pile up here
        # (tens of thousands in 10 s) and would spoil the runs after it.
        def h1_close():
            fds0 = open_fds(pids)
            wrk(port["h1"], ARGS.close_conns, 1, close=True)  # warm-up
            r = repeated(lambda: wrk(port["h1"], ARGS.close_conns, d, close=True), pids, "requests")
            time.sleep(2.0)
            if pids:
                r["fds_before"], r["fds_after"] = fds0, open_fds(pids)
            return r
        if pids:
            res["rss_peak_before_close_kib"] = mem_kib(pids, "VmHWM")
        step("h1close_sat", h1_close)

        if pids:
            res["rss_peak_kib"] = mem_kib(pids, "VmHWM")
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p._e2e_name} died during the run (exit {p.returncode})")
        if admins:
            time.sleep(2.5)  # let the batch exporter flush (1 s schedule delay)
            exp, drop = span_counters(admins)
            res["spans_exported"], res["spans_dropped"] = exp, drop
            otlp1 = otlp_stats()
            if name != "l7-1hop-off" and otlp0 and otlp1:
                res["otlp_posts"] = otlp1["posts"] - otlp0["posts"]
                res["otlp_bytes"] = otlp1["bytes"] - otlp0["bytes"]
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p._e2e_name} died during the run (exit {p.returncode})")
        if ARGS.soak and pids and "soak" in tests and (name.startswith("l7-") or ARGS.soak_all):
            # On a freshly started proxy, so that its growth is the soak's own.
            for p in procs:
                stop(p)
            procs, _ = start_target(name, tmp)
            for p in procs:
                for k in KINDS:
                    wait_port(port[k], p)
            http_get_ok(port["h1"])
            step("soak", lambda: soak([p.pid for p in procs], port["h1"]))
        if name == "l7-2hop-otlp":
            res["notes"].append("CPU and memory are the sum of both sidecars")
        if name == "nginx":
            res["notes"].append("CPU and memory are master + worker")
    except Exception as e:
        res["ok"] = False
        res["error"] = str(e)[:300]
        log(f"{name}: FAILED: {e}")
    finally:
        for p in procs:
            stop(p)
    return res

# ------------------------------------------------------------------ output


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def us3(r, unit=1000, spec=".2f", keys=("p50_us", "p99_us", "p999_us")):
    """p50 / p99 / p99.9 of a run, in ms by default."""
    if not r or r.get("p50_us") is None:
        return "—"
    return " / ".join(format(r[k] / unit, spec) for k in keys)


def added(r, d, unit=1000, spec=".2f", keys=("p50_us", "p99_us", "p999_us")):
    if not r or not d or r.get("p50_us") is None or d.get("p50_us") is None:
        return "—"
    return " / ".join(format((r[k] - d[k]) / unit, spec) for k in keys)


def tables(results):
    """(title, header, rows) per kind of traffic."""
    direct = next((r for r in results if r["target"] == "direct" and r["ok"]), None)
    out = []

    def rows_of(cells):
        rows = []
        for r in results:
            if not r["ok"]:
                rows.append([r["target"], "not measured: " + (r["error"] or "?")] + ["—"] * (len(hdr) - 2))
                continue
            d = direct if (direct and r is not direct) else None

            def g(key):
                v = r.get(key)
                return v if isinstance(v, dict) else {}

            def gd(key):
                return (d.get(key) if d and isinstance(d.get(key), dict) else None)
            rows.append([r["target"]] + cells(r, g, gd))
        return rows

    def mib(r, k):
        return fmt(r[k] / 1024, ".1f") if r.get(k) is not None else "—"

    hdr = ["target", "keep-alive req/s (sat)", "CPU s/100k req",
           f"open-loop {ARGS.h1_rate}/s p50 / p99 / p99.9 ms", "added p50 / p99 / p99.9 ms",
           "new conn per req: req/s (sat)", "CPU s/100k req", "fds left open 2 s after"]
    out.append(("HTTP/1.1", hdr, rows_of(lambda r, g, gd: [
        fmt(g("h1_sat").get("rps"), ".0f"), fmt(g("h1_sat").get("cpu_s_per_100k"), ".2f"),
        us3(g("h1_lat")), added(g("h1_lat"), gd("h1_lat")),
        fmt(g("h1close_sat").get("rps"), ".0f"), fmt(g("h1close_sat").get("cpu_s_per_100k"), ".2f"),
        (fmt(g("h1close_sat")["fds_after"] - g("h1close_sat")["fds_before"], ".0f")
         if "fds_after" in g("h1close_sat") else "—"),
    ])))
    hdr = ["target", "h2 req/s (sat)", "CPU s/100k req",
           f"h2 {ARGS.h2_rate}/s p50 / p99 / p99.9 ms", "added p50 / p99 ms",
           "gRPC req/s (sat)", "CPU s/100k req",
           f"gRPC {ARGS.grpc_rate}/s p50 / p99 / p99.9 ms", "added p50 / p99 ms", "gRPC not OK"]
    two = ("p50_us", "p99_us")
    out.append(("HTTP/2 and gRPC unary", hdr, rows_of(lambda r, g, gd: [
        fmt(g("h2_sat").get("rps"), ".0f"), fmt(g("h2_sat").get("cpu_s_per_100k"), ".2f"),
        us3(g("h2_rate")), added(g("h2_rate"), gd("h2_rate"), keys=two),
        fmt(g("grpc_sat").get("rps"), ".0f"), fmt(g("grpc_sat").get("cpu_s_per_100k"), ".2f"),
        us3(g("grpc_rate")), added(g("grpc_rate"), gd("grpc_rate"), keys=two),
        grpc_bad(r),
    ])))
    hdr = ["target", f"TCP bulk GiB/s ({ARGS.tcp_streams} stream{'s' if ARGS.tcp_streams > 1 else ''})",
           "CPU s/GiB", "TTFB p50 / p99 / p99.9 µs", "added p50 / p99 µs",
           "RSS idle MiB", f"RSS {ARGS.idle_conns} idle conns MiB", "peak RSS MiB",
           "soak RSS first / last / max MiB", "soak slope KiB/min"]
    out.append(("Opaque TCP, server-speaks-first, memory", hdr, rows_of(lambda r, g, gd: [
        fmt(g("tcp_bulk").get("gib_per_s"), ".2f"), fmt(g("tcp_bulk").get("cpu_s_per_gib"), ".2f"),
        us3(g("ttfb"), unit=1, spec=".0f"), added(g("ttfb"), gd("ttfb"), unit=1, spec=".0f", keys=two),
        mib(r, "rss_idle_kib"), mib(r, "rss_1k_idle_conns_kib"), mib(r, "rss_peak_kib"),
        (" / ".join(fmt(g("soak").get(k) / 1024, ".1f") for k in ("rss_first_kib", "rss_last_kib", "rss_max_kib"))
         if g("soak").get("rss_first_kib") is not None else "—"),
        fmt(g("soak").get("slope_kib_per_min"), ".0f"),
    ])))
    return out


def grpc_bad(r):
    vals = [r.get(k, {}).get("grpc_not_ok") for k in ("grpc_rate", "grpc_sat") if isinstance(r.get(k), dict)]
    vals = [v for v in vals if v is not None]
    return fmt(sum(vals), ".0f") if vals else "—"


def markdown(hdr, rows):
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plain(hdr, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    out = []
    for row in [hdr] + rows:
        out.append("  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                             for i, (x, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def notes_of(r):
    """One line per target: errors, achieved rates, spans, caveats."""
    extra = []

    def nz(key, field, what):
        v = r.get(key, {}).get(field) if isinstance(r.get(key), dict) else None
        if v:
            extra.append(f"{key}: {v:.0f} {what}")
    if "spans_exported" in r:
        extra.append(f"spans exported {r['spans_exported']:.0f}, dropped {r['spans_dropped']:.0f}")
    if "otlp_posts" in r:
        extra.append(f"OTLP receiver got {r['otlp_posts']} POSTs, {r['otlp_bytes'] / 1e6:.1f} MB")
    for key in ("h1_lat", "grpc_rate"):
        v = r.get(key)
        if isinstance(v, dict) and v.get("rps") is not None:
            extra.append(f"{key} achieved {v['rps']:.0f} req/s")
    for key in ("h1_lat", "grpc_rate", "grpc_sat", "h1_sat", "h1close_sat", "tcp_bulk", "ttfb"):
        nz(key, "errors", "errors")
        nz(key, "unfinished", "unfinished")
        v = r.get(key)
        if isinstance(v, dict) and v.get("error_kinds"):
            extra.append(f"{key} error kinds {json.dumps(v['error_kinds'])}")
    for key in ("grpc_rate", "grpc_sat"):
        nz(key, "grpc_not_ok", "answers not gRPC OK")
    for key in ("h2_rate", "h2_sat"):
        nz(key, "failed", "failed requests")
    s = r.get("soak")
    if isinstance(s, dict) and "keep_alive" in s:
        ka, nc = s["keep_alive"], s["new_conn"]
        extra.append(f"soak {s['seconds']} s on a fresh process: keep-alive {ka['rps']:.0f} req/s (p99 {ka['p99_us'] or 0:.0f} µs, "
                     f"{ka['errors']} errors, {ka['unfinished']} unfinished), new-conn {nc['rps']:.0f} req/s "
                     f"({nc['errors']} errors, {nc['unfinished']} unfinished)")
    extra += r["notes"]
    return f"- **{r['target']}** ({r['description']}): " + "; ".join(extra)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def ver(cmd):
        try:
            o = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (o.stdout + o.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    rev = ver(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = ver(["sh", "-c", f"git -C {REPO} status --porcelain --untracked-files=no | wc -l"])
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "os": ver(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "l7inspect_commit": rev + ("" if dirty.strip() == "0" else " (uncommitted changes)"),
            "haproxy": ver(["haproxy", "-v"]), "nginx": ver(["nginx", "-v"]),
            "wrk": ver(["wrk", "-v"]), "h2load": ver(["h2load", "--version"])}

# -------------------------------------------------------------------- main


def ensure_tools():
    need = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client", "taskset": "util-linux"}
    missing = {pkg for tool, pkg in need.items() if shutil.which(tool) is None}
    if not any(os.path.exists(p) for p in STREAM_MODULES):
        missing.add("libnginx-mod-stream")
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log("installing", " ".join(sorted(missing)))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + sorted(missing),
                   check=True, env=env)


def otlp_receiver(port):
    """Tiny OTLP/HTTP receiver: 200 (empty ExportTraceServiceResponse) to POST /v1/traces."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    stats = {"posts": 0, "bytes": 0}

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n)
            if self.path == "/v1/traces":
                stats["posts"] += 1
                stats["bytes"] += len(data)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
            else:
                self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            body = json.dumps(stats).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()


ALL_TESTS = "mem,h1,h1close,h2,grpc,tcp,ttfb,soak"


def main():
    global ARGS, SIDECAR, L7BENCH, P
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each measurement N times and report the median (all runs kept in the JSON)")
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--tests", default=ALL_TESTS, help=f"comma-separated measurements (default: {ALL_TESTS})")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for the load generators, backends and OTLP receiver")
    ap.add_argument("--port-base", type=int, default=18400, help="ports used: BASE to BASE+79 (default 18400)")
    ap.add_argument("--h1-rate", type=int, default=4000, help="total req/s of the open-loop HTTP/1.1 run")
    ap.add_argument("--lat-conns", type=int, default=8, help="connections of the open-loop HTTP/1.1 run")
    ap.add_argument("--sat-conns", type=int, default=64, help="connections of the saturating HTTP/1.1 run")
    ap.add_argument("--close-conns", type=int, default=16,
                    help="concurrent connections of the new-connection-per-request run")
    ap.add_argument("--h2-conns", type=int, default=8, help="connections of the h2 and gRPC runs")
    ap.add_argument("--h2-streams", type=int, default=16,
                    help="concurrent streams per connection of the saturating h2 and gRPC runs")
    ap.add_argument("--h2-rate", type=int, default=4000, help="total req/s of the fixed-rate h2 run")
    ap.add_argument("--grpc-rate", type=int, default=4000, help="total calls/s of the open-loop gRPC run")
    ap.add_argument("--tcp-streams", type=int, default=1, help="connections of the TCP bulk run")
    ap.add_argument("--ttfb-count", type=int, default=2000, help="sequential connections of the TTFB run")
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--soak", type=int, default=60,
                    help="seconds of constant load with RSS sampled every second, l7inspect targets (0: off)")
    ap.add_argument("--soak-rate", type=int, default=2000, help="keep-alive req/s during the soak")
    ap.add_argument("--soak-conn-rate", type=int, default=100, help="new connections/s during the soak")
    ap.add_argument("--soak-all", action="store_true", help="soak haproxy and nginx too")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release binaries")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ARGS = ap.parse_args()
    if ARGS.repeat < 1:
        sys.exit("--repeat must be at least 1")
    unknown = set(ARGS.tests.split(",")) - set(ALL_TESTS.split(","))
    if unknown:
        sys.exit(f"--tests: unknown {sorted(unknown)}; known: {ALL_TESTS}")
    P = {k: ARGS.port_base + off for k, off in OFFSETS.items()}

    ensure_tools()
    if not ARGS.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "l7inspect-sidecar"], cwd=REPO, check=True)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "l7inspect-benches", "--bin", "l7bench"],
                       cwd=REPO, check=True)
    SIDECAR = os.path.join(REPO, "target", "release", "l7inspect-sidecar")
    L7BENCH = os.path.join(REPO, "target", "release", "l7bench")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    if ARGS.idle_conns + 100 > max(soft, want):
        sys.exit(f"open-file limit {want} too low for {ARGS.idle_conns} idle connections")

    busy = [p for p in P.values() if not port_free(p)]
    if busy:
        sys.exit(f"ports in use on 127.0.0.1: {busy} (another run? try --port-base)")

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        os.sched_setaffinity(0, {ARGS.load_cpu})  # this script stays off the proxy's core
    except OSError:
        pass

    tmp = tempfile.mkdtemp(prefix="l7e2e-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    os.makedirs(os.path.join(tmp, "www"))
    with open(os.path.join(tmp, "www", "index.html"), "wb") as f:
        f.write(BODY)
    log("work dir", tmp)

    started = datetime.datetime.now(datetime.timezone.utc)
    m = machine()  # now: the commit is the one just built, not whatever HEAD is at the end
    cfg = render("nginx-backend.conf", os.path.join(tmp, "nginx-backend.conf"),
                 DIR=tmp, H1_PORT=P["backend_h1"], H2_PORT=P["backend_h2"])
    backend = start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], ARGS.load_cpu, "nginx-backend", tmp)
    servers = start([L7BENCH, "serve", "--grpc", f"127.0.0.1:{P['backend_grpc']}",
                     "--sink", f"127.0.0.1:{P['backend_tcp']}",
                     "--banner", f"127.0.0.1:{P['backend_banner']}", "--banner-text", BANNER],
                    ARGS.load_cpu, "l7bench-serve", tmp)
    receiver = start([sys.executable, os.path.abspath(__file__), "otlp-receiver", str(P["otlp"])],
                     ARGS.load_cpu, "otlp-receiver", tmp)
    for k in ("h1", "h2"):
        wait_port(P[f"backend_{k}"], backend)
    for k in ("grpc", "tcp", "banner"):
        wait_port(P[f"backend_{k}"], servers)
    wait_port(P["otlp"], receiver)

    only = set(filter(None, ARGS.only.split(",")))
    results = []
    for name, desc, prefix in TARGETS:
        if only and name not in only:
            continue
        log(f"target {name}")
        results.append(measure(name, desc, prefix, tmp))
    stop_all()

    tabs = tables(results)
    finished = datetime.datetime.now(datetime.timezone.utc)
    params = {k: getattr(ARGS, k) for k in (
        "duration", "repeat", "proxy_cpu", "load_cpu", "h1_rate", "lat_conns", "sat_conns", "close_conns",
        "h2_conns", "h2_streams", "h2_rate", "grpc_rate", "tcp_streams", "ttfb_count", "idle_conns",
        "soak", "soak_rate", "soak_conn_rate", "tests")}
    os.makedirs(ARGS.out, exist_ok=True)
    with open(os.path.join(ARGS.out, "latest.json"), "w") as f:
        json.dump({"started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
                   "machine": m, "params": params, "results": results}, f, indent=2)
    notes = [notes_of(r) for r in results]
    md = (f"Run {started:%Y-%m-%d %H:%M} UTC, {(finished - started).seconds // 60} min; "
          f"commit {m['l7inspect_commit']}; {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['os']}; "
          f"{m['haproxy']}; {m['nginx']}; {m['wrk']}; {m['h2load']}.\n"
          f"Parameters: {json.dumps(params)}.\n\n"
          + "\n\n".join(f"**{title}**\n\n" + markdown(hdr, rows) for title, hdr, rows in tabs)
          + "\n\n" + "\n".join(notes) + "\n")
    with open(os.path.join(ARGS.out, "latest.md"), "w") as f:
        f.write(md)
    for title, hdr, rows in tabs:
        print(f"== {title}")
        print(plain(hdr, rows))
        print()
    print("\n".join(notes))
    print(f"\nwritten: {ARGS.out}/latest.json, {ARGS.out}/latest.md")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "otlp-receiver":
        otlp_receiver(int(sys.argv[2]))
    else:
        sys.exit(main())
