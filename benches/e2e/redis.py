#!/usr/bin/env python3
"""End-to-end benchmark of the Redis parser: redis-benchmark through the
sidecar with database spans off and on, against Redis directly and haproxy
in TCP mode, on loopback.

    python3 benches/e2e/redis.py                 # throughput and CPU, 3 rounds (about 6 minutes)
    python3 benches/e2e/redis.py --callgrind     # instructions per command under callgrind (about 4 minutes)
    python3 benches/e2e/redis.py --rounds 1 --only direct,l7-db-off,l7-db-on --pipelines 16   # smoke test

Targets (every one forwards to the same redis-server):
  direct           redis-server itself, no proxy
  haproxy          haproxy mode tcp, nbthread 1 (if haproxy is installed)
  l7-db-off        the sidecar with --no-db-spans: plain passthrough
  l7-db-on         the sidecar's default: Redis commands parsed, a span per
                   command (100% sampled) into the in-memory ring of recent
                   spans (no exporter), an operation histogram entry each
  l7-db-unsampled  parsed and timed in the histogram, --sample-ratio 0: no
                   span (splits the parser + histogram from the span)
  l7-db-otlp       as l7-db-on, spans exported over OTLP/HTTP to a sink
                   (a Python http.server answering 200 to every POST)
The sidecar listens on --outbound-forward 127.0.0.1:PORT=127.0.0.1:REDIS
(an application's outbound connection to its Redis: CLIENT spans and
db_client_operation_duration_seconds).

Placement, as run.py: the proxy alone on --proxy-cpu (0); redis-server,
redis-benchmark and the OTLP sink share --load-cpu (1). Both Redis sides
are single-threaded, so on 2 vCPUs the load side has one core for the two;
direct gives them that core too (the proxy's core stays idle), so the
direct row is the load side's own ceiling. As run.py does, during each run
the proxy is held to --proxy-cpu-limit cores (default 0.5, a Kubernetes
sidecar's 500m limit: a cgroup CFS quota, needs root; 0: the whole core),
so that it, not the load side, is what saturates; each row says whether it
did (`proxy`: CPU >= 90% of its limit and throttled in >= 50% of the CFS
periods; `load-bound`; `contended`: other tasks took >= 10% of its core).
Ratios between rows only measure the proxy when both are `proxy`-bound;
the CPU per million commands is absolute and compares whatever the bound.

Each round runs, for every pipeline depth (-P 1, -P 16) and test (SET, then
GET), every target once, in an order rotated each round, with
`redis-benchmark -t TEST -n N -c 50 -P DEPTH --csv`; the proxy's CPU is
utime+stime of its process from /proc/PID/stat before and after. Medians
over --rounds (>= 3) rounds; ratios to direct and to l7-db-off are taken
within a round, then their median.

--callgrind: the sidecar under valgrind --tool=callgrind (no CPU limit),
for l7-db-off, l7-db-unsampled and l7-db-on: warm-up (SET and GET), then for
-P 1 and -P 16 counters zeroed, GET x N (--callgrind-commands, default
20000, -c 50), dumped; then zeroed, GET x 2N, dumped. Ir of the first
window / N is per command with 50 connections' setup included; (Ir(2N) -
Ir(N)) / N is the marginal cost of one more command. The difference to
l7-db-off is what the parser, the span and the histogram cost per command.

Every process it starts is stopped by PID (also on Ctrl-C); everything
listens on 127.0.0.1; --budget bounds the whole run. Results: tables on
stdout (markdown) and benches/e2e/results/redis-DATE.json (.md beside it;
redis-callgrind-DATE.* for --callgrind). Standard library only; the
process, /proc and cgroup helpers are run.py's (imported, not copied).
"""

import argparse
import atexit
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import run as e2e  # noqa: E402  (benches/e2e/run.py: start, stop, /proc and cgroup helpers)

ARGS = None
SIDECAR = None
LIMIT = None
P = {}

# name -> (port offset, description)
TARGETS = {
    "direct": (0, "redis-server, no proxy"),
    "haproxy": (1, "haproxy 1 hop, mode tcp, nbthread 1"),
    "l7-db-off": (2, "sidecar, --no-db-spans: passthrough, no parser"),
    "l7-db-on": (3, "sidecar, Redis parsed, span per command (100% sampled) into the in-memory ring, histogram"),
    "l7-db-unsampled": (4, "sidecar, Redis parsed, histogram, --sample-ratio 0: no span"),
    "l7-db-otlp": (5, "sidecar, as l7-db-on, spans exported OTLP/HTTP to a local sink"),
    "l7-baseline": (6, "--baseline-bin (a sidecar from before database spans): its passthrough, no db flags"),
}
SIDECARS = ("l7-db-off", "l7-db-on", "l7-db-unsampled", "l7-db-otlp")
BASELINE = None  # --baseline-bin, copied
CPU_BOUND_PCT = e2e.CPU_BOUND_PCT  # 90: % of its limit (else a core)
THROTTLED_PCT = e2e.THROTTLED_PCT  # 50: % of CFS periods throttled
CONTENDED_OTHER_PCT = e2e.CONTENDED_OTHER_PCT  # 10: % of its core others took

HAPROXY_CFG = """\
# haproxy mode tcp, one thread: the byte-for-byte Redis proxy to compare with.
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend redis
    bind 127.0.0.1:{listen}
    default_backend be_redis
backend be_redis
    server s1 127.0.0.1:{redis}
"""

# An OTLP/HTTP sink: accepts every POST, reads its body, answers 200 with an
# empty ExportTraceServiceResponse; GET /stats tells what it got.
SINK = r"""
import http.server, json, sys
stats = {"requests": 0, "bytes": 0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        stats["requests"] += 1
        stats["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        b = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def log(*a):
    print("[redis]", *a, file=sys.stderr, flush=True)


class OverBudget(Exception):
    pass


def check_budget():
    if time.monotonic() > DEADLINE:
        raise OverBudget(f"--budget {ARGS.budget} s spent")


# ------------------------------------------------------------ processes

def sidecar_cmd(name):
    off = TARGETS[name][0]
    cmd = [BASELINE if name == "l7-baseline" else SIDECAR, "--no-transparent", "--admin-listen", f"127.0.0.1:{P['admin'] + off}",
           "--outbound-forward", f"127.0.0.1:{P['base'] + off}=127.0.0.1:{P['redis']}",
           "--log-level", "warn", "--service-name", "redis-bench"]
    if name == "l7-db-off":
        cmd += ["--no-db-spans", "--sample-ratio", "1.0"]
    elif name == "l7-db-on":
        cmd += ["--sample-ratio", "1.0"]
    elif name == "l7-db-unsampled":
        cmd += ["--sample-ratio", "0"]
    elif name == "l7-baseline":
        cmd += ["--sample-ratio", "1.0"]
    elif name == "l7-db-otlp":
        cmd += ["--sample-ratio", "1.0", "--otlp-protocol", "http/protobuf",
                "--otlp-endpoint", f"http://127.0.0.1:{P['sink']}/v1/traces"]
    else:
        raise ValueError(name)
    return cmd


def sidecar_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "L7INSPECT_"))}


def start_redis(tmp):
    p = e2e.start(["redis-server", "--port", str(P["redis"]), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", tmp, "--daemonize", "no",
                   "--protected-mode", "yes", "--loglevel", "warning"],
                  ARGS.load_cpu, "redis-server", tmp)
    e2e.wait_port(P["redis"], p)
    return p


def start_sink(tmp):
    p = e2e.start([sys.executable, "-c", SINK, str(P["sink"])], ARGS.load_cpu, "otlp-sink", tmp)
    e2e.wait_port(P["sink"], p)
    return p


def start_target(name, tmp, wrap=(), cgroup=None):
    """Start a proxy target; its process, or None for direct."""
    port = P["base"] + TARGETS[name][0]
    if name == "direct":
        return None
    if name == "haproxy":
        cfg = os.path.join(tmp, "haproxy-redis.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(listen=port, redis=P["redis"]))
        p = e2e.start(list(wrap) + ["haproxy", "-db", "-f", cfg], ARGS.proxy_cpu, "haproxy", tmp, cgroup=cgroup)
    else:
        p = e2e.start(list(wrap) + sidecar_cmd(name), ARGS.proxy_cpu, name, tmp, sidecar_env(), cgroup=cgroup)
    e2e.wait_port(port, p, timeout=300 if wrap else 15)
    return p


def port_of(name):
    return P["redis"] if name == "direct" else P["base"] + TARGETS[name][0]


def admin_metrics(name):
    """The sidecar's /metrics as {series line without value: value}."""
    c = http.client.HTTPConnection("127.0.0.1", P["admin"] + TARGETS[name][0], timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def db_counters(name):
    """What the sidecar counted: commands in the operation histograms (by
    operation), untracked commands, stopped parsers, spans exported and
    dropped."""
    m = admin_metrics(name)
    out = {"ops": {}, "untracked": 0.0, "stopped": 0.0, "spans_exported": 0.0, "spans_dropped": 0.0}
    for k, v in m.items():
        if k.startswith("db_client_operation_duration_seconds_count"):
            op = re.search(r'db_operation_name="([^"]*)"', k)
            key = op.group(1) if op else "?"
            out["ops"][key] = out["ops"].get(key, 0.0) + v
        elif k.startswith("l7inspect_db_commands_untracked_total"):
            out["untracked"] += v
        elif k.startswith("l7inspect_db_parse_stopped_total"):
            out["stopped"] += v
        elif k.startswith("l7inspect_spans_exported_total"):
            out["spans_exported"] += v
        elif k.startswith("l7inspect_spans_dropped_total"):
            out["spans_dropped"] += v
    return out


def sink_stats():
    try:
        c = http.client.HTTPConnection("127.0.0.1", P["sink"], timeout=5)
        c.request("GET", "/stats")
        s = json.loads(c.getresponse().read())
        c.close()
        return s
    except OSError:
        return None


# ------------------------------------------------------------- the load

def bench_cmd(port, test, n, pipeline, clients):
    return ["taskset", "-c", str(ARGS.load_cpu), "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
            "-t", test, "-n", str(n), "-c", str(clients), "-P", str(pipeline), "-q", "--csv"]


def parse_csv(out, test):
    """ops/s and latencies (ms) of `test` from redis-benchmark --csv."""
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if cells and cells[0].upper() == test.upper() and len(cells) >= 8:
            rps, avg, mn, p50, p95, p99, mx = (float(c) for c in cells[1:8])
            return {"ops_per_s": rps, "avg_ms": avg, "p50_ms": p50, "p99_ms": p99, "max_ms": mx}
    raise RuntimeError("redis-benchmark: no result for " + test + " in: " + out[-400:] )


def run_bench(name, proc, redis, test, pipeline):
    """One redis-benchmark run against a target; its rate, and the proxy's
    and redis-server's CPU over it."""
    n = ARGS.n_p1 if pipeline == 1 else ARGS.n_pipelined
    pids = [proc.pid] if proc else []
    thr0 = LIMIT.stat() if (LIMIT and pids) else None
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, px0, rs0, ct0 = time.monotonic(), e2e.cpu_split(pids), e2e.cpu_split([redis.pid]), e2e.core_ticks()
    out = subprocess.run(bench_cmd(port_of(name), test, n, pipeline, ARGS.clients),
                         capture_output=True, text=True, timeout=ARGS.run_timeout)
    t1, px1, rs1, ct1 = time.monotonic(), e2e.cpu_split(pids), e2e.cpu_split([redis.pid]), e2e.core_ticks()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # redis-benchmark (taskset execs it)
    thr1 = LIMIT.stat() if (LIMIT and pids) else None
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark exited {out.returncode}: {out.stderr[-400:]}")
    r = parse_csv(out.stdout, test)
    wall = t1 - t0
    r.update({"target": name, "test": test, "pipeline": pipeline, "commands": n, "wall_s": round(wall, 3)})
    redis_cpu = sum(rs1) - sum(rs0)
    r["redis_cpu_pct"] = 100.0 * redis_cpu / wall
    r["redis_cpu_s_per_M"] = redis_cpu / n * 1e6

    def core(c, i):
        b = ct1[c][i] - ct0[c][i]
        t = ct1[c][1] - ct0[c][1]
        return 100.0 * b / t if t else None
    bench_cpu = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    r["bench_cpu_pct"] = 100.0 * bench_cpu / wall
    r["load_core_pct"] = core(ARGS.load_cpu, 0)
    tl = core(ARGS.load_cpu, 2)
    # Other tasks on the load core: not redis-server, not redis-benchmark
    # (nor the OTLP sink, counted in here).
    r["others_on_load_core_pct"] = (max(0.0, tl - r["redis_cpu_pct"] - r["bench_cpu_pct"])
                                    if tl is not None else None)
    if not pids:
        r["others_on_proxy_core_pct"] = core(ARGS.proxy_cpu, 2)
    if pids:
        cpu = sum(px1) - sum(px0)
        r["proxy_cpu_s"] = cpu
        r["proxy_cpu_pct"] = 100.0 * cpu / wall
        r["proxy_user_pct"] = 100.0 * (px1[0] - px0[0]) / wall
        r["proxy_sys_pct"] = 100.0 * (px1[1] - px0[1]) / wall
        r["proxy_cpu_s_per_M"] = cpu / n * 1e6
        r["proxy_user_s_per_M"] = (px1[0] - px0[0]) / n * 1e6
        r["proxy_sys_s_per_M"] = (px1[1] - px0[1]) / n * 1e6
        tasks = core(ARGS.proxy_cpu, 2)
        r["others_on_proxy_core_pct"] = max(0.0, tasks - r["proxy_cpu_pct"]) if tasks is not None else None
        limit = LIMIT.quota() if (LIMIT and LIMIT.on) else None
        r["cpu_limit"] = limit
        throttled = None
        if thr0 and thr1 and thr1[0] - thr0[0]:
            throttled = 100.0 * (thr1[1] - thr0[1]) / (thr1[0] - thr0[0])
        r["throttled_periods_pct"] = throttled
        r["proxy_cpu_pct_of_limit"] = r["proxy_cpu_pct"] / (limit or 1.0)
        held = not limit or (throttled or 0) >= THROTTLED_PCT
        if r["proxy_cpu_pct_of_limit"] >= CPU_BOUND_PCT and held:
            r["bound"] = "proxy"
        elif (r["others_on_proxy_core_pct"] or 0) >= CONTENDED_OTHER_PCT:
            r["bound"] = "contended"
        else:
            r["bound"] = "load-bound"
    return r


def throughput(names, tmp, redis):
    procs = {}
    sink = None
    res = {"runs": []}
    try:
        if "l7-db-otlp" in names:
            sink = start_sink(tmp)
        for n in names:
            procs[n] = start_target(n, tmp, cgroup=LIMIT)
        # warm-up: every target, a short SET and GET at each depth (the
        # sidecar's first Redis connection sets up its parser's tables).
        for n in names:
            for pl in ARGS.pipelines:
                subprocess.run(bench_cmd(port_of(n), "set,get", 2000, pl, ARGS.clients),
                               capture_output=True, timeout=60, check=True)
        before = {n: db_counters(n) for n in names if n in SIDECARS}
        for rnd in range(ARGS.rounds):
            k = rnd % len(names)
            order = names[k:] + names[:k]
            for pl in ARGS.pipelines:
                for test in ARGS.tests:
                    for n in order:
                        check_budget()
                        with (LIMIT.applied() if LIMIT else _null()):
                            r = run_bench(n, procs[n], redis, test, pl)
                        r["round"] = rnd
                        res["runs"].append(r)
                        log(f"round {rnd + 1} -P{pl} {test:<3} {n:<16} {r['ops_per_s']:>10.0f} ops/s"
                            + (f"  proxy {r['proxy_cpu_pct']:5.1f}% CPU, {r['proxy_cpu_s_per_M']:.2f} s/M, "
                               f"{r['bound']}" if "proxy_cpu_pct" in r else "")
                            + f"  redis {r['redis_cpu_pct']:5.1f}%")
        after = {n: db_counters(n) for n in names if n in SIDECARS}
        res["db_counters"] = {n: {"before": before[n], "after": after[n]} for n in before}
        if sink:
            time.sleep(2.5)
            res["sink"] = sink_stats()
    finally:
        for p in procs.values():
            if p:
                e2e.stop(p)
        if sink:
            e2e.stop(sink)
    return res


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def summarize(res, names):
    """Medians per (depth, test, target); ratios to direct and l7-db-off
    taken within each round, then their median."""
    runs = res["runs"]
    key = lambda r: (r["pipeline"], r["test"], r["target"])  # noqa: E731
    by = {}
    for r in runs:
        by.setdefault(key(r), []).append(r)
    rows = []
    for pl in ARGS.pipelines:
        for test in ARGS.tests:
            for n in names:
                rs = by.get((pl, test, n), [])
                if not rs:
                    continue
                med = lambda k: (statistics.median(x[k] for x in rs)  # noqa: E731
                                 if all(x.get(k) is not None for x in rs) else None)
                row = {"pipeline": pl, "test": test, "target": n, "rounds": len(rs)}
                for k in ("ops_per_s", "p50_ms", "p99_ms", "proxy_cpu_pct", "proxy_cpu_s_per_M",
                          "proxy_user_pct", "proxy_sys_pct", "proxy_user_s_per_M", "proxy_sys_s_per_M",
                          "redis_cpu_pct", "redis_cpu_s_per_M",
                          "bench_cpu_pct", "load_core_pct", "others_on_proxy_core_pct",
                          "others_on_load_core_pct", "throttled_periods_pct"):
                    row[k] = med(k)
                bounds = [x.get("bound") for x in rs if x.get("bound")]
                row["bound"] = "/".join(sorted(set(bounds))) if bounds else None
                row["bound_per_round"] = bounds
                for ref in ("direct", "l7-db-off"):
                    if ref == n:
                        continue
                    refs = {x["round"]: x for x in by.get((pl, test, ref), [])}
                    rat = [x["ops_per_s"] / refs[x["round"]]["ops_per_s"] for x in rs if x["round"] in refs]
                    if rat:
                        row[f"ops_ratio_{ref}"] = statistics.median(rat)
                    if ref == "l7-db-off" and (n in SIDECARS or n == "l7-baseline"):
                        cr = [x["proxy_cpu_s_per_M"] / refs[x["round"]]["proxy_cpu_s_per_M"]
                              for x in rs if x["round"] in refs]
                        dc = [x["proxy_cpu_s_per_M"] - refs[x["round"]]["proxy_cpu_s_per_M"]
                              for x in rs if x["round"] in refs]
                        du = [x["proxy_user_s_per_M"] - refs[x["round"]]["proxy_user_s_per_M"]
                              for x in rs if x["round"] in refs]
                        if du:
                            row["user_added_us_per_cmd"] = statistics.median(du)
                        if cr:
                            row["cpu_ratio_l7-db-off"] = statistics.median(cr)
                            row["cpu_added_us_per_cmd"] = statistics.median(dc)  # s/M = µs per command
                rows.append(row)
    return rows


def fmt(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def throughput_md(rows):
    lim = f"{ARGS.proxy_cpu_limit:g} core" if ARGS.proxy_cpu_limit else "none (whole core)"
    parts = [f"redis-benchmark -c {ARGS.clients}, -n {ARGS.n_p1} at -P 1 and {ARGS.n_pipelined} pipelined; "
             f"medians of {ARGS.rounds} rounds; proxy on CPU {ARGS.proxy_cpu} (CPU limit: {lim}), redis-server "
             f"+ redis-benchmark (+ OTLP sink) on CPU {ARGS.load_cpu}. CPU s/M = proxy CPU seconds per million "
             "commands (= µs per command), user + system; +µs/cmd: minus l7-db-off's in the same round. "
             "Ratios are per-round medians; they only measure the proxy where the rows are `proxy`-bound. "
             "Others %: CPU of other tasks on the proxy's core (for direct: all of it) and on the load core "
             "(besides redis-server and redis-benchmark)."]
    head = ["-P", "test", "target", "ops/s", "÷ direct", "÷ db-off", "p50 ms", "p99 ms", "proxy CPU %",
            "proxy CPU s/M (user + sys)", "+µs/cmd vs db-off (user)", "redis CPU %",
            "others % proxy/load core", "bound"]
    out = []
    for r in rows:
        out.append([r["pipeline"], r["test"].upper(), r["target"], fmt(r["ops_per_s"], ",.0f"),
                    fmt(r.get("ops_ratio_direct"), ".3f", "×"), fmt(r.get("ops_ratio_l7-db-off"), ".3f", "×"),
                    fmt(r["p50_ms"], ".3f"), fmt(r["p99_ms"], ".3f"),
                    fmt(r["proxy_cpu_pct"], ".1f"),
                    fmt(r["proxy_cpu_s_per_M"], ".2f") + (f" ({r['proxy_user_s_per_M']:.2f} + {r['proxy_sys_s_per_M']:.2f})"
                                                          if r["proxy_user_s_per_M"] is not None else ""),
                    fmt(r.get("cpu_added_us_per_cmd"), "+.2f") + (f" ({r['user_added_us_per_cmd']:+.2f})"
                                                                  if r.get("user_added_us_per_cmd") is not None else ""),
                    fmt(r["redis_cpu_pct"], ".1f"),
                    fmt(r["others_on_proxy_core_pct"], ".0f") + " / " + fmt(r["others_on_load_core_pct"], ".0f"),
                    r["bound"] or "—"])
    parts.append(md_table(head, out))
    notes = []
    for pl in ARGS.pipelines:
        for test in ARGS.tests:
            d = [r for r in rows if r["pipeline"] == pl and r["test"] == test]
            direct = next((r["ops_per_s"] for r in d if r["target"] == "direct"), None)
            best = max((r["ops_per_s"] for r in d if r["target"] != "direct"), default=None)
            if direct and best:
                h = direct / best
                crowded = [r["target"] for r in d if "contended" in (r["bound"] or "")]
                if h < 1.3:
                    why = " (WARNING: direct not far above the proxies: the load side may be the limit)"
                elif crowded:
                    why = (" (direct far above the proxies; but in some rounds other tasks took >= "
                           f"{CONTENDED_OTHER_PCT:g}% of the proxy's core: " + ", ".join(crowded)
                           + " — what limited them may be that, not their own CPU)")
                else:
                    why = " (direct far above: the proxies are the bottleneck)"
                notes.append(f"-P {pl} {test.upper()}: direct ÷ fastest proxy {h:.2f}×" + why)
    if notes:
        parts.append("\n".join("- " + n for n in notes))
    return "\n\n".join(parts)


def counters_md(res):
    lines = []
    for n, c in (res.get("db_counters") or {}).items():
        ops = {k: c["after"]["ops"].get(k, 0) - c["before"]["ops"].get(k, 0) for k in c["after"]["ops"]}
        d = lambda k: c["after"][k] - c["before"][k]  # noqa: E731
        lines.append(f"- {n}: histogram entries over the measured runs "
                     + (", ".join(f"{k} {v:.0f}" for k, v in sorted(ops.items()) if v) or "none")
                     + f"; untracked {d('untracked'):.0f}; parsers stopped {d('stopped'):.0f}; "
                       f"spans exported {d('spans_exported'):.0f}, dropped {d('spans_dropped'):.0f}")
    if res.get("sink"):
        lines.append(f"- OTLP sink: {res['sink']['requests']} export requests, {res['sink']['bytes']} bytes")
    return "\n".join(lines)


# ------------------------------------------------------------ callgrind

def callgrind(names, tmp):
    out = {}
    n = ARGS.callgrind_commands
    for name in names:
        check_budget()
        tpl = os.path.join(tmp, f"callgrind.{name}.out")
        wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tpl}"]
        p = start_target(name, tmp, wrap=wrap)
        res = {}
        try:
            port = port_of(name)
            subprocess.run(bench_cmd(port, "set,get", ARGS.callgrind_warmup, 1, ARGS.clients),
                           capture_output=True, timeout=300, check=True)
            subprocess.run(bench_cmd(port, "get", ARGS.callgrind_warmup, 16, ARGS.clients),
                           capture_output=True, timeout=300, check=True)
            for pl in ARGS.pipelines:
                irs = {}
                for mult in (1, 2):
                    check_budget()
                    if name == "l7-db-otlp":
                        time.sleep(e2e.FLUSH_S)
                    subprocess.run(["callgrind_control", "--zero", str(p.pid)], check=True,
                                   capture_output=True, timeout=120)
                    t = time.monotonic()
                    b = subprocess.run(bench_cmd(port, "get", n * mult, pl, ARGS.clients),
                                       capture_output=True, text=True, timeout=600)
                    if b.returncode != 0:
                        raise RuntimeError(f"redis-benchmark under callgrind: {b.stderr[-300:]}")
                    wall = time.monotonic() - t
                    if name == "l7-db-otlp":
                        time.sleep(e2e.FLUSH_S)
                    before = set(os.listdir(tmp))
                    subprocess.run(["callgrind_control", "--dump", str(p.pid)], check=True,
                                   capture_output=True, timeout=120)
                    deadline = time.time() + 60
                    new = []
                    while time.time() < deadline and not new:
                        new = [f for f in set(os.listdir(tmp)) - before
                               if f.startswith(f"callgrind.{name}.out")]
                        time.sleep(0.2)
                    if not new:
                        raise RuntimeError("callgrind_control --dump wrote no file")
                    time.sleep(0.5)
                    path = os.path.join(tmp, sorted(new)[-1])
                    irs[mult] = e2e.callgrind_totals(path)
                    if ARGS.profile_dir:
                        os.makedirs(ARGS.profile_dir, exist_ok=True)
                        shutil.move(path, os.path.join(ARGS.profile_dir, f"callgrind.{name}.P{pl}.x{mult}.out"))
                    else:
                        os.unlink(path)
                    log(f"callgrind {name} -P{pl} GET x{n * mult}: {irs[mult]:,} Ir "
                        f"({irs[mult] / (n * mult):,.0f}/cmd, {wall:.1f} s)")
                res[f"P{pl}"] = {"commands": n, "ir_n": irs[1], "ir_2n": irs[2],
                                 "ir_per_cmd": irs[1] / n, "ir_marginal_per_cmd": (irs[2] - irs[1]) / n}
            if name in SIDECARS:
                res["db_counters"] = db_counters(name)
        finally:
            e2e.stop(p, timeout=30)
            for f in os.listdir(tmp):
                if f.startswith(f"callgrind.{name}.out"):
                    os.unlink(os.path.join(tmp, f))
        out[name] = res
    return out


def callgrind_md(cg):
    n = ARGS.callgrind_commands
    parts = [f"Instructions (Ir, callgrind, user space, all the proxy's threads) per GET: redis-benchmark "
             f"-t get -c {ARGS.clients} -n {n} (\"per cmd\": with the 50 connections' setup) and -n {2 * n} "
             f"(\"marginal\": (Ir(2N) − Ir(N)) / N, one more command on open connections), after a warm-up; "
             f"Δ: minus l7-db-off's."]
    head = ["-P", "target", "Ir/cmd", "Δ vs db-off", "marginal Ir/cmd", "Δ marginal vs db-off"]
    if "l7-baseline" in cg:
        head.append("Δ marginal vs baseline")
    rows = []
    for pl in ARGS.pipelines:
        k = f"P{pl}"
        off = cg.get("l7-db-off", {}).get(k)
        base = cg.get("l7-baseline", {}).get(k)
        for name, r in cg.items():
            x = r.get(k)
            if not x:
                continue
            d = off and name != "l7-db-off"
            rows.append([pl, name, f"{x['ir_per_cmd']:,.0f}",
                         f"{x['ir_per_cmd'] - off['ir_per_cmd']:+,.0f}" if d else "—",
                         f"{x['ir_marginal_per_cmd']:,.0f}",
                         f"{x['ir_marginal_per_cmd'] - off['ir_marginal_per_cmd']:+,.0f}" if d else "—"]
                        + ([f"{x['ir_marginal_per_cmd'] - base['ir_marginal_per_cmd']:+,.0f}"
                            if base and name != "l7-baseline" else "—"] if "l7-baseline" in cg else []))
    parts.append(md_table(head, rows))
    cl = []
    for name, r in cg.items():
        c = r.get("db_counters")
        if c:
            cl.append(f"- {name}: histogram entries "
                      + (", ".join(f"{k} {v:.0f}" for k, v in sorted(c["ops"].items()) if v) or "none")
                      + f"; untracked {c['untracked']:.0f}; parsers stopped {c['stopped']:.0f}")
    if cl:
        parts.append("\n".join(cl))
    return "\n\n".join(parts)


# ------------------------------------------------------------ main

def binary_info(path):
    """The binary's hash and what it was built from: --bin-commit when
    given, else this checkout's HEAD and its uncommitted Rust/Cargo files
    (the build from this tree; with --bin-dir, only a guess)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    out = {"path": path, "sha256": h.hexdigest()[:16]}
    if ARGS.bin_commit:
        out.update({"commit": ARGS.bin_commit, "dirty_files": []})
    else:
        out.update({"commit": git("rev-parse", "--short", "HEAD"),
                    "dirty_files": [ln[3:] for ln in git("status", "--porcelain").splitlines()
                                    if ln[3:].endswith(".rs") or "Cargo" in ln]})
    return out


def tables_md(result, names):
    if "callgrind" in result:
        return [callgrind_md(result["callgrind"])]
    md = [throughput_md(result["summary"])]
    c = counters_md(result)
    if c:
        md.append(c)
    return md


def write_md(out, meta, md):
    text = "\n\n".join(md)
    if text:
        with open(os.path.splitext(out)[0] + ".md", "w") as f:
            f.write(f"# {os.path.basename(out)}\n\n`python3 benches/e2e/redis.py {' '.join(meta['argv'])}` "
                    f"({meta['date']}, sidecar {meta['sidecar']['commit']}"
                    f"{' + uncommitted edits' if meta['sidecar']['dirty_files'] else ''}"
                    + (f", baseline {meta['baseline']['commit']}" if meta.get("baseline") else "")
                    + f", load average {' '.join(meta['loadavg_start'])} at start)\n\n{text}\n")
        print(text)


def render(ap, path):
    """--render: the tables of an earlier run, from its JSON and argv."""
    global ARGS
    with open(path) as f:
        result = json.load(f)
    meta = result["meta"]
    ARGS = ap.parse_args(meta["argv"])
    ARGS.pipelines = [int(x) for x in ARGS.pipelines.split(",")]
    ARGS.tests = [t.strip().lower() for t in ARGS.tests.split(",")]
    write_md(path, meta, tables_md(result, list(meta["targets"])))
    return 0


def main():
    global ARGS, SIDECAR, LIMIT, P, DEADLINE, BASELINE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="", help="take l7inspect-sidecar from there instead of building it")
    ap.add_argument("--bin-commit", default="",
                    help="the commit the --bin-dir binary was built from (recorded in the JSON)")
    ap.add_argument("--baseline-bin", default="",
                    help="an older l7inspect-sidecar (before database spans) run as target l7-baseline, "
                         "to compare passthrough with (added to the default targets when given)")
    ap.add_argument("--baseline-commit", default="", help="the commit --baseline-bin was built from")
    ap.add_argument("--only", default="", help="comma-separated targets (default: direct,haproxy,l7-db-off,"
                    "l7-db-on,l7-db-otlp; --callgrind: l7-db-off,l7-db-unsampled,l7-db-on); all: "
                    + ",".join(TARGETS))
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3); medians over them")
    ap.add_argument("--pipelines", default="1,16", help="redis-benchmark -P depths (default 1,16)")
    ap.add_argument("--tests", default="set,get", help="redis-benchmark tests, each run apart (default set,get)")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c (default 50)")
    ap.add_argument("--n-p1", type=int, default=100000, help="commands per run at -P 1 (default 100000)")
    ap.add_argument("--n-pipelined", type=int, default=1000000,
                    help="commands per run at a depth above 1 (default 1000000)")
    ap.add_argument("--proxy-cpu", type=int, default=0, help="the proxy's CPU, alone (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1,
                    help="CPU of redis-server, redis-benchmark and the OTLP sink (default 1)")
    ap.add_argument("--proxy-cpu-limit", type=float, default=0.5,
                    help="the proxy's CPU limit during the runs, in cores (cgroup CFS quota, as a Kubernetes "
                         "sidecar's limit; needs root; default 0.5; 0: the whole core)")
    ap.add_argument("--callgrind", action="store_true", help="instructions per command under callgrind instead")
    ap.add_argument("--callgrind-commands", type=int, default=20000,
                    help="GETs of the first measured window per depth (the second has twice as many)")
    ap.add_argument("--callgrind-warmup", type=int, default=2000, help="warm-up commands (default 2000)")
    ap.add_argument("--profile-dir", default="", help="keep the callgrind profiles there")
    ap.add_argument("--port-base", type=int, default=19400, help="ports BASE..BASE+29 (default 19400)")
    ap.add_argument("--budget", type=int, default=600, help="seconds the whole run may take (default 600)")
    ap.add_argument("--run-timeout", type=int, default=120, help="seconds one redis-benchmark run may take")
    ap.add_argument("--render", default="", metavar="JSON",
                    help="print (and rewrite the .md beside) the tables of an earlier run's JSON; runs nothing")
    ap.add_argument("--out", default="", help="JSON path (default benches/e2e/results/redis[-callgrind]-DATE.json)")
    ARGS = ap.parse_args()
    if ARGS.render:
        return render(ap, ARGS.render)
    DEADLINE = time.monotonic() + ARGS.budget
    ARGS.pipelines = [int(x) for x in ARGS.pipelines.split(",")]
    ARGS.tests = [t.strip().lower() for t in ARGS.tests.split(",")]
    if ARGS.rounds < 1:
        sys.exit("--rounds must be at least 1")
    default = "l7-db-off,l7-db-unsampled,l7-db-on" if ARGS.callgrind else "direct,haproxy,l7-db-off,l7-db-on,l7-db-otlp"
    if ARGS.baseline_bin:
        default = default.replace("l7-db-off", "l7-baseline,l7-db-off")
    names = [n for n in (ARGS.only or default).split(",") if n]
    if "l7-baseline" in names and not ARGS.baseline_bin:
        sys.exit("l7-baseline needs --baseline-bin")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        sys.exit(f"--only: unknown {unknown}; known: {list(TARGETS)}")
    if ARGS.callgrind:
        names = [n for n in names if n != "direct"]
    for tool in ["redis-server", "redis-benchmark", "taskset"] + (["valgrind", "callgrind_control"] if ARGS.callgrind else []):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install redis-server / valgrind)")
    if "haproxy" in names and not shutil.which("haproxy"):
        log("haproxy is not installed: its row is left out")
        names.remove("haproxy")
    P = {"redis": ARGS.port_base, "base": ARGS.port_base, "admin": ARGS.port_base + 10,
         "sink": ARGS.port_base + 20}
    for port in [P["redis"]] + [P["base"] + TARGETS[n][0] for n in names if n != "direct"] + \
            [P["admin"] + TARGETS[n][0] for n in names if n in SIDECARS + ("l7-baseline",)] + [P["sink"]]:
        if not e2e.port_free(port):
            sys.exit(f"port {port} is in use; pick another --port-base")

    if ARGS.bin_dir:
        src = os.path.join(ARGS.bin_dir, "l7inspect-sidecar")
    else:
        log("cargo build --release -p l7inspect-sidecar")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "l7inspect-sidecar"], cwd=REPO, check=True)
        target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        src = os.path.join(target_dir, "release", "l7inspect-sidecar")
    tmp = tempfile.mkdtemp(prefix="l7redis-")
    # A copy: a rebuild of target/ during the run does not change what runs.
    SIDECAR = os.path.join(tmp, "l7inspect-sidecar")
    shutil.copy2(src, SIDECAR)
    if ARGS.baseline_bin:
        BASELINE = os.path.join(tmp, "l7inspect-sidecar-baseline")
        shutil.copy2(ARGS.baseline_bin, BASELINE)

    atexit.register(lambda: shutil.rmtree(tmp, ignore_errors=True))
    atexit.register(e2e.stop_all)
    signal.signal(signal.SIGINT, e2e.on_signal)
    signal.signal(signal.SIGTERM, e2e.on_signal)
    if ARGS.proxy_cpu_limit and not ARGS.callgrind:
        try:
            LIMIT = e2e.CpuLimit(ARGS.proxy_cpu_limit)
            e2e.LIMIT = LIMIT
            atexit.register(LIMIT.remove)
        except e2e.CgroupError as e:
            sys.exit(f"{e}; run as root or with --proxy-cpu-limit 0")

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "kernel": platform.release(), "cpus": os.cpu_count(), "argv": sys.argv[1:],
            "sidecar": binary_info(src),
            "baseline": ({"path": ARGS.baseline_bin, "commit": ARGS.baseline_commit} if ARGS.baseline_bin else None),
            "targets": {n: TARGETS[n][1] for n in names},
            "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
            "loadavg_start": open("/proc/loadavg").read().split()[:3],
            "proxy_cpu": ARGS.proxy_cpu, "load_cpu": ARGS.load_cpu,
            "proxy_cpu_limit": ARGS.proxy_cpu_limit if LIMIT else None}
    redis = start_redis(tmp)
    md = []
    ok = True
    try:
        if ARGS.callgrind:
            cg = callgrind(names, tmp)
            result = {"meta": meta, "callgrind": cg}
        else:
            res = throughput(names, tmp, redis)
            rows = summarize(res, names)
            result = {"meta": meta, "summary": rows, **res}
        md = tables_md(result, names)
    except OverBudget as e:
        log(f"stopped: {e}")
        ok = False
        result = {"meta": meta, "error": str(e)}
    finally:
        e2e.stop(redis)
    meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    meta["elapsed_s"] = round(ARGS.budget - (DEADLINE - time.monotonic()), 1)
    day = datetime.date.today().isoformat()
    out = ARGS.out or os.path.join(HERE, "results", f"redis{'-callgrind' if ARGS.callgrind else ''}-{day}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    write_md(out, meta, md)
    log(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
