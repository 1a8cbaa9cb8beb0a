#!/usr/bin/env python3
"""End-to-end benchmark: l7inspect beside direct, haproxy and nginx on loopback.

    python3 benches/e2e/run.py            # full run (about 6 minutes)
    python3 benches/e2e/run.py --duration 2 --only direct,l7-1hop-off   # smoke test

Installs its tools with apt-get when missing (haproxy, nginx, wrk, h2load),
builds the sidecar (cargo build --release -p l7inspect-sidecar), then for each
target in turn: starts it, measures, stops it. Everything listens on
127.0.0.1; every process it starts is stopped by PID when it exits (also on
Ctrl-C). Results: one table on stdout, and benches/e2e/results/latest.{json,md}.

Standard library only. Two helpers live in this file as subcommands:
`otlp-receiver PORT` (a tiny OTLP/HTTP receiver: 200 to POST /v1/traces,
counts requests and bytes, GET /stats) -- run as a child process.
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
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b"l7inspect e2e benchmark: a small static response.\n" * 2  # 104 bytes

# Ports (all on 127.0.0.1).
P = {
    "backend_h1": 18400, "backend_h2": 18401,
    "l7off_h1": 18410, "l7off_h2": 18411, "l7off_admin": 18419,
    "l7tr_h1": 18420, "l7tr_h2": 18421, "l7tr_admin": 18429,
    "l7hop_h1": 18430, "l7hop_h2": 18431, "l7hop_admin": 18439,
    "l7hop_in_h1": 18432, "l7hop_in_h2": 18433, "l7hop_in_admin": 18438,
    "haproxy_h1": 18440, "haproxy_h2": 18441,
    "nginx_h1": 18450, "nginx_h2": 18451,
    "otlp": 18460,
}

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


def wrk(port, conns, duration, delay_ms=0):
    env = dict(os.environ, WRK_DELAY_MS=str(delay_ms))
    cmd = ["taskset", "-c", str(ARGS.load_cpu), "wrk", "-t1", f"-c{conns}",
           f"-d{duration}s", "--latency", "-H", "Host: bench.local",
           "-s", os.path.join(HERE, "wrk-report.lua"), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60)
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError("wrk: " + out.stdout[-500:] + out.stderr[-500:])
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def h2load(port, conns, streams, duration, logfile, rps_per_conn=0):
    cmd = ["taskset", "-c", str(ARGS.load_cpu), "h2load", "-t1", f"-c{conns}",
           f"-m{streams}", f"-D{duration}", "--warm-up-time=1",
           f"--log-file={logfile}",
           f"http://127.0.0.1:{port}/"]
    if rps_per_conn:
        cmd.insert(-1, f"--rps={rps_per_conn}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
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

# ----------------------------------------------------------------- targets


def render(template, out, **kw):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in kw.items():
        text = text.replace("@" + k + "@", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def sidecar_cmd(admin, inbound=(), outbound=(), otlp=False):
    cmd = [SIDECAR, "--no-transparent", "--admin-listen", f"127.0.0.1:{admin}",
           "--log-level", "warn", "--service-name", "e2e-bench"]
    for lp, tp in inbound:
        cmd += ["--inbound-forward", f"127.0.0.1:{lp}=127.0.0.1:{tp}"]
    for lp, tp in outbound:
        cmd += ["--outbound-forward", f"127.0.0.1:{lp}=127.0.0.1:{tp}"]
    if otlp:
        cmd += ["--sample-ratio", "1.0", "--otlp-protocol", "http/protobuf",
                "--otlp-endpoint", f"http://127.0.0.1:{P['otlp']}/v1/traces"]
    return cmd


def sidecar_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "L7INSPECT_"))}
    return env


TARGETS = [
    # name, description, h1 port, h2 port
    ("direct", "nginx backend, no proxy", "backend_h1", "backend_h2"),
    ("haproxy", "haproxy 1 hop, HTTP mode, nbthread 1, keep-alive to backend (h2: proto h2 both sides)", "haproxy_h1", "haproxy_h2"),
    ("nginx", "nginx 1 hop, upstream keepalive (h2c in, HTTP/1.1 upstream)", "nginx_h1", "nginx_h2"),
    ("l7-1hop-off", "l7inspect 1 hop, inbound forward, no exporter (spans kept in memory)", "l7off_h1", "l7off_h2"),
    ("l7-1hop-otlp", "l7inspect 1 hop, 100% sampled, OTLP/HTTP to a live local receiver", "l7tr_h1", "l7tr_h2"),
    ("l7-2hop-otlp", "l7inspect 2 hops (outbound forward -> inbound forward), both 100% sampled to OTLP", "l7hop_h1", "l7hop_h2"),
]


def start_target(name, tmp):
    """Start a target's processes; return (PIDs to measure, admin ports)."""
    c = ARGS.proxy_cpu
    if name == "direct":
        return [], []
    if name == "haproxy":
        cfg = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"),
                     H1_PORT=P["haproxy_h1"], H2_PORT=P["haproxy_h2"],
                     BACKEND_H1_PORT=P["backend_h1"], BACKEND_H2_PORT=P["backend_h2"])
        p = start(["haproxy", "-db", "-f", cfg], c, "haproxy", tmp)
        return [p], []
    if name == "nginx":
        cfg = render("nginx-proxy.conf", os.path.join(tmp, "nginx-proxy.conf"),
                     DIR=tmp, H1_PORT=P["nginx_h1"], H2_PORT=P["nginx_h2"],
                     BACKEND_H1_PORT=P["backend_h1"])
        p = start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], c, "nginx-proxy", tmp)
        return [p], []
    env = sidecar_env()
    if name == "l7-1hop-off":
        p = start(sidecar_cmd(P["l7off_admin"], inbound=[(P["l7off_h1"], P["backend_h1"]), (P["l7off_h2"], P["backend_h2"])]),
                  c, "l7-1hop-off", tmp, env)
        return [p], [P["l7off_admin"]]
    if name == "l7-1hop-otlp":
        p = start(sidecar_cmd(P["l7tr_admin"], inbound=[(P["l7tr_h1"], P["backend_h1"]), (P["l7tr_h2"], P["backend_h2"])], otlp=True),
                  c, "l7-1hop-otlp", tmp, env)
        return [p], [P["l7tr_admin"]]
    if name == "l7-2hop-otlp":
        pin = start(sidecar_cmd(P["l7hop_in_admin"], inbound=[(P["l7hop_in_h1"], P["backend_h1"]), (P["l7hop_in_h2"], P["backend_h2"])], otlp=True),
                    c, "l7-2hop-inbound", tmp, env)
        wait_port(P["l7hop_in_h1"], pin)
        pout = start(sidecar_cmd(P["l7hop_admin"], outbound=[(P["l7hop_h1"], P["l7hop_in_h1"]), (P["l7hop_h2"], P["l7hop_in_h2"])], otlp=True),
                     c, "l7-2hop-outbound", tmp, env)
        return [pout, pin], [P["l7hop_admin"], P["l7hop_in_admin"]]
    raise ValueError(name)


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


def measure(name, desc, h1key, h2key, tmp):
    res = {"target": name, "description": desc, "ok": True, "error": None, "notes": []}
    procs, admins = [], []
    try:
        procs, admins = start_target(name, tmp)
        for p in procs:
            wait_port(P[h1key], p)
            wait_port(P[h2key], p)
        if not procs:
            wait_port(P[h1key], None)
        pids = [p.pid for p in procs]
        http_get_ok(P[h1key])
        time.sleep(1.0)
        if pids:
            res["rss_idle_kib"] = mem_kib(pids, "VmRSS")
            socks = open_idle(P[h1key], ARGS.idle_conns)
            time.sleep(1.0)
            res["rss_1k_idle_conns_kib"] = mem_kib(pids, "VmRSS")
            for s in socks:
                s.close()
            time.sleep(1.0)
        d = ARGS.duration
        otlp0 = otlp_stats() if admins else None
        # HTTP/1.1 paced (moderate load) run for latency.
        wrk(P[h1key], ARGS.lat_conns, 1, ARGS.lat_delay_ms)  # warm-up
        res["h1_paced"] = wrk(P[h1key], ARGS.lat_conns, d, ARGS.lat_delay_ms)
        # HTTP/1.1 saturating run for throughput and CPU.
        wrk(P[h1key], ARGS.sat_conns, 1)  # warm-up
        c0 = cpu_seconds(pids) if pids else None
        r = wrk(P[h1key], ARGS.sat_conns, d)
        if pids:
            r["proxy_cpu_s"] = cpu_seconds(pids) - c0
            r["cpu_s_per_100k"] = r["proxy_cpu_s"] / r["requests"] * 1e5
        res["h1_sat"] = r
        # HTTP/2 (h2c prior knowledge): a fixed-rate run for latency, then
        # a saturating multiplexed run for throughput and CPU.
        try:
            res["h2_rate"] = h2load(P[h2key], ARGS.h2_conns, 100, d, os.path.join(tmp, "h2load.log"),
                                    rps_per_conn=max(1, ARGS.h2_rate // ARGS.h2_conns))
            c0 = cpu_seconds(pids) if pids else None
            r = h2load(P[h2key], ARGS.h2_conns, ARGS.h2_streams, d, os.path.join(tmp, "h2load.log"))
            if pids:
                r["proxy_cpu_s"] = cpu_seconds(pids) - c0
                r["cpu_s_per_100k"] = r["proxy_cpu_s"] / max(1, r["requests"]) * 1e5
            res["h2"] = r
        except Exception as e:  # report, keep the HTTP/1.1 figures
            res["h2"] = {"error": str(e)[:300]}
            res["notes"].append("h2 run failed: " + str(e)[:200])
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


def fmt_us(v):
    return "—" if v is None else f"{v / 1000:.2f}"


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def lat3(r):
    if not r or r.get("p50_us") is None:
        return "—"
    return " / ".join(fmt_us(r[k]) for k in ("p50_us", "p99_us", "p999_us"))


def added(r, d):
    if not r or not d or r.get("p50_us") is None or d.get("p50_us") is None:
        return "—"
    return " / ".join(fmt_us(r[k] - d[k]) for k in ("p50_us", "p99_us"))


def table(results):
    direct = next((r for r in results if r["target"] == "direct" and r["ok"]), None)
    hdr = ["target", "h1 req/s (sat)", "h1 paced p50 / p99 / p99.9 ms", "h1 added p50 / p99 ms",
           "h1 CPU s/100k req", "h2 req/s (sat)", "h2 fixed-rate p50 / p99 / p99.9 ms",
           "h2 added p50 / p99 ms", "h2 CPU s/100k req",
           "RSS idle MiB", "RSS 1k idle conns MiB", "peak RSS MiB"]
    rows = []
    for r in results:
        if not r["ok"]:
            rows.append([r["target"], "not measured: " + (r["error"] or "?")] + ["—"] * (len(hdr) - 2))
            continue
        pl, sat, h2, h2r = r.get("h1_paced", {}), r.get("h1_sat", {}), r.get("h2", {}), r.get("h2_rate", {})
        d = direct if (direct and r is not direct) else None

        def mib(k):
            return fmt(r[k] / 1024, ".1f") if k in r else "—"
        rows.append([
            r["target"], fmt(sat.get("rps"), ".0f"), lat3(pl), added(pl, d and d.get("h1_paced")),
            fmt(sat.get("cpu_s_per_100k"), ".2f"),
            fmt(h2.get("rps"), ".0f"), lat3(h2r), added(h2r, d and d.get("h2_rate")),
            fmt(h2.get("cpu_s_per_100k"), ".2f"),
            mib("rss_idle_kib"), mib("rss_1k_idle_conns_kib"), mib("rss_peak_kib"),
        ])
    return hdr, rows


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
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "os": ver(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "l7inspect_commit": rev,
            "haproxy": ver(["haproxy", "-v"]), "nginx": ver(["nginx", "-v"]),
            "wrk": ver(["wrk", "-v"]), "h2load": ver(["h2load", "--version"])}

# -------------------------------------------------------------------- main


def ensure_tools():
    need = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client", "taskset": "util-linux"}
    missing = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log("installing", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing, check=True, env=env)


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


def main():
    global ARGS, SIDECAR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for the load generator, backend and OTLP receiver")
    ap.add_argument("--lat-conns", type=int, default=8, help="connections in the paced latency run")
    ap.add_argument("--lat-delay-ms", type=int, default=2, help="pause after each response in the paced run")
    ap.add_argument("--sat-conns", type=int, default=64, help="connections in the saturating run")
    ap.add_argument("--h2-conns", type=int, default=8)
    ap.add_argument("--h2-streams", type=int, default=16, help="concurrent streams per h2 connection (saturating run)")
    ap.add_argument("--h2-rate", type=int, default=4000, help="total req/s of the fixed-rate h2 run")
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release binary")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ARGS = ap.parse_args()

    ensure_tools()
    if not ARGS.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "l7inspect-sidecar"], cwd=REPO, check=True)
    SIDECAR = os.path.join(REPO, "target", "release", "l7inspect-sidecar")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    if ARGS.idle_conns + 100 > max(soft, want):
        sys.exit(f"open-file limit {want} too low for {ARGS.idle_conns} idle connections")

    busy = [p for p in P.values() if not port_free(p)]
    if busy:
        sys.exit(f"ports in use on 127.0.0.1: {busy}")

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
    cfg = render("nginx-backend.conf", os.path.join(tmp, "nginx-backend.conf"),
                 DIR=tmp, H1_PORT=P["backend_h1"], H2_PORT=P["backend_h2"])
    backend = start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], ARGS.load_cpu, "nginx-backend", tmp)
    wait_port(P["backend_h1"], backend)
    wait_port(P["backend_h2"], backend)
    receiver = start([sys.executable, os.path.abspath(__file__), "otlp-receiver", str(P["otlp"])],
                     ARGS.load_cpu, "otlp-receiver", tmp)
    wait_port(P["otlp"], receiver)

    only = set(filter(None, ARGS.only.split(",")))
    results = []
    for name, desc, h1, h2 in TARGETS:
        if only and name not in only:
            continue
        log(f"target {name}")
        results.append(measure(name, desc, h1, h2, tmp))
    stop_all()

    hdr, rows = table(results)
    m = machine()
    finished = datetime.datetime.now(datetime.timezone.utc)
    params = {k: getattr(ARGS, k) for k in ("duration", "proxy_cpu", "load_cpu", "lat_conns", "lat_delay_ms",
                                            "sat_conns", "h2_conns", "h2_streams", "h2_rate", "idle_conns")}
    os.makedirs(ARGS.out, exist_ok=True)
    with open(os.path.join(ARGS.out, "latest.json"), "w") as f:
        json.dump({"started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
                   "machine": m, "params": params, "results": results}, f, indent=2)
    notes = []
    for r in results:
        extra = []
        if "spans_exported" in r:
            extra.append(f"spans exported {r['spans_exported']:.0f}, dropped {r['spans_dropped']:.0f}")
        if "otlp_posts" in r:
            extra.append(f"OTLP receiver got {r['otlp_posts']} POSTs, {r['otlp_bytes'] / 1e6:.1f} MB")
        for k in ("h1_paced", "h1_sat"):
            if r.get(k, {}).get("errors"):
                extra.append(f"{k}: {r[k]['errors']} wrk errors")
        if r.get("h2", {}).get("failed"):
            extra.append(f"h2: {r['h2']['failed']} failed requests")
        if r.get("h1_paced"):
            extra.append(f"h1 paced run {r['h1_paced']['rps']:.0f} req/s")
        if r.get("h2_rate", {}).get("rps"):
            extra.append(f"h2 fixed-rate run {r['h2_rate']['rps']:.0f} req/s"
                         + (f" ({r['h2_rate']['failed']} failed)" if r['h2_rate'].get('failed') else ""))
        extra += r["notes"]
        notes.append(f"- **{r['target']}** ({r['description']}): " + "; ".join(extra))
    md = (f"Run {started:%Y-%m-%d %H:%M} UTC, {(finished - started).seconds // 60} min; "
          f"commit {m['l7inspect_commit']}; {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['os']}; "
          f"{m['haproxy']}; {m['nginx']}; {m['wrk']}; {m['h2load']}.\n"
          f"Parameters: {json.dumps(params)}.\n\n" + markdown(hdr, rows) + "\n\n" + "\n".join(notes) + "\n")
    with open(os.path.join(ARGS.out, "latest.md"), "w") as f:
        f.write(md)
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
